"""systemd integration of the real daemon: socket activation, sd_notify, watchdog.

- Socket activation: `systemd-socket-activate -l PATH` runs the unit's ExecStart
  (with the venv's console script) on the first connection; that first client
  connects before the daemon exists and is answered.
- Notify: a datagram socket in tmp stands in for systemd's NOTIFY_SOCKET.
  READY=1 only once the socket answers, STOPPING=1 on SIGTERM, exit 0.
- Watchdog: WATCHDOG=1 at half WATCHDOG_USEC; none while the daemon is stopped.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipamd.daemon.status_line import STATUS_REFRESH_S
from tests.daemon.e2e import (
    IPAMD_SCRIPT,
    SocketActivator,
    notify_receiver,
    receive_notifications,
)
from tests.support import Daemon, RawClient

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_UNIT = REPO_ROOT / "systemd" / "ipamd.service"
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


def exec_start(state_dir: Path) -> list[str]:
    """The unit's ExecStart, with the venv's console script and a temp state dir."""
    lines = [
        line.split("=", 1)[1]
        for line in SERVICE_UNIT.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    (command,) = lines
    # The installed config starts as the shipped example, which changes nothing.
    config = state_dir.parent / "ipamd.conf"
    shutil.copy(REPO_ROOT / "systemd" / "ipamd.conf", config)
    argv = shlex.split(command.replace("${STATE_DIRECTORY}", str(state_dir)))
    assert argv[0] == "/opt/ipamd/bin/ipamd"
    assert "--socket" not in argv  # the socket is passed in
    argv[argv.index("--config") + 1] = str(config)
    return [str(IPAMD_SCRIPT), *argv[1:]]


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_socket_activation_answers_a_client_that_came_before_the_daemon(
    tmp_path: Path,
) -> None:
    assert SOCKET_ACTIVATE is not None
    sock_path = tmp_path / "ipamd.sock"
    state = tmp_path / "state"
    activator = SocketActivator(
        [SOCKET_ACTIVATE, "-l", str(sock_path), *exec_start(state)],
        tmp_path / "activate.log",
        sockets=1,
    )
    try:
        activator.wait_listening()
        assert not state.exists()  # no daemon yet: it starts on our connection

        with RawClient(sock_path, timeout=30) as client:
            ping = client.call("ping")
            client.call("network.create", {"name": "n", "subnets": [{"subnet": "10.1.0.0/24"}]})
            result = client.call("alloc", {"container_id": "c1", "networks": {"n": {}}})
            status = client.call("status")

        assert ping["version"]
        assert result["networks"]["n"]["ips"][0]["address"] == "10.1.0.1/24"
        # systemd-socket-activate execs the daemon in its own process.
        assert status["pid"] == activator.proc.pid
        assert status["state_dir"] == str(state)
        with RawClient(sock_path, timeout=10) as again:  # the same socket keeps serving
            assert again.call("get", {"container_id": "c1"})["networks"] == result["networks"]

        activator.proc.send_signal(signal.SIGTERM)
        assert activator.proc.wait(timeout=20) == 0
        # The socket belongs to whoever passed it in: the daemon leaves it alone.
        assert sock_path.exists()
    finally:
        activator.close()


# -- sd_notify ---------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    with notify_receiver(tmp_path / "notify.sock") as sock:
        yield sock


def notified_daemon(tmp_path: Path, notify: socket.socket, **env: str) -> Daemon:
    return Daemon(
        state_dir=tmp_path / "state",
        socket=tmp_path / "ipamd.sock",
        extra_env={"NOTIFY_SOCKET": notify.getsockname(), **env},
    )


def wait_for_assignment(notify: socket.socket, wanted: str, timeout: float = 20.0) -> list[str]:
    """Every assignment received until (and including the datagram holding) `wanted`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted} within {timeout}s; got {seen}"
        seen += receive_notifications(notify, left)
    return seen


def test_ready_only_once_the_socket_answers_and_stopping_on_sigterm(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    daemon = notified_daemon(tmp_path, notify_socket)
    daemon.start(wait=False)
    try:
        first = wait_for_assignment(notify_socket, "READY=1")
        # When READY=1 arrives the listening socket exists and answers straight away.
        assert daemon.socket.exists()
        with RawClient(daemon.socket, timeout=5) as client:
            assert client.call("ping")["version"]
        assert any(line.startswith("STATUS=") for line in first), first

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        stopping = wait_for_assignment(notify_socket, "STOPPING=1")
        assert daemon.proc.wait(timeout=20) == 0
    finally:
        daemon.close()

    assert "READY=1" not in stopping
    assert not daemon.socket.exists()


# -- watchdog ------------------------------------------------------------------------


def test_watchdog_pings_while_alive_and_not_while_stopped(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    daemon = notified_daemon(tmp_path, notify_socket, WATCHDOG_USEC="200000")
    daemon.start(wait=False)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    try:
        wait_for_assignment(notify_socket, "READY=1")
        # Every 0.1 s (half of 200 ms): at least 3 within a second.
        started = time.monotonic()
        pings = 0
        while pings < 3:
            assert time.monotonic() - started < 1.5, f"only {pings} WATCHDOG=1 in 1.5 s"
            pings += receive_notifications(notify_socket, 1.0).count("WATCHDOG=1")

        os.kill(pid, signal.SIGSTOP)
        os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOWAIT)  # returns once it has stopped
        drain(notify_socket)  # what it sent before it stopped
        # Five watchdog intervals without a ping: systemd would kill it now.
        assert receive_notifications(notify_socket, 0.5) == []

        os.kill(pid, signal.SIGCONT)
        wait_for_assignment(notify_socket, "WATCHDOG=1", timeout=5)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            os.kill(pid, signal.SIGCONT)
        daemon.close()


def drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(4096)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)


# -- STATUS= ---------------------------------------------------------------------------


def statuses(assignments: list[str]) -> list[str]:
    return [a.removeprefix("STATUS=") for a in assignments if a.startswith("STATUS=")]


def test_status_follows_the_counts_and_stays_quiet_when_nothing_changes(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    daemon = notified_daemon(tmp_path, notify_socket)
    daemon.start(wait=False)
    try:
        first = wait_for_assignment(notify_socket, "READY=1")
        assert statuses(first) == [
            "0 lease(s) on 0 network(s), 0 client(s) connected, 0 change(s) since start"
        ]

        with RawClient(daemon.socket, timeout=10) as client:
            client.call("network.create", {"name": "n", "subnets": [{"subnet": "10.1.0.0/24"}]})
            for cid in ("c1", "c2"):
                client.call("alloc", {"container_id": cid, "networks": {"n": {}}})
        # Once the client is gone: its three changes, and no client.
        settled = "2 lease(s) on 1 network(s), 0 client(s) connected, 3 change(s) since start"
        seen = wait_for_assignment(notify_socket, f"STATUS={settled}", timeout=10)
        assert "READY=1" not in seen

        # Nothing changes, so nothing is sent: two refresh intervals of silence.
        assert receive_notifications(notify_socket, 2 * STATUS_REFRESH_S + 0.5) == []
    finally:
        daemon.close()
