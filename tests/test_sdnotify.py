"""ipamd.daemon.sdnotify against real sockets, fds and processes.

notify() sends to a datagram socket that the test binds, both on a path and
in the abstract namespace. listen_fds() is tested in a child interpreter
that sets LISTEN_PID to its own pid, as systemd does after fork. Wrapping
fd 3 inside pytest's own process would take one of pytest's files. The
in-process listen_fds() tests only cover cases that touch no fd.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipamd.daemon import sdnotify

REPO_ROOT = Path(__file__).resolve().parent.parent

LISTEN_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket bound at a path, standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)  # a failed test must not hang; a passing one never waits
    with sock:
        yield sock


# notify


def test_notify_sends_to_path_socket(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())

    assert sdnotify.notify("READY=1\nSTATUS=serving 3 networks")

    assert receiver.recv(4096) == b"READY=1\nSTATUS=serving 3 networks"


def test_notify_sends_to_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ipamd-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        assert sdnotify.notify("WATCHDOG=1")

        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_encodes_utf8(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())

    assert sdnotify.notify("STATUS=réseau prêt")

    assert receiver.recv(4096) == "STATUS=réseau prêt".encode()


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234", "relative/notify"])
def test_notify_without_usable_socket_is_false(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)

    assert sdnotify.notify("READY=1") is False


def test_notify_to_missing_socket_is_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))

    assert sdnotify.notify("READY=1") is False


def test_notify_rejects_empty_message(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())

    with pytest.raises(ValueError, match="empty"):
        sdnotify.notify("")


# listen_fds, in a child process

# Runs in a fresh interpreter. It does what systemd does between fork and exec:
# it moves the sockets it was given to fds 3, 4, ... (inheritable) and sets
# LISTEN_PID to its own pid. Then it calls listen_fds() and reports back.
CHILD = textwrap.dedent(
    """
    import fcntl, json, os, sys
    from ipamd.daemon import sdnotify

    given = [int(arg) for arg in sys.argv[1:]]
    # Park the fds above the target range first, so that moving one onto
    # fd 3 + i cannot overwrite another that still has to move.
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]
    for fd in given:
        os.close(fd)
    for i, fd in enumerate(parked):
        os.dup2(fd, sdnotify.LISTEN_FDS_START + i, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(given))
    os.environ["LISTEN_FDNAMES"] = ":".join(f"fd{i}" for i in range(len(given)))

    sockets = sdnotify.listen_fds()

    report = {
        "fds": [s.fileno() for s in sockets],
        "families": [s.family.name for s in sockets],
        "types": [s.type.name for s in sockets],
        "inheritable": [os.get_inheritable(s.fileno()) for s in sockets],
        "names": [s.getsockname() for s in sockets],
        "env_left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
        "second_call": len(sdnotify.listen_fds()),
    }
    sockets[1].sendall(b"hello from fd 4")
    print(json.dumps(report))
    """
)


def run_child(fds: list[int]) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, fds)],
        pass_fds=fds,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    return report


def test_listen_fds_takes_passed_sockets(tmp_path: Path) -> None:
    path = str(tmp_path / "ipamd.sock")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as datagram,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as datagram_peer,
    ):
        listener.bind(path)
        listener.listen()
        datagram.bind(str(tmp_path / "d1"))
        datagram_peer.bind(str(tmp_path / "d2"))
        datagram.connect(datagram_peer.getsockname())
        datagram_peer.settimeout(5)

        report = run_child([listener.fileno(), datagram.fileno()])

        assert report == {
            "fds": [3, 4],
            "families": ["AF_UNIX", "AF_UNIX"],
            "types": ["SOCK_STREAM", "SOCK_DGRAM"],
            "inheritable": [False, False],
            "names": [path, str(tmp_path / "d1")],
            "env_left": [],
            "second_call": 0,
        }
        # The socket at fd 4 in the child is the very one the test passed.
        assert datagram_peer.recv(100) == b"hello from fd 4"


# listen_fds, in process: only cases that must not touch any fd


@pytest.fixture
def clean_listen_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LISTEN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def listen_env_left() -> list[str]:
    return [name for name in LISTEN_VARS if name in os.environ]


def test_listen_fds_without_activation_is_empty(clean_listen_env: pytest.MonkeyPatch) -> None:
    assert sdnotify.listen_fds() == []


@pytest.mark.parametrize("pid_offset", [1, -1])
def test_listen_fds_for_another_process_is_empty_and_unset(
    pid_offset: int, clean_listen_env: pytest.MonkeyPatch
) -> None:
    clean_listen_env.setenv("LISTEN_PID", str(os.getpid() + pid_offset))
    clean_listen_env.setenv("LISTEN_FDS", "1")
    clean_listen_env.setenv("LISTEN_FDNAMES", "ipamd.socket")

    assert sdnotify.listen_fds() == []

    assert listen_env_left() == []


def test_listen_fds_zero_is_empty(clean_listen_env: pytest.MonkeyPatch) -> None:
    clean_listen_env.setenv("LISTEN_PID", str(os.getpid()))
    clean_listen_env.setenv("LISTEN_FDS", "0")

    assert sdnotify.listen_fds() == []

    assert listen_env_left() == []


@pytest.mark.parametrize(
    ("pid", "fds", "bad"),
    [
        ("self", "two", "LISTEN_FDS='two'"),
        ("self", "-1", "LISTEN_FDS='-1'"),
        ("self", " 1", "LISTEN_FDS=' 1'"),
        ("abc", "1", "LISTEN_PID='abc'"),
        ("0", "1", "LISTEN_PID='0'"),
    ],
)
def test_listen_fds_malformed_raises_and_unsets(
    pid: str, fds: str, bad: str, clean_listen_env: pytest.MonkeyPatch
) -> None:
    clean_listen_env.setenv("LISTEN_PID", str(os.getpid()) if pid == "self" else pid)
    clean_listen_env.setenv("LISTEN_FDS", fds)

    with pytest.raises(ValueError) as excinfo:
        sdnotify.listen_fds()

    assert bad in str(excinfo.value)
    assert listen_env_left() == []


# watchdog_interval


@pytest.fixture
def clean_watchdog_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return monkeypatch


def test_watchdog_unset_is_none(clean_watchdog_env: pytest.MonkeyPatch) -> None:
    assert sdnotify.watchdog_interval() is None


@pytest.mark.parametrize(
    ("usec", "interval"),
    [("30000000", 15.0), ("1000000", 0.5), ("3", 1.5e-6)],
)
def test_watchdog_interval_is_half_the_timeout(
    usec: str, interval: float, clean_watchdog_env: pytest.MonkeyPatch
) -> None:
    clean_watchdog_env.setenv("WATCHDOG_USEC", usec)

    assert sdnotify.watchdog_interval() == pytest.approx(interval)


def test_watchdog_for_this_pid(clean_watchdog_env: pytest.MonkeyPatch) -> None:
    clean_watchdog_env.setenv("WATCHDOG_USEC", "30000000")
    clean_watchdog_env.setenv("WATCHDOG_PID", str(os.getpid()))

    assert sdnotify.watchdog_interval() == 15.0
    # Still there: the daemon may ask again, e.g. after a restart of its ping task.
    assert os.environ["WATCHDOG_USEC"] == "30000000"


def test_watchdog_for_another_pid_is_none(clean_watchdog_env: pytest.MonkeyPatch) -> None:
    clean_watchdog_env.setenv("WATCHDOG_USEC", "30000000")
    clean_watchdog_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))

    assert sdnotify.watchdog_interval() is None


@pytest.mark.parametrize("usec", ["0", str(2**64 - 1)])
def test_watchdog_disabled_or_infinite_is_none(
    usec: str, clean_watchdog_env: pytest.MonkeyPatch
) -> None:
    clean_watchdog_env.setenv("WATCHDOG_USEC", usec)

    assert sdnotify.watchdog_interval() is None


@pytest.mark.parametrize(
    ("usec", "pid", "bad"),
    [
        ("30s", None, "WATCHDOG_USEC='30s'"),
        ("-1", None, "WATCHDOG_USEC='-1'"),
        ("", None, "WATCHDOG_USEC=''"),
        ("30000000", "me", "WATCHDOG_PID='me'"),
    ],
)
def test_watchdog_malformed_raises(
    usec: str, pid: str | None, bad: str, clean_watchdog_env: pytest.MonkeyPatch
) -> None:
    clean_watchdog_env.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        clean_watchdog_env.setenv("WATCHDOG_PID", pid)

    with pytest.raises(ValueError) as excinfo:
        sdnotify.watchdog_interval()

    assert bad in str(excinfo.value)
