"""The logging handler and the mutation log write lines a reader cannot tell apart."""

from __future__ import annotations

import logging
import re

from ipamd.daemon.log_format import LineFormat, body
from ipamd.daemon.log_time import iso_time


def info_record(message: str) -> logging.LogRecord:
    return logging.LogRecord("ipamd.mutations", logging.INFO, __file__, 1, message, None, None)


def test_a_body_is_what_the_handler_writes_after_the_prefix() -> None:
    record = info_record("alloc container_id=c by pid=1 uid=0: ok 100%")
    journal_line = LineFormat(to_journal=True).formatter().format(record)
    timed_line = LineFormat(to_journal=False).formatter().format(record)

    expected = body("INFO", "ipamd.mutations", "alloc container_id=c by pid=1 uid=0: ok 100%")
    assert expected == "INFO ipamd.mutations: alloc container_id=c by pid=1 uid=0: ok 100%"
    assert journal_line == LineFormat(to_journal=True).prefix(logging.INFO) + expected
    assert timed_line == f"{iso_time(record.created)} {expected}"
    # The mutation log builds its lines on the head a body has without a message.
    assert expected == body("INFO", "ipamd.mutations", "") + record.getMessage()


def test_the_prefix_is_the_priority_on_the_journal_and_the_time_elsewhere() -> None:
    assert LineFormat(to_journal=True).prefix(logging.INFO) == "<6>"
    assert LineFormat(to_journal=True).prefix(logging.ERROR) == "<3>"
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "
    assert re.fullmatch(iso, LineFormat(to_journal=False).prefix(logging.INFO))
