"""What a line of the daemon's log looks like, said once.

Two writers share it: the logging handler (`setup_logging` in main.py) and the
mutation log (mutation_log.py), which writes its lines itself, a burst at a
time, since the logging module's cost per record was a tenth of the daemon's
CPU under load. A reader must not be able to tell their lines apart.

A line is `LEVEL LOGGER: message`. In front of it goes the syslog priority
`<N>` when stderr is the journal (journal.py; the journal stamps entries
itself), or the local ISO time anywhere else (log_time.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ipamd.daemon import journal
from ipamd.daemon.log_time import TimedFormatter, iso_now

# The message comes last, so a body without it is every line's common head.
BODY = "%(levelname)s %(name)s: %(message)s"


def body(levelname: str, logger: str, message: str) -> str:
    """A line's text after its prefix, as `BODY` formats a record with these fields."""
    return BODY % {"levelname": levelname, "name": logger, "message": message}


@dataclass(frozen=True, slots=True)
class LineFormat:
    to_journal: bool  # stderr is the journal: a priority in front, not a time

    @classmethod
    def for_stderr(cls) -> LineFormat:
        return cls(journal.stderr_is_journal())

    def formatter(self) -> logging.Formatter:
        """The logging handler's formatter."""
        if self.to_journal:
            return journal.PriorityFormatter(BODY)
        return TimedFormatter(BODY)

    def prefix(self, levelno: int) -> str:
        """What goes in front of a line at `levelno` written now."""
        if self.to_journal:
            return f"<{journal.priority(levelno)}>"
        return f"{iso_now()} "
