"""Where the metrics socket comes from: systemd (LISTEN_FDNAMES) or `[metrics] listen`.

- Socket activation: `systemd-socket-activate` passes both sockets, named as
  systemd/ipamd.socket and systemd/ipamd-metrics.socket name them; a scrape
  that arrives before the daemon exists starts it and is answered.
- `[metrics] listen`: bad values stop the daemon with status 78 naming the
  value; an address in use stops it with 73; unset, no TCP socket is opened.
- `listen_fds_with_names` follows sd_listen_fds_with_names(3).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.e2e import EXIT_CONFIG, SocketActivator, run_ipamd, write_config
from tests.daemon.metrics_support import free_port, parse, scrape
from tests.daemon.test_systemd_activation import exec_start
from tests.support import Daemon, RawClient

REPO_ROOT = Path(__file__).resolve().parents[2]
METRICS_UNIT = REPO_ROOT / "systemd" / "ipamd-metrics.socket"
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
EXIT_CANTCREAT = 73


def unit_setting(unit: Path, key: str) -> str:
    (value,) = [
        line.split("=", 1)[1]
        for line in unit.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]
    return value


def test_the_metrics_unit_listens_on_loopback_and_names_its_fd() -> None:
    listen = unit_setting(METRICS_UNIT, "ListenStream")
    host, _, port = listen.rpartition(":")
    assert host == "127.0.0.1" and 9000 < int(port) < 10000
    assert unit_setting(METRICS_UNIT, "FileDescriptorName") == "metrics"
    assert unit_setting(METRICS_UNIT, "Service") == "ipamd.service"


@pytest.mark.slow
@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_socket_activation_serves_metrics_on_the_passed_tcp_socket(tmp_path: Path) -> None:
    assert SOCKET_ACTIVATE is not None
    rpc_path = tmp_path / "ipamd.sock"
    state = tmp_path / "state"
    port = free_port()
    activator = SocketActivator(
        [
            SOCKET_ACTIVATE,
            "-l",
            str(rpc_path),
            "-l",
            f"127.0.0.1:{port}",
            # ipamd.socket's fd keeps systemd's default name (the unit's); the
            # metrics unit sets FileDescriptorName=metrics.
            f"--fdname=ipamd.socket:{unit_setting(METRICS_UNIT, 'FileDescriptorName')}",
            *exec_start(state),
        ],
        tmp_path / "activate.log",
        sockets=2,
    )
    try:
        activator.wait_listening()
        assert not state.exists()  # no daemon yet: the scrape starts it

        families = parse(scrape(port))
        assert families["ipamd_networks"].value("ipamd_networks") == 0

        with RawClient(rpc_path, timeout=30) as client:
            client.call("network.create", {"name": "act", "subnets": [{"subnet": "10.3.0.0/24"}]})
            client.call("alloc", {"container_id": "a1", "networks": {"act": {}}})
            status = client.call("status")
            text = client.call("metrics")["text"]
        assert status["pid"] == activator.proc.pid  # one daemon serves both sockets
        over_http = parse(scrape(port))
        assert over_http["ipamd_network_leases"].value("ipamd_network_leases", network="act") == 1
        assert set(over_http) == set(parse(text))

        activator.proc.send_signal(signal.SIGTERM)
        assert activator.proc.wait(timeout=20) == 0
    finally:
        activator.close()
    assert "metrics on http://127.0.0.1:" in activator.log()


@pytest.mark.parametrize(
    "value",
    [
        '"localhost:9388"',
        '"127.0.0.1"',
        '"127.0.0.1:0"',
        '"127.0.0.1:65536"',
        '"::1:9388"',
        '"[::1]:port"',
        "9388",
    ],
)
def test_a_bad_listen_address_is_a_config_error_naming_it(tmp_path: Path, value: str) -> None:
    config = write_config(tmp_path / "c.toml", f"[metrics]\nlisten = {value}\n")
    done = run_ipamd(
        ["--config", str(config), "--socket", str(tmp_path / "s"), "--state-dir", str(tmp_path)]
    )
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "metrics.listen" in done.stderr
    assert value.strip('"') in done.stderr
    assert not (tmp_path / "s").exists()


def test_an_unknown_metrics_key_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[metrics]\nport = 9388\nlisten = "127.0.0.1:1"\n')
    done = run_ipamd(["--config", str(config), "--socket", str(tmp_path / "s")])
    assert done.returncode == EXIT_CONFIG
    assert "port" in done.stderr


def test_a_listen_address_in_use_stops_the_daemon_with_73(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "c.toml", f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        done = run_ipamd(
            ["--config", str(config), "--socket", str(tmp_path / "s"), "--state-dir", str(tmp_path)]
        )
    assert done.returncode == EXIT_CANTCREAT, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "s").exists()  # nothing bound, nothing left behind


@pytest.mark.slow
def test_ipv6_loopback_listen(tmp_path: Path) -> None:
    port = free_port()
    daemon = Daemon(
        state_dir=tmp_path / "state",
        socket=tmp_path / "ipamd.sock",
        config=write_config(tmp_path / "c.toml", f'[metrics]\nlisten = "[::1]:{port}"\n'),
    ).start()
    try:
        with socket.create_connection(("::1", port), timeout=30) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK") and b"ipamd_build_info" in data
    finally:
        daemon.close()


def test_no_tcp_socket_without_metrics_config(daemon: Daemon) -> None:
    assert daemon.proc is not None
    fds = Path(f"/proc/{daemon.proc.pid}/fd")
    inodes = set()
    for fd in fds.iterdir():
        # The fixture's readiness ping may still be closing on the daemon's side.
        with contextlib.suppress(FileNotFoundError):
            inodes.add(os.readlink(fd))
    sockets = {i.removeprefix("socket:[").rstrip("]") for i in inodes if i.startswith("socket:")}
    tcp = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            tcp.add(line.split()[9])
    assert not sockets & tcp


# -- sd_listen_fds_with_names, in a child process (it takes over fds 3, 4, ...) --------

CHILD = """
import fcntl, json, os, socket, sys
from ipamd.daemon import sdnotify

count, names = int(sys.argv[1]), sys.argv[2]
made = [socket.socket() for _ in range(count)]
parked = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100) for s in made]
for s in made:
    s.close()
for i, fd in enumerate(parked):
    os.dup2(fd, sdnotify.LISTEN_FDS_START + i, inheritable=True)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(count)
if names != "-":
    os.environ["LISTEN_FDNAMES"] = names
try:
    named = sdnotify.listen_fds_with_names()
except ValueError as e:
    print(json.dumps({"error": str(e)}))
else:
    print(json.dumps({
        "named": [[name, sock.fileno()] for name, sock in named],
        "env_left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    }))
"""


def names_in_child(count: int, names: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(count), names],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_listen_fds_with_names() -> None:
    report = names_in_child(2, "ipamd.socket:metrics")
    assert report == {"named": [["ipamd.socket", 3], ["metrics", 4]], "env_left": []}


def test_listen_fds_without_names_are_unknown() -> None:
    assert names_in_child(1, "-")["named"] == [["unknown", 3]]


def test_listen_fds_names_that_do_not_match_the_count_are_refused() -> None:
    error = names_in_child(2, "metrics")["error"]
    assert error == "LISTEN_FDNAMES='metrics' names 1 fd(s), but LISTEN_FDS passes 2"
