"""The time at the start of a log line when stderr is not the journal.

The journal stamps every entry itself (journal.py), but a terminal, a file or
a container runtime's log does not: there each line starts with the local
time in ISO 8601 with milliseconds and the UTC offset,
`2026-12-01T19:05:03.127+00:00`, which sorts as text and reads unambiguously
across time zones. The seconds part is formatted once per second: the
mutation log stamps every mutation.
"""

from __future__ import annotations

import logging
import time

_second = -1
_second_text = ""
_offset_text = ""


def iso_time(when: float) -> str:
    """`when` (seconds since the epoch) as local ISO 8601 time with milliseconds."""
    global _second, _second_text, _offset_text
    second = int(when)
    if second != _second:
        local = time.localtime(second)
        offset = time.strftime("%z", local)  # "+0000"
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", local)
        _offset_text = f"{offset[:3]}:{offset[3:]}"
        _second = second
    millis = int((when - second) * 1000)
    return f"{_second_text}.{millis:03d}{_offset_text}"


def iso_now() -> str:
    return iso_time(time.time())


class TimedFormatter(logging.Formatter):
    """Formats as its base would, with the record's ISO time and a space in front."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{iso_time(record.created)} {super().format(record)}"
