"""systemd integration without libsystemd: readiness, socket activation, watchdog.

Three small functions that speak the protocols in sd_notify(3),
sd_listen_fds(3) and sd_watchdog_enabled(3), so that the daemon needs no C
library and works the same with or without systemd. The rules this module keeps:

- It imports only `os` and `socket`. The calls are blocking and quick (one
  local datagram, a few environment lookups), so the trio daemon calls them
  directly. This module has no trio code.
- Missing variables mean "not under systemd" and are never an error: `notify`
  returns False, `listen_fds` returns [], `watchdog_interval` returns None.
  A variable that is present but malformed is an error (ValueError naming the
  variable and its value), because guessing would hide a broken setup.
- `notify` never raises for a socket problem. A daemon must not die because
  its supervisor went away, so the caller learns only whether the message was
  sent.
- Variables meant for another process are ignored. LISTEN_PID, and
  WATCHDOG_PID when set, must equal os.getpid(). `listen_fds` then unsets
  LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES whatever it found, as
  sd_listen_fds(unset_environment=1) does, so that no child process can
  inherit them. It marks the fds it takes close-on-exec.
- NOTIFY_SOCKET may be a path (`/run/systemd/notify`) or an abstract name
  (`@name`). vsock addresses are not supported: the unit allows only AF_UNIX.
"""

from __future__ import annotations

import os
import socket

LISTEN_FDS_START = 3
"""The first passed fd: systemd puts them right after stdin, stdout, stderr."""

_NO_TIMEOUT_USEC = 2**64 - 1
"""USEC_INFINITY in systemd: a watchdog timeout that never fires."""


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1", "STATUS=...", "WATCHDOG=1") to systemd.

    Several assignments may go in one message, separated by newlines. Returns
    True when the datagram was sent. Returns False when NOTIFY_SOCKET is unset
    or empty, when its address is not supported, or when sending fails.
    """
    if not message:
        raise ValueError("empty sd_notify message")
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        # Abstract namespace: systemd writes the leading NUL byte as "@".
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False
    data = message.encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sent = sock.sendto(data, address)
    except OSError:
        return False
    return sent == len(data)


def listen_fds() -> list[socket.socket]:
    """Take the sockets systemd passed to this process (socket activation).

    Returns them in LISTEN_FDS order, starting at fd 3. Returns [] when the
    process was not socket-activated or the variables are for another process.
    Call it once: it unsets the variables, so a second call returns [].
    Raises ValueError if a variable is malformed or a passed fd is not a socket.
    """
    try:
        pid_text = os.environ.get("LISTEN_PID")
        fds_text = os.environ.get("LISTEN_FDS")
        if pid_text is None or fds_text is None:
            return []
        if _parse_pid("LISTEN_PID", pid_text) != os.getpid():
            return []
        count = _parse_uint("LISTEN_FDS", fds_text)
        return [_socket_from_fd(fd) for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count)]
    finally:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)


def listen_fds_with_names() -> list[tuple[str, socket.socket]]:
    """`listen_fds()`, each with its name from LISTEN_FDNAMES (FileDescriptorName=
    in a socket unit; the unit's name by default), as sd_listen_fds_with_names(3).

    Names are "unknown" when LISTEN_FDNAMES is unset. Raises ValueError when it
    names a different number of fds than LISTEN_FDS passes.
    """
    names_text = os.environ.get("LISTEN_FDNAMES")
    socks = listen_fds()
    if not socks:
        return []
    names = names_text.split(":") if names_text is not None else ["unknown"] * len(socks)
    if len(names) != len(socks):
        for sock in socks:
            sock.close()
        raise ValueError(
            f"LISTEN_FDNAMES={names_text!r} names {len(names)} fd(s),"
            f" but LISTEN_FDS passes {len(socks)}"
        )
    return list(zip(names, socks, strict=True))


def watchdog_interval() -> float | None:
    """How often to send "WATCHDOG=1", in seconds; None when not asked to.

    That is half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises, so that
    one late ping does not trip the watchdog. None when WATCHDOG_USEC is unset,
    0 or infinite, or when WATCHDOG_PID is set and names another process. The
    variables are left in place, so the answer does not change between calls.
    """
    usec_text = os.environ.get("WATCHDOG_USEC")
    if usec_text is None:
        return None
    usec = _parse_uint("WATCHDOG_USEC", usec_text)
    if usec == 0 or usec >= _NO_TIMEOUT_USEC:
        return None
    pid_text = os.environ.get("WATCHDOG_PID")
    if pid_text is not None and _parse_pid("WATCHDOG_PID", pid_text) != os.getpid():
        return None
    return usec / 2 / 1_000_000


def _socket_from_fd(fd: int) -> socket.socket:
    try:
        # systemd passes the fds inheritable; keep them from any exec'd child.
        os.set_inheritable(fd, False)
        # socket.socket(fileno=) asks the kernel for family, type and protocol.
        return socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"LISTEN_FDS: fd {fd} is not a usable socket: {exc}") from exc


def _parse_uint(name: str, text: str) -> int:
    # Digits only: int() would also accept " 3", "+3" and "3_0".
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{name}={text!r} is not a non-negative integer")
    return int(text)


def _parse_pid(name: str, text: str) -> int:
    pid = _parse_uint(name, text)
    if pid == 0:
        raise ValueError(f"{name}={text!r} is not a process id")
    return pid
