"""The blocking `Client` against the real daemon (and a fake peer where the real one cannot fail).

Every method, every error class, and every way a connection fails:
missing socket, refused, a peer that never answers, one that hangs up
mid-call, one that breaks the protocol, and a daemon killed and restarted.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipamd import paths
from ipamd.client import Client, ConnectionFailed, ProtocolError, RequestTimeout, discover_socket
from ipamd.client.core import CLIENT_LIMITS
from ipamd.config import default_socket_path
from ipamd.errors import (
    ERRORS_BY_CODE,
    AddressInUse,
    AddressNotAllocatable,
    InvalidRequest,
    IpamError,
    LeaseNotFound,
    NetworkExists,
    NetworkInUse,
    NetworkNotFound,
    PermissionDenied,
    RangeExhausted,
    RequestTooLarge,
    UnknownMethod,
)
from tests.client.fakes import FakePeer
from tests.support import Daemon

Names = Callable[[str], str]


@pytest.fixture
def client(shared_daemon: Daemon) -> Iterator[Client]:
    with Client(shared_daemon.socket, timeout=20) as instance:
        yield instance


# -- socket discovery ------------------------------------------------------------------------


def test_discover_socket_prefers_explicit_then_env_then_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IPAMD_SOCKET", str(tmp_path / "env.sock"))
    assert discover_socket(tmp_path / "x.sock") == tmp_path / "x.sock"
    assert discover_socket(str(tmp_path / "y.sock")) == tmp_path / "y.sock"
    assert discover_socket() == tmp_path / "env.sock"
    assert discover_socket("") == tmp_path / "env.sock"
    monkeypatch.delenv("IPAMD_SOCKET")
    assert discover_socket() == default_socket_path()
    assert Client().socket_path == default_socket_path()


def test_default_socket_for_a_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IPAMD_SOCKET", raising=False)
    assert Path("/run/ipamd/ipamd.sock") == paths.SYSTEM_SOCKET
    # No system daemon here, whatever this machine runs.
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", tmp_path / "absent" / "ipamd.sock")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert discover_socket() == Path("/run/user/1000/ipamd/ipamd.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert discover_socket() == Path("/tmp/ipamd-1000/ipamd.sock")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert discover_socket() == tmp_path / "absent" / "ipamd.sock"


def test_a_user_without_a_socket_of_their_own_gets_the_system_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    system = tmp_path / "run-ipamd" / "ipamd.sock"
    system.parent.mkdir()
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", system)
    monkeypatch.delenv("IPAMD_SOCKET", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "user"))
    own = tmp_path / "user" / "ipamd" / "ipamd.sock"

    assert discover_socket() == own  # neither exists: the user's own, as before
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(system))
        listening.listen()
        assert discover_socket() == system
        assert Client().socket_path == system
        own.parent.mkdir(parents=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as per_user:
            per_user.bind(str(own))
            assert discover_socket() == own  # a per-user daemon's socket wins
        monkeypatch.setenv("IPAMD_SOCKET", str(tmp_path / "env.sock"))
        assert discover_socket() == tmp_path / "env.sock"  # so does the variable


# -- every method ----------------------------------------------------------------------------


def test_every_method(client: Client, name: Names) -> None:
    net, other = name("net"), name("other")
    c1, c2 = name("c1"), name("c2")

    assert client.ping()["version"]
    status = client.status()
    assert {"version", "networks", "leases", "batches", "connections"} <= set(status)

    subnets: list[dict[str, Any]] = [
        {
            "subnet": "10.70.0.0/24",
            "gateway": "10.70.0.1",
            "range_start": "10.70.0.10",
            "range_end": "10.70.0.20",
            "exclude": ["10.70.0.15"],
        },
        {"subnet": "fd70::/64"},
    ]
    created = client.network_create(net, subnets)
    assert created == {"name": net, "driver": "host-local", "subnets": subnets}
    assert client.network_create(net, subnets) == created  # ensure: the same again is fine
    client.network_create(other, [{"subnet": "10.71.0.0/24"}], driver="host-local")

    lease = client.alloc(c1, {net: {"ifname": "eth0", "attributes": {"pod": "web"}}})
    assert lease == {
        "container_id": c1,
        "networks": {
            net: {
                "ifname": "eth0",
                "ips": [
                    {"address": "10.70.0.10/24", "gateway": "10.70.0.1", "subnet": "10.70.0.0/24"},
                    {"address": "fd70::1/64", "subnet": "fd70::/64"},
                ],
            }
        },
    }
    assert client.alloc(c1, {net: {"ifname": "eth0"}}) == lease  # idempotent retry
    both = client.alloc(c2, {net: {"static_ips": ["10.70.0.50"]}, other: {}})
    assert both["networks"][net]["ips"][0]["address"] == "10.70.0.50/24"
    assert both["networks"][other]["ips"][0]["address"] == "10.71.0.1/24"

    got = client.get(c1)
    assert got["networks"] == lease["networks"]
    assert client.get(c2, [other])["networks"].keys() == {other}
    assert client.get(c2, {net: {}})["networks"].keys() == {net}

    inspected = client.network_get(net)
    assert inspected["leases"] == 2
    assert inspected["subnets"][0]["used"] == 2
    assert inspected["subnets"][1]["size"] == str(2**64)  # over 2**63-1: a decimal string
    assert {n["name"] for n in client.network_list()} >= {net, other}
    stats = {n["name"]: n for n in client.stats()["networks"]}
    assert stats[net]["subnets"][0]["allocatable"] == 10

    page = client.lease_list(net, limit=1)
    assert [x["container_id"] for x in page["leases"]] == [c1] and page["next"] == "10.70.0.10"
    assert [x["container_id"] for x in client.lease_list(net, after=page["next"])["leases"]] == [c2]
    assert [x["container_id"] for x in client.iter_leases(net, page_size=1)] == [c1, c2]

    owner = client.lease_owner("10.70.0.50")
    assert (owner["network"], owner["container_id"], owner["ifname"]) == (net, c2, "")
    assert client.lease_owner("fd70::1", network=net)["container_id"] == c1

    dry = client.gc(net, [{"container_id": c1}], dry_run=True)
    assert [x["container_id"] for x in dry["released"]] == [c2]
    assert client.network_get(net)["leases"] == 2  # a dry run changes nothing
    assert client.gc(net, [{"container_id": c1, "ifname": "eth0"}]) == dry

    assert client.release(c1, {net: {"ifname": "eth0"}}) == {
        "released": {net: ["10.70.0.10", "fd70::1"]}
    }
    assert client.release(c1) == {"released": {}}  # idempotent
    assert client.release(c2) == {"released": {other: ["10.71.0.1"]}}

    client.alloc(c1, {other: {}})
    assert client.network_delete(other, force=True) == {"name": other, "released": 1}
    assert client.network_delete(net) == {"name": net, "released": 0}
    assert net not in {n["name"] for n in client.network_list()}


def test_iter_leases_pages_through_many(client: Client, name: Names) -> None:
    net = name("many")
    client.network_create(net, [{"subnet": "10.72.0.0/22"}])
    for i in range(25):
        client.alloc(name(f"c{i}"), {net: {}})
    leases = list(client.iter_leases(net, page_size=4))
    assert len(leases) == 25
    assert [x["ips"][0]["address"] for x in leases] == [f"10.72.0.{i}/22" for i in range(1, 26)]
    client.network_delete(net, force=True)


def test_call_takes_raw_methods(client: Client) -> None:
    assert client.call("ping")["version"]
    assert client.call("network.list", {}) == client.network_list()


# -- errors from the daemon ------------------------------------------------------------------


def expect(error: type[IpamError], call: Callable[[], Any]) -> IpamError:
    with pytest.raises(error) as info:
        call()
    assert info.value.code == error.code and info.value.name == error.name
    assert info.value.message
    return info.value


def test_every_error_the_real_daemon_gives(client: Client, name: Names) -> None:
    net, tiny = name("net"), name("tiny")
    client.network_create(net, [{"subnet": "10.73.0.0/24", "gateway": "10.73.0.1"}])
    client.network_create(tiny, [{"subnet": "10.74.0.0/30"}])

    expect(InvalidRequest, lambda: client.network_get("no spaces allowed"))
    expect(UnknownMethod, lambda: client.call("no.such.method"))
    expect(NetworkNotFound, lambda: client.network_get(name("absent")))
    expect(NetworkExists, lambda: client.network_create(net, [{"subnet": "10.75.0.0/24"}]))
    client.alloc(name("a"), {net: {"static_ips": ["10.73.0.9"]}})
    err = expect(
        AddressInUse, lambda: client.alloc(name("b"), {net: {"static_ips": ["10.73.0.9"]}})
    )
    assert "10.73.0.9 is already allocated to container ID" in err.message
    expect(
        AddressNotAllocatable, lambda: client.alloc(name("b"), {net: {"static_ips": ["10.73.0.1"]}})
    )
    client.alloc(name("t1"), {tiny: {}})
    client.alloc(name("t2"), {tiny: {}})
    err = expect(RangeExhausted, lambda: client.alloc(name("t3"), {tiny: {}}))
    assert err.message == "failed to find free IP in range: 10.74.0.1 - 10.74.0.2"
    expect(LeaseNotFound, lambda: client.get(name("nobody")))
    expect(LeaseNotFound, lambda: client.lease_owner("10.73.0.200"))
    expect(NetworkInUse, lambda: client.network_delete(net))
    # Errors leave the connection usable.
    assert client.ping()["version"]


def test_request_too_large_then_reconnects(client: Client) -> None:
    # 2.4 MB of short strings: over the daemon's 1 MiB frame limit, under its string limit.
    padding = ["x" * 60_000] * 40
    expect(RequestTooLarge, lambda: client.call("ping", {"padding": padding}))
    assert client.ping()["version"]  # the daemon hung up; the next call connects afresh


def test_a_frame_the_daemon_cannot_decode_is_its_invalid_request(client: Client) -> None:
    # The daemon caps arrays at 4096 items: a long gc list fails before gc sees it.
    valid = [{"container_id": f"c{i}"} for i in range(5000)]
    err = expect(InvalidRequest, lambda: client.gc("whatever", valid, dry_run=True))
    assert "max_array_len" in err.message
    assert client.ping()["version"]


NOBODY = 65534


def _alloc_as_nobody(socket_path: str, network: str, results: Any) -> None:
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        with Client(socket_path, timeout=10) as client:
            read = client.network_get(network)["name"]
            try:
                client.alloc("intruder", {network: {}})
            except IpamError as e:
                results.send((read, type(e).__name__, e.code, e.name))
                return
        results.send((read, None, None, None))
    except BaseException as e:
        results.send(("crash", repr(e), None, None))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uids")
def test_permission_denied_for_another_uid(tmp_path: Path) -> None:
    socket_dir = Path(tempfile.mkdtemp(prefix="ipamd-client-"))
    socket_dir.chmod(0o755)
    config = tmp_path / "ipamd.toml"
    config.write_text('socket_mode = "0666"\n')
    daemon = Daemon(tmp_path / "state", socket_dir / "ipamd.sock", config=config).start()
    try:
        with Client(daemon.socket) as client:
            client.network_create("shared", [{"subnet": "10.76.0.0/24"}])
        context = multiprocessing.get_context("fork")
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(
            target=_alloc_as_nobody, args=(str(daemon.socket), "shared", sending)
        )
        child.start()
        assert receiving.poll(30), "the unprivileged child did not report"
        outcome = receiving.recv()
        child.join(10)
        assert outcome == ("shared", "PermissionDenied", PermissionDenied.code, "permission_denied")
    finally:
        daemon.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.mark.parametrize("cls", list(ERRORS_BY_CODE.values()), ids=lambda cls: cls.name)
def test_every_error_class_maps_from_the_wire(
    fake_peer: Callable[[str], FakePeer], cls: type[IpamError]
) -> None:
    """Including those the real daemon gives only when it is in trouble (unavailable, ...)."""
    peer = fake_peer("errors")
    with Client(peer.path, timeout=5) as client:
        wire = {"code": cls.code, "name": cls.name, "message": f"the {cls.name} message"}
        with pytest.raises(cls) as info:
            client.call("fail", wire)
        assert (info.value.code, info.value.name) == (cls.code, cls.name)
        assert str(info.value) == f"the {cls.name} message"
        assert client.call("ping") == {"echo": "ping"}  # still connected


def test_an_unknown_error_from_a_newer_daemon(fake_peer: Callable[[str], FakePeer]) -> None:
    peer = fake_peer("errors")
    with Client(peer.path, timeout=5) as client, pytest.raises(IpamError) as info:
        client.call("fail", {"code": 99, "name": "quota_exceeded", "message": "too many"})
    assert (info.value.code, info.value.name, info.value.message) == (
        99,
        "quota_exceeded",
        "too many",
    )


# -- connection failures ---------------------------------------------------------------------


def expect_connection_failed(
    path: Path, call: Callable[[], Any], kind: type[ConnectionFailed] = ConnectionFailed
) -> ConnectionFailed:
    with pytest.raises(kind) as info:
        call()
    assert not isinstance(info.value, IpamError)
    assert info.value.socket_path == path
    assert str(path) in str(info.value)
    return info.value


def test_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    client = Client(path)  # connecting is lazy: construction never fails
    err = expect_connection_failed(path, client.ping)
    assert "No such file or directory" in str(err)
    expect_connection_failed(path, Client(path).connect)


def test_refused_socket(tmp_path: Path) -> None:
    path = tmp_path / "refused.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # bound, never listening: connect() is refused
        err = expect_connection_failed(path, Client(path).ping)
    assert "Connection refused" in str(err)


def test_timeout_when_nobody_answers(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)  # the kernel accepts on our behalf; nobody reads or answers
        client = Client(path, timeout=0.3)
        started = time.monotonic()
        err = expect_connection_failed(path, client.ping, RequestTimeout)
        assert 0.25 < time.monotonic() - started < 3
        assert "did not answer within 0.3s" in str(err)
        client.close()


def test_peer_hangs_up_mid_call(fake_peer: Callable[[str], FakePeer]) -> None:
    peer = fake_peer("hangup")
    client = Client(peer.path, timeout=5)
    err = expect_connection_failed(peer.path, lambda: client.alloc("c", {"net": {}}))
    assert "closed the connection with 1 call(s) unanswered" in str(err)
    assert [r.method for r in peer.requests] == ["alloc"]
    # The next call connects afresh (and is hung up on again).
    expect_connection_failed(peer.path, client.ping)
    assert len(peer.requests) == 2


def test_peer_that_breaks_the_protocol(fake_peer: Callable[[str], FakePeer]) -> None:
    garbage = fake_peer("garbage")
    err = expect_connection_failed(garbage.path, Client(garbage.path).ping, ProtocolError)
    assert "bad frame" in str(err)
    stranger = fake_peer("stranger")
    err = expect_connection_failed(stranger.path, Client(stranger.path).ping, ProtocolError)
    assert "no call is waiting for" in str(err)


def test_result_of_the_wrong_shape_is_a_protocol_error(
    fake_peer: Callable[[str], FakePeer],
) -> None:
    peer = fake_peer("errors")  # answers {"echo": method}: a map, where network.list wants a list
    expect_connection_failed(peer.path, Client(peer.path).network_list, ProtocolError)


def test_daemon_killed_then_restarted(daemon: Daemon) -> None:
    client = Client(daemon.socket, timeout=5)
    assert client.ping()["version"]
    daemon.kill()
    err = expect_connection_failed(daemon.socket, client.ping)
    assert "ipamd" in str(err)
    expect_connection_failed(daemon.socket, client.ping)  # the socket file is left, nobody listens
    daemon.start()
    assert client.ping()["version"]  # same Client: it reconnects on the next call
    client.close()


def test_daemon_killed_while_a_call_waits(tmp_path: Path) -> None:
    """A peer that reads the request and dies: the waiting call fails at once, naming the path."""
    path = tmp_path / "dying.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        client = Client(path, timeout=10)
        client.connect()
        conn, _ = listener.accept()

        def die_after_the_request() -> None:
            conn.recv(1024)
            conn.close()

        killer = threading.Thread(target=die_after_the_request)
        killer.start()
        started = time.monotonic()
        expect_connection_failed(path, client.status)
        assert time.monotonic() - started < 5
        killer.join()


def test_client_limits_are_generous() -> None:
    assert CLIENT_LIMITS.max_array_len >= 1 << 20
    assert CLIENT_LIMITS.max_frame_bytes >= 64 << 20
