"""A Debian 12 container booted with systemd as PID 1, for tests of the installed service.

How it runs on machines where PID 1 is not systemd:
- The cached root file system (build_rootfs.sh) stays read-only: each
  container writes to an overlay upper directory of its own, which lasts
  across the container's reboots and goes with it.
- `systemd-nspawn -b --register=no --keep-unit`: there is no systemd-machined
  to register with and no systemd to make a scope for it. `--private-network`
  gives it a network namespace of its own (loopback only), so nothing it does
  reaches the host's network.
- Readiness is an event, never a sleep: nspawn runs with NOTIFY_SOCKET
  pointing at a datagram socket this module binds, and `--notify-ready=yes`.
  It reports X_NSPAWN_LEADER_PID (the container's PID 1, as the host sees it)
  and READY=1 once the container's systemd is up; `systemctl
  is-system-running --wait` inside then waits for the boot to finish.
- Commands go in with `nsenter -t LEADER -a` (all of PID 1's namespaces and
  its root) and a clean environment, so nothing of the host's leaks in.
- A reboot inside ends nspawn with status 133, as on a host, where
  systemd-nspawn@.service restarts it (RestartForceExitStatus=133): here
  `reboot()` starts it again on the same overlay.
- Only processes started here are ever signalled, by their process group.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BOOT_TIMEOUT_S = 120.0
REBOOT_STATUS = 133
"""nspawn's exit status when the container asked for a reboot."""

CONTAINER_PATH = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Container:
    def __init__(self, rootfs: Path, workdir: Path, binds: dict[Path, str]) -> None:
        self.rootfs = rootfs
        self.workdir = workdir
        self.binds = binds
        self.merged = workdir / "merged"
        self.console = workdir / "console.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self._mounted = False

    # -- life cycle ------------------------------------------------------------------

    def boot(self) -> None:
        if not self._mounted:
            self._mount_overlay()
        notify_path = self.workdir / "nspawn-notify.sock"
        notify_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            argv = [
                "systemd-nspawn",
                "--quiet",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--notify-ready=yes",
                "--private-network",
                f"--machine=ipamd-test-{os.getpid()}",
                f"--directory={self.merged}",
                *(f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()),
            ]
            with self.console.open("ab") as console:
                self.nspawn = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=console,
                    env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
                    start_new_session=True,
                )
            self.leader = self._wait_until_ready(notify)
        state = self.run("systemctl", "is-system-running", "--wait", check=False)
        assert state.stdout.strip() == "running", self.diagnose(state)

    def _wait_until_ready(self, notify: socket.socket) -> int:
        leader = 0
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"the container did not boot in {BOOT_TIMEOUT_S}s: {self.tail()}"
            notify.settimeout(left)
            try:
                message = notify.recv(4096).decode()
            except TimeoutError:
                continue  # the assertion above reports it
            for assignment in message.split("\n"):
                key, _, value = assignment.partition("=")
                if key == "X_NSPAWN_LEADER_PID":
                    leader = int(value)
                elif key == "READY" and value == "1":
                    assert leader, f"READY=1 before X_NSPAWN_LEADER_PID: {message!r}"
                    return leader

    def reboot(self) -> None:
        """`systemctl reboot` inside, then start nspawn again, as a host would."""
        assert self.nspawn is not None
        # The reply may never come: the manager goes away while answering.
        self.run("systemctl", "reboot", check=False)
        status = self.nspawn.wait(timeout=BOOT_TIMEOUT_S)
        assert status == REBOOT_STATUS, f"nspawn exited {status}, not {REBOOT_STATUS}"
        self.boot()

    def shutdown(self) -> None:
        """Power off (kill nspawn if that fails) and unmount the overlay."""
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                self.run("systemctl", "poweroff", check=False, timeout=30)
                try:
                    self.nspawn.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.nspawn.pid, signal.SIGKILL)
                    self.nspawn.wait()
        finally:
            if self._mounted:
                subprocess.run(["umount", "--lazy", str(self.merged)], check=False)
                self._mounted = False

    def _mount_overlay(self) -> None:
        upper, work = self.workdir / "upper", self.workdir / "work"
        for path in (upper, work, self.merged):
            path.mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={self.rootfs},upperdir={upper},workdir={work}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)], check=True
        )
        self._mounted = True

    # -- commands --------------------------------------------------------------------

    def command(
        self, *argv: str, user: str | None = None, env: dict[str, str] | None = None
    ) -> list[str]:
        """The host argv that runs `argv` inside, as root or as `user` (with its groups)."""
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        variables = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", **(env or {})}
        return [
            "nsenter",
            f"--target={self.leader}",
            "--all",
            "env",
            "-i",
            *(f"{key}={value}" for key, value in variables.items()),
            *as_user,
            *argv,
        ]

    def run(
        self,
        *argv: str,
        user: str | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*argv, user=user, env=env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert done.returncode == 0, self.diagnose(done)
        return done

    def start(self, *argv: str, user: str | None = None) -> subprocess.Popen[str]:
        """`argv` inside, in the background; its stdout is a pipe. Stop it with `stop`."""
        return subprocess.Popen(
            self.command(*argv, user=user),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    @staticmethod
    def stop(proc: subprocess.Popen[str]) -> None:
        """End a `start`ed process and what it runs inside (its own process group)."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", f"--property={prop}", "--value", unit).stdout.strip()

    def file(self, path: str) -> str:
        return self.run("cat", path).stdout

    # -- waiting for events ----------------------------------------------------------

    def journal_cursor(self) -> str:
        out = self.run("journalctl", "--lines=1", "--output=json", "--no-pager").stdout
        return str(json.loads(out.splitlines()[-1])["__CURSOR"])

    def wait_for_journal(
        self, unit: str, pattern: str, after: str, count: int = 1, timeout: float = 120.0
    ) -> list[str]:
        """The unit's journal lines after cursor `after`, up to the `count`th matching `pattern`."""
        follower = self.start(
            "journalctl",
            f"--unit={unit}",
            "--follow",
            f"--after-cursor={after}",
            "--output=cat",
            "--no-pager",
        )
        try:
            reader, lines = LineReader(follower), []
            deadline = time.monotonic() + timeout
            for _ in range(count):
                lines += reader.until(re.compile(pattern), deadline - time.monotonic())
        finally:
            self.stop(follower)
        return lines

    @contextmanager
    def watching_status_text(self, unit: str) -> Iterator[StatusWatch]:
        """Watch the unit's StatusText on D-Bus (PropertiesChanged), from before the block."""
        path = "/org/freedesktop/systemd1/unit/" + _bus_label(unit)
        match = (
            "type='signal',interface='org.freedesktop.DBus.Properties',"
            f"member='PropertiesChanged',path='{path}'"
        )
        monitor = self.start("busctl", "--system", "monitor", "--json=short", f"--match={match}")
        try:
            # busctl says so once it is a monitor: nothing sent later is missed.
            reader = LineReader(monitor)
            reader.until(re.compile("Monitoring bus message stream"), 30)
            yield StatusWatch(reader)
        finally:
            self.stop(monitor)

    # -- reports ---------------------------------------------------------------------

    def tail(self, lines: int = 40) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def diagnose(self, done: subprocess.CompletedProcess[str]) -> str:
        """A failed command, with what the journal says about ipamd."""
        journal = subprocess.run(
            self.command(
                "journalctl",
                "--unit=ipamd.service",
                "--unit=ipamd.socket",
                "--lines=30",
                "--no-pager",
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return (
            f"{done.args[-6:]} exited {done.returncode}\nstdout: {done.stdout}\n"
            f"stderr: {done.stderr}\njournal:\n{journal.stdout}"
        )


class StatusWatch:
    def __init__(self, reader: LineReader) -> None:
        self.reader = reader

    def wait_for(self, wanted: str, timeout: float = 30.0) -> list[str]:
        """Every StatusText sent until one contains `wanted` (which ends the list)."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while not any(wanted in text for text in seen):
            left = deadline - time.monotonic()
            assert left > 0, f"no StatusText with {wanted!r} within {timeout}s: {seen}"
            message = json.loads(self.reader.until(re.compile(r"^\{"), left)[-1])
            _, changed, _ = message["payload"]["data"]
            if "StatusText" in changed:
                seen.append(changed["StatusText"]["data"])
        return seen


class LineReader:
    """A `start`ed process's stdout, line by line, with deadlines (select, no sleeps)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffered = ""

    def until(self, pattern: re.Pattern[str], timeout: float) -> list[str]:
        """Lines up to and including the first that matches `pattern`."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while True:
            while "\n" in self.buffered:
                line, self.buffered = self.buffered.split("\n", 1)
                lines.append(line)
                if pattern.search(line):
                    return lines
            left = deadline - time.monotonic()
            assert left > 0, f"nothing matched {pattern.pattern!r} within {timeout}s: {lines}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536).decode(errors="replace")
                assert chunk, f"the output ended before {pattern.pattern!r}: {lines}"
                self.buffered += chunk


def _bus_label(unit: str) -> str:
    """systemd's D-Bus object path escaping: every byte but [A-Za-z0-9] as _XX."""
    return "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in unit)
