"""Who is on the other end of a Unix socket: SO_PEERCRED and SO_PEERGROUPS.

Both are the credentials the kernel recorded when the client called
connect(): its pid, uid and gid, and its supplementary groups, the same ones
the kernel checked against the socket file's mode and group to let it
connect. The rules this module keeps:

- Groups come from the socket, never from /proc/PID/status or the group
  database. /proc is read later than connect(), by pid, so a client that has
  exited and whose pid was reused would lend the next process's groups; and
  ipamd.service hides other users' processes (ProtectProc=invisible). The
  group database (getgrouplist) answers what a user's groups would be at the
  next login, not what this process holds, needs NSS (which may need the
  network that ipamd.service does not have), and blocks the event loop.
- The race that remains is the kernel's own: the credentials are those of the
  process that connected. A client that drops a group after connecting, or
  hands the connected socket to another process, keeps what it had, as an open
  file keeps its access. A user added to a group gets it at the next login.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from ipamd.daemon.service import Peer

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
"""Linux 4.13; Python's socket module does not name it. 59 on x86 and arm."""

_GID = struct.Struct("I")

_PYTHON_BUFLEN_MAX = 1024
"""socket.getsockopt refuses a larger buffer: 256 groups. Beyond, ctypes."""


def peer_credentials(sock: socket.socket, *, with_groups: bool) -> Peer:
    """The peer's pid, uid and gid; its supplementary groups too if `with_groups`."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    groups = peer_groups(sock) if with_groups else frozenset()
    return Peer(pid, uid, gid, groups)


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """The supplementary groups the peer had when it connected."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PYTHON_BUFLEN_MAX)
    except OSError as e:
        if e.errno != errno.ERANGE:
            raise
        raw = _many_peer_groups(sock.fileno())
    return frozenset(gid for (gid,) in _GID.iter_unpack(raw))


def _many_peer_groups(fd: int) -> bytes:
    """More than 256 groups (the kernel allows NGROUPS_MAX, 65536): libc's
    getsockopt, which tells how large a buffer it needs."""
    import ctypes  # only here: few clients ever have this many groups

    libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.c_uint32(os.sysconf("SC_NGROUPS_MAX") * _GID.size)
    buffer = ctypes.create_string_buffer(size.value)
    if libc.getsockopt(fd, socket.SOL_SOCKET, SO_PEERGROUPS, buffer, ctypes.byref(size)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return buffer.raw[: size.value]
