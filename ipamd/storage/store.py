"""The LevelDB store: one handle on the database, and the one place that opens it.

`Store` is what the rest of ipamd holds; each of its jobs is a module of its own:

    opening.py   refusing what LevelDB would open wrongly, opening, locking
    schema.py    the schema version and the schema 1 -> 2 migration
    batches.py   the write side: `Change`s into one synced batch
    reads.py     the read side: the `LeaseView` the allocator and readers ask
    rebuild.py   the allocator's index rebuilt from the keys at start
    failures.py  what they fail with

Rules it keeps:
- Only ipamd/storage/ imports plyvel (tests/storage/test_plyvel_seam.py checks);
  plyvel's exceptions are translated there: write failures become
  `StorageError`, open failures `CorruptDatabase` or `StoreUnavailable`.
- It never repairs anything silently. A database LevelDB refuses to open, a
  newer schema, or leases that disagree with their reverse entries raise
  `CorruptDatabase`; `ipamd check` (check.py) says what exactly is wrong.
- `open`, `load` and `write` block for long and are called from a worker
  thread (the writer's committer for `commit`); reads are made inline.
"""

from __future__ import annotations

from pathlib import Path

import plyvel

from ipamd.core.allocator import Allocator
from ipamd.core.view import Change
from ipamd.errors import Unavailable
from ipamd.storage import batches, opening, rebuild, schema
from ipamd.storage.failures import (
    CorruptDatabase,
    NotADatabase,
    SchemaTooOld,
    StateDirLocked,
    StoreUnavailable,
    reason,
)
from ipamd.storage.reads import LeaseReads

__all__ = [
    "DB_DIRNAME",
    "CorruptDatabase",
    "NotADatabase",
    "SchemaTooOld",
    "StateDirLocked",
    "Store",
    "StoreUnavailable",
]

DB_DIRNAME = "leases.ldb"


class Store(LeaseReads):
    def __init__(self, state_dir: Path, boot: str | None = None) -> None:
        """`boot`: the current boot id. It migrates an older schema at open and
        counts suspect leases at load; None (`ipamd check`) refuses an older schema."""
        self.state_dir = state_dir
        self.path = state_dir / DB_DIRNAME
        self.boot = boot
        # Leases stamped by the last open's migration; None if it migrated nothing.
        self.migrated: int | None = None
        self._db: plyvel.DB | None = None

    # -- lifecycle -----------------------------------------------------------

    def open(self, *, create: bool = True) -> None:
        """Open (creating if allowed) and check the schema. Blocks."""
        db = opening.open_database(self.state_dir, self.path, create=create)
        try:
            migrated = schema.check_schema(db, self.path, self.boot)
            opening.sync_directories(self.state_dir, self.path)
        except plyvel.Error as e:
            # Opened but unreadable (e.g. "IO error: ...ldb: Invalid argument" for a
            # block handle pointing past the file's end): a restart will not help.
            db.close()
            raise CorruptDatabase(f"database {self.path} is corrupt: {reason(e)}") from e
        except OSError as e:
            db.close()
            raise StoreUnavailable(
                f"cannot sync the directories of {self.path}: {reason(e)}"
            ) from e
        except BaseException:
            db.close()
            raise
        if migrated is not None:
            self.migrated = migrated
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> plyvel.DB:
        if self._db is None:
            raise Unavailable("the database is being reopened; try again")
        return self._db

    def room_to_reopen(self) -> str | None:
        """None if the disk has room to reopen (flush the log); else why not."""
        return opening.room_to_reopen(self.path)

    # -- writes --------------------------------------------------------------

    def write(self, changes: list[Change]) -> None:
        """Persist every change in one synced batch. Blocks; raises StorageError."""
        self.commit(self.prepare(changes))

    def prepare(
        self, changes: list[Change], batch: plyvel.WriteBatch | None = None
    ) -> plyvel.WriteBatch:
        """Encode `changes` into a batch for `commit` (a new one, or `batch` to
        add them after what it holds). No I/O, so it runs on the writer's own
        thread: encoding in the committer's thread would hold the GIL there and stall
        the event loop each time it wants it back."""
        if batch is None:
            batch = self.db.write_batch(sync=True)
        batches.fill(batch, changes)
        return batch

    def commit(self, batch: plyvel.WriteBatch) -> None:
        """Write and sync a prepared batch (LevelDB releases the GIL meanwhile).
        Blocks; raises StorageError."""
        batches.commit(batch, self.path)

    # -- rebuild -----------------------------------------------------------------

    def load(self) -> Allocator:
        """Rebuild every network's pools from the reverse entries (rebuild.py). Blocks.

        Raises CorruptDatabase when the leases and reverse entries disagree in
        number, a block fails its checksum, or an entry cannot be decoded.
        """
        return rebuild.rebuild(self)
