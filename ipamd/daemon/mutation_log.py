"""The mutation log: one line on stderr per mutation, naming the caller.

Every mutation's outcome is logged with the caller's pid and uid: "who changed
this?" is the first question after an incident. Under load the logging module's
cost per record (a LogRecord, handler locks, a write) was a tenth of the
daemon's CPU, so lines are collected and written in one go once the current
burst of answers is done (the writer answers a whole batch without yielding:
`run`, a task of the daemon's, writes them when it yields),
in the format of the daemon's other log lines (log_format.py), and only when
INFO is on.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import trio

from ipamd.daemon.log_format import LineFormat, body

LOGGER_NAME = "ipamd.mutations"


class MutationLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._logger = logging.getLogger(LOGGER_NAME)
        self._stream = stream
        # On stderr a line starts as the logging handler's do; a given stream gets bare lines.
        self._format = LineFormat.for_stderr() if stream is None else None
        # Every line's text up to the message, made once: the message ends a body.
        self._head = body("INFO", LOGGER_NAME, "")
        self._lines: list[str] = []
        self._burst_over = trio.lowlevel.ParkingLot()  # where `run` waits
        self._running = False

    async def run(self) -> None:
        """Write each burst's lines once the burst is done: one write per burst.

        A trio task parked here is woken by a burst's first line and runs once
        the task answering the burst yields. (Cheaper than `run_sync_soon`,
        which writes to trio's wake-up socket each time.) Without it running,
        every line is written at once.
        """
        self._running = True
        try:
            while True:
                await self._burst_over.park()
                self.flush()
        finally:
            self._running = False
            self.flush()

    def record(self, method: str, subject: str, caller: str, outcome: str) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        # Off the journal the time goes in front when the burst is written: one
        # clock read per burst (the burst's lines are answered within one batch).
        self._lines.append(f"{self._head}{method} {subject} by {caller}: {outcome}\n")
        if not self._running:
            self.flush()
        elif len(self._lines) == 1:
            self._burst_over.unpark()

    def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        stream = self._stream or sys.stderr
        prefix = self._format.prefix(logging.INFO) if self._format else ""
        try:
            stream.write(prefix + prefix.join(lines))
            stream.flush()
        except (OSError, ValueError):  # stderr gone: logging would drop it too
            pass
