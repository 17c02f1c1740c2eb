"""`TrioClient`: the same methods as `Client`, pipelined on one connection."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ipamd.client import ConnectionFailed, RequestTimeout, TrioClient
from ipamd.errors import IpamError, LeaseNotFound, NetworkNotFound, RangeExhausted
from tests.client.fakes import REVERSE_BATCH, FakePeer
from tests.support import Daemon

Names = Callable[[str], str]


async def test_500_concurrent_calls_on_one_connection(shared_daemon: Daemon, name: Names) -> None:
    net = name("pipelined")
    results: dict[int, Any] = {}
    async with TrioClient.connect(shared_daemon.socket, timeout=20) as client:
        await client.network_create(net, [{"subnet": "10.80.0.0/22"}])

        async def one(i: int) -> None:
            if i % 5 == 0:
                results[i] = await client.ping()
            else:
                results[i] = await client.alloc(name(f"c{i}"), {net: {}})

        async with trio.open_nursery() as nursery:
            for i in range(500):
                nursery.start_soon(one, i)
        assert len(results) == 500
        addresses = [
            r["networks"][net]["ips"][0]["address"] for r in results.values() if "networks" in r
        ]
        assert len(addresses) == 400 == len(set(addresses))
        for i, result in results.items():  # every reply reached the call that made it
            if i % 5:
                assert result["container_id"] == name(f"c{i}")
        assert (await client.network_get(net))["leases"] == 400
        await client.network_delete(net, force=True)


async def test_replies_out_of_order_reach_their_calls(
    fake_peer: Callable[[str], FakePeer],
) -> None:
    peer = fake_peer("reverse")  # answers every REVERSE_BATCH requests last first
    echoes: dict[str, Any] = {}
    async with TrioClient.connect(peer.path, timeout=10) as client:

        async def call(method: str) -> None:
            echoes[method] = await client.call(method)

        async with trio.open_nursery() as nursery:
            for i in range(REVERSE_BATCH * 50):
                nursery.start_soon(call, f"m{i}")
    assert echoes == {f"m{i}": {"echo": f"m{i}"} for i in range(REVERSE_BATCH * 50)}
    assert len(peer.connections) == 1


async def test_every_method(shared_daemon: Daemon, name: Names) -> None:
    net, c1, c2 = name("net"), name("c1"), name("c2")
    async with TrioClient.connect(shared_daemon.socket) as client:
        assert (await client.ping())["version"]
        assert "leases" in await client.status()
        created = await client.network_create(net, [{"subnet": "10.81.0.0/29"}], driver=None)
        assert created["name"] == net
        lease = await client.alloc(c1, {net: {"ifname": "eth0"}})
        assert lease["networks"][net]["ips"][0]["address"] == "10.81.0.1/29"
        await client.alloc(c2, {net: {}})
        assert (await client.get(c1))["networks"] == lease["networks"]
        assert (await client.network_get(net))["leases"] == 2
        assert net in {n["name"] for n in await client.network_list()}
        assert net in {n["name"] for n in (await client.stats())["networks"]}
        page = await client.lease_list(net, limit=1)
        assert page["next"] == "10.81.0.1"
        assert [x["container_id"] async for x in client.iter_leases(net, page_size=1)] == [c1, c2]
        assert (await client.lease_owner("10.81.0.2", network=net))["container_id"] == c2
        gone = await client.gc(net, [{"container_id": c1}], dry_run=True)
        assert [x["container_id"] for x in gone["released"]] == [c2]
        assert await client.release(c2, {net: {}}) == {"released": {net: ["10.81.0.2"]}}
        assert (await client.network_delete(net, force=True))["released"] == 1
        assert (await client.call("ping"))["version"]


async def test_errors_come_out_as_their_class_not_in_a_group(
    shared_daemon: Daemon, name: Names
) -> None:
    net = name("tiny")
    with pytest.raises(NetworkNotFound):
        async with TrioClient.connect(shared_daemon.socket) as client:
            await client.network_get(name("absent"))
    async with TrioClient.connect(shared_daemon.socket) as client:
        await client.network_create(net, [{"subnet": "10.82.0.0/31"}])
        outcomes: list[Any] = []

        async def grab(i: int) -> None:
            try:
                outcomes.append(await client.alloc(name(f"c{i}"), {net: {}}))
            except IpamError as e:
                outcomes.append(e)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(grab, i)
        assert sum(isinstance(o, RangeExhausted) for o in outcomes) == 3  # a /31 holds two
        with pytest.raises(LeaseNotFound) as info:
            await client.get(name("nobody"))
        assert (info.value.code, info.value.name) == (8, "lease_not_found")
        await client.network_delete(net, force=True)


async def test_a_cancelled_call_leaves_the_connection_usable(shared_daemon: Daemon) -> None:
    async with TrioClient.connect(shared_daemon.socket) as client:
        with trio.move_on_after(0):
            await client.status()
        for _ in range(3):
            assert (await client.ping())["version"]  # the late status reply is dropped


async def test_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    with pytest.raises(ConnectionFailed) as info:
        async with TrioClient.connect(path):
            pass
    assert info.value.socket_path == path and str(path) in str(info.value)
    assert not isinstance(info.value, IpamError)


async def test_timeout_when_nobody_answers(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        async with TrioClient.connect(path, timeout=0.2) as client:
            with pytest.raises(RequestTimeout) as info:
                await client.ping()
            assert str(path) in str(info.value)


async def test_peer_hangs_up_with_calls_in_flight(fake_peer: Callable[[str], FakePeer]) -> None:
    peer = fake_peer("hangup")
    failures: list[BaseException] = []
    async with TrioClient.connect(peer.path, timeout=10) as client:

        async def call(method: str) -> None:
            try:
                await client.call(method)
            except ConnectionFailed as e:
                failures.append(e)

        async with trio.open_nursery() as nursery:
            for method in ("a", "b", "c"):
                nursery.start_soon(call, method)
        assert len(failures) == 3
        assert all(str(peer.path) in str(e) for e in failures)
        with pytest.raises(ConnectionFailed):  # and every later call
            await client.ping()


async def test_every_error_class_over_trio(fake_peer: Callable[[str], FakePeer]) -> None:
    from ipamd.errors import ERRORS_BY_CODE

    peer = fake_peer("errors")
    async with TrioClient.connect(peer.path) as client:
        for code, cls in ERRORS_BY_CODE.items():
            with pytest.raises(cls) as info:
                await client.call("fail", {"code": code, "name": cls.name, "message": "m"})
            assert info.value.code == code


async def test_daemon_killed_with_calls_in_flight(daemon: Daemon) -> None:
    outcomes: list[Any] = []
    async with TrioClient.connect(daemon.socket, timeout=20) as client:
        await client.network_create("n", [{"subnet": "10.84.0.0/16"}])
        first_answer = trio.Event()

        async def one(i: int) -> None:
            try:
                outcomes.append(await client.alloc(f"c{i}", {"n": {}}))
                first_answer.set()
            except ConnectionFailed as e:
                outcomes.append(e)

        async with trio.open_nursery() as nursery:
            for i in range(2000):
                nursery.start_soon(one, i)
            await first_answer.wait()
            daemon.kill()  # SIGKILL: no goodbye, calls still in flight
        with pytest.raises(ConnectionFailed):
            await client.ping()
    failed = [o for o in outcomes if isinstance(o, ConnectionFailed)]
    assert len(outcomes) == 2000 and failed and len(failed) < 2000
    assert all(str(daemon.socket) in str(e) for e in failed)
