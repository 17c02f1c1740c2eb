"""Log lines carry their syslog priority when stderr is the journal (ipamd/daemon/journal.py).

The real daemon writes to a file standing in for journald's stream; the test
sets JOURNAL_STREAM to that file's device and inode, as systemd does for the
stream it connects. tests/nspawn checks `journalctl -p err` under a real
systemd.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from ipamd.daemon.journal import PriorityFormatter, priority
from tests.daemon.e2e import IPAMD_SCRIPT, write_config
from tests.support import Daemon


def journal_stream_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def run_with_bad_config(tmp_path: Path, env: dict[str, str], log: Path) -> int:
    config = write_config(tmp_path / "bad.toml", 'log_level = "loud"\n')
    with log.open("ab") as stderr:
        return subprocess.run(
            [str(IPAMD_SCRIPT), "--config", str(config), "--state-dir", str(tmp_path / "s")],
            stderr=stderr,
            env={**os.environ, **env},
            timeout=30,
            check=False,
        ).returncode


def test_an_error_is_priority_3_when_stderr_is_the_journal(tmp_path: Path) -> None:
    log = tmp_path / "journal"
    log.touch()

    status = run_with_bad_config(tmp_path, {"JOURNAL_STREAM": journal_stream_of(log)}, log)

    assert status == 78
    (line,) = log.read_text().splitlines()
    assert line.startswith("<3>ERROR ipamd: "), line
    assert "'loud'" in line


def test_no_prefix_when_stderr_is_not_the_stream_journal_stream_names(tmp_path: Path) -> None:
    # A daemon whose stderr was redirected keeps the variable but not the stream.
    other = tmp_path / "other"
    other.touch()
    log = tmp_path / "stderr"
    log.touch()

    assert run_with_bad_config(tmp_path, {"JOURNAL_STREAM": journal_stream_of(other)}, log) == 78
    assert run_with_bad_config(tmp_path, {"JOURNAL_STREAM": ""}, log) == 78

    lines = log.read_text().splitlines()
    # Not the journal: plain lines, each starting with its ISO time (log_time.py).
    timed = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d ERROR ipamd: ")
    assert len(lines) == 2 and all(timed.match(line) for line in lines), lines


def test_every_line_of_a_running_daemon_starts_with_its_priority(tmp_path: Path) -> None:
    daemon = Daemon(
        state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock", stderr_to_file=True
    )
    log = tmp_path / f"ipamd-{daemon.socket.stem}.log"  # the daemon's stderr itself
    log.touch()
    daemon.extra_env = {"JOURNAL_STREAM": journal_stream_of(log)}
    daemon.start()
    try:
        with daemon.client() as client:
            client.call("network.create", {"name": "n", "subnets": [{"subnet": "10.1.0.0/24"}]})
        assert daemon.stop() == 0
    finally:
        daemon.close()

    lines = log.read_text().splitlines()
    assert any(line.startswith("<6>INFO ipamd: ready: ") for line in lines), lines
    assert any(line.startswith("<6>INFO ipamd.mutations: network.create") for line in lines)
    assert all(line[:3] in {"<6>", "<7>", "<4>"} for line in lines), lines


def test_each_line_of_a_traceback_gets_the_prefix() -> None:
    formatter = PriorityFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "ipamd", logging.ERROR, __file__, 1, "internal error", None, sys.exc_info()
        )

    lines = formatter.format(record).split("\n")

    assert len(lines) > 3
    assert lines[0] == "<3>ERROR ipamd: internal error"
    assert all(line.startswith("<3>") for line in lines), lines
    assert lines[-1] == "<3>RuntimeError: boom"


def test_levels_map_to_syslog_priorities() -> None:
    levels = [logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]
    assert [priority(level) for level in levels] == [2, 3, 4, 6, 7]
    assert priority(logging.ERROR + 5) == 3  # a custom level between ERROR and CRITICAL
    assert priority(logging.NOTSET) == 7
