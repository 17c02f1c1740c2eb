"""Every mutation is logged with the caller's pid and uid, once its outcome is known."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from ipamd.daemon.mutation_log import LOGGER_NAME, MutationLog
from tests.support import Daemon, RpcError


def wait_for_line(daemon: Daemon, needle: str) -> str:
    """The daemon's log line holding `needle`, as soon as it is written."""
    line = daemon.wait_for_log(needle)
    assert line is not None, f"the daemon exited without a log line with {needle!r}"
    return line


def test_each_mutation_is_logged_with_its_caller(daemon: Daemon) -> None:
    me = f"by pid={os.getpid()} uid={os.getuid()}"
    with daemon.client() as client:
        client.call("network.create", {"name": "logged", "subnets": [{"subnet": "10.9.0.0/30"}]})
        client.call("alloc", {"container_id": "first", "networks": {"logged": {}}})
        client.call("alloc", {"container_id": "second", "networks": {"logged": {}}})
        try:
            client.call("alloc", {"container_id": "third", "networks": {"logged": {}}})
        except RpcError as e:
            assert e.name == "range_exhausted"
        client.call("get", {"container_id": "first"})  # a read: not logged

    # An alloc names what it handed out: grepping the log for an address finds it.
    assert wait_for_line(daemon, "alloc container_id=first").endswith(
        f"{me}: ok: logged 10.9.0.1/30"
    )
    assert wait_for_line(daemon, "network.create name=logged").endswith(f"{me}: ok")
    exhausted = wait_for_line(daemon, "alloc container_id=third")
    assert f"{me}: range_exhausted: failed to find free IP in range" in exhausted
    assert "get container_id" not in daemon.log()


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def info_logged() -> Iterator[None]:
    logger = logging.getLogger(LOGGER_NAME)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("info_logged")
async def test_a_burst_of_lines_is_written_once_the_burst_is_done() -> None:
    stream = CountingStream()
    mutation_log = MutationLog(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mutation_log.run)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(3):  # one burst: no checkpoint in between
            mutation_log.record("alloc", f"container_id=c{n}", "pid=1 uid=0", "ok")
        assert stream.getvalue() == ""  # not yet: the burst may go on
        await trio.testing.wait_all_tasks_blocked()
        assert stream.writes == 1
        assert stream.getvalue().splitlines() == [
            f"INFO ipamd.mutations: alloc container_id=c{n} by pid=1 uid=0: ok" for n in range(3)
        ]
        mutation_log.record("release", "container_id=c0", "pid=1 uid=0", "ok")
        await trio.testing.wait_all_tasks_blocked()
        assert stream.writes == 2
        nursery.cancel_scope.cancel()
    mutation_log.record("gc", "network=n", "pid=1 uid=0", "ok")  # the task is gone: at once
    assert stream.writes == 3
    assert stream.getvalue().endswith("gc network=n by pid=1 uid=0: ok\n")
