"""What the daemon's log says (issue 14, should-fix), read from the real process's stderr.

- The start-up line names the socket and state dir as absolute paths, however
  they were given.
- Off the journal, every line starts with its ISO time (the journal stamps
  its own entries, so under JOURNAL_STREAM there is none).
- The mutation log names the addresses an alloc handed out and a release took
  back, so grepping the log for an address finds who had it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from tests.daemon.e2e import notify_receiver, receive_notifications
from tests.daemon.edges import start_ready
from tests.support import IPAMD, START_TIMEOUT_S, Daemon, RawClient

ISO_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) "
)


def test_the_start_up_line_names_absolute_paths(tmp_path: Path) -> None:
    notify = tmp_path / "notify"
    receiver = notify_receiver(notify)
    log = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen(
        [*IPAMD, "--socket", "ipamd.sock", "--state-dir", "state"],  # relative to cwd
        cwd=tmp_path,
        env={**os.environ, "NOTIFY_SOCKET": str(notify)},
        stderr=log,
    )
    try:
        assert "READY=1" in receive_notifications(receiver, START_TIMEOUT_S)
        with RawClient(tmp_path / "ipamd.sock") as client:
            assert client.call("status")["state_dir"] == str(tmp_path / "state")
    finally:
        receiver.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    log.seek(0)
    (ready,) = [line for line in log.read().splitlines() if " ready: " in line]
    assert ready.endswith(f"socket {tmp_path / 'ipamd.sock'}, state {tmp_path / 'state'}"), ready


def test_off_the_journal_every_line_starts_with_its_iso_time(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock")
    daemon.extra_env["JOURNAL_STREAM"] = "1:1"  # names some other stream: not the journal
    try:
        start_ready(daemon)
        with daemon.client() as client:
            client.call("network.create", {"name": "n", "subnets": [{"subnet": "10.81.0.0/24"}]})
        assert daemon.stop() == 0
    finally:
        daemon.close()
    lines = daemon.log().splitlines()
    assert len(lines) >= 4, lines  # ready, the mutation, SIGTERM, stopped
    assert all(ISO_LINE.match(line) for line in lines), lines


def test_the_journal_gets_no_time_of_ours(tmp_path: Path) -> None:
    daemon = Daemon(
        state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock", stderr_to_file=True
    )
    log = tmp_path / f"ipamd-{daemon.socket.stem}.log"  # the daemon's stderr itself
    log.touch()
    st = os.stat(log)
    daemon.extra_env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    try:
        start_ready(daemon)
        assert daemon.stop() == 0
    finally:
        daemon.close()
    lines = log.read_text().splitlines()
    assert lines and all(re.match(r"<\d>(INFO|WARNING) ipamd", line) for line in lines), lines


def test_the_mutation_log_names_the_addresses_handed_out_and_taken_back(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock")
    try:
        start_ready(daemon)
        with daemon.client() as client:
            client.call(
                "network.create",
                {"name": "dual", "subnets": [{"subnet": "10.82.0.0/24"}, {"subnet": "fd82::/64"}]},
            )
            client.call(
                "network.create", {"name": "other", "subnets": [{"subnet": "10.83.0.0/24"}]}
            )
            client.call("alloc", {"container_id": "c1", "networks": {"dual": {}, "other": {}}})
            client.call("release", {"container_id": "c1", "networks": {"other": {}}})
            client.call("release", {"container_id": "c1", "networks": {"other": {}}})
        assert daemon.stop() == 0
    finally:
        daemon.close()
    log = daemon.log()
    (alloc,) = [line for line in log.splitlines() if "ipamd.mutations: alloc" in line]
    assert alloc.endswith("ok: dual 10.82.0.1/24 fd82::1/64; other 10.83.0.1/24"), alloc
    released = [line for line in log.splitlines() if "ipamd.mutations: release" in line]
    assert [line.rsplit(": ", 1)[1] for line in released] == [
        "released other 10.83.0.1",
        "nothing held",
    ]
