"""The single writer: every mutation is decided here, in order, and made durable
in synced groups (group commit, LevelDB's `BuildBatchGroup`, in trio tasks).

How it is put together (one job per module):

    write_queue.py   the queue, and the group policy: at most two groups in
                     flight, one being written, one growing
    core/decide.py   the decider: a mutation -> a typed outcome + changes (pure)
    syncer.py        writes each group's batch, synced; publishes, answers
    recovery.py      after a failed write: reopen the database, rebuild
    committed_state.py   what readers see; the writer only publishes to it

Rules it keeps:
- It is the only code that writes. `Writer.run` is one nursery: this task
  decides (takes what is queued, up to `max_batch`, decides each mutation in
  order against the allocator's pools and a `PendingLeases` view, encodes the
  changes into the pending group's batch), and the syncer task writes.
- Threads: the syncer writes each batch in the committer's thread, or, for a
  lone group while syncs are quick, on the loop's (syncer.py, `Syncer._write`);
  recovery reopens and rebuilds in the committer's thread too. Nothing else
  here leaves the trio thread.
- Readers see the committed state (synced groups only), never the working one.
- A failed write fails its group (and those decided on top of it) with
  `storage_error`; before deciding the next group this task waits until
  nothing is being written and rebuilds (recovery.py).
- Shutdown is cancellation: the syncer stops once it is waiting for work,
  mutations already taken off the queue are still decided, written and
  answered (shielded), and everything still queued gets `unavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from ipamd.core.allocator import Allocator
from ipamd.core.decide import ExtensionDecisions, ExtensionMutation, decide
from ipamd.core.outcomes import NetworkCreated
from ipamd.core.requests import CreateNetworkRequest, Mutation
from ipamd.core.snapshot import Snapshot, refreshed, snapshot
from ipamd.core.view import Change, PendingLeases
from ipamd.daemon.committed_state import CommittedState
from ipamd.daemon.recovery import Recovery, WriterFailed
from ipamd.daemon.syncer import Syncer, WriteCounters
from ipamd.daemon.write_queue import Group, GroupPipeline, MutationQueue, OnDone, Waiter
from ipamd.errors import IpamError, StorageError, Unavailable
from ipamd.storage.committer import Committer
from ipamd.storage.store import Store

__all__ = [
    "ExtensionMutation",
    "OnDone",
    "Writer",
    "WriterExtension",
    "WriterFailed",
]

log = logging.getLogger("ipamd.writer")

# Big enough to amortise one fsync over a burst of container starts, small
# enough that one group's decisions take a few milliseconds at most.
DEFAULT_MAX_BATCH = 256
# Mutations waiting beyond this are refused with `unavailable` (overload).
DEFAULT_MAX_QUEUE = 8192


class WriterExtension(ExtensionDecisions, Protocol):
    """What another module adds to the writer: its own mutations, and a say in
    the pools built from disk or created. The one seam between the writer and
    cluster mode (ipamd/cluster/local.py)."""

    def rebuilt(self, allocator: Allocator, store: Store) -> None:
        """The allocator was just loaded from `store` (start, or after a failed write)."""


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
        published: CommittedState | None = None,
    ) -> None:
        self.store = store
        self.allocator = allocator  # the working state: this task's alone
        self.extension = extension
        self.max_batch = max_batch
        self.clock = clock
        self.inline_lone_writes = inline_lone_writes
        # Where synced groups are published for readers (the service's, from main.py).
        self.published = published or CommittedState(store, snapshot(allocator))
        self.counters = WriteCounters()
        self._queue = MutationQueue(max_queue)
        self._pipeline = GroupPipeline()
        # The snapshot after every decision so far, synced or not.
        self._decided: Snapshot = self.published.networks
        self._dirty = False  # a decision failed, or a rebuild did: rebuild first
        self._running = False

    @property
    def committed(self) -> Snapshot:
        """The networks as last synced (the read side's, `published.networks`)."""
        return self.published.networks

    @property
    def queued(self) -> int:
        """Mutations waiting to be decided."""
        return len(self._queue)

    @property
    def healthy(self) -> bool:
        """Accepting mutations, with the database open and no failed write since
        the last rebuild: what the next mutation would find."""
        return self._queue.accepting and not self._must_rebuild() and self.store.is_open

    # -- the submitters' side ----------------------------------------------------------

    async def submit(self, mutation: Mutation | ExtensionMutation) -> Any:
        """Decide and persist one mutation; its outcome once synced."""
        done = trio.Event()
        answer: list[Any] = []

        def on_done(outcome: Any, error: IpamError | None) -> None:
            answer[:] = [outcome, error]
            done.set()

        self.submit_nowait(mutation, on_done)
        # A caller cancelled here loses only its reply: the decision still
        # commits (or not) with its group, and a retry is idempotent.
        await done.wait()
        outcome, error = answer
        if error is not None:
            raise error
        return outcome

    def submit_nowait(self, mutation: Mutation | ExtensionMutation, on_done: OnDone) -> None:
        """Queue one mutation; `on_done(outcome, error)` is called from the
        writer's tasks once it is decided and synced (or refused at shutdown).
        `on_done` must neither block nor raise. Raises `Unavailable` at once when
        the mutation cannot be queued."""
        if isinstance(mutation, CreateNetworkRequest) and self._queue.accepting:
            existing = self._unchanged(mutation)
            if existing is not None:
                on_done(existing, None)
                return
        self._queue.put(mutation, on_done)

    def _unchanged(self, request: CreateNetworkRequest) -> NetworkCreated | None:
        """The stored network, when creating it is sure to be a no-op that a
        writer round would only confirm: the writer is idle (nothing queued,
        decided or being written), so its state is what is synced, and holds
        this very definition. Every container start's CNI ADD ensures its
        network first; answered here it costs a read, not a trip through the
        decider, the syncer and back (about 0.1 ms of a lone client's ADD).
        Under load it takes its turn in order, as every mutation does."""
        if self._queue.unanswered or self._must_rebuild() or not self._running:
            return None
        pool = self.allocator.pools.get(request.network.name)
        if pool is None or pool.network != request.network:
            return None
        return NetworkCreated(pool.network)

    # -- the writer's tasks ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        committer = Committer()
        syncer = Syncer(
            self.store,
            committer,
            self._pipeline,
            self._queue,
            self.published,
            self.counters,
            inline_lone_writes=self.inline_lone_writes,
        )
        recovery = Recovery(self.store, committer, self.extension)
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(syncer.run)
                task_status.started()
                await self._decide_forever(recovery)
        finally:
            self._running = False
            with trio.CancelScope(shield=True):
                if self._pipeline.pending is not None:
                    # Decided after the syncer stopped (shutdown): written now.
                    await syncer.write_next()
            self._queue.refuse_all()
            committer.close()

    async def _decide_forever(self, recovery: Recovery) -> None:
        while True:
            # Bounded: past max_batch, wait for the syncer to take the pending group.
            await self._pipeline.room_for(self.max_batch)
            waiters = await self._queue.take(self.max_batch)
            # Shielded: mutations taken off the queue are decided, written and
            # answered even if shutdown cancels us now.
            with trio.CancelScope(shield=True):
                if self._must_rebuild() and not await self._rebuild(recovery, waiters):
                    continue
                self._decide_group(waiters)

    def _must_rebuild(self) -> bool:
        return self._dirty or self._pipeline.failure is not None

    async def _rebuild(self, recovery: Recovery, waiters: list[Waiter]) -> bool:
        """Rebuild from disk before deciding `waiters`; when that fails, answer
        them all with why, and say so."""
        await self._pipeline.idle()  # every group decided before is written or failed
        self._pipeline.failure = None
        self._dirty = True  # until the rebuild succeeds
        try:
            self.allocator = await recovery.reopen()
        except StorageError as e:
            for waiter in waiters:
                waiter.answer(error=e)
            return False
        except WriterFailed:
            for waiter in waiters:
                waiter.answer(error=Unavailable("the database could not be reopened"))
            raise
        self._dirty = False
        self._decided = snapshot(self.allocator)
        self.published.publish(self._decided)
        return True

    def _decide_group(self, waiters: list[Waiter]) -> None:
        """Decide `waiters` in order into the pending group and encode their
        changes into its batch; or answer them all at once when that fails."""
        group = self._pipeline.pending
        if group is None:
            # Decisions see the group being written, whose changes are not on disk yet.
            writing = self._pipeline.writing
            view = PendingLeases(self.store, writing.view if writing is not None else None)
            group = Group(view, self._decided)
        allocator, view, extension = self.allocator, group.view, self.extension
        now = int(self.clock())
        changes: list[Change] = []
        outcomes: list[tuple[Any, IpamError | None]] = []
        for waiter in waiters:
            mutation = waiter.mutation
            try:
                if isinstance(mutation, ExtensionMutation):
                    if extension is None:
                        raise TypeError(f"no extension decides {mutation!r}")
                    outcome, decided = extension.decide(mutation, allocator, view)
                else:
                    outcome, decided = decide(mutation, allocator, view, now, extension)
            except IpamError as e:
                outcomes.append((None, e))
            except Exception:
                # A bug or an unreadable lease: the working state can no longer be
                # trusted. Fail these mutations, write none of them, rebuild before
                # the next (once what was decided before them is written).
                log.exception("deciding %s failed", type(mutation).__name__)
                internal = Unavailable("internal error while deciding; nothing was changed")
                for answered in waiters:
                    answered.answer(error=internal)
                self._dirty = True
                return
            else:
                outcomes.append((outcome, None))
                changes += decided
        if changes:  # encoded here, not in the committer's thread: see Store.prepare
            group.batch = self.store.prepare(changes, group.batch)
        group.waiters += waiters
        group.outcomes += outcomes
        self._decided = group.committed = refreshed(self._decided, allocator, changes)
        self._pipeline.grow(group)
