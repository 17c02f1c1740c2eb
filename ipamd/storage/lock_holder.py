"""Who holds a file's lock: the pid, from the kernel's table of locks (/proc/locks).

LevelDB takes a POSIX (fcntl) write lock on its LOCK file for as long as the
database is open; a second opener gets "Resource temporarily unavailable".
To tell the user which process to stop, look the file's device and inode up
in /proc/locks, whose lines read

    1: POSIX  ADVISORY  WRITE 7640 fe:00:2146499 0 EOF

(number, kind, mode, access, pid, major:minor:inode in hex:hex:decimal, range).
Linux only; anywhere else, or when the holder is in another pid namespace
(pid 0 or -1 there), the answer is None and the caller says less.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")


def lock_holder(path: Path, proc_locks: Path = PROC_LOCKS) -> int | None:
    """The pid holding a lock on `path`, or None when it cannot be told."""
    try:
        st = os.stat(path)
        table = proc_locks.read_text()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # A blocked waiter's line starts "1: ->"; only holders name the file's owner.
        if len(fields) < 6 or fields[1] == "->":
            continue
        pid_text, file_id = fields[4], fields[5]
        if file_id == wanted and pid_text.isdigit() and int(pid_text) > 0:
            return int(pid_text)
    return None
