"""The syncer: the writer's second task. It writes each decided group's batch,
synced, then publishes the group's snapshot and answers its waiters.

Rules it keeps:
- Never answers success before the batch is synced, and publishes the
  group's snapshot (committed_state.py) in the same step as it answers,
  without a checkpoint between: a reader sees all of a group or none of it.
- A failed write fails the whole group with `storage_error`, and every group
  decided on top of it (it never happened either) until the decider rebuilds.
- Where each batch is written is decided in one place, `_write`: the
  committer's thread (storage/committer.py), or for a lone group while syncs
  are quick the loop's own thread (`_lone`).
- Cancelled (shutdown) only while it waits for a group: a group it has taken
  is written and answered regardless (shielded).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import trio

from ipamd.daemon.committed_state import CommittedState
from ipamd.daemon.write_queue import Group, GroupPipeline, MutationQueue
from ipamd.errors import StorageError
from ipamd.metrics.instruments import GROUP_SIZE_BUCKETS, LATENCY_BUCKETS_S, Histogram
from ipamd.storage.committer import Committer
from ipamd.storage.store import Store

log = logging.getLogger("ipamd.writer")

# A lone group is written on the loop's thread only while syncs take less than
# this (Syncer._lone): readers are kept waiting for at most about as long.
INLINE_SYNC_MAX_S = 0.002


class WriteCounters:
    """What the writer has written, for `status` and the metrics."""

    def __init__(self) -> None:
        self.batches = 0
        self.mutations = 0
        self.failed_writes = 0
        self.group_sizes = Histogram(GROUP_SIZE_BUCKETS)  # mutations per published group
        self.sync_seconds = Histogram(LATENCY_BUCKETS_S)  # one batch written and synced

    @property
    def mean_batch_size(self) -> float:
        return self.mutations / self.batches if self.batches else 0.0


class Syncer:
    def __init__(
        self,
        store: Store,
        committer: Committer,
        pipeline: GroupPipeline,
        queue: MutationQueue,
        published: CommittedState,
        counters: WriteCounters,
        *,
        inline_lone_writes: bool,
    ) -> None:
        self._store = store
        self._committer = committer
        self._pipeline = pipeline
        self._queue = queue
        self._published = published
        self._counters = counters
        # False: every batch goes to the committer's thread (tests that hold a write).
        self._inline_lone_writes = inline_lone_writes
        self._last_sync_s = 0.0

    async def run(self) -> None:
        while True:
            await self.write_next()

    async def write_next(self) -> None:
        """Write the pending group, once there is one."""
        group = await self._pipeline.next_to_write()
        try:
            with trio.CancelScope(shield=True):
                await self._write_group(group)
        finally:
            self._pipeline.written()

    async def _write_group(self, group: Group) -> None:
        waiters = group.waiters
        failure = self._pipeline.failure
        if failure is not None:  # decided on top of a write that failed
            for waiter in waiters:
                waiter.answer(error=failure)
            return
        if group.batch is not None:
            try:
                await self._write(group)
            except StorageError as e:
                self._counters.failed_writes += 1
                log.error("write of %d mutation(s) failed: %s", len(waiters), e)
                self._pipeline.failure = e
                for waiter in waiters:
                    waiter.answer(error=e)
                return
        # No checkpoint from here on: publish and answer atomically for readers.
        counters = self._counters
        counters.batches += 1
        counters.mutations += len(waiters)
        counters.group_sizes.observe(len(waiters))
        self._published.publish(group.committed)
        for waiter, (outcome, error) in zip(waiters, group.outcomes, strict=True):
            waiter.answer(outcome, error)

    async def _write(self, group: Group) -> None:
        """Write and sync `group`'s batch: the writer's thread seams, all here."""
        batch: Any = group.batch
        started = time.monotonic()
        if self._lone(group):
            self._store.commit(batch)  # on the loop's thread: see `_lone`
        else:
            await self._committer.run(functools.partial(self._store.commit, batch))
        self._last_sync_s = time.monotonic() - started
        self._counters.sync_seconds.observe(self._last_sync_s)

    def _lone(self, group: Group) -> bool:
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
            self._inline_lone_writes
            and self._queue.unanswered == len(group.waiters)
            and self._last_sync_s < INLINE_SYNC_MAX_S
        )
