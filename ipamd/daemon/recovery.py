"""Recovery from a failed write (a full disk, an I/O error): reopen the database
and rebuild the writer's state from what is on disk.

Rules it keeps:
- Only with no group pending or being written (the writer waits for that):
  nothing may be written while the database is reopened.
- LevelDB's error is sticky and the working state is dirty, so the database
  is closed and reopened, and the pools rebuilt from it; never a blind retry.
- Reopening needs room to flush LevelDB's log: while the disk is still full
  the old handle stays open and keeps serving reads, and `reopen` fails fast
  with `storage_error` (the group fails; the next one tries again). A full
  disk recovers once space is freed, without a restart.
- A reopen that fails leaves the database closed (reads get `unavailable`)
  and is retried with the next group; after REOPEN_GIVE_UP_S of that, or on
  corruption, it raises `WriterFailed` and the daemon exits for systemd.
- The blocking reopen and rebuild run in the committer's thread, the writer's
  one thread (storage/committer.py).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from ipamd.core.allocator import Allocator
from ipamd.errors import StorageError
from ipamd.storage.committer import Committer
from ipamd.storage.store import CorruptDatabase, Store, StoreUnavailable

log = logging.getLogger("ipamd.writer")

# How long the database may stay closed after failed reopens before the daemon
# gives up and exits for systemd to restart it.
REOPEN_GIVE_UP_S = 300.0


class WriterFailed(Exception):
    """The database could not be reopened after a failed write (exit status 75)."""


class Rebuilt(Protocol):
    def rebuilt(self, allocator: Allocator, store: Store) -> None:
        """The allocator was just loaded from `store` (start, or after a failed write)."""


class Recovery:
    def __init__(self, store: Store, committer: Committer, extension: Rebuilt | None) -> None:
        self._store = store
        self._committer = committer
        self._extension = extension
        self._closed_since: float | None = None

    async def reopen(self) -> Allocator:
        """The pools rebuilt from disk. Raises StorageError when it cannot be done
        yet, WriterFailed when it never will be."""
        store = self._store
        if store.is_open:
            room = store.room_to_reopen()
            if room is not None:
                raise StorageError(f"the disk is still full, not retrying the write: {room}")
            # Closed on this thread: reads run synchronously on it, so none is in flight.
            store.close()
            self._closed_since = time.monotonic()
        try:
            allocator = await self._committer.run(self._open_and_load)
        except CorruptDatabase as e:
            raise WriterFailed(f"database is corrupt after a failed write: {e}") from e
        except (StoreUnavailable, StorageError) as e:
            assert self._closed_since is not None
            if time.monotonic() - self._closed_since > REOPEN_GIVE_UP_S:
                raise WriterFailed(f"cannot reopen the database: {e}") from e
            log.warning("reopening the database failed: %s", e)
            raise StorageError(f"the database is unavailable: {e}") from e
        self._closed_since = None
        log.info("database reopened and rebuilt after a failed write")
        return allocator

    def _open_and_load(self) -> Allocator:
        """In the committer's thread."""
        self._store.open()
        try:
            allocator = self._store.load()
            if self._extension is not None:
                self._extension.rebuilt(allocator, self._store)
            return allocator
        except BaseException:
            self._store.close()
            raise
