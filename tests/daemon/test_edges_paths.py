"""ipamd never deletes or overwrites what it did not create (issue 14, must-fix 1 and 5).

Through the real `ipamd` and `ipamd check`: whatever sits at the socket path,
the socket directory, the state directory or the database directory, if ipamd
did not make it, the daemon exits 73 naming the path and what is there, and
leaves it exactly as it was. Only a socket nobody answers on is replaced.
A state directory another ipamd holds is named as such, with that ipamd's pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from tests.daemon.edges import ipamd, start_ready
from tests.support import Daemon

EX_CANTCREAT = 73
EX_NOINPUT = 66
EX_TEMPFAIL = 75


def refused(done: subprocess.CompletedProcess[str], *named: str) -> str:
    """The refusal of a daemon that exited 73; checks that it names `named`."""
    assert done.returncode == EX_CANTCREAT, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    for text in named:
        assert text in done.stderr, (text, done.stderr)
    return done.stderr


def start_args(
    tmp_path: Path, socket_path: Path | None = None, state: Path | None = None
) -> list[str]:
    return [
        "--socket",
        str(socket_path or tmp_path / "ipamd.sock"),
        "--state-dir",
        str(state or tmp_path / "state"),
    ]


# -- the socket path ---------------------------------------------------------------------------


def test_a_regular_file_at_the_socket_path_is_refused_and_kept(tmp_path: Path) -> None:
    readme = tmp_path / "README"
    readme.write_text("precious\n")

    done = ipamd(*start_args(tmp_path, socket_path=readme))

    refused(done, f"socket path {readme} is a regular file (9 bytes), not a socket")
    assert readme.read_text() == "precious\n"
    assert not (tmp_path / "state").exists()  # refused before anything was created


def test_a_symlink_at_the_socket_path_is_refused_and_neither_end_touched(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    link = tmp_path / "ipamd.sock"
    link.symlink_to(target)

    done = ipamd(*start_args(tmp_path, socket_path=link))

    refused(done, str(link), f"a symbolic link to {target}")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "root:x:0:0\n"


def test_a_dangling_symlink_at_the_socket_path_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "ipamd.sock"
    link.symlink_to(tmp_path / "nowhere")

    refused(ipamd(*start_args(tmp_path, socket_path=link)), "which does not exist")
    assert link.is_symlink()


def test_a_directory_at_the_socket_path_is_a_clean_refusal(tmp_path: Path) -> None:
    directory = tmp_path / "ipamd.sock"
    directory.mkdir()
    (directory / "keep").write_text("x")

    refused(ipamd(*start_args(tmp_path, socket_path=directory)), f"{directory} is a directory")
    assert (directory / "keep").read_text() == "x"


def test_a_named_pipe_at_the_socket_path_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "ipamd.sock"
    os.mkfifo(fifo)

    refused(ipamd(*start_args(tmp_path, socket_path=fifo)), "a named pipe")
    assert fifo.is_fifo()


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ipamd.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))  # bound, never listening: what a crash leaves behind
    leftover.close()

    daemon = Daemon(state_dir=tmp_path / "state", socket=path)
    try:
        start_ready(daemon)
        with daemon.client() as client:
            assert client.call("ping")["version"]
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert not path.exists()  # its own socket, removed at shutdown


def test_a_live_daemons_socket_is_refused_and_it_keeps_serving(tmp_path: Path) -> None:
    first = Daemon(state_dir=tmp_path / "one", socket=tmp_path / "ipamd.sock")
    try:
        start_ready(first)
        done = ipamd(*start_args(tmp_path, state=tmp_path / "two"))
        refused(done, f"another ipamd is already listening on {first.socket}")
        with first.client() as client:
            assert client.call("ping")["version"]
    finally:
        first.close()


def test_a_file_where_the_socket_directory_goes_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("not a directory\n")

    done = ipamd(*start_args(tmp_path, socket_path=blocker / "ipamd" / "ipamd.sock"))

    refused(done, f"{blocker} is a regular file")
    assert blocker.read_text() == "not a directory\n"


def test_shutdown_leaves_alone_what_replaced_its_socket(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock")
    try:
        start_ready(daemon)
        # Someone removes the socket and puts a file of their own in its place.
        daemon.socket.unlink()
        daemon.socket.write_text("someone else's\n")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert daemon.socket.read_text() == "someone else's\n"
    assert "is no longer the socket this ipamd bound; left alone" in daemon.log()


# -- the state directory and the database directory --------------------------------------------


def test_a_file_at_the_state_dir_is_refused_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("notes\n")

    done = ipamd(*start_args(tmp_path, state=state))

    refused(done, f"state directory {state} is a regular file (6 bytes), not a directory")
    assert state.read_text() == "notes\n"
    assert not (tmp_path / "ipamd.sock").exists()  # its own socket, removed on the way out


def test_a_file_at_the_database_path_is_refused_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    database = state / "leases.ldb"
    database.write_text("a file\n")

    refused(ipamd(*start_args(tmp_path, state=state)), f"database path {database} is a regular")
    assert database.read_text() == "a file\n"

    checked = ipamd("check", "--state-dir", str(state))
    assert checked.returncode == EX_NOINPUT, checked.stderr
    assert f"{database} is a regular file" in checked.stderr
    assert database.read_text() == "a file\n"


def test_a_foreign_directory_at_the_database_path_is_left_exactly_as_it_was(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    database = state / "leases.ldb"
    database.mkdir(parents=True)
    (database / "LOG").write_text("someone's log\n")
    (database / "notes.txt").write_text("x\n")

    def listing() -> dict[str, str]:
        return {p.name: p.read_text() for p in database.iterdir()}

    before = listing()
    refused(ipamd(*start_args(tmp_path, state=state)), str(database), "notes.txt")
    # `ipamd check` too: LevelDB renames LOG to LOG.old as soon as it opens a directory.
    checked = ipamd("check", "--state-dir", str(state))
    assert checked.returncode == EX_NOINPUT, checked.stderr
    assert "holds no LevelDB database" in checked.stderr
    assert listing() == before


# -- a state directory another ipamd holds (must-fix 5) ----------------------------------------


def test_a_locked_state_dir_names_the_ipamd_holding_it(tmp_path: Path) -> None:
    first = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "one.sock")
    try:
        start_ready(first)
        assert first.proc is not None
        holder = f"another ipamd (pid {first.proc.pid}) holds the lock on state directory"

        second = ipamd(*start_args(tmp_path, socket_path=tmp_path / "two.sock"))
        stderr = refused(second, holder, str(first.state_dir), "another --state-dir")
        assert "Resource temporarily unavailable" not in stderr
        assert not (tmp_path / "two.sock").exists()  # it removed its own socket

        checked = ipamd("check", "--state-dir", str(first.state_dir))
        assert checked.returncode == EX_TEMPFAIL, checked.stderr
        assert holder in checked.stderr and "check a copy" in checked.stderr
        assert "Resource temporarily unavailable" not in checked.stderr

        with first.client() as client:
            assert client.call("ping")["version"]
    finally:
        first.close()


def test_the_socket_it_bound_is_removed_at_shutdown(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock")
    try:
        start_ready(daemon)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(20) == 0
    finally:
        daemon.close()
    assert not daemon.socket.exists()
