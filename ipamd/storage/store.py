"""The LevelDB store: the only module that imports plyvel.

Rules it keeps:
- It persists `Change`s (see core/view.py) in ONE `WriteBatch(sync=True)`: a
  lease and its reverse entries always travel together.
- It never repairs anything silently. A database LevelDB refuses to open, a
  newer schema, or leases that disagree with their reverse entries raise
  `CorruptDatabase`; `ipamd check` (check.py) says what exactly is wrong.
- plyvel's exceptions are translated here: write failures become
  `StorageError`, open failures `CorruptDatabase` or `StoreUnavailable`.
- It migrates an older schema explicitly and once (`_migrate_boots`: schema
  1 -> 2 stamps every lease with the current boot id), and only when the
  daemon opens it with a boot id; `ipamd check` refuses an unmigrated one.
- It is a `LeaseView` for the allocator and the readers. Reads are point gets
  and bounded scans, served from LevelDB's memtable and block cache in
  microseconds, so callers make them inline; `open`, `load` and `write` block
  for long and are called from a worker thread (the writer's committer for
  `commit`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import plyvel

from ipamd import paths
from ipamd.core import keys
from ipamd.core.allocator import Allocator, NetworkPool, SubnetPool
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import IPAddress, IPNetwork, Network
from ipamd.core.view import (
    Change,
    DeleteEntry,
    DeleteLease,
    DeleteNetwork,
    PutEntry,
    PutLease,
    PutNetwork,
    SetCursor,
)
from ipamd.errors import InvalidRequest, StorageError, Unavailable
from ipamd.storage import leveldb_log
from ipamd.storage.lock_holder import lock_holder

log = logging.getLogger("ipamd.store")

DB_DIRNAME = "leases.ldb"
# Leases rewritten per synced batch while migrating: bounded memory, and an
# interrupted migration resumes where it stopped (it skips stamped leases).
MIGRATION_BATCH = 10_000
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
# What a value or key this ipamd cannot decode raises (msgpack, ipaddress, the
# models' `from_wire`): at load, that is a corrupt database, not a crash.
_DECODE_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    InvalidRequest,
    msgpack.UnpackException,
)


def _is_lock_conflict(error: Exception) -> bool:
    """LevelDB's "IO error: lock .../LOCK: Resource temporarily unavailable"."""
    text = _reason(error)
    return "LOCK" in text and ("temporarily unavailable" in text or "already held" in text)


def _reason(error: Exception) -> str:
    """An error's message for people: plyvel's carry LevelDB's status as bytes."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if error.args and isinstance(error.args[0], bytes):
        return error.args[0].decode(errors="replace")
    return str(error)


class CorruptDatabase(Exception):
    """The database cannot be trusted; restarting will not help (exit status 65)."""


class StoreUnavailable(Exception):
    """The database could not be opened for a reason other than corruption."""


class SchemaTooOld(StoreUnavailable):
    """An older schema, opened without a boot id to migrate it with (`ipamd check`)."""


class NotADatabase(StoreUnavailable):
    """What is at the database path is no ipamd database (and is left alone)."""


class StateDirLocked(StoreUnavailable):
    """Another process (another ipamd, or `ipamd check`) has the database open."""

    def __init__(self, state_dir: Path, holder: int | None) -> None:
        who = "another ipamd" if holder is None else f"another ipamd (pid {holder})"
        super().__init__(f"{who} holds the lock on state directory {state_dir}")
        self.state_dir = state_dir
        self.holder = holder


# The names LevelDB gives its files. A database directory without CURRENT that
# holds anything else was not made by ipamd: opening it would rename its LOG
# and write a database among someone's files.
_LEVELDB_NAME = re.compile(r"CURRENT|LOCK|LOG|LOG\.old|MANIFEST-\d+|\d+\.(log|ldb|sst|dbtmp)")


class Store:
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
        if create:
            try:
                paths.ensure_directory(self.state_dir, paths.STATE_DIR_MODE, "state directory")
            except paths.PathRefused as e:
                raise StoreUnavailable(str(e)) from None
        elif not self.path.exists():
            raise NotADatabase(f"no database at {self.path}")
        self._check_database_dir()
        self._check_current()
        self._check_logs()
        try:
            db = plyvel.DB(
                str(self.path),
                create_if_missing=create,
                lru_cache_size=BLOCK_CACHE_BYTES,
                bloom_filter_bits=BLOOM_FILTER_BITS,
                # Refuse, rather than skip, a log record or table block whose
                # checksum fails: skipping would drop acknowledged leases silently.
                paranoid_checks=True,
            )
        except plyvel.CorruptionError as e:
            raise CorruptDatabase(f"database {self.path} is corrupt: {_reason(e)}") from e
        except plyvel.IOError as e:
            if _is_lock_conflict(e):
                lock = self.path / "LOCK"
                raise StateDirLocked(self.state_dir, lock_holder(lock)) from e
            raise StoreUnavailable(f"cannot open database {self.path}: {_reason(e)}") from e
        except plyvel.Error as e:
            # LevelDB reports a missing CURRENT or MANIFEST as "Invalid argument".
            raise CorruptDatabase(f"database {self.path} cannot be opened: {_reason(e)}") from e
        try:
            self._check_schema(db)
            self._sync_directories()
        except plyvel.Error as e:
            # Opened but unreadable (e.g. "IO error: ...ldb: Invalid argument" for a
            # block handle pointing past the file's end): a restart will not help.
            db.close()
            raise CorruptDatabase(f"database {self.path} is corrupt: {_reason(e)}") from e
        except OSError as e:
            db.close()
            raise StoreUnavailable(
                f"cannot sync the directories of {self.path}: {_reason(e)}"
            ) from e
        except BaseException:
            db.close()
            raise
        self._db = db

    def _sync_directories(self) -> None:
        """Make the names of the database's files durable before any write is acknowledged.

        LevelDB fsyncs its directory only when it syncs a MANIFEST, which it
        does before it renames the new CURRENT into place at every open, and
        never fsyncs the directory holding the database: after a power loss the
        new CURRENT, or the whole database directory, could be gone, and a
        fresh empty database would be created over the lost one.
        """
        for directory in (self.path, self.state_dir):
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            except OSError as e:
                if e.errno != errno.EINVAL:  # as LevelDB: some filesystems cannot sync directories
                    raise
            finally:
                os.close(fd)

    def _check_database_dir(self) -> None:
        """Refuse a database path that holds something ipamd did not make (paths.py's rule)."""
        if not os.path.lexists(self.path):
            return
        if not self.path.is_dir():
            raise NotADatabase(
                f"database path {self.path} is {paths.describe(self.path)}, not a LevelDB"
                " directory; ipamd leaves it alone: move it away or choose another --state-dir"
            )
        if (self.path / "CURRENT").exists():
            return
        foreign = sorted(p.name for p in self.path.iterdir() if not _LEVELDB_NAME.fullmatch(p.name))
        if foreign:
            raise NotADatabase(
                f"{self.path} holds no LevelDB database but other files"
                f" ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); ipamd did"
                " not create it and leaves it alone: move it away or choose another --state-dir"
            )

    def _check_current(self) -> None:
        """Refuse a database whose CURRENT file is gone but whose data is not.

        Without CURRENT, LevelDB with create_if_missing starts a new, empty
        database and deletes the old table files as obsolete: every lease lost.
        A creation interrupted before CURRENT was written leaves no table or log.
        """
        if not self.path.is_dir() or (self.path / "CURRENT").exists():
            return
        data = [p.name for p in self.path.iterdir() if p.suffix in (".ldb", ".sst", ".log")]
        if data:
            raise CorruptDatabase(
                f"database {self.path} has no CURRENT file but holds {', '.join(sorted(data))};"
                " restore it from a backup (LevelDB would start an empty database over it)"
            )

    def _check_logs(self) -> None:
        """Refuse a log whose corruption LevelDB would take for a torn write (leveldb_log.py)."""
        if not self.path.is_dir():
            return
        for log_file in sorted(self.path.glob("*.log")):
            try:
                with open(log_file, "rb") as f:
                    start = leveldb_log.last_block_start(os.fstat(f.fileno()).st_size)
                    f.seek(start)
                    tail = f.read()
            except OSError as e:
                raise StoreUnavailable(f"cannot read {log_file}: {_reason(e)}") from e
            problem = leveldb_log.silently_dropped_tail(tail, start)
            if problem is not None:
                raise CorruptDatabase(
                    f"database {self.path} is corrupt: {log_file.name}: {problem}"
                )

    def _check_schema(self, db: plyvel.DB) -> None:
        raw = db.get(keys.SCHEMA_KEY, verify_checksums=True)
        if raw is None:
            if next(db.iterator(include_value=False), None) is not None:
                raise CorruptDatabase(f"database {self.path} has data but no schema version")
            try:
                db.put(keys.SCHEMA_KEY, keys.schema_value(), sync=True)
            except plyvel.Error as e:
                raise StoreUnavailable(
                    f"cannot initialise database {self.path}: {_reason(e)}"
                ) from e
            return
        version = keys.decode_schema(raw)
        if not isinstance(version, int) or version > keys.SCHEMA_VERSION:
            raise CorruptDatabase(
                f"database {self.path} has schema version {version!r}, newer than this ipamd"
                f" understands ({keys.SCHEMA_VERSION}); upgrade ipamd or restore a backup"
            )
        if version != keys.SCHEMA_WITHOUT_BOOT and version < keys.SCHEMA_VERSION:
            raise CorruptDatabase(
                f"database {self.path} has schema version {version}; no migration to"
                f" {keys.SCHEMA_VERSION} is known"
            )
        if version == keys.SCHEMA_WITHOUT_BOOT:
            if self.boot is None:
                raise SchemaTooOld(
                    f"database {self.path} has schema version {version}, from before boot ids;"
                    f" start ipamd once to migrate it to {keys.SCHEMA_VERSION}"
                )
            self._migrate_boots(db, self.boot)

    def _migrate_boots(self, db: plyvel.DB, boot: str) -> None:
        """Schema 1 -> 2: give every lease a boot id, the current one.

        The current one, not "unknown": a schema-1 lease may belong to a
        container running now (ipamd upgraded within a boot), and a suspect one
        could be reclaimed automatically. Leases are rewritten in synced
        batches; the schema version moves last, so an interrupted migration is
        resumed at the next open (stamped leases are skipped).
        """
        stamped = 0
        batch = db.write_batch(sync=True)
        pending = 0
        for raw_key, value in db.iterator(prefix=keys.LEASE, verify_checksums=True):
            if keys.has_boot(value):
                continue
            lease = keys.decode_lease(keys.decode_lease_key(raw_key), value)
            batch.put(raw_key, keys.lease_value(lease._replace(boot=boot)))
            stamped += 1
            pending += 1
            if pending >= MIGRATION_BATCH:
                batch.write()
                batch, pending = db.write_batch(sync=True), 0
        batch.put(keys.SCHEMA_KEY, keys.schema_value())
        batch.write()
        self.migrated = stamped
        log.info(
            "migrated database schema %d -> %d: %d lease(s) stamped with the current boot id %s",
            keys.SCHEMA_WITHOUT_BOOT,
            keys.SCHEMA_VERSION,
            stamped,
            boot,
        )

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
        """None if the disk has room to reopen (flush the log); else why not.

        Reopening replays LevelDB's log into a new table file, which needs
        about the log's size in free space; trying without it would close the
        handle that still serves reads, and fail.
        """
        try:
            needed = sum(p.stat().st_size for p in self.path.glob("*.log")) + REOPEN_MARGIN_BYTES
            stats = os.statvfs(self.path)
        except OSError as e:
            return f"cannot check free space in {self.path}: {_reason(e)}"
        free = stats.f_bavail * stats.f_frsize
        if free < needed:
            return f"{free} bytes free in {self.path}, {needed} needed to reopen the database"
        return None

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
        _fill_batch(batch, changes)
        return batch

    def commit(self, batch: plyvel.WriteBatch) -> None:
        """Write and sync a prepared batch (LevelDB releases the GIL meanwhile).
        Blocks; raises StorageError."""
        try:
            batch.write()
        except plyvel.Error as e:
            raise StorageError(f"write to {self.path} failed: {_reason(e)}") from e
        except OSError as e:
            raise StorageError(
                f"write to {self.path} failed: {os.strerror(e.errno or errno.EIO)}"
            ) from e

    # -- the LeaseView ---------------------------------------------------------

    def lease(self, key: LeaseKey) -> Lease | None:
        raw = self.db.get(keys.lease_key(key))
        return None if raw is None else keys.decode_lease(key, raw)

    def owner(self, network: str, address: IPAddress) -> LeaseKey | None:
        raw = self.db.get(keys.reverse_key(network, address))
        return None if raw is None else keys.decode_reverse_value(network, raw)

    def leases_of(self, container_id: str, network: str | None = None) -> list[Lease]:
        if network is None:
            prefix = keys.container_prefix(container_id)
            return [
                keys.decode_lease(keys.decode_lease_key(raw_key), value)
                for raw_key, value in self.db.iterator(prefix=prefix)
            ]
        # One network: a narrower scan, and only the ifname left to decode.
        prefix = keys.attachments_prefix(container_id, network)
        return [
            keys.decode_lease(
                LeaseKey(network, container_id, keys.attachment_ifname(prefix, raw_key)), value
            )
            for raw_key, value in self.db.iterator(prefix=prefix)
        ]

    def leases_in(self, network: str) -> Iterator[Lease]:
        """Every lease of a network, in address order of its first subnet."""
        return iter(self.leases_in_subnet(network, None, after=None, limit=None))

    def leases_in_subnet(
        self, network: str, cidr: IPNetwork | None, after: IPAddress | None, limit: int | None
    ) -> list[Lease]:
        """Leases in address order within one subnet, strictly after `after`.

        Every lease holds exactly one address in every subnet of its network, so
        one subnet's reverse entries name every lease once. `cidr` None means the
        network's first subnet.
        """
        if cidr is None:
            raw = self.db.get(keys.network_key(network))
            if raw is None or not keys.decode_network(raw).subnets:
                return []
            cidr = keys.decode_network(raw).subnets[0].cidr
        start, stop = keys.reverse_span(network, cidr)
        if after is not None:
            start = max(start, keys.successor(keys.reverse_key(network, after)))
        out: list[Lease] = []
        for _, value in self.db.iterator(start=start, stop=stop):
            lease = self.lease(keys.decode_reverse_value(network, value))
            if lease is not None:
                out.append(lease)
            if limit is not None and len(out) >= limit:
                break
        return out

    def reverse_entries(self, network: str) -> Iterator[tuple[IPAddress, LeaseKey]]:
        """Every (address, owner) of a network, whatever subnet it claims."""
        for raw_key, value in self._scan(prefix=keys.reverse_network_prefix(network)):
            address = keys.address_of_reverse_key(network, raw_key)
            yield address, keys.decode_reverse_value(network, value)

    def reverse_networks(self) -> set[str]:
        """Names of every network that has reverse entries (for `ipamd check`)."""
        names: set[str] = set()
        for raw_key in self._scan(prefix=keys.REVERSE, include_value=False):
            names.add(keys.network_of_reverse_key(raw_key))
        return names

    def networks(self) -> Iterator[Network]:
        for _, value in self._scan(prefix=keys.NETWORK):
            yield keys.decode_network(value)

    def entries(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under `prefix`: the kinds other modules own."""
        return self._scan(prefix=prefix)

    def all_leases(self) -> Iterator[Lease]:
        for lease, _ in self.lease_entries():
            yield lease

    def lease_entries(self) -> Iterator[tuple[Lease, bytes]]:
        """Every lease with its stored value (`ipamd check` looks at its layout)."""
        for raw_key, value in self._scan(prefix=keys.LEASE):
            yield keys.decode_lease(keys.decode_lease_key(raw_key), value), value

    def suspect_keys(
        self, after: bytes | None, limit: int, scan_limit: int = 20_000
    ) -> tuple[list[LeaseKey], bytes | None]:
        """Up to `limit` keys of leases not made in the current boot, after the
        raw key `after`, looking at `scan_limit` leases at most; and where to go
        on from (None: the end). Bounded both ways, so the event loop runs
        between pages even when suspects are few among many leases."""
        assert self.boot is not None
        prefix = keys.boot_prefix(self.boot)
        start = keys.LEASE if after is None else keys.successor(after)
        found: list[LeaseKey] = []
        entries = self.db.iterator(start=start, stop=keys.LEASES_END)
        for scanned, (raw_key, value) in enumerate(entries, 1):
            if not keys.made_in(value, prefix):
                found.append(keys.decode_lease_key(raw_key))
            if len(found) >= limit or scanned >= scan_limit:
                return found, raw_key
        return found, None

    def _scan(self, **options: Any) -> Iterator[Any]:
        """A whole-range scan that verifies block checksums (a flipped bit in a
        table must not read as a different lease); corruption becomes
        CorruptDatabase. Verifying costs only on blocks read from disk."""
        db = self.db
        try:
            yield from db.iterator(verify_checksums=True, **options)
            _check_tail(db)
        except plyvel.Error as e:
            raise CorruptDatabase(f"database {self.path} is corrupt: {_reason(e)}") from e

    # -- rebuild -----------------------------------------------------------------

    def load(self) -> Allocator:
        """Rebuild every network's pools from the reverse entries. Blocks.

        Raises CorruptDatabase when the leases and reverse entries disagree in
        number (a cheap check that stays within the start-up budget; `ipamd
        check` compares them entry by entry), a block fails its checksum, or an
        entry cannot be decoded.
        """
        try:
            allocator = self._load()
            self._check_counts(allocator)
            _check_tail(self.db)
        except plyvel.Error as e:
            raise CorruptDatabase(f"database {self.path} is corrupt: {_reason(e)}") from e
        except _DECODE_ERRORS as e:
            raise CorruptDatabase(
                f"database {self.path} holds an entry ipamd cannot decode ({e!r});"
                " run `ipamd check` for details"
            ) from e
        return allocator

    def _load(self) -> Allocator:
        db = self.db
        allocator = Allocator(self.boot or "")
        for network in self.networks():
            subnet_pools: list[SubnetPool] = []
            for index, subnet in enumerate(network.subnets):
                start, stop = keys.reverse_span(network.name, subnet.cidr)
                used = keys.reverse_key_offsets(
                    network.name,
                    int(subnet.cidr.network_address),
                    db.iterator(start=start, stop=stop, include_value=False, verify_checksums=True),
                )
                raw_cursor = db.get(keys.cursor_key(network.name, index), verify_checksums=True)
                cursor = None
                if raw_cursor is not None:
                    cursor = subnet.offset(keys.unpacked_address(raw_cursor))
                subnet_pools.append(SubnetPool(subnet, used, cursor))
            allocator.pools[network.name] = NetworkPool(network, subnet_pools)
        return allocator

    def _check_counts(self, allocator: Allocator) -> None:
        """Compare lease and reverse-entry counts; count each network's suspects."""
        leases_per_network: dict[str, int] = {}
        suspects: dict[str, int] = {}
        current = keys.boot_prefix(self.boot or "")
        for raw_key, value in self.db.iterator(prefix=keys.LEASE, verify_checksums=True):
            network = keys.network_of_lease_key(raw_key)
            leases_per_network[network] = leases_per_network.get(network, 0) + 1
            if not keys.made_in(value, current):
                suspects[network] = suspects.get(network, 0) + 1
        for name, count in leases_per_network.items():
            if name not in allocator.pools:
                raise CorruptDatabase(
                    f"{count} lease(s) on network {name!r}, which is not defined;"
                    " run `ipamd check` for details"
                )
        for name, pool in allocator.pools.items():
            pool.suspect = suspects.get(name, 0)
            leases = leases_per_network.get(name, 0)
            for subnet_pool in pool.subnets:
                if subnet_pool.used != leases:
                    raise CorruptDatabase(
                        f"network {name}: {leases} lease(s) but {subnet_pool.used} reverse"
                        f" entries in subnet {subnet_pool.subnet.cidr};"
                        " run `ipamd check` for details"
                    )


def _check_tail(db: plyvel.DB) -> None:
    """Raise plyvel.Error if a table's last block is damaged.

    LevelDB's iterators skip a block that fails its checksum and remember the
    error; plyvel checks that error after each step, but not when the step
    runs off the end. So a scan whose damaged blocks come last just ends early,
    silently. Seeking to the last entry reads the last block of every level-0
    table and of each level's last table: the blocks a forward scan can end in.
    """
    db.raw_iterator(verify_checksums=True).seek_to_last()


def _fill_batch(batch: plyvel.WriteBatch, changes: list[Change]) -> None:
    """Put `changes` into `batch`: the database after the batch is as if each
    change had been written in order."""
    # A batch of allocations moves a subnet's cursor once per allocation, and
    # only the last position is ever read: only that one is written, at the end.
    cursors: dict[tuple[str, int], IPAddress] = {}
    for change in changes:
        if isinstance(change, PutLease):
            _put_lease(batch, change.lease)
        elif isinstance(change, SetCursor):
            cursors[(change.network, change.subnet)] = change.address
        elif isinstance(change, DeleteLease):
            key = change.lease.key
            batch.delete(keys.lease_key(key))
            for address in change.owned:
                batch.delete(keys.reverse_key(key.network, address))
        elif isinstance(change, PutNetwork):
            batch.put(keys.network_key(change.network.name), keys.network_value(change.network))
        elif isinstance(change, PutEntry):
            batch.put(change.key, change.value)
        elif isinstance(change, DeleteEntry):
            batch.delete(change.key)
        elif isinstance(change, DeleteNetwork):
            batch.delete(keys.network_key(change.network.name))
            for index in range(len(change.network.subnets)):
                cursors.pop((change.network.name, index), None)  # moved earlier: goes too
                batch.delete(keys.cursor_key(change.network.name, index))
    for (network, subnet), address in cursors.items():
        batch.put(keys.cursor_key(network, subnet), keys.packed_address(address))


def _put_lease(batch: plyvel.WriteBatch, lease: Lease) -> None:
    """A lease and its reverse entries, which always travel together."""
    key = lease.key
    batch.put(keys.lease_key(key), keys.lease_value(lease))
    owner = keys.reverse_value(key)
    for address in lease.addresses:
        batch.put(keys.reverse_key(key.network, address), owner)
