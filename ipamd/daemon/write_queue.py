"""The writer's queue and group policy: how mutations wait, and how they are
grouped into synced writes (LevelDB's `BuildBatchGroup`).

Rules it keeps:
- The queue is bounded (`max_queue`): past it a mutation is refused at once
  with `unavailable` (overload), never left to wait without limit.
- A group is what one synced write makes durable. At most two groups are in
  flight: one being written (`writing`), one growing (`pending`) from what is
  decided meanwhile, which then shares the next sync. A pending group holds
  at most `max_batch` mutations; past that the decider waits for the syncer.
- Every queued mutation is answered exactly once (`Waiter.answer`), and the
  queue counts those not answered yet: the syncer's lone-group test and the
  idle shortcut of an unchanged network.create read that count.
- Touched by the writer's two tasks, the decider (which grows `pending`) and
  the syncer (which writes it), on the trio thread only.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import trio

from ipamd.core.decide import ExtensionMutation
from ipamd.core.requests import Mutation
from ipamd.core.snapshot import Snapshot
from ipamd.core.view import PendingLeases
from ipamd.errors import IpamError, StorageError, Unavailable

log = logging.getLogger("ipamd.writer")

# Called with (outcome, error) once a mutation is decided and its group synced.
OnDone = Callable[[Any, IpamError | None], None]


class Waiter:
    """One queued mutation and the callback that answers it."""

    __slots__ = ("mutation", "on_done", "queue")

    def __init__(
        self, mutation: Mutation | ExtensionMutation, on_done: OnDone, queue: MutationQueue
    ) -> None:
        self.mutation = mutation
        self.on_done = on_done
        self.queue = queue

    def answer(self, outcome: Any = None, error: IpamError | None = None) -> None:
        self.queue.unanswered -= 1
        try:
            self.on_done(outcome, error)
        except Exception:  # a bug in one answer must not take the writer down
            log.exception("answering %s failed", type(self.mutation).__name__)


class MutationQueue:
    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        # A plain deque, not a trio channel: the decider takes whole groups at
        # once and only needs waking when the queue stops being empty.
        self._waiting: collections.deque[Waiter] = collections.deque()
        self._queued = trio.Event()
        self.accepting = True
        # Mutations queued, being decided or written: none means the writer is idle.
        self.unanswered = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, mutation: Mutation | ExtensionMutation, on_done: OnDone) -> None:
        """Raises `Unavailable` at once when the mutation cannot be queued."""
        if not self.accepting:
            raise Unavailable("ipamd is shutting down")
        if len(self._waiting) >= self.max_queue:
            raise Unavailable("too many mutations queued; try again later")
        self.unanswered += 1
        if not self._waiting:  # the decider waits only on an empty queue (`take`)
            self._queued.set()
        self._waiting.append(Waiter(mutation, on_done, self))

    async def take(self, most: int) -> list[Waiter]:
        """Everything queued, up to `most`, once there is something."""
        await trio.lowlevel.checkpoint_if_cancelled()  # shutdown: what is queued is refused
        while not self._waiting:
            self._queued = trio.Event()
            await self._queued.wait()
        waiting = self._waiting
        return [waiting.popleft() for _ in range(min(len(waiting), most))]

    def refuse_all(self) -> None:
        """Shutdown: accept no more, and answer what waits with `unavailable`."""
        self.accepting = False
        while self._waiting:
            self._waiting.popleft().answer(error=Unavailable("ipamd is shutting down"))


class Group:
    """Mutations decided and encoded, waiting for their batch to be written and
    synced. It grows while the group before it is being written."""

    __slots__ = ("batch", "committed", "outcomes", "view", "waiters")

    def __init__(self, view: PendingLeases, committed: Snapshot) -> None:
        self.view = view  # the decider's alone: the syncer never looks at it
        self.waiters: list[Waiter] = []
        self.outcomes: list[tuple[Any, IpamError | None]] = []
        self.batch: Any = None  # None: nothing to write
        # What readers see once it is synced: the snapshot after its decisions.
        self.committed = committed


class GroupPipeline:
    """The two slots between the decider and the syncer, and the last failed write."""

    def __init__(self) -> None:
        self.pending: Group | None = None  # growing: the decider adds to it
        self.writing: Group | None = None  # being written and synced by the syncer
        # The write that failed, until the decider has rebuilt: every group
        # decided on top of it fails too, since it never happened either.
        self.failure: StorageError | None = None
        self._grown = trio.Event()  # set when `pending` gains mutations
        self._written = trio.Event()  # set each time the syncer finishes a group

    # -- the decider's side ------------------------------------------------------------

    def grow(self, group: Group) -> None:
        """`group` (the pending one, or a new one) gained mutations."""
        self.pending = group
        self._grown.set()

    async def room_for(self, most: int) -> None:
        """Until the pending group, if any, holds fewer than `most` mutations."""
        while self.pending is not None and len(self.pending.waiters) >= most:
            await self._wait_written()

    async def idle(self) -> None:
        """Until no group is pending or being written."""
        while self.pending is not None or self.writing is not None:
            await self._wait_written()

    async def _wait_written(self) -> None:
        self._written = trio.Event()
        await self._written.wait()

    # -- the syncer's side -------------------------------------------------------------

    async def next_to_write(self) -> Group:
        """The pending group, now the one being written; waits (the only place the
        syncer can be cancelled) while there is none."""
        while self.pending is None:
            self._grown = trio.Event()
            await self._grown.wait()
        group, self.pending = self.pending, None
        self.writing = group
        return group

    def written(self) -> None:
        """The group being written is done with (synced, or failed)."""
        self.writing = None
        self._written.set()
