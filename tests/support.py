"""Shared test helpers: the real `ipamd` process and a plain msgpack client.

`RawClient` is deliberately not the project's client library: tests that use it
check the wire format itself (DESIGN.md section 4).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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


class Readiness:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET, bound by the test.

    An abstract address (`@...`): nothing on disk, no path length limit, gone
    when closed. Closed once READY=1 came, so the daemon's later STATUS= lines
    are refused at once rather than filling a queue nobody reads.
    """

    def __init__(self) -> None:
        self.address = f"@ipamd-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])

    def wait(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        """True once READY=1 comes; False if `proc` exits first. Raises TimeoutError."""
        pidfd = os.pidfd_open(proc.pid)  # readable once the process has exited
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._sock, selectors.EVENT_READ)
                selector.register(pidfd, selectors.EVENT_READ)
                deadline = time.monotonic() + timeout
                while True:
                    events = selector.select(deadline - time.monotonic())
                    if not events:
                        raise TimeoutError(f"no READY=1 within {timeout}s")
                    if any(key.fileobj == pidfd for key, _ in events):
                        return False
                    if "READY=1" in self._sock.recv(4096).decode().split("\n"):
                        return True
        finally:
            os.close(pidfd)

    def close(self) -> None:
        self._sock.close()


class LogStream:
    """The daemon's stderr, read as it is written: copied line by line to a file
    (for `Daemon.log`), and waited on for a line (`wait_for`) without polling."""

    def __init__(self, pipe: IO[bytes], path: Path) -> None:
        self._pipe = pipe
        self._path = path
        self._lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._copier = threading.Thread(target=self._copy, daemon=True)
        self._copier.start()

    def _copy(self) -> None:
        with open(self._path, "ab") as log:
            for raw in self._pipe:
                log.write(raw)
                log.flush()
                with self._changed:
                    self._lines.append(raw.decode(errors="replace"))
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float) -> str | None:
        """The first line holding `needle`, once written; None if stderr closes first."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self._lines if needle in line][:1]
            return bool(found) or self._ended

        with self._changed:
            if not self._changed.wait_for(seen, timeout):
                raise TimeoutError(f"no log line with {needle!r} within {timeout}s")
        return found[0].rstrip("\n") if found else None

    def join(self, timeout: float = 10.0) -> None:
        """Wait until every line is in the file (the daemon has closed stderr)."""
        self._copier.join(timeout)


@dataclass
class Daemon:
    """One real `ipamd` process on a temp state dir and socket.

    Its readiness is its READY=1 on a NOTIFY_SOCKET this object binds, unless
    the test sets NOTIFY_SOCKET itself; then it is the daemon's "ready:" log
    line. stderr is a pipe read as the daemon writes it (`wait_for_log`), and
    copied to `log_path`; `stderr_to_file` makes the file the daemon's stderr
    itself (for tests of what the daemon does when stderr is a given file).
    """

    state_dir: Path
    socket: Path
    config: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    stderr_to_file: bool = False
    _readiness: Readiness | None = field(default=None, repr=False)
    _stream: LogStream | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        cmd = [*IPAMD, "--socket", str(self.socket), "--state-dir", str(self.state_dir)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd

    def start(self, wait: bool = True) -> Daemon:
        self.log_path = self.state_dir.parent / f"ipamd-{self.socket.stem}.log"
        env = {**os.environ, **self.extra_env}
        self._readiness = None
        if "NOTIFY_SOCKET" not in self.extra_env:
            self._readiness = Readiness()
            env["NOTIFY_SOCKET"] = self._readiness.address
        self.before_start()
        if self.stderr_to_file:
            with open(self.log_path, "ab") as log:
                self.proc = self.popen(env, stdout=log, stderr=log)
            self._stream = None
        else:
            self.proc = self.popen(env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert self.proc.stderr is not None
            self._stream = LogStream(self.proc.stderr, self.log_path)
        if wait:
            self.wait_ready()
        return self

    def before_start(self) -> None:
        """What a subclass writes to the log before each start."""

    def popen(self, env: dict[str, str], **streams: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(), env=env, **streams)

    def wait_ready(self) -> None:
        if self.wait_ready_or_exit() is not None:
            assert self.proc is not None
            raise RuntimeError(f"ipamd exited {self.proc.returncode}: {self.log()}")

    def wait_ready_or_exit(self, timeout: float = START_TIMEOUT_S) -> int | None:
        """None once the daemon is ready, else its exit status (it refused to start)."""
        assert self.proc is not None
        try:
            if self._readiness is not None:
                ready = self._readiness.wait(self.proc, timeout)
            else:
                ready = self.wait_for_log("INFO ipamd: ready: ", timeout) is not None
        except TimeoutError as e:
            raise TimeoutError(f"ipamd was not ready within {timeout}s: {self.log()}") from e
        finally:
            if self._readiness is not None:
                self._readiness.close()
                self._readiness = None
        if ready:
            return None
        return self.wait(timeout)

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str | None:
        """The first line of this start's stderr holding `needle`, as soon as the
        daemon writes it; None if the daemon closes stderr (exits) first."""
        assert self._stream is not None, "stderr_to_file: read the file"
        return self._stream.wait_for(needle, timeout)

    def client(self, timeout: float = 30.0) -> RawClient:
        return RawClient(self.socket, timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the daemon to exit, and for its last log lines; the exit status."""
        assert self.proc is not None
        status = self.proc.wait(timeout)
        if self._stream is not None:
            self._stream.join()
        return status

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
        self.wait()

    def log(self) -> str:
        """The end of the log file: every line, once the daemon has exited."""
        if self._stream is not None and self.proc is not None and self.proc.poll() is not None:
            self._stream.join()
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""
