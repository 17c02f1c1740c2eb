"""Shared test helpers: the real `ipamd` process and a plain msgpack client.

`RawClient` is deliberately not the project's client library: tests that use it
check the wire format itself (DESIGN.md section 4).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

IPAMD = [sys.executable, "-m", "ipamd.daemon"]
START_TIMEOUT_S = 20.0


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('name')}: {error.get('message')}")
        self.code = error.get("code")
        self.name = error.get("name")
        self.message = error.get("message")


class RawClient:
    """Blocking msgpack-RPC over a Unix socket, written from the spec."""

    def __init__(self, path: Path | str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.unpacker = msgpack.Unpacker(raw=False)
        self.msgid = 0

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        self.msgid += 1
        frame = [0, self.msgid, method, [] if params is None else [params]]
        self.sock.sendall(msgpack.packb(frame, use_bin_type=True))
        return self.msgid

    def receive(self) -> list[Any]:
        """The next response frame `[1, msgid, error, result]`."""
        while True:
            for frame in self.unpacker:
                return frame  # type: ignore[no-any-return]
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("daemon closed the connection")
            self.unpacker.feed(data)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        msgid = self.send(method, params)
        frame = self.receive()
        assert frame[0] == 1 and frame[1] == msgid, frame
        if frame[2] is not None:
            raise RpcError(frame[2])
        return frame[3]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Daemon:
    """One real `ipamd` process on a temp state dir and socket."""

    state_dir: Path
    socket: Path
    config: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def command(self) -> list[str]:
        cmd = [*IPAMD, "--socket", str(self.socket), "--state-dir", str(self.state_dir)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd

    def start(self, wait: bool = True) -> Daemon:
        self.log_path = self.state_dir.parent / f"ipamd-{self.socket.stem}.log"
        env = {**os.environ, **self.extra_env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ipamd exited {self.proc.returncode}: {self.log()}")
            try:
                with RawClient(self.socket, timeout=2) as client:
                    client.call("ping")
                return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"ipamd did not answer within {START_TIMEOUT_S}s: {self.log()}")

    def client(self, timeout: float = 30.0) -> RawClient:
        return RawClient(self.socket, timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Stop it if it still runs (SIGTERM), killing it if that fails."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=10)
            except Exception:
                self.kill()

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""
