"""Opening the LevelDB database, and refusing what LevelDB would open wrongly.

Rules it keeps:
- A database path that holds something ipamd did not make is left alone
  (`NotADatabase`), as paths.py does for every path it is given.
- Damage LevelDB would hide is refused before LevelDB sees it: a missing
  CURRENT beside data (LevelDB would start an empty database over it), a log
  whose last block is corrupted in a way LevelDB takes for a torn write
  (leveldb_log.py). `CorruptDatabase` says which; `ipamd check` says more.
- The names of the database's files are durable before any write is
  acknowledged (`_sync_directories`).
- plyvel's open errors are translated here: `CorruptDatabase`, `StateDirLocked`
  or `StoreUnavailable`.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import plyvel

from ipamd import paths
from ipamd.storage import leveldb_log
from ipamd.storage.failures import (
    CorruptDatabase,
    NotADatabase,
    StateDirLocked,
    StoreUnavailable,
    reason,
)
from ipamd.storage.lock_holder import lock_holder

# LevelDB's default 4 MiB write buffer makes each log file (replayed at open)
# small; the block cache serves the point reads of `get` and `lease.owner`.
BLOCK_CACHE_BYTES = 16 << 20
# Every alloc of a new container first looks up a lease that is not there, and
# without filters a miss reads a block of every table whose key range covers
# it. With 10 bits per key (about 1% false positives) most tables are ruled
# out in memory (benchmarks/bench_writer.py measures both). Tables written before
# carry no filter and are read as before; the format is otherwise unchanged.
BLOOM_FILTER_BITS = 10
# Room for the new MANIFEST, log and LOG files a reopen creates.
REOPEN_MARGIN_BYTES = 64 << 10

# The names LevelDB gives its files. A database directory without CURRENT that
# holds anything else was not made by ipamd: opening it would rename its LOG
# and write a database among someone's files.
_LEVELDB_NAME = re.compile(r"CURRENT|LOCK|LOG|LOG\.old|MANIFEST-\d+|\d+\.(log|ldb|sst|dbtmp)")


def open_database(state_dir: Path, path: Path, *, create: bool) -> plyvel.DB:
    """The database at `path` in `state_dir`, opened (created if allowed). Blocks."""
    if create:
        try:
            paths.ensure_directory(state_dir, paths.STATE_DIR_MODE, "state directory")
        except paths.PathRefused as e:
            raise StoreUnavailable(str(e)) from None
    elif not path.exists():
        raise NotADatabase(f"no database at {path}")
    _check_database_dir(path)
    _check_current(path)
    _check_logs(path)
    try:
        return plyvel.DB(
            str(path),
            create_if_missing=create,
            lru_cache_size=BLOCK_CACHE_BYTES,
            bloom_filter_bits=BLOOM_FILTER_BITS,
            # Refuse, rather than skip, a log record or table block whose
            # checksum fails: skipping would drop acknowledged leases silently.
            paranoid_checks=True,
        )
    except plyvel.CorruptionError as e:
        raise CorruptDatabase(f"database {path} is corrupt: {reason(e)}") from e
    except plyvel.IOError as e:
        if _is_lock_conflict(e):
            raise StateDirLocked(state_dir, lock_holder(path / "LOCK")) from e
        raise StoreUnavailable(f"cannot open database {path}: {reason(e)}") from e
    except plyvel.Error as e:
        # LevelDB reports a missing CURRENT or MANIFEST as "Invalid argument".
        raise CorruptDatabase(f"database {path} cannot be opened: {reason(e)}") from e


def sync_directories(state_dir: Path, path: Path) -> None:
    """Make the names of the database's files durable before any write is acknowledged.

    LevelDB fsyncs its directory only when it syncs a MANIFEST, which it
    does before it renames the new CURRENT into place at every open, and
    never fsyncs the directory holding the database: after a power loss the
    new CURRENT, or the whole database directory, could be gone, and a
    fresh empty database would be created over the lost one.
    """
    for directory in (path, state_dir):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno != errno.EINVAL:  # as LevelDB: some filesystems cannot sync directories
                raise
        finally:
            os.close(fd)


def room_to_reopen(path: Path) -> str | None:
    """None if the disk has room to reopen the database at `path`; else why not.

    Reopening replays LevelDB's log into a new table file, which needs
    about the log's size in free space; trying without it would close the
    handle that still serves reads, and fail.
    """
    try:
        needed = sum(p.stat().st_size for p in path.glob("*.log")) + REOPEN_MARGIN_BYTES
        stats = os.statvfs(path)
    except OSError as e:
        return f"cannot check free space in {path}: {reason(e)}"
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        return f"{free} bytes free in {path}, {needed} needed to reopen the database"
    return None


def _is_lock_conflict(error: Exception) -> bool:
    """LevelDB's "IO error: lock .../LOCK: Resource temporarily unavailable"."""
    text = reason(error)
    return "LOCK" in text and ("temporarily unavailable" in text or "already held" in text)


def _check_database_dir(path: Path) -> None:
    """Refuse a database path that holds something ipamd did not make (paths.py's rule)."""
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise NotADatabase(
            f"database path {path} is {paths.describe(path)}, not a LevelDB"
            " directory; ipamd leaves it alone: move it away or choose another --state-dir"
        )
    if (path / "CURRENT").exists():
        return
    foreign = sorted(p.name for p in path.iterdir() if not _LEVELDB_NAME.fullmatch(p.name))
    if foreign:
        raise NotADatabase(
            f"{path} holds no LevelDB database but other files"
            f" ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); ipamd did"
            " not create it and leaves it alone: move it away or choose another --state-dir"
        )


def _check_current(path: Path) -> None:
    """Refuse a database whose CURRENT file is gone but whose data is not.

    Without CURRENT, LevelDB with create_if_missing starts a new, empty
    database and deletes the old table files as obsolete: every lease lost.
    A creation interrupted before CURRENT was written leaves no table or log.
    """
    if not path.is_dir() or (path / "CURRENT").exists():
        return
    data = [p.name for p in path.iterdir() if p.suffix in (".ldb", ".sst", ".log")]
    if data:
        raise CorruptDatabase(
            f"database {path} has no CURRENT file but holds {', '.join(sorted(data))};"
            " restore it from a backup (LevelDB would start an empty database over it)"
        )


def _check_logs(path: Path) -> None:
    """Refuse a log whose corruption LevelDB would take for a torn write (leveldb_log.py)."""
    if not path.is_dir():
        return
    for log_file in sorted(path.glob("*.log")):
        try:
            with open(log_file, "rb") as f:
                start = leveldb_log.last_block_start(os.fstat(f.fileno()).st_size)
                f.seek(start)
                tail = f.read()
        except OSError as e:
            raise StoreUnavailable(f"cannot read {log_file}: {reason(e)}") from e
        problem = leveldb_log.silently_dropped_tail(tail, start)
        if problem is not None:
            raise CorruptDatabase(f"database {path} is corrupt: {log_file.name}: {problem}")
