"""ipamd installed with the README's command on Debian 12, under a real systemd as PID 1.

One container (container.py) boots the cached Debian 12 tree with systemd
252, and systemd/install.sh installs the bound-in source tree offline. The
tests then act as an operator and as group members would, in order, on that
one installed service:

- the first connection starts the daemon (socket activation), which is
  active only after READY=1 (Type=notify); a second install changes nothing
  but the program;
- STATUS= follows allocations (seen on D-Bus as it changes);
- a user in the `ipamd` group through `useradd -G` reads without --socket,
  and mutates once the group is in allow_gids; others cannot connect;
- the watchdog: a SIGSTOPped daemon is aborted and restarted by systemd, and
  the client that waited meanwhile gets its answer from the new process;
- leases survive `systemctl restart`, `systemctl kill -s KILL` and a reboot;
- a bad config (78) and a missing program (203/EXEC) leave the socket
  listening, no client sees ENOENT, the error is in `journalctl -p err`, and
  the fix alone serves the client that waited;
- uninstall keeps the leases, a reinstall serves them, purge removes all,
  and install.sh refuses to overwrite a unit it did not install.

Waiting is on events: READY from nspawn, `is-system-running --wait`,
`journalctl --follow` and `busctl monitor` read with deadlines, and clients
that block until answered. Nothing sleeps.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nspawn.container import Container

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SOCKET = "/run/ipamd/ipamd.sock"
CONFIG = "etc/ipamd/ipamd.conf"  # relative: also a path in the overlay, from the host
INSTALL = "/src/systemd/install.sh"
# The container has no network: pip takes everything from the bound wheels.
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"}

EXIT_PERMISSION_DENIED = 20  # ipamd-client: 10 + permission_denied's code
EXIT_UNREACHABLE = 69
EXIT_TIMEOUT = 75


@pytest.fixture(scope="module")
def box(
    rootfs: Path, wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    container = Container(
        rootfs, tmp_path_factory.mktemp("nspawn"), {REPO_ROOT: "/src", wheels: "/wheels"}
    )
    try:
        container.boot()
        installed = container.run(INSTALL, env=OFFLINE, timeout=300)
        print(installed.stdout)
        yield container
    finally:
        container.shutdown()


def client(
    box: Container, *args: str, user: str | None = None, timeout: int = 30, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`ipamd-client --json ARGS` inside, with no --socket: it finds the system socket."""
    return box.run(
        "ipamd-client",
        "--json",
        f"--timeout={timeout}",
        *args,
        user=user,
        check=check,
        timeout=timeout + 30,
    )


def address_of(box: Container, container_id: str, timeout: int = 30) -> str:
    got = json.loads(client(box, "get", container_id, timeout=timeout).stdout)
    return str(got["networks"]["podman"]["ips"][0]["address"])


def allocated(result: subprocess.CompletedProcess[str]) -> str:
    return str(json.loads(result.stdout)["networks"]["podman"]["ips"][0]["address"])


def main_pid(box: Container) -> int:
    return int(box.show("ipamd.service", "MainPID"))


def lease_count(status_text: str) -> int:
    match = re.match(r"(\d+) lease\(s\) on ", status_text)
    assert match, status_text
    return int(match.group(1))


def write_config(box: Container, text: str) -> None:
    (box.merged / CONFIG).write_text(text)


# -- in the order an operator meets them ------------------------------------------------


def test_the_first_connection_starts_the_daemon(box: Container) -> None:
    assert box.show("ipamd.socket", "ActiveState") == "active"
    assert box.show("ipamd.service", "ActiveState") == "inactive"
    stat = box.run("stat", "--format=%a %U %G", SOCKET).stdout.split()
    assert stat == ["660", "root", "ipamd"]
    cursor = box.journal_cursor()

    client(box, "network", "create", "podman", "--subnet", "10.88.0.0/16")
    first = allocated(client(box, "alloc", "c1", "--network", "podman"))

    assert first == "10.88.0.1/16"
    # Type=notify: "active" only once the daemon sent READY=1.
    assert box.show("ipamd.service", "ActiveState") == "active"
    lines = box.wait_for_journal("ipamd.service", r"^Started ipamd\.service", cursor)
    assert any(line.startswith("INFO ipamd: ready: ") for line in lines), lines
    assert box.show("ipamd.service", "NRestarts") == "0"


def test_a_second_install_changes_nothing_but_the_program(box: Container) -> None:
    write_config(box, (box.merged / CONFIG).read_text() + "# the operator's line\n")
    units = box.run("cat", "/etc/systemd/system/ipamd.service").stdout
    before = main_pid(box)

    box.run(INSTALL, env=OFFLINE, timeout=300)

    assert (box.merged / CONFIG).read_text().endswith("# the operator's line\n")
    assert box.run("cat", "/etc/systemd/system/ipamd.service").stdout == units
    # The running daemon was restarted on the (same) new program; leases stay.
    assert main_pid(box) not in (0, before)
    assert address_of(box, "c1") == "10.88.0.1/16"


def test_status_follows_allocations(box: Container) -> None:
    with box.watching_status_text("ipamd.service") as watch:
        before = box.show("ipamd.service", "StatusText")
        client(box, "alloc", "s1", "--network", "podman")
        client(box, "alloc", "s2", "--network", "podman")
        wanted = f"{lease_count(before) + 2} lease(s) on 1 network(s), 0 client(s)"
        seen = watch.wait_for(wanted)

    after = box.show("ipamd.service", "StatusText")
    assert wanted in after and after != before, (before, seen)


def test_a_supplementary_group_member_may_mutate_once_the_group_is_allowed(
    box: Container,
) -> None:
    box.run("useradd", "--groups=ipamd", "alice")  # primary group: alice
    box.run("useradd", "bob")
    gid = box.run("getent", "group", "ipamd").stdout.split(":")[2]
    assert gid not in box.run("id", "--group", "alice").stdout.split()  # not primary

    # Reads need only the socket; the per-user socket does not exist, so the
    # client uses the system one.
    assert json.loads(client(box, "get", "c1", user="alice").stdout)["container_id"] == "c1"
    refused = client(box, "alloc", "a1", "--network", "podman", user="alice", check=False)
    assert refused.returncode == EXIT_PERMISSION_DENIED, refused
    assert "permission_denied" in refused.stdout + refused.stderr
    outsider = client(box, "ping", user="bob", check=False)
    assert outsider.returncode == EXIT_UNREACHABLE, outsider

    write_config(box, (box.merged / CONFIG).read_text() + f"[auth]\nallow_gids = [{gid}]\n")
    box.run("systemctl", "restart", "ipamd")

    assert allocated(client(box, "alloc", "a1", "--network", "podman", user="alice"))
    assert (
        client(box, "alloc", "b1", "--network", "podman", user="bob", check=False).returncode
        == EXIT_UNREACHABLE
    )


def test_the_watchdog_restarts_a_stopped_daemon_and_the_waiting_client_is_answered(
    box: Container,
) -> None:
    stopped = main_pid(box)
    cursor = box.journal_cursor()

    box.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", "ipamd")
    # Blocks until the new daemon answers: WatchdogSec=30s, then RestartSec=2s.
    answered = allocated(client(box, "alloc", "w1", "--network", "podman", timeout=120))

    assert answered
    assert main_pid(box) not in (0, stopped)
    lines = box.wait_for_journal("ipamd.service", r"Failed with result 'watchdog'", cursor)
    assert any("Watchdog timeout" in line for line in lines), lines


def test_leases_survive_restart_kill_and_reboot(box: Container) -> None:
    kept = address_of(box, "c1")

    box.run("systemctl", "restart", "ipamd")
    assert address_of(box, "c1") == kept

    killed = main_pid(box)
    restarts = int(box.show("ipamd.service", "NRestarts"))
    # The main process only: the daemon has no other, and signalling the whole
    # control group can fail with EIO in a container on a cgroup v1 host
    # ("Failed to send signal SIGKILL to auxiliary processes").
    box.run("systemctl", "kill", "--kill-who=main", "--signal=SIGKILL", "ipamd")
    assert address_of(box, "c1", timeout=60) == kept  # waits in the backlog meanwhile
    assert main_pid(box) not in (0, killed)
    assert int(box.show("ipamd.service", "NRestarts")) == restarts + 1

    box.reboot()
    assert box.show("ipamd.socket", "ActiveState") == "active"
    assert box.show("ipamd.service", "ActiveState") == "inactive"  # until the first client
    assert address_of(box, "c1") == kept
    assert allocated(client(box, "alloc", "r1", "--network", "podman")) != kept


def wait_for_failures(box: Container, cursor: str, count: int) -> list[str]:
    """Until the service failed `count` times since `cursor`: about 2.5 s each."""
    return box.wait_for_journal(
        "ipamd.service", r"Failed with result 'exit-code'", cursor, count=count, timeout=60
    )


def assert_socket_waits(box: Container) -> None:
    """The socket is there and accepts: a client times out instead of ENOENT."""
    assert box.show("ipamd.socket", "ActiveState") == "active"
    box.run("test", "-S", SOCKET)
    waited = client(box, "ping", timeout=2, check=False)
    assert waited.returncode == EXIT_TIMEOUT, waited


def finished(waiter: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    out, _ = waiter.communicate(timeout=timeout)
    assert waiter.returncode == 0, out
    result: dict[str, Any] = json.loads(out)
    return result


def test_a_bad_config_leaves_the_socket_listening_and_the_fix_serves_the_waiting_client(
    box: Container,
) -> None:
    good = (box.merged / CONFIG).read_text()
    cursor = box.journal_cursor()
    write_config(box, 'log_level = "loud"\n' + good)
    assert box.run("systemctl", "restart", "ipamd", check=False).returncode != 0
    waiter = box.start("ipamd-client", "--json", "--timeout=120", "get", "c1")
    try:
        # More tries than the default start limit (5 in 10 s) allows.
        wait_for_failures(box, cursor, count=6)
        assert_socket_waits(box)
        errors = box.run(
            "journalctl",
            "--unit=ipamd.service",
            "--priority=err",
            f"--after-cursor={cursor}",
            "--output=cat",
            "--no-pager",
        ).stdout.splitlines()
        assert f"ERROR ipamd: config /{CONFIG}: log_level 'loud' is not one of" in "\n".join(
            errors
        ), errors
    finally:
        write_config(box, good)
    assert finished(waiter)["container_id"] == "c1"
    assert box.show("ipamd.service", "ActiveState") == "active"


def test_a_missing_program_leaves_the_socket_listening_and_the_fix_serves_the_waiting_client(
    box: Container,
) -> None:
    cursor = box.journal_cursor()
    box.run("mv", "/opt/ipamd/bin/ipamd", "/opt/ipamd/bin/ipamd.away")
    try:
        assert box.run("systemctl", "restart", "ipamd", check=False).returncode != 0
        waiter = box.start("ipamd-client", "--json", "--timeout=120", "get", "c1")
        lines = wait_for_failures(box, cursor, count=3)
        assert any("status=203/EXEC" in line for line in lines), lines
        assert_socket_waits(box)
    finally:
        box.run("mv", "/opt/ipamd/bin/ipamd.away", "/opt/ipamd/bin/ipamd")
    assert finished(waiter)["container_id"] == "c1"


def test_uninstall_keeps_the_leases_and_purge_removes_everything(box: Container) -> None:
    kept = address_of(box, "c1")

    box.run(INSTALL, "--uninstall")
    for gone in (
        "/etc/systemd/system/ipamd.service",
        "/etc/systemd/system/ipamd.socket",
        "/etc/systemd/system/ipamd-metrics.socket",
        "/opt/ipamd",
        "/usr/local/bin/ipamd-client",
        SOCKET,
    ):
        assert box.run("test", "-e", gone, check=False).returncode != 0, gone
    for stays in ("/var/lib/ipamd", f"/{CONFIG}"):
        box.run("test", "-e", stays)
    box.run("getent", "group", "ipamd")

    box.run(INSTALL, env=OFFLINE, timeout=300)
    assert address_of(box, "c1") == kept

    box.run(INSTALL, "--uninstall", "--purge")
    for gone in ("/var/lib/ipamd", "/etc/ipamd", "/opt/ipamd"):
        assert box.run("test", "-e", gone, check=False).returncode != 0, gone
    assert box.run("getent", "group", "ipamd", check=False).returncode != 0

    # A unit it did not install stops it before it changes anything.
    foreign = "[Service]\nExecStart=/bin/true\n"
    (box.merged / "etc/systemd/system/ipamd.service").write_text(foreign)
    refused = box.run(INSTALL, env=OFFLINE, check=False)
    assert refused.returncode == 1 and "was not installed by this script" in refused.stderr
    assert (box.merged / "etc/systemd/system/ipamd.service").read_text() == foreign
    assert box.run("test", "-e", "/opt/ipamd", check=False).returncode != 0
