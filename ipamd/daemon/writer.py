"""The single writer: every mutation is decided here, in order, and made durable
in groups (LevelDB's `BuildBatchGroup`, in a trio task).

Rules it keeps:
- It is the only code that writes. Mutations arrive over a queue; the writer
  task takes what is queued (up to `max_batch`), decides each in order against
  its working state (the allocator's pools plus a `PendingLeases` overlay of
  the store) and encodes the changes into the pending group's batch. A syncer
  task writes that batch, synced, in the committer's thread (the one seam
  into threads, see committer.py), and only then publishes the group's
  `committed` snapshot and answers its waiters. While one group is being
  written the next one grows: everything decided meanwhile shares the next
  sync (LevelDB's group commit, and the event loop never sits idle waiting
  for the disk). The exception is a lone group (no other mutation anywhere
  in the writer) while syncs are quick: nothing could grow meanwhile, so it
  is written on the loop's own thread, without the hand-offs (`_lone`).
- Readers see `committed` and the store, never the working state: nothing they
  see was not synced.
- A failed write fails the whole group with `storage_error`. The working state
  is then dirty and LevelDB's error is sticky, so before the next group the
  writer closes the database, reopens it and rebuilds from disk. Reopening
  needs room to flush LevelDB's log, so while the disk is still full the old
  handle keeps serving reads and each group fails fast with `storage_error`; a
  full disk recovers once space is freed, without a restart. A reopen that
  fails leaves the database closed (reads get `unavailable`) and is retried
  with the next group; after REOPEN_GIVE_UP_S of that, or on corruption, the
  writer raises `WriterFailed` and the daemon exits for systemd to restart it.
- On cancellation (shutdown) the groups in flight (being written, and
  decided) still complete and are answered; everything still queued gets
  `unavailable`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ipamd.core.allocator import Allocator, NetworkPool, SubnetStats
from ipamd.core.network import IPAddress, Network, address_text
from ipamd.core.requests import (
    AllocRequest,
    ConfirmRequest,
    CreateNetworkRequest,
    DeleteNetworkRequest,
    GcRequest,
    Mutation,
    ReclaimRequest,
    ReleaseRequest,
)
from ipamd.core.view import (
    Change,
    DeleteEntry,
    DeleteLease,
    PendingLeases,
    PutEntry,
    PutLease,
    SetCursor,
)
from ipamd.errors import IpamError, StorageError, Unavailable
from ipamd.metrics.instruments import GROUP_SIZE_BUCKETS, LATENCY_BUCKETS_S, Histogram
from ipamd.storage.committer import Committer
from ipamd.storage.store import CorruptDatabase, Store, StoreUnavailable

log = logging.getLogger("ipamd.writer")

# Big enough to amortise one fsync over a burst of container starts, small
# enough that one batch's decisions take a few milliseconds at most.
DEFAULT_MAX_BATCH = 256
# Mutations waiting beyond this are refused with `unavailable` (overload).
DEFAULT_MAX_QUEUE = 8192
# A lone group is written on the loop's thread only while syncs take less than
# this (Writer._lone): readers are kept waiting for at most about as long.
INLINE_SYNC_MAX_S = 0.002
# How long the database may stay closed after failed reopens before the daemon
# gives up and exits for systemd to restart it.
REOPEN_GIVE_UP_S = 300.0


class WriterFailed(Exception):
    """The database could not be reopened after a failed write (exit status 75)."""


@dataclass(frozen=True, slots=True)
class NetworkSnapshot:
    network: Network
    subnets: tuple[SubnetStats, ...]
    suspect: int = 0  # leases from an earlier boot, not confirmed since

    @property
    def leases(self) -> int:
        # Every lease holds one address in every subnet: the first one counts them.
        return self.subnets[0].used if self.subnets else 0


def snapshot(allocator: Allocator) -> dict[str, NetworkSnapshot]:
    return {name: _network_snapshot(pool) for name, pool in allocator.pools.items()}


def refreshed(
    before: dict[str, NetworkSnapshot], allocator: Allocator, changes: list[Change]
) -> dict[str, NetworkSnapshot]:
    """`snapshot(allocator)`, given `before`, its value before `changes` were
    decided: only the networks they touch are taken again. (A host may have
    dozens of networks: a full snapshot of 50 cost about 100 µs per group.)"""
    after = dict(before)
    for name in {_network_of(change) for change in changes}:
        pool = allocator.pools.get(name)
        if pool is None:
            after.pop(name, None)  # deleted
        else:
            after[name] = _network_snapshot(pool)
    return after


def _network_snapshot(pool: NetworkPool) -> NetworkSnapshot:
    return NetworkSnapshot(pool.network, tuple(s.stats() for s in pool.subnets), pool.suspect)


def _network_of(change: Change) -> str:
    if isinstance(change, PutLease | DeleteLease):
        return change.lease.key.network
    if isinstance(change, SetCursor | PutEntry | DeleteEntry):
        return change.network
    return change.network.name  # PutNetwork, DeleteNetwork


class ExtensionMutation:
    """A mutation the writer's extension decides (a cluster block claimed or
    given up, ipamd/cluster/local.py): in order, in the same groups and syncs."""


class WriterExtension(Protocol):
    """What another module adds to the writer: its own mutations, and a say in
    the pools built from disk or created. The one seam between the writer and
    cluster mode (ipamd/cluster/local.py)."""

    def rebuilt(self, allocator: Allocator, store: Store) -> None:
        """The allocator was just loaded from `store` (start, or after a failed write)."""

    def created(self, pool: NetworkPool) -> None:
        """`pool` was just created by a network.create decision."""

    def decide(
        self, mutation: ExtensionMutation, allocator: Allocator, view: PendingLeases
    ) -> tuple[Any, list[Change]]: ...


# Called with (result, error) once a mutation is decided and its batch synced.
OnDone = Callable[[Any, IpamError | None], None]


class _Waiter:
    """One queued mutation and the callback that answers it."""

    __slots__ = ("mutation", "on_done", "writer")

    def __init__(
        self, mutation: Mutation | ExtensionMutation, on_done: OnDone, writer: Writer
    ) -> None:
        self.mutation = mutation
        self.on_done = on_done
        self.writer = writer

    def answer(self, result: Any = None, error: IpamError | None = None) -> None:
        self.writer._unanswered -= 1
        try:
            self.on_done(result, error)
        except Exception:  # a bug in one answer must not take the writer down
            log.exception("answering %s failed", type(self.mutation).__name__)


class _Group:
    """Mutations decided and encoded, waiting for their batch to be written and
    synced. It grows while the group before it is being written: everything
    decided meanwhile goes into one batch and one sync."""

    __slots__ = ("batch", "committed", "outcomes", "view", "waiters")

    def __init__(self, view: PendingLeases) -> None:
        self.view = view
        self.waiters: list[_Waiter] = []
        self.outcomes: list[tuple[Any, IpamError | None]] = []
        self.batch: Any = None  # None: nothing to write
        # What readers see once it is synced: the snapshot after its decisions.
        self.committed: dict[str, NetworkSnapshot] = {}


class Writer:
    def __init__(
        self,
        store: Store,
        allocator: Allocator,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        clock: Callable[[], float] = time.time,
        extension: WriterExtension | None = None,
        inline_lone_writes: bool = True,
    ) -> None:
        self.store = store
        self.extension = extension
        self.allocator = allocator
        self.max_batch = max_batch
        self.clock = clock
        self.committed: dict[str, NetworkSnapshot] = snapshot(allocator)
        self.max_queue = max_queue
        # False: every batch goes to the committer's thread (tests that hold a write).
        self.inline_lone_writes = inline_lone_writes
        self._last_sync_s = 0.0
        # A plain deque, not a trio channel: the writer takes whole groups at once
        # and only needs waking when the queue stops being empty.
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._queued = trio.Event()
        # Mutations queued, being decided or written: none means idle (`_unchanged`).
        self._unanswered = 0
        self._accepting = True
        self._dirty = False  # a write failed: rebuild before the next decision
        self._failed_write: StorageError | None = None  # until the rebuild
        # At most two groups are in flight: one being written, one growing.
        self._syncing: _Group | None = None
        self._pending: _Group | None = None
        self._deciding = True
        self._wake_syncer = trio.Event()  # set when `_pending` gains mutations
        self._synced = trio.Event()  # set each time the syncer finishes a group
        self._committer: Committer | None = None  # while `run` runs
        self._closed_since: float | None = None
        self.batches = 0
        self.mutations = 0
        self.failed_writes = 0
        self.group_sizes = Histogram(GROUP_SIZE_BUCKETS)  # mutations per published group
        self.sync_seconds = Histogram(LATENCY_BUCKETS_S)  # one batch written and synced

    @property
    def mean_batch_size(self) -> float:
        return self.mutations / self.batches if self.batches else 0.0

    @property
    def queued(self) -> int:
        """Mutations waiting to be decided."""
        return len(self._queue)

    @property
    def healthy(self) -> bool:
        """Accepting mutations, with the database open and no failed write since
        the last rebuild: what the next mutation would find."""
        return self._accepting and not self._dirty and self.store.is_open

    # -- the clients' side -------------------------------------------------------

    async def submit(self, mutation: Mutation | ExtensionMutation) -> Any:
        """Decide and persist one mutation; its wire result once synced."""
        done = trio.Event()
        outcome: list[Any] = []

        def on_done(result: Any, error: IpamError | None) -> None:
            outcome[:] = [result, error]
            done.set()

        self.submit_nowait(mutation, on_done)
        # A caller cancelled here loses only its reply: the decision still
        # commits (or not) with its group, and a retry is idempotent.
        await done.wait()
        result, error = outcome
        if error is not None:
            raise error
        return result

    def submit_nowait(self, mutation: Mutation | ExtensionMutation, on_done: OnDone) -> None:
        """Queue one mutation; `on_done(result, error)` is called from the writer
        task once it is decided and synced (or refused at shutdown). `on_done`
        must neither block nor raise. Raises `Unavailable` at once when the
        mutation cannot be queued."""
        if not self._accepting:
            raise Unavailable("ipamd is shutting down")
        if len(self._queue) >= self.max_queue:
            raise Unavailable("too many mutations queued; try again later")
        if isinstance(mutation, CreateNetworkRequest):
            existing = self._unchanged(mutation.network)
            if existing is not None:
                on_done(existing.to_wire(), None)
                return
        self._unanswered += 1
        self._queue.append(_Waiter(mutation, on_done, self))
        self._queued.set()

    def _unchanged(self, network: Network) -> Network | None:
        """The stored network, when creating `network` is sure to be a no-op
        that a writer round would only confirm: the writer is idle (nothing
        queued, decided or being written), so its state is what is synced, and
        holds this very definition. Every container start's CNI ADD ensures its
        network first; answered here it costs a read, not a trip through the
        writer task, its syncer and back (about 0.1 ms of a lone client's ADD).
        Under load it takes its turn in order, as every mutation does."""
        if self._unanswered or self._dirty or self._committer is None:
            return None
        pool = self.allocator.pools.get(network.name)
        if pool is None or pool.network != network:
            return None
        return pool.network

    # -- the writer task -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._committer = Committer(self.store.commit)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sync_loop)
                try:
                    while True:
                        mutations = await self._next_group()
                        # Shielded: mutations taken off the queue are decided, written
                        # and answered even if shutdown cancels us now.
                        with trio.CancelScope(shield=True):
                            await self._decide_group(mutations)
                finally:
                    self._deciding = False  # the syncer writes what is left, then ends
                    self._wake_syncer.set()
        finally:
            self._refuse_queued()
            self._committer.close()
            self._committer = None

    async def _next_group(self) -> list[_Waiter]:
        """Everything queued, up to max_batch, once there is something."""
        await trio.lowlevel.checkpoint_if_cancelled()  # shutdown: the queue is refused
        while not self._queue:
            self._queued = trio.Event()
            await self._queued.wait()
        queue = self._queue
        return [queue.popleft() for _ in range(min(len(queue), self.max_batch))]

    def _refuse_queued(self) -> None:
        self._accepting = False
        while self._queue:
            self._queue.popleft().answer(error=Unavailable("ipamd is shutting down"))

    # -- deciding (the writer task) -------------------------------------------------

    async def _decide_group(self, mutations: list[_Waiter]) -> None:
        """Decide `mutations` in order into the pending group and encode their
        changes into its batch; or answer them all at once when that fails."""
        if self._dirty:
            try:
                await self._recover()
            except StorageError as e:
                for waiter in mutations:
                    waiter.answer(error=e)
                return
            except WriterFailed:
                for waiter in mutations:
                    waiter.answer(error=Unavailable("the database could not be reopened"))
                raise
        # Bounded: past max_batch, wait for the syncer to take the pending group.
        await self._wait_until(
            lambda: self._pending is None or len(self._pending.waiters) < self.max_batch
        )
        group = self._pending
        if group is None:
            # Decisions see the group being written, whose changes are not on disk yet.
            syncing = self._syncing
            group = _Group(PendingLeases(syncing.view if syncing else self.store))
            group.committed = syncing.committed if syncing else self.committed
        now = int(self.clock())
        changes: list[Change] = []
        outcomes: list[tuple[Any, IpamError | None]] = []
        for waiter in mutations:
            try:
                result, decided = self._decide(waiter.mutation, group.view, now)
            except IpamError as e:
                outcomes.append((None, e))
            except Exception:
                # A bug or an unreadable lease: the working state can no longer be
                # trusted. Fail these mutations, write none of them, rebuild before
                # the next (once what was decided before them is written).
                log.exception("deciding %s failed", type(waiter.mutation).__name__)
                internal = Unavailable("internal error while deciding; nothing was changed")
                for answered in mutations:
                    answered.answer(error=internal)
                self._dirty = True
                return
            else:
                outcomes.append((result, None))
                changes += decided
        if changes:  # encoded here, not in the committer's thread: see Store.prepare
            group.batch = self.store.prepare(changes, group.batch)
        group.waiters += mutations
        group.outcomes += outcomes
        group.committed = refreshed(group.committed, self.allocator, changes)
        self._pending = group
        self._wake_syncer.set()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        """Until `condition()` holds, checked each time the syncer finishes a group."""
        while not condition():
            self._synced = trio.Event()
            await self._synced.wait()

    # -- writing (the syncer task) ----------------------------------------------------

    async def _sync_loop(self) -> None:
        # Shielded: it ends once the writer task has stopped deciding and every
        # group is written and answered, shutdown or not.
        with trio.CancelScope(shield=True):
            while True:
                group = self._pending
                if group is None:
                    if not self._deciding:
                        return
                    self._wake_syncer = trio.Event()
                    await self._wake_syncer.wait()
                    continue
                self._pending, self._syncing = None, group
                try:
                    await self._sync(group)
                finally:
                    self._syncing = None
                    if self._pending is not None:
                        # Written (or failed): the next group need not look through it.
                        self._pending.view.base = self.store
                    self._synced.set()

    async def _sync(self, group: _Group) -> None:
        waiters = group.waiters
        if self._failed_write is not None:
            # Decided on top of a write that failed: it never happened either.
            for waiter in waiters:
                waiter.answer(error=self._failed_write)
            return
        if group.batch is not None:
            try:
                assert self._committer is not None  # the syncer runs inside `run`
                started = time.monotonic()
                if self._lone(group):
                    self.store.commit(group.batch)  # on the loop's thread: see `_lone`
                else:
                    await self._committer.commit(group.batch)
                self._last_sync_s = time.monotonic() - started
                self.sync_seconds.observe(self._last_sync_s)
            except StorageError as e:
                self.failed_writes += 1
                log.error("write of %d mutation(s) failed: %s", len(waiters), e)
                self._failed_write = e
                self._dirty = True
                for waiter in waiters:
                    waiter.answer(error=e)
                return
        # No checkpoint from here on: publish and answer atomically for readers.
        self.batches += 1
        self.mutations += len(waiters)
        self.group_sizes.observe(len(waiters))
        self.committed = group.committed
        for waiter, (result, error) in zip(waiters, group.outcomes, strict=True):
            waiter.answer(result, error)

    def _lone(self, group: _Group) -> bool:
        """Whether to write `group` on the event loop's own thread rather than
        hand it to the committer's: it holds every mutation the writer has (none
        queued, none being decided), and the last sync was quick.

        A lone client's alloc or release then waits for no thread hand-off (a
        futex wake of the committer, an eventfd wake of the loop back): 30-80 µs
        of its 0.2-0.3 ms on tmpfs, more on a busy machine, where each wake-up
        waits for a CPU. The loop is blocked meanwhile, but nothing else is
        waiting on the writer, and readers wait at most one quick sync; once a
        sync takes longer (a slow or busy disk), groups go to the committer again.
        """
        return (
            self.inline_lone_writes
            and self._unanswered == len(group.waiters)
            and self._last_sync_s < INLINE_SYNC_MAX_S
        )

    async def _recover(self) -> None:
        """Drop the dirty working state and rebuild it from what is on disk.

        Raises StorageError when it cannot yet (the group fails, the next one
        tries again), WriterFailed when it never will.
        """
        # Nothing may be written while we reopen: let the syncer finish (or fail)
        # every group decided before.
        await self._wait_until(lambda: self._pending is None and self._syncing is None)
        self._failed_write = None
        if self.store.is_open:
            room = self.store.room_to_reopen()
            if room is not None:
                raise StorageError(f"the disk is still full, not retrying the write: {room}")
            # Closed on this thread: reads run synchronously on it, so none is in flight.
            self.store.close()
            self._closed_since = time.monotonic()
        try:
            self.allocator = await trio.to_thread.run_sync(self._open_and_load)
        except CorruptDatabase as e:
            raise WriterFailed(f"database is corrupt after a failed write: {e}") from e
        except (StoreUnavailable, StorageError) as e:
            assert self._closed_since is not None
            if time.monotonic() - self._closed_since > REOPEN_GIVE_UP_S:
                raise WriterFailed(f"cannot reopen the database: {e}") from e
            log.warning("reopening the database failed: %s", e)
            raise StorageError(f"the database is unavailable: {e}") from e
        self._dirty = False
        self._closed_since = None
        self.committed = snapshot(self.allocator)
        log.info("database reopened and rebuilt after a failed write")

    def _open_and_load(self) -> Allocator:
        self.store.open()
        try:
            allocator = self.store.load()
            if self.extension is not None:
                self.extension.rebuilt(allocator, self.store)
            return allocator
        except BaseException:
            self.store.close()
            raise

    # -- decisions -----------------------------------------------------------------

    def _decide(
        self, mutation: Mutation | ExtensionMutation, view: PendingLeases, now: int
    ) -> tuple[Any, list[Change]]:
        allocator = self.allocator
        if isinstance(mutation, AllocRequest):
            leases, changes = allocator.alloc(mutation, view, now)
            pools = allocator.pools  # every network in `leases` has one: alloc just used it
            networks = {
                name: {"ifname": lease.key.ifname, "ips": lease.ips_to_wire(pools[name].network)}
                for name, lease in leases.items()
            }
            return {"container_id": mutation.container_id, "networks": networks}, changes
        if isinstance(mutation, ReleaseRequest):
            released, changes = allocator.release(mutation, view)
            return {"released": self._released(released)}, changes
        if isinstance(mutation, GcRequest):
            stale, changes = allocator.gc(mutation, view)
            network = allocator.pool(mutation.network).network
            boot = allocator.boot
            confirmed = sum(isinstance(change, PutLease) for change in changes)
            wire = [lease.to_wire(network, boot) for lease in stale]
            return {"released": wire, "confirmed": confirmed}, changes
        if isinstance(mutation, ConfirmRequest):
            made_current, changes = allocator.confirm(mutation, view)
            return {"confirmed": len(made_current)}, changes
        if isinstance(mutation, ReclaimRequest):
            reclaimed, changes = allocator.reclaim(mutation, view)
            pools, boot = allocator.pools, allocator.boot
            wire = [lease.to_wire(pools[lease.key.network].network, boot) for lease in reclaimed]
            return {"released": wire}, changes
        if isinstance(mutation, CreateNetworkRequest):
            network, changes = allocator.create_network(mutation.network)
            if changes and self.extension is not None:
                self.extension.created(allocator.pools[network.name])
            return network.to_wire(), changes
        if isinstance(mutation, DeleteNetworkRequest):
            count, changes = allocator.delete_network(mutation.name, mutation.force, view)
            return {"name": mutation.name, "released": count}, changes
        if isinstance(mutation, ExtensionMutation) and self.extension is not None:
            return self.extension.decide(mutation, allocator, view)
        raise TypeError(f"not a mutation: {mutation!r}")

    @staticmethod
    def _released(released: dict[str, list[IPAddress]]) -> dict[str, list[str]]:
        return {name: [address_text(a) for a in addresses] for name, addresses in released.items()}
