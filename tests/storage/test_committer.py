"""The committer thread: jobs run in order, outcomes back to the caller, and a
clean end. (The writer's tests cover it over the real store.)"""

from __future__ import annotations

import functools
import threading
from typing import Any

import pytest
import trio

from ipamd.errors import StorageError
from ipamd.storage.committer import Committer


class Recorder:
    """A `commit` that notes which thread wrote what, and fails on request."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.threads: set[str] = set()

    def __call__(self, batch: Any) -> None:
        self.threads.add(threading.current_thread().name)
        if isinstance(batch, BaseException):
            raise batch
        self.written.append(batch)


async def commit(committer: Committer, recorder: Any, batch: Any) -> None:
    await committer.run(functools.partial(recorder, batch))


def committer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ipamd-committer"]


async def test_batches_are_written_in_order_off_the_event_loop() -> None:
    recorder = Recorder()
    committer = Committer()
    try:
        for batch in range(200):
            await commit(committer, recorder, batch)
    finally:
        committer.close()
    assert recorder.written == list(range(200))
    assert recorder.threads == {"ipamd-committer"}


async def test_a_failed_write_raises_in_the_caller_and_the_next_one_works() -> None:
    recorder = Recorder()
    committer = Committer()
    try:
        with pytest.raises(StorageError, match="disk on fire"):
            await commit(committer, recorder, StorageError("disk on fire"))
        await commit(committer, recorder, "after")
    finally:
        committer.close()
    assert recorder.written == ["after"]


async def test_a_write_in_flight_is_waited_for_even_by_a_cancelled_caller() -> None:
    """Once the thread has a batch, its outcome must be known: the syncer
    answers clients from it, shutdown or not."""
    release = threading.Event()
    started = threading.Event()
    written: list[str] = []
    seen_on_return: list[list[str]] = []

    def slow_commit(batch: str) -> None:
        started.set()
        release.wait()
        written.append(batch)

    async def cancelled_caller() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await commit(committer, slow_commit, "slow")
        seen_on_return.append(list(written))

    committer = Committer()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled_caller)
            await trio.to_thread.run_sync(started.wait)
            release.set()
    finally:
        release.set()
        committer.close()
    assert seen_on_return == [["slow"]]


async def test_a_job_returns_its_result_to_the_caller() -> None:
    """What recovery relies on: the database reopened and rebuilt in the thread."""
    committer = Committer()
    try:
        where = await committer.run(lambda: threading.current_thread().name)
    finally:
        committer.close()
    assert where == "ipamd-committer"


def test_close_ends_the_thread() -> None:
    before = len(committer_threads())
    committer = Committer()
    assert len(committer_threads()) == before + 1
    committer.close()
    assert len(committer_threads()) == before
