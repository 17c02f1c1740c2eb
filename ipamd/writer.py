"""The single writer: every mutation is decided here, in order, and made durable
in groups (LevelDB's `BuildBatchGroup`, in a trio task).

Rules it keeps:
- It is the only code that writes. Mutations arrive over a channel; the writer
  blocks for the first, takes every other one already queued (up to
  `max_batch`), decides each in order against its working state (the
  allocator's pools plus a `PendingLeases` overlay of the store), writes ONE
  synced batch in a worker thread (the one seam into threads), and only then
  publishes the new `committed` snapshot and answers every waiter.
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
- On cancellation (shutdown) the batch in flight still completes and is
  answered; everything queued after it gets `unavailable`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ipamd.core.allocator import Allocator, SubnetStats
from ipamd.core.lease import Lease
from ipamd.core.network import IPAddress, Network, address_text
from ipamd.core.requests import (
    AllocRequest,
    CreateNetworkRequest,
    DeleteNetworkRequest,
    GcRequest,
    Mutation,
    ReleaseRequest,
)
from ipamd.core.view import Change, PendingLeases
from ipamd.errors import IpamError, StorageError, Unavailable
from ipamd.store import CorruptDatabase, Store, StoreUnavailable

log = logging.getLogger("ipamd.writer")

# Big enough to amortise one fsync over a burst of container starts, small
# enough that one batch's decisions take a few milliseconds at most.
DEFAULT_MAX_BATCH = 256
# Mutations waiting beyond this are refused with `unavailable` (overload).
DEFAULT_MAX_QUEUE = 8192
# How long the database may stay closed after failed reopens before the daemon
# gives up and exits for systemd to restart it.
REOPEN_GIVE_UP_S = 300.0


class WriterFailed(Exception):
    """The database could not be reopened after a failed write (exit status 75)."""


@dataclass(frozen=True, slots=True)
class NetworkSnapshot:
    network: Network
    subnets: tuple[SubnetStats, ...]

    @property
    def leases(self) -> int:
        # Every lease holds one address in every subnet: the first one counts them.
        return self.subnets[0].used if self.subnets else 0


def snapshot(allocator: Allocator) -> dict[str, NetworkSnapshot]:
    return {
        name: NetworkSnapshot(pool.network, tuple(s.stats() for s in pool.subnets))
        for name, pool in allocator.pools.items()
    }


# Called with (result, error) once a mutation is decided and its batch synced.
OnDone = Callable[[Any, IpamError | None], None]


class _Waiter:
    """One queued mutation and the callback that answers it."""

    __slots__ = ("mutation", "on_done")

    def __init__(self, mutation: Mutation, on_done: OnDone) -> None:
        self.mutation = mutation
        self.on_done = on_done

    def answer(self, result: Any = None, error: IpamError | None = None) -> None:
        try:
            self.on_done(result, error)
        except Exception:  # a bug in one answer must not take the writer down
            log.exception("answering %s failed", type(self.mutation).__name__)


class _Decided:
    """A group decided and encoded, waiting for its batch to be written and synced."""

    __slots__ = ("batch", "committed", "group", "outcomes", "view")

    def __init__(
        self,
        group: list[_Waiter],
        outcomes: list[tuple[Any, IpamError | None]],
        batch: Any,
        view: PendingLeases,
        committed: dict[str, NetworkSnapshot],
    ) -> None:
        self.group = group
        self.outcomes = outcomes
        self.batch = batch  # None: nothing to write
        self.view = view
        self.committed = committed  # what readers may see once it is synced


class Writer:
    def __init__(
        self,
        store: Store,
        allocator: Allocator,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.allocator = allocator
        self.max_batch = max_batch
        self.clock = clock
        self.committed: dict[str, NetworkSnapshot] = snapshot(allocator)
        self.max_queue = max_queue
        # A plain deque, not a trio channel: the writer takes whole groups at once
        # and only needs waking when the queue stops being empty.
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._queued = trio.Event()
        self._accepting = True
        self._dirty = False  # a write failed: rebuild before the next decision
        self._failed_write: StorageError | None = None  # until the rebuild
        # Groups decided and not yet synced, oldest first (at most two).
        self._unsynced: collections.deque[_Decided] = collections.deque()
        self._all_synced = trio.Event()
        self._closed_since: float | None = None
        self.batches = 0
        self.mutations = 0
        self.failed_writes = 0

    @property
    def mean_batch_size(self) -> float:
        return self.mutations / self.batches if self.batches else 0.0

    # -- the clients' side -------------------------------------------------------

    async def submit(self, mutation: Mutation) -> Any:
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

    def submit_nowait(self, mutation: Mutation, on_done: OnDone) -> None:
        """Queue one mutation; `on_done(result, error)` is called from the writer
        task once it is decided and synced (or refused at shutdown). `on_done`
        must neither block nor raise. Raises `Unavailable` at once when the
        mutation cannot be queued."""
        if not self._accepting:
            raise Unavailable("ipamd is shutting down")
        if len(self._queue) >= self.max_queue:
            raise Unavailable("too many mutations queued; try again later")
        self._queue.append(_Waiter(mutation, on_done))
        self._queued.set()

    # -- the writer task -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        # Unbuffered: the decider hands a group over only once the syncer has
        # finished the one before, so at most one group is written while the next
        # is decided.
        send_decided, receive_decided = trio.open_memory_channel[_Decided](0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sync_loop, receive_decided)
                # Closed synchronously: `async with` would checkpoint on the way out,
                # where a shutdown's Cancelled could replace the error that got us there.
                with send_decided:
                    while True:
                        group = await self._next_group()
                        # Shielded: a group taken off the channel is decided, written
                        # and answered even if shutdown cancels us now.
                        with trio.CancelScope(shield=True):
                            decided = await self._decide_group(group)
                            if decided is not None:
                                await send_decided.send(decided)
        finally:
            self._refuse_queued()

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

    async def _decide_group(self, group: list[_Waiter]) -> _Decided | None:
        """Decide every mutation of `group` in order and encode its batch; None
        when the group was answered already (it failed as a whole)."""
        if self._dirty:
            try:
                await self._recover()
            except StorageError as e:
                for waiter in group:
                    waiter.answer(error=e)
                return None
            except WriterFailed:
                for waiter in group:
                    waiter.answer(error=Unavailable("the database could not be reopened"))
                raise
        # Decisions see the groups decided before, written or not.
        view = PendingLeases(self._unsynced[-1].view if self._unsynced else self.store)
        now = int(self.clock())
        changes: list[Change] = []
        outcomes: list[tuple[Any, IpamError | None]] = []
        for waiter in group:
            try:
                result, decided = self._decide(waiter.mutation, view, now)
            except IpamError as e:
                outcomes.append((None, e))
            except Exception:
                # A bug or an unreadable lease: the working state can no longer be
                # trusted. Fail the group, write nothing, rebuild before the next
                # (once the groups decided before this one are written).
                log.exception("deciding %s failed", type(waiter.mutation).__name__)
                internal = Unavailable("internal error while deciding; nothing was changed")
                for answered in group:
                    answered.answer(error=internal)
                self._dirty = True
                return None
            else:
                outcomes.append((result, None))
                changes += decided
        # Encoded here, not in the worker thread: see Store.prepare.
        batch = self.store.prepare(changes) if changes else None
        decided_group = _Decided(group, outcomes, batch, view, snapshot(self.allocator))
        self._unsynced.append(decided_group)
        return decided_group

    # -- writing (the syncer task) ----------------------------------------------------

    async def _sync_loop(self, decided_groups: trio.MemoryReceiveChannel[_Decided]) -> None:
        # Shielded: it ends when the decider closes the channel, so every group
        # handed over is written and answered, shutdown or not.
        with trio.CancelScope(shield=True):
            async for decided in decided_groups:
                try:
                    await self._sync(decided)
                finally:
                    self._unsynced.popleft()
                    if self._unsynced:
                        # Written (or failed): the next group's view need not look
                        # through this one any longer.
                        self._unsynced[0].view.base = self.store
                    else:
                        self._all_synced.set()

    async def _sync(self, decided: _Decided) -> None:
        group = decided.group
        if self._failed_write is not None:
            # Decided on top of a write that failed: it never happened either.
            for waiter in group:
                waiter.answer(error=self._failed_write)
            return
        if decided.batch is not None:
            try:
                await trio.to_thread.run_sync(self.store.commit, decided.batch)
            except StorageError as e:
                self.failed_writes += 1
                log.error("write of %d mutation(s) failed: %s", len(group), e)
                self._failed_write = e
                self._dirty = True
                for waiter in group:
                    waiter.answer(error=e)
                return
        # No checkpoint from here on: publish and answer atomically for readers.
        self.batches += 1
        self.mutations += len(group)
        self.committed = decided.committed
        for waiter, (result, error) in zip(group, decided.outcomes, strict=True):
            waiter.answer(result, error)

    async def _wait_all_synced(self) -> None:
        while self._unsynced:
            self._all_synced = trio.Event()
            await self._all_synced.wait()

    async def _recover(self) -> None:
        """Drop the dirty working state and rebuild it from what is on disk.

        Raises StorageError when it cannot yet (the group fails, the next one
        tries again), WriterFailed when it never will.
        """
        await self._wait_all_synced()  # nothing may be written while we reopen
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
            return self.store.load()
        except BaseException:
            self.store.close()
            raise

    # -- decisions -----------------------------------------------------------------

    def _decide(
        self, mutation: Mutation, view: PendingLeases, now: int
    ) -> tuple[Any, list[Change]]:
        allocator = self.allocator
        if isinstance(mutation, AllocRequest):
            leases, changes = allocator.alloc(mutation, view, now)
            networks = {
                name: {"ifname": lease.key.ifname, "ips": self._ips(lease)}
                for name, lease in leases.items()
            }
            return {"container_id": mutation.container_id, "networks": networks}, changes
        if isinstance(mutation, ReleaseRequest):
            released, changes = allocator.release(mutation, view)
            return {"released": self._released(released)}, changes
        if isinstance(mutation, GcRequest):
            stale, changes = allocator.gc(mutation, view)
            network = allocator.pool(mutation.network).network
            return {"released": [lease.to_wire(network) for lease in stale]}, changes
        if isinstance(mutation, CreateNetworkRequest):
            network, changes = allocator.create_network(mutation.network)
            return network.to_wire(), changes
        if isinstance(mutation, DeleteNetworkRequest):
            count, changes = allocator.delete_network(mutation.name, mutation.force, view)
            return {"name": mutation.name, "released": count}, changes
        raise TypeError(f"not a mutation: {mutation!r}")

    @staticmethod
    def _released(released: dict[str, list[IPAddress]]) -> dict[str, list[str]]:
        return {name: [address_text(a) for a in addresses] for name, addresses in released.items()}

    def _ips(self, lease: Lease) -> list[dict[str, Any]]:
        return lease.ips_to_wire(self.allocator.pool(lease.key.network).network)
