"""Every mutation is logged with the caller's pid and uid, once its outcome is known."""

from __future__ import annotations

import os
import time

from tests.support import Daemon, RpcError


def wait_for_line(daemon: Daemon, needle: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in daemon.log().splitlines():
            if needle in line:
                return line
        time.sleep(0.02)
    raise AssertionError(f"no log line with {needle!r} in:\n{daemon.log()}")


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

    assert wait_for_line(daemon, "alloc container_id=first").endswith(f"{me}: ok")
    assert wait_for_line(daemon, "network.create name=logged").endswith(f"{me}: ok")
    exhausted = wait_for_line(daemon, "alloc container_id=third")
    assert f"{me}: range_exhausted: failed to find free IP in range" in exhausted
    assert "get container_id" not in daemon.log()
