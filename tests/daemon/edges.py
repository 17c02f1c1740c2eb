"""Helpers for the edge tests (issue 14): the real `ipamd`, waited for by READY=1.

A daemon started here gets a NOTIFY_SOCKET the test binds, and the test waits
for its READY=1 datagram (or its exit) instead of polling the socket.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.daemon.e2e import notify_receiver, receive_notifications
from tests.support import IPAMD, START_TIMEOUT_S, Daemon

IPAMD_CLIENT = [sys.executable, "-m", "ipamd.cli"]
NOBODY = 65534


def start_ready(daemon: Daemon, notify_path: Path | None = None) -> list[str]:
    """Start `daemon` and wait for its READY=1; every notification up to it."""
    notify_path = notify_path or daemon.socket.with_name(f"notify-{daemon.socket.stem}")
    receiver = notify_receiver(notify_path)
    try:
        daemon.extra_env["NOTIFY_SOCKET"] = str(notify_path)
        daemon.start(wait=False)
        seen: list[str] = []
        while "READY=1" not in seen:
            lines = receive_notifications(receiver, START_TIMEOUT_S)
            if not lines:
                raise TimeoutError(f"no READY=1 within {START_TIMEOUT_S}s: {daemon.log()}")
            seen += lines
        return seen
    finally:
        receiver.close()
        notify_path.unlink()


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; stdout and stderr captured as text."""
    kwargs.setdefault("timeout", 60)
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


def ipamd(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run([*IPAMD, *args], **kwargs)


def ipamd_client(socket: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run([*IPAMD_CLIENT, "--socket", str(socket), *args], **kwargs)


def nobody_home() -> Path:
    """A fresh directory owned by uid 65534, under a path it may traverse."""
    home = Path(tempfile.mkdtemp(prefix="ipamd-nobody-"))
    os.chmod(home, 0o755)
    os.chown(home, NOBODY, NOBODY)
    return home


def nobody_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for uid 65534 with HOME at `home` and no XDG or systemd variables."""
    keep = {"PATH", "LANG", "LC_ALL", "PYTHONPATH"}
    env = {key: value for key, value in os.environ.items() if key in keep}
    env.update(HOME=str(home), **extra)
    return env


def as_nobody() -> dict[str, Any]:
    """subprocess.run arguments that run the child as uid/gid 65534."""
    pwd.getpwuid(NOBODY)  # fails loudly if the machine has no such user
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []}


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
