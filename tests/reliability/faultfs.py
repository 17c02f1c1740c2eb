"""A FUSE passthrough filesystem that can forget what was never synced.

A fake of the disk (STYLE.md habit 6: a real disk cannot lose unsynced writes
on demand), modelled on LevelDB's `db/fault_injection_test.cc`:

- every file's size at its last fsync is remembered (a file that existed when
  the filesystem was mounted counts as synced as it was);
- every file created since its directory was last fsynced is remembered; a
  rename carries both facts to the new name;
- `power_loss(backing, state)` then truncates every file to its synced size
  and deletes every file (or directory, with all it holds) created since its
  directory's last fsync.

Run as a process of its own (libfuse installs signal handlers, which must not
land in pytest's process):

    python faultfs.py BACKING_DIR MOUNTPOINT STATE_FILE [FSYNC_DELAY_S]

SIGUSR1 is the moment of the power loss (LevelDB's `SetFilesystemActive(false)`):
from then on no sync is recorded, and every fsync blocks, as on a dead disk,
so the client can acknowledge nothing more; SIGUSR2 (send it once the client
is dead) makes the blocked ones fail with EIO. It serves until unmounted
(`fusermount -u MOUNTPOINT`), then writes what it tracked to STATE_FILE as
JSON for `power_loss`. Writes go straight to the
backing directory: there is no cache here, so a SIGKILLed client leaves every
write() it made in the backing files, synced or not. An fsync takes
FSYNC_DELAY_S (default 0), as a disk's would, so that a kill often lands
between a write and its sync.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any


def power_loss(backing: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Drop from `backing` what `state` says was never synced; what was dropped."""
    truncated: dict[str, int] = {}
    for rel, synced in sorted(state["synced"].items()):
        path = backing / rel.lstrip("/")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if size > synced:
            os.truncate(path, synced)
            truncated[rel] = size - synced
    deleted: list[str] = []
    for rel in sorted(state["new"]):  # a directory sorts before what it holds
        path = backing / rel.lstrip("/")
        if path.is_dir():
            shutil.rmtree(path)
            deleted.append(rel + "/")
        elif path.exists():
            path.unlink()
            deleted.append(rel)
    return {"truncated": truncated, "deleted": deleted}


def _parent(path: str) -> str:
    return os.path.dirname(path) or "/"


def _serve(backing: str, mountpoint: str, state_file: str, fsync_delay_s: float) -> None:
    from fuse import FUSE, FuseOSError, Operations

    class FaultFS(Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self, root: str) -> None:
            self.root = root
            self.synced: dict[str, int] = {}  # path -> size at its last fsync
            self.new: set[str] = set()  # created since their directory's last fsync
            self.counts = {"fsync": 0, "fsyncdir": 0, "write": 0, "create": 0, "rename": 0}
            self.frozen = False  # the power is off: syncs are no longer recorded
            self.thawed = False  # the client is dead: blocked syncs may fail now
            self.blocked_syncs = 0

        def _dead_disk(self) -> None:
            """After the power loss a sync never completes (until the client is dead)."""
            self.blocked_syncs += 1
            while not self.thawed:
                time.sleep(0.005)
            raise FuseOSError(errno.EIO)

        def __call__(self, op: str, *args: Any) -> Any:
            try:
                return getattr(self, op)(*args)
            except OSError as e:
                raise FuseOSError(e.errno or errno.EIO) from None

        def _real(self, path: str) -> str:
            return self.root + path

        def _track(self, path: str) -> None:
            """Start tracking a file that was synced as it is now."""
            if path not in self.synced:
                try:
                    self.synced[path] = os.stat(self._real(path)).st_size
                except FileNotFoundError:
                    self.synced[path] = 0

        # -- metadata ------------------------------------------------------------

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")
            out = {k: getattr(st, k) for k in keys}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return out

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._real(path), amode):
                raise FuseOSError(errno.EACCES)
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._real(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._real(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            os.utime(self._real(path), ns=times)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(self._real(path))
            names = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree")
            out = {k: getattr(st, k) for k in (*names, "f_files", "f_flag", "f_frsize")}
            out["f_namemax"] = st.f_namemax
            return out

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._real(path))]

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(self._real(path), mode)
            self.new.add(path)
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(self._real(path))
            self.new.discard(path)
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(self._real(path))
            self.synced.pop(path, None)
            self.new.discard(path)
            return 0

        def rename(self, old: str, new: str) -> int:
            os.rename(self._real(old), self._real(new))
            self.counts["rename"] += 1
            # As LevelDB's FaultInjectionTestEnv::RenameFile: the tracked facts move.
            self.synced.pop(new, None)
            if old in self.synced:
                self.synced[new] = self.synced.pop(old)
            self.new.discard(new)
            if old in self.new:
                self.new.discard(old)
                self.new.add(new)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            if self.frozen:
                self._dead_disk()
            self.counts["fsyncdir"] += 1
            self.new = {p for p in self.new if _parent(p) != path}
            return 0

        # -- files ---------------------------------------------------------------

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            fd = os.open(self._real(path), os.O_RDWR | os.O_CREAT, mode)
            self.counts["create"] += 1
            self.synced[path] = 0
            self.new.add(path)
            return fd

        def open(self, path: str, flags: int) -> int:
            if flags & os.O_TRUNC:
                self.synced[path] = 0
            # The kernel passes append offsets itself; O_APPEND here would ignore them.
            return os.open(self._real(path), flags & ~(os.O_APPEND | os.O_CREAT))

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            self._track(path)
            self.counts["write"] += 1
            return os.pwrite(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            self._track(path)
            self.synced[path] = min(self.synced[path], length)
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._real(path), length)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            # The backing file already holds the data; remembering the size is the point.
            time.sleep(fsync_delay_s)
            if self.frozen:
                self._dead_disk()
            self.counts["fsync"] += 1
            self.synced[path] = os.fstat(fh).st_size
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

    fs = FaultFS(backing)

    def freeze(signum: int, frame: Any) -> None:
        fs.frozen = True

    def thaw(signum: int, frame: Any) -> None:
        fs.thawed = True

    signal.signal(signal.SIGUSR1, freeze)
    signal.signal(signal.SIGUSR2, thaw)
    FUSE(fs, mountpoint, foreground=True, nothreads=True, fsname="faultfs")
    counts = {**fs.counts, "syncs blocked by the power loss": fs.blocked_syncs}
    tracked = {"synced": fs.synced, "new": sorted(fs.new), "counts": counts}
    Path(state_file).write_text(json.dumps(tracked))


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: faultfs.py BACKING_DIR MOUNTPOINT STATE_FILE [FSYNC_DELAY_S]")
    _serve(*sys.argv[1:4], float(sys.argv[4]) if len(sys.argv) == 5 else 0.0)
