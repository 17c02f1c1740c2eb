"""Authorisation by SO_PEERCRED (DESIGN.md section 6), with a real unprivileged client.

The client is a forked child that drops to uid/gid 65534 (nobody/nogroup) before
it connects. The daemon runs as root; the socket lives in a 0755 directory under
/tmp (pytest's tmp_path may sit below a 0700 directory) with the mode the config
sets.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.e2e import private_socket_dir, write_config
from tests.support import Daemon, RawClient, RpcError

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uids")


def as_nobody(
    socket_path: str,
    calls: list[tuple[str, dict[str, Any]]],
    results: Any,
    groups: tuple[int, ...] = (),
) -> None:
    """In a child: become uid/gid 65534 with supplementary `groups`, then make
    `calls`; send back (code, result) each."""
    try:
        os.setgroups(list(groups))
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        out: list[tuple[int | None, Any]] = []
        with RawClient(socket_path, timeout=10) as client:
            for method, params in calls:
                try:
                    out.append((None, client.call(method, params)))
                except RpcError as e:
                    out.append((e.code, e.message))
        results.send(("ok", out))
    except BaseException as e:
        results.send(("crash", repr(e)))


def run_as_nobody(
    socket_path: Path, calls: list[tuple[str, dict[str, Any]]], groups: tuple[int, ...] = ()
) -> Any:
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=as_nobody, args=(str(socket_path), calls, sending, groups))
    child.start()
    try:
        if not receiving.poll(30):
            raise AssertionError("the unprivileged client did not report back")
        status, payload = receiving.recv()
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert status == "ok", payload
    return payload


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = private_socket_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_daemon(tmp_path: Path, socket_dir: Path, config_text: str) -> Daemon:
    config = write_config(tmp_path / "ipamd.toml", config_text)
    return Daemon(
        state_dir=tmp_path / "state", socket=socket_dir / "ipamd.sock", config=config
    ).start()


CALLS: list[tuple[str, dict[str, Any]]] = [
    ("ping", {}),
    ("get", {"container_id": "c-root"}),
    ("network.list", {}),
    ("alloc", {"container_id": "c-nobody", "networks": {"net": {}}}),
    ("release", {"container_id": "c-root"}),
    ("network.create", {"name": "other", "subnets": []}),
]


def test_an_unprivileged_client_may_read_but_not_mutate(tmp_path: Path, socket_dir: Path) -> None:
    daemon = start_daemon(tmp_path, socket_dir, 'socket_mode = "0666"\n')
    try:
        assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o666
        with daemon.client() as root:
            root.call("network.create", {"name": "net", "subnets": [{"subnet": "10.9.0.0/24"}]})
            root.call("alloc", {"container_id": "c-root", "networks": {"net": {}}})

        results = run_as_nobody(daemon.socket, CALLS)

        (ping_error, ping), (get_error, got), (list_error, _) = results[:3]
        assert ping_error is None and ping["version"]
        assert get_error is None and got["networks"]["net"]["ips"][0]["address"] == "10.9.0.1/24"
        assert list_error is None
        for (code, message), (method, _) in zip(results[3:], CALLS[3:], strict=True):
            assert code == 10, (method, code, message)
            assert method in message and str(NOBODY) in message
        with daemon.client() as root:  # nothing changed
            assert root.call("network.get", {"name": "net"})["leases"] == 1
            assert root.call("network.list") == [
                {
                    "name": "net",
                    "driver": "host-local",
                    "subnets": [{"subnet": "10.9.0.0/24"}],
                    "leases": 1,
                }
            ]
    finally:
        daemon.close()


@pytest.mark.parametrize("grant", ["allow_uids", "allow_gids"])
def test_an_allowed_uid_or_gid_may_mutate(tmp_path: Path, socket_dir: Path, grant: str) -> None:
    daemon = start_daemon(
        tmp_path, socket_dir, f'socket_mode = "0666"\n[auth]\n{grant} = [{NOBODY}]\n'
    )
    try:
        with daemon.client() as root:
            root.call("network.create", {"name": "net", "subnets": [{"subnet": "10.9.0.0/24"}]})

        results = run_as_nobody(
            daemon.socket,
            [
                ("alloc", {"container_id": "c-nobody", "networks": {"net": {}}}),
                ("release", {"container_id": "c-nobody"}),
            ],
        )

        assert results == [
            (
                None,
                {
                    "container_id": "c-nobody",
                    "networks": {
                        "net": {
                            "ifname": "",
                            "ips": [{"address": "10.9.0.1/24", "subnet": "10.9.0.0/24"}],
                        }
                    },
                },
            ),
            (None, {"released": {"net": ["10.9.0.1"]}}),
        ]
    finally:
        daemon.close()


GRANTED_GROUP = 4242
"""A supplementary group of the client's, listed in allow_gids (need not exist in /etc/group)."""


@pytest.mark.parametrize(
    ("groups", "allowed"),
    [
        ((GRANTED_GROUP,), True),
        ((4243, 4244, GRANTED_GROUP), True),
        # More groups than socket.getsockopt can read (256): the ctypes path.
        ((*range(5000, 5300), GRANTED_GROUP), True),
        ((4243,), False),
        ((), False),
    ],
)
def test_a_supplementary_group_in_allow_gids_may_mutate(
    tmp_path: Path, socket_dir: Path, groups: tuple[int, ...], allowed: bool
) -> None:
    # The client's primary gid stays nogroup: only a supplementary one is listed.
    daemon = start_daemon(
        tmp_path, socket_dir, f'socket_mode = "0666"\n[auth]\nallow_gids = [{GRANTED_GROUP}]\n'
    )
    try:
        with daemon.client() as root:
            root.call("network.create", {"name": "net", "subnets": [{"subnet": "10.9.0.0/24"}]})

        ((code, result),) = run_as_nobody(
            daemon.socket, [("alloc", {"container_id": "c", "networks": {"net": {}}})], groups
        )

        with daemon.client() as root:
            leases = root.call("network.get", {"name": "net"})["leases"]
        if allowed:
            assert code is None and result["networks"]["net"]["ips"][0]["address"] == "10.9.0.1/24"
            assert leases == 1
        else:
            assert code == 10 and f"uid {NOBODY}" in result, result
            assert leases == 0
    finally:
        daemon.close()


def test_the_default_socket_mode_keeps_others_out(tmp_path: Path, socket_dir: Path) -> None:
    daemon = start_daemon(tmp_path, socket_dir, "")
    try:
        assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660

        context = multiprocessing.get_context("fork")
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=as_nobody, args=(str(daemon.socket), [], sending))
        child.start()
        assert receiving.poll(30)
        status, payload = receiving.recv()
        child.join(timeout=10)

        assert status == "crash" and "PermissionError" in payload
    finally:
        daemon.close()
