"""The committer: one thread that writes and syncs the writer's batches, so the
event loop never waits for the disk (but for a lone group's, which the writer
writes itself while syncs are quick: see Writer._lone).

Why a thread of our own and not `trio.to_thread.run_sync`: that takes a thread
from trio's cache for each batch, names it, reports back through trio's wake-up
socket and takes the GIL about five times per batch, each time making the event
loop hand it over. One batch is written per group, some hundreds a second
under load. Here the thread waits on a queue, takes the GIL three times per
batch (to start, after LevelDB's write, which releases it, and after waking
the loop) and wakes the loop through one eventfd. Through the daemon at 64
clients, the event loop's CPU per allocation fell from 45 to 41.5 µs and
allocations/s rose from 19.9k to 22.1k (medians of 3).

One batch at a time: `commit` is awaited by one task (the writer's syncer).
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import trio

# Put on the queue to end the thread.
_STOP = object()


class Committer:
    def __init__(self, commit: Callable[[Any], None]) -> None:
        """`commit(batch)` runs in the thread: it blocks, and may raise."""
        self._commit = commit
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # The outcome of each batch, in order: None, or what `commit` raised.
        self._outcomes: collections.deque[BaseException | None] = collections.deque()
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="ipamd-committer", daemon=True)
        self._thread.start()

    async def commit(self, batch: Any) -> None:
        """Run `commit(batch)` in the thread; return or raise as it did.

        Not cancellable: once the thread has the batch, its outcome must be
        known. (The writer's syncer awaits it shielded.)
        """
        self._jobs.put(batch)
        with trio.CancelScope(shield=True):
            while not self._outcomes:
                await trio.lowlevel.wait_readable(self._wakeup)
                with contextlib.suppress(BlockingIOError):  # a wake-up already taken
                    os.eventfd_read(self._wakeup)
        error = self._outcomes.popleft()
        if error is not None:
            raise error

    def close(self) -> None:
        """End the thread (after the batch it may be writing) and free the eventfd."""
        self._jobs.put(_STOP)
        self._thread.join()
        os.close(self._wakeup)

    def _run(self) -> None:
        while True:
            batch = self._jobs.get()
            if batch is _STOP:
                return
            try:
                self._commit(batch)
            except BaseException as e:  # the syncer decides what it means
                self._outcomes.append(e)
            else:
                self._outcomes.append(None)
            os.eventfd_write(self._wakeup, 1)
