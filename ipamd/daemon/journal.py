"""stderr as the systemd journal: each log line carries its syslog priority.

Under systemd, stderr is a stream to journald, which files every line at the
unit's default priority (6, info) unless the line starts with an sd-daemon(3)
prefix such as `<3>`. With the prefix, `journalctl -p err -u ipamd` finds
the errors. The rules this module keeps:

- A prefix only when stderr really is the journal: JOURNAL_STREAM names the
  device and inode of the stream systemd connected, and it must match fstat
  of fd 2 (systemd.exec(5)). A daemon started from a unit whose stderr was
  later redirected, or a child that inherited the variable, writes plain
  lines, as in a terminal.
- Every line of a record gets the prefix, traceback lines included: journald
  reads each line as its own entry.
- The journal stamps each entry itself, so no time goes into the text.
"""

from __future__ import annotations

import logging
import os
import sys

PRIORITIES = {
    logging.CRITICAL: 2,  # LOG_CRIT
    logging.ERROR: 3,  # LOG_ERR
    logging.WARNING: 4,  # LOG_WARNING
    logging.INFO: 6,  # LOG_INFO
    logging.DEBUG: 7,  # LOG_DEBUG
}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level; custom levels take the next one up."""
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.DEBUG]


def stderr_is_journal() -> bool:
    """True when JOURNAL_STREAM is set and names the stream that fd 2 is."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not (sep and device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # stderr closed or replaced by something without a descriptor
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class PriorityFormatter(logging.Formatter):
    """Formats as its base would, then starts every line with `<N>`."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))
