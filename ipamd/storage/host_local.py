"""Reading CNI host-local's state directory (`/var/lib/cni/networks/<net>/`).

host-local (containernetworking/plugins, plugins/ipam/host-local/backend/disk)
keeps one file per reserved address, named by the address, holding the
container ID and, since plugins 0.8, `\\r\\n` and the interface name (older
files hold the ID alone); `last_reserved_ip.<N>` holds the last address handed
out from range set N; `lock` is the flock every host-local call takes.

Rules it keeps:
- Read only: it takes `lock` (shared, as long as it reads) so that no
  host-local ADD or DEL changes the directory midway; it creates, changes or
  removes nothing there, `lock` included (without one, it reads unlocked and
  says so).
- Every file is accounted for: an entry, a cursor, or a `Skipped` naming why.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ipamd.core.network import IPAddress

LOCK_FILE = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."


class HostLocalError(Exception):
    """The directory cannot be read (nothing was imported)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """One address file: who holds the address, and since when."""

    address: IPAddress
    container_id: str
    ifname: str | None  # None: an old-format file (the container ID only)
    mtime: float


@dataclass(frozen=True, slots=True)
class Skipped:
    name: str
    reason: str


@dataclass
class StateDir:
    path: Path
    reservations: list[Reservation] = field(default_factory=list)
    # The addresses of the last_reserved_ip.N files, by file name.
    last_reserved: dict[str, IPAddress] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    locked: bool = False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold host-local's `lock` (if it exists) while reading; True if taken."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    except OSError as e:
        raise HostLocalError(f"cannot open {path / LOCK_FILE}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # host-local's own calls wait meanwhile
        yield True
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def locked_state_dir(path: Path) -> Iterator[StateDir]:
    """Everything host-local reserved under `path`, read and held under its
    lock until the block ends (so an import sees no host-local change midway)."""
    if not path.is_dir():
        raise HostLocalError(
            f"{path} is not a directory (host-local's is /var/lib/cni/networks/NET)"
        )
    state = StateDir(path)
    with _locked(path) as state.locked:
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            raise HostLocalError(f"cannot list {path}: {e.strerror}") from e
        for name in names:
            if name == LOCK_FILE:
                continue
            file = path / name
            try:
                if not file.is_file():
                    state.skipped.append(Skipped(name, "not a regular file"))
                    continue
                text = file.read_bytes().decode(errors="replace")  # keeps the \r\n
                mtime = file.stat().st_mtime
            except OSError as e:
                raise HostLocalError(f"cannot read {file}: {e.strerror}") from e
            if name.startswith(LAST_RESERVED_PREFIX):
                address = _address(text.strip())
                if address is None:
                    state.skipped.append(Skipped(name, f"holds {text.strip()!r}, not an address"))
                else:
                    state.last_reserved[name] = address
                continue
            _read_reservation(state, name, text, mtime)
        yield state


def _read_reservation(state: StateDir, name: str, text: str, mtime: float) -> None:
    # On Windows host-local writes ':' as '_' in IPv6 file names.
    address = _address(name) or _address(name.replace("_", ":"))
    if address is None:
        state.skipped.append(Skipped(name, "not an address file of host-local"))
        return
    container_id, newline, ifname = text.partition("\r\n")
    container_id = container_id.strip()
    if not container_id:
        state.skipped.append(Skipped(name, "holds no container ID"))
        return
    state.reservations.append(
        Reservation(address, container_id, ifname.strip() if newline else None, mtime)
    )


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
