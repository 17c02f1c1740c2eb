"""The daemon's environment: every variable read once, at start, and judged before READY.

A variable that is present but malformed never crashes the daemon later (a
ValueError inside the nursery, after READY, used to). Each one gets one of two
fates, decided here:

- refused, exit 78 (EX_CONFIG) naming it: LISTEN_PID, LISTEN_FDS and
  LISTEN_FDNAMES, when meant for this process. A socket systemd passed that
  cannot be used (or told apart from the metrics socket) means clients cannot
  reach the daemon, and guessing would hide a broken unit.
- ignored with a warning naming it, the way libsystemd treats them:
  WATCHDOG_USEC and WATCHDOG_PID (sd_watchdog_enabled(3) fails and daemons
  run without a watchdog), NOTIFY_SOCKET that is neither a path nor an
  @abstract name (sd_notify(3) cannot send), JOURNAL_STREAM that is not
  DEVICE:INODE (lines then carry their own time), and, for users other than
  root, a relative XDG_RUNTIME_DIR or XDG_STATE_HOME (the XDG spec says to
  ignore those; paths.py does).

IPAMD_SOCKET is the clients' variable (client/discovery.py); the daemon binds
--socket, the config's `socket` or the default, never it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from ipamd import paths
from ipamd.daemon import sdnotify


class EnvironmentRefused(Exception):
    """A variable the daemon cannot start with (exit status 78), named in the message."""


@dataclass(frozen=True, slots=True)
class StartEnvironment:
    # Sockets systemd passed in (LISTEN_FDS) with their LISTEN_FDNAMES, in order;
    # [] when not socket-activated.
    passed_sockets: list[tuple[str, socket.socket]]
    # Seconds between WATCHDOG=1 pings; None for no watchdog.
    watchdog_interval: float | None
    # One line per variable that was ignored, naming it and why.
    warnings: tuple[str, ...]


def read_environment(environ: Mapping[str, str] = os.environ) -> StartEnvironment:
    """Judge every variable the daemon reads. Call once, before binding and READY.

    Takes the passed sockets (and unsets LISTEN_*, as sd_listen_fds does).
    Raises EnvironmentRefused for a variable the daemon cannot start with.
    """
    warnings: list[str] = []
    try:
        passed = sdnotify.listen_fds_with_names()
    except ValueError as e:
        raise EnvironmentRefused(
            f"{e}: the sockets systemd passed cannot be used; check the .socket unit"
        ) from None
    try:
        interval = sdnotify.watchdog_interval()
    except ValueError as e:
        warnings.append(f"{e}: ignored, no watchdog pings (as libsystemd does)")
        interval = None
    notify = environ.get("NOTIFY_SOCKET", "")
    if notify and not notify.startswith(("/", "@")):
        warnings.append(
            f"NOTIFY_SOCKET={notify!r} is neither an absolute path nor an @abstract name:"
            " ignored, no readiness notification is sent"
        )
    stream = environ.get("JOURNAL_STREAM", "")
    if stream and not _is_device_inode(stream):
        warnings.append(
            f"JOURNAL_STREAM={stream!r} is not DEVICE:INODE: ignored, stderr is not taken"
            " for the journal"
        )
    warnings += xdg_warnings(environ)
    return StartEnvironment(passed, interval, tuple(warnings))


def xdg_warnings(environ: Mapping[str, str] = os.environ) -> list[str]:
    """One line per XDG variable the defaults ignore (relative), for users other than
    root; `ipamd check` says the same, as it picks the same state dir."""
    if os.geteuid() == 0:
        return []
    return [
        f"{name}={environ[name]!r} is not an absolute path: ignored, as the XDG Base"
        " Directory spec says"
        for name in (paths.XDG_RUNTIME_DIR, paths.XDG_STATE_HOME)
        if environ.get(name) and paths.xdg_dir(environ, name) is None
    ]


def _is_device_inode(text: str) -> bool:
    device, sep, inode = text.partition(":")
    return bool(sep) and device.isdigit() and inode.isdigit()
