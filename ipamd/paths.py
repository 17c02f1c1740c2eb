"""Every path ipamd defaults to, creates, replaces or removes, and the rules for each.

One definition of the defaults (DESIGN.md section 6) for the daemon, `ipamd
check` and the clients, and one rule for touching the file system: ipamd never
deletes or overwrites a file it did not create.

- Defaults: /run/ipamd/ipamd.sock and /var/lib/ipamd as root; otherwise
  $XDG_RUNTIME_DIR/ipamd/ipamd.sock (else /tmp/ipamd-UID/ipamd.sock) and
  $XDG_STATE_HOME/ipamd (else ~/.local/state/ipamd). A relative XDG path is
  ignored, as the XDG Base Directory spec says (`xdg_dir`); the daemon warns
  about it at start (environment.py).
- Directories (the socket's, the state dir) are created when missing; an
  existing directory, or a symlink to one, is used as it is; anything else
  there is refused, naming the path and what is there.
- The socket path may be replaced only when `lstat` says it is a socket and
  connecting to it is refused (a leftover from a crash). Anything else, a
  regular file, a symlink, a directory, a socket someone answers on, is
  refused and left untouched. At shutdown the daemon removes the socket only
  if the path is still the one it bound (same device and inode).

Refusals raise `PathRefused` (the daemon exits 73, EX_CANTCREAT). This module
imports only the standard library's light modules: clients import it too.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

SOCKET_NAME: Final = "ipamd.sock"
SYSTEM_SOCKET: Final = Path("/run/ipamd") / SOCKET_NAME
"""Root's default, and where ipamd.socket listens."""
ROOT_STATE_DIR: Final = Path("/var/lib/ipamd")
XDG_RUNTIME_DIR: Final = "XDG_RUNTIME_DIR"
XDG_STATE_HOME: Final = "XDG_STATE_HOME"
SOCKET_DIR_MODE: Final = 0o755
STATE_DIR_MODE: Final = 0o700


class PathRefused(Exception):
    """A path ipamd must create or replace holds something it may not touch (exit 73)."""


def xdg_dir(environ: Mapping[str, str], name: str) -> Path | None:
    """$name if it is set to an absolute path; None when unset, empty or relative.

    The XDG Base Directory spec: "If an implementation encounters a relative
    path in any of these variables it should consider the path invalid and
    ignore it."
    """
    value = environ.get(name, "")
    return Path(value) if os.path.isabs(value) else None


def default_socket_path(environ: Mapping[str, str] = os.environ) -> Path:
    if os.geteuid() == 0:
        return SYSTEM_SOCKET
    runtime = xdg_dir(environ, XDG_RUNTIME_DIR)
    if runtime is not None:
        return runtime / "ipamd" / SOCKET_NAME
    return Path(f"/tmp/ipamd-{os.geteuid()}") / SOCKET_NAME


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    if os.geteuid() == 0:
        return ROOT_STATE_DIR
    state = xdg_dir(environ, XDG_STATE_HOME) or Path.home() / ".local" / "state"
    return state / "ipamd"


def describe(path: Path) -> str:
    """What is at `path`, without following a symlink: "a regular file (12 bytes)"."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "nothing"
    except OSError as e:
        return f"something ipamd cannot inspect ({e.strerror})"
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        dangling = "" if os.path.exists(path) else ", which does not exist"
        return f"a symbolic link to {target}{dangling}"
    if stat.S_ISREG(mode):
        return f"a regular file ({st.st_size} bytes)"
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((text for test, text in kinds if test(mode)), "a special file")


def ensure_directory(path: Path, mode: int, what: str) -> None:
    """Create directory `path` (and its parents) unless it exists; refuse anything else there."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except FileExistsError:  # exist_ok still raises when it is not a directory
        raise PathRefused(
            f"{what} {path} is {describe(path)}, not a directory; ipamd leaves it alone:"
            " remove it yourself or choose another path"
        ) from None
    except NotADirectoryError:
        blocker = _first_non_directory(path)
        raise PathRefused(
            f"cannot create {what} {path}: {blocker} is {describe(blocker)}, not a directory"
        ) from None
    except OSError as e:
        raise PathRefused(f"cannot create {what} {path}: {e.strerror or e}") from None


def _first_non_directory(path: Path) -> Path:
    for parent in reversed(path.absolute().parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return path


SocketIdentity = tuple[int, int]
"""(st_dev, st_ino) of the socket file the daemon bound."""


def clear_stale_socket(path: Path) -> None:
    """Make room to bind a socket at `path`: nothing there, or a socket nobody answers on.

    Raises PathRefused for anything else, touching nothing.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise PathRefused(f"cannot inspect socket path {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise PathRefused(
            f"socket path {path} is {describe(path)}, not a socket; ipamd replaces only a stale"
            " socket: remove it yourself or choose another --socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        pass  # nobody listens: a leftover from a crash
    except OSError as e:
        # EACCES, EAGAIN (a full backlog), ...: someone may well be serving it.
        raise PathRefused(
            f"cannot tell whether socket {path} is in use ({e.strerror or e}); remove it"
            " yourself if it is stale"
        ) from None
    else:
        raise PathRefused(f"another ipamd is already listening on {path}")
    finally:
        probe.close()
    remove_socket(path, (st.st_dev, st.st_ino))


def socket_identity(path: Path) -> SocketIdentity:
    st = os.lstat(path)
    return (st.st_dev, st.st_ino)


def remove_socket(path: Path, identity: SocketIdentity) -> bool:
    """Unlink `path` if it is still the socket `identity` names; whether it did.

    Whatever else is there now (another daemon's socket, a file someone put
    there) is left alone.
    """
    try:
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) != identity:
            return False
        os.unlink(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True
