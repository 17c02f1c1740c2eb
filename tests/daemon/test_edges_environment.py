"""The daemon's environment is judged once, before READY (issue 14, must-fix 6 and 7).

Through the real `ipamd`: a malformed systemd variable is either ignored with
a warning naming it (as libsystemd does for the watchdog) or refused with exit
78 naming it, never a crash after READY. A relative XDG path is ignored by the
daemon and `ipamd check` alike, so both look at the same state directory.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ipamd.daemon.main import main as daemon_main
from ipamd.storage.check import main as check_main
from tests.daemon.e2e import notify_receiver, receive_notifications
from tests.daemon.edges import (
    IPAMD_CLIENT,
    NOBODY,
    ipamd,
    nobody_env,
    nobody_home,
    remove_tree,
    run,
    start_ready,
)
from tests.support import IPAMD, START_TIMEOUT_S, Daemon

EX_CONFIG = 78


def serves_and_stops_cleanly(daemon: Daemon) -> str:
    """After READY: it answers, stops with 0 on SIGTERM, and logged no traceback."""
    with daemon.client() as client:
        assert client.call("ping")["version"]
    assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "Traceback" not in log and "internal error" not in log, log
    return log


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": ""}, "WATCHDOG_PID=''"),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "self"}, "WATCHDOG_PID='self'"),
        ({"WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC='soon'"),
        ({"WATCHDOG_USEC": "-5"}, "WATCHDOG_USEC='-5'"),
    ],
)
def test_a_malformed_watchdog_variable_is_ignored_with_a_warning(
    tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock")
    daemon.extra_env.update(variables)
    try:
        start_ready(daemon)
        log = serves_and_stops_cleanly(daemon)
    finally:
        daemon.close()
    (warning,) = [line for line in log.splitlines() if "WARNING" in line]
    assert named in warning and "no watchdog pings" in warning


def test_a_malformed_listen_fds_for_this_process_is_refused_with_78(tmp_path: Path) -> None:
    # LISTEN_PID must be the daemon's own pid: the shell sets it, then becomes the daemon.
    command = shlex.join(
        [*IPAMD, "--socket", str(tmp_path / "s"), "--state-dir", str(tmp_path / "state")]
    )
    done = subprocess.run(
        ["sh", "-c", f"LISTEN_PID=$$ LISTEN_FDS=two exec {command}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EX_CONFIG, done.stderr
    assert "LISTEN_FDS='two' is not a non-negative integer" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()


def test_listen_variables_for_another_process_are_ignored(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock")
    daemon.extra_env.update(LISTEN_PID="1", LISTEN_FDS="nonsense")
    try:
        start_ready(daemon)
        serves_and_stops_cleanly(daemon)
    finally:
        daemon.close()


def test_a_notify_socket_that_is_no_address_is_ignored_with_a_warning(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock")
    daemon.extra_env["NOTIFY_SOCKET"] = "run/notify"
    try:
        daemon.start()  # no READY can come: wait for the socket instead
        log = serves_and_stops_cleanly(daemon)
    finally:
        daemon.close()
    assert "NOTIFY_SOCKET='run/notify' is neither an absolute path nor an @abstract name" in log


def test_a_malformed_journal_stream_is_ignored_with_a_warning(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock")
    daemon.extra_env["JOURNAL_STREAM"] = "journal"
    try:
        start_ready(daemon)
        log = serves_and_stops_cleanly(daemon)
    finally:
        daemon.close()
    assert "JOURNAL_STREAM='journal' is not DEVICE:INODE: ignored" in log
    assert not any(line.startswith("<") for line in log.splitlines())


def as_nobody_in_a_child(
    entry: Callable[[list[str]], int], argv: list[str], home: Path, env: dict[str, str]
) -> multiprocessing.process.BaseProcess:
    """Run `entry(argv)` (ipamd's or ipamd check's main) in a forked child as uid 65534.

    Forked, not exec'd: this machine's interpreter may live where uid 65534
    cannot read it (under /root); everything the entry needs is imported here
    first. The child's stdout and stderr go to home/out and home/err.
    """

    def child() -> None:
        out = os.open(home / "out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(home / "err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        os.chdir(home)
        os.environ.clear()
        os.environ.update(env)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        logging.root.handlers.clear()  # pytest's capture: the daemon sets up its own
        os._exit(entry(argv))

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    return process


def test_a_relative_xdg_state_home_is_ignored_by_the_daemon_and_check_alike() -> None:
    """As uid 65534 (root's defaults ignore XDG): the daemon started in HOME with
    XDG_STATE_HOME=rel keeps its state in ~/.local/state/ipamd, not ./rel/ipamd,
    and `ipamd check` without --state-dir checks that same database."""
    home = nobody_home()
    try:
        runtime = home / "run"
        runtime.mkdir(mode=0o700)
        os.chown(runtime, NOBODY, NOBODY)
        notify_path = home / "notify"
        receiver = notify_receiver(notify_path)
        notify_path.chmod(0o777)  # the daemon, as nobody, must be able to send to it
        env = nobody_env(home, XDG_STATE_HOME="rel", XDG_RUNTIME_DIR=str(runtime))
        daemon = as_nobody_in_a_child(
            daemon_main, [], home, {**env, "NOTIFY_SOCKET": str(notify_path)}
        )
        try:
            assert "READY=1" in receive_notifications(receiver, START_TIMEOUT_S), (
                home / "err"
            ).read_text()
            sock = runtime / "ipamd" / "ipamd.sock"  # the default for uid 65534 here
            created = run(
                [
                    *IPAMD_CLIENT,
                    "--socket",
                    str(sock),
                    "network",
                    "create",
                    "n",
                    "--subnet",
                    "10.61.0.0/24",
                ]
            )
            assert created.returncode == 0, created.stderr
        finally:
            receiver.close()
            assert daemon.pid is not None
            os.kill(daemon.pid, signal.SIGTERM)
            daemon.join(30)
        stderr = (home / "err").read_text()
        assert daemon.exitcode == 0, stderr
        assert "XDG_STATE_HOME='rel' is not an absolute path: ignored" in stderr
        assert f"state {home / '.local' / 'state' / 'ipamd'}" in stderr
        assert not (home / "rel").exists()

        checked = as_nobody_in_a_child(check_main, [], home, env)
        checked.join(60)
        assert checked.exitcode == 0, (home / "err").read_text()
        assert (home / "out").read_text().strip() == "ok: 1 networks, 0 leases"
        assert "warning: XDG_STATE_HOME='rel' is not an absolute path" in (home / "err").read_text()
    finally:
        remove_tree(home)


def test_ipamd_check_and_ipamd_exit_64_alike_on_a_bad_command_line() -> None:
    daemon = ipamd("--bogus")
    check = ipamd("check", "--bogus")
    assert (daemon.returncode, check.returncode) == (64, 64), (daemon.stderr, check.stderr)
    assert "--bogus" in check.stderr
