"""The mutation log: one line on stderr per mutation, naming the caller.

Every mutation's outcome is logged with the caller's pid and uid: "who changed
this?" is the first question after an incident. Under load the logging module's
cost per record (a LogRecord, handler locks, a write) was a tenth of the
daemon's CPU, so lines are collected and written in one go once the current
burst of answers is done (the writer answers a whole batch without yielding),
in the same format as the daemon's other log lines, and only when INFO is on.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import trio

LOGGER_NAME = "ipamd.mutations"


class MutationLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._logger = logging.getLogger(LOGGER_NAME)
        self._stream = stream
        self._lines: list[str] = []

    def record(self, method: str, subject: str, caller: str, outcome: str) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        if not self._lines:
            try:
                trio.lowlevel.current_trio_token().run_sync_soon(self.flush)
            except RuntimeError:  # outside trio: nothing to wait for
                self._lines.append(
                    f"INFO {LOGGER_NAME}: {method} {subject} by {caller}: {outcome}\n"
                )
                self.flush()
                return
        self._lines.append(f"INFO {LOGGER_NAME}: {method} {subject} by {caller}: {outcome}\n")

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        stream = self._stream or sys.stderr
        try:
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError):  # stderr gone: logging would drop it too
            pass
