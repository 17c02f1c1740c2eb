"""Helpers for the end-to-end tests of the real `ipamd` process (tests/daemon).

Everything here talks to the daemon through `tests.support.RawClient` or raw
msgpack bytes, so the wire format of DESIGN.md section 4 is what gets checked.
Waiting is for an event (READY=1, a log line as it is written, an answer, a
socket timeout); `wait_for` polls, bounded, only where the daemon gives none.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.support import IPAMD, RawClient, RpcError

# The venv's console script: what systemd/ipamd.service's ExecStart runs.
IPAMD_SCRIPT = Path(sys.executable).parent / "ipamd"
# Error codes of DESIGN.md section 4.
ERROR_NAMES = {
    1: "invalid_request",
    2: "unknown_method",
    3: "network_not_found",
    4: "network_exists",
    5: "address_in_use",
    6: "address_not_allocatable",
    7: "range_exhausted",
    8: "lease_not_found",
    9: "network_in_use",
    10: "permission_denied",
    11: "unavailable",
    12: "storage_error",
    13: "request_too_large",
}
EXIT_USAGE = 64
EXIT_CONFIG = 78

_subnet_numbers = itertools.count(1)


def next_subnet_prefix() -> str:
    """A fresh `10.N.M` prefix, so tests sharing a daemon never share addresses."""
    n = next(_subnet_numbers)
    return f"10.{100 + n // 250}.{n % 250}"


@dataclass(frozen=True)
class WireError:
    """An error response's `{"code", "name", "message"}`, checked and typed."""

    code: int
    name: str
    message: str


def call_error(
    client: RawClient, method: str, params: Any = None, code: int | None = None
) -> WireError:
    """The error `method` fails with; checks its wire shape (and code, if given)."""
    with pytest.raises(RpcError) as info:
        client.call(method, params)
    raised = info.value
    assert isinstance(raised.code, int) and isinstance(raised.message, str), raised
    assert isinstance(raised.name, str) and ERROR_NAMES.get(raised.code) == raised.name, raised
    if code is not None:
        assert raised.code == code, f"expected {ERROR_NAMES[code]}, got {raised}"
    return WireError(raised.code, raised.name, raised.message)


def send_frame(client: RawClient, frame: Any) -> None:
    client.sock.sendall(msgpack.packb(frame, use_bin_type=True))


def raw_call(client: RawClient, frame: list[Any]) -> list[Any]:
    """Send any request frame (which may break the rules) and read one response."""
    send_frame(client, frame)
    response = client.receive()
    check_response_shape(response)
    return response


def check_response_shape(response: Any) -> None:
    assert isinstance(response, list) and len(response) == 4, response
    kind, msgid, error, result = response
    assert kind == 1, response
    assert isinstance(msgid, int) and 0 <= msgid < 2**32, response
    if error is not None:
        assert result is None, response
        assert set(error) == {"code", "name", "message"}, response
        assert ERROR_NAMES.get(error["code"]) == error["name"], response
        assert isinstance(error["message"], str) and error["message"], response


def receive_until_closed(client: RawClient) -> list[list[Any]]:
    """Every response frame until the daemon closes the connection."""
    frames: list[list[Any]] = []
    while True:
        try:
            frames.append(client.receive())
        except ConnectionError:  # EOF, or ECONNRESET when it closed with our bytes unread
            return frames


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until true; fail after `timeout` seconds. Only where no
    event exists to wait for (see Daemon.wait_for_log, READY=1)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


def create_network(
    client: RawClient,
    name: str,
    prefix: str | None = None,
    *,
    gateway: bool = True,
    cidr: int = 24,
    **subnet: Any,
) -> dict[str, Any]:
    """Create a one-subnet IPv4 network `prefix.0/cidr` (gateway `prefix.1`)."""
    prefix = prefix or next_subnet_prefix()
    definition: dict[str, Any] = {"subnet": f"{prefix}.0/{cidr}", **subnet}
    if gateway:
        definition["gateway"] = f"{prefix}.1"
    return client.call("network.create", {"name": name, "subnets": [definition]})  # type: ignore[no-any-return]


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_ipamd(
    args: list[str], timeout: float = 30.0, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run `ipamd ARGS` to completion (for start-up failures); stderr captured."""
    return subprocess.run(
        [*IPAMD, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def check_state_dir(state_dir: Path) -> None:
    """`ipamd check` finds the database consistent (DESIGN.md s5)."""
    done = run_ipamd(["check", "--state-dir", str(state_dir)])
    assert done.returncode == 0, done.stdout + done.stderr


def notify_receiver(path: Path) -> socket.socket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


def receive_notifications(sock: socket.socket, timeout: float) -> list[str]:
    """One datagram's assignments (e.g. ["READY=1", "STATUS=..."]); [] on timeout."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return []
    return data.decode().split("\n")


def private_socket_dir() -> Path:
    """A fresh directory under /tmp that any user may traverse (tmp_path may be 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ipamd-e2e-"))
    os.chmod(path, 0o755)
    return path


class SocketActivator:
    """`systemd-socket-activate ARGV`, started; `wait_listening` returns once every
    socket listens (it says "Listening on ADDR as FD." after listen(2), the event
    to wait for: a socket file exists from bind(2) on, before connects succeed).
    Its output is copied to `log_path` by a thread, so the daemon never blocks on
    a full pipe."""

    def __init__(self, argv: list[str], log_path: Path, sockets: int) -> None:
        self.log_path = log_path
        self._sockets = sockets
        self._listening = threading.Event()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._copier = threading.Thread(target=self._copy, daemon=True)
        self._copier.start()

    def _copy(self) -> None:
        assert self.proc.stdout is not None
        seen = 0
        with self.log_path.open("wb") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith(b"Listening on "):
                    seen += 1
                    if seen == self._sockets:
                        self._listening.set()

    def wait_listening(self, timeout: float = 30.0) -> None:
        if not self._listening.wait(timeout):
            raise AssertionError(f"not listening within {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        """Kill it if it still runs; then its whole output is in the log."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._copier.join(timeout=10)
