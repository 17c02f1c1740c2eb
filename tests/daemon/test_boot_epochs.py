"""Boot epochs through the real daemon: leases from an earlier boot are suspect
until something shows their owner alive, and go only when a gc leaves them out
or, when configured, once the grace after a reboot is over.

The boot id comes from a file the test controls (`[leases] boot_id_path`):
writing a new id there and restarting the daemon is a reboot, as far as ipamd
can tell. Waiting is on events: READY=1 and STATUS= on a notify socket the test
binds, or a reply.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import plyvel
import pytest

from ipamd.core import keys
from tests.daemon.e2e import check_state_dir, private_socket_dir, run_ipamd
from tests.daemon.test_permissions import run_as_nobody
from tests.support import Daemon, RawClient

pytestmark = pytest.mark.slow

NET = "epochs"


@dataclass
class Host:
    """One state dir and socket, and the boot id file its daemon reads."""

    tmp: Path
    boot_file: Path
    config: Path
    socket: Path
    daemon: Daemon | None = None

    def reboot(self, boot_id: str) -> None:
        self.boot_file.write_text(f"{boot_id}\n")

    def start(self, **env: str) -> Daemon:
        self.daemon = Daemon(
            state_dir=self.tmp / "state",
            socket=self.socket,
            config=self.config,
            extra_env=env,
        ).start()
        return self.daemon

    def client(self) -> RawClient:
        assert self.daemon is not None
        return self.daemon.client(timeout=20)

    def stop(self) -> None:
        assert self.daemon is not None
        assert self.daemon.stop() == 0, self.daemon.log()


def make_host(
    tmp_path: Path, extra_config: str = "", leases_config: str = "", socket: Path | None = None
) -> Host:
    boot_file = tmp_path / "boot_id"
    boot_file.write_text("boot-one\n")
    config = tmp_path / "ipamd.toml"
    config.write_text(f'{extra_config}[leases]\nboot_id_path = "{boot_file}"\n{leases_config}')
    return Host(tmp_path, boot_file, config, socket or tmp_path / "ipamd.sock")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    instance = make_host(tmp_path)
    try:
        yield instance
    finally:
        if instance.daemon is not None:
            instance.daemon.close()


def alloc(client: RawClient, container_id: str, ifname: str = "") -> str:
    options = {"ifname": ifname} if ifname else {}
    result = client.call("alloc", {"container_id": container_id, "networks": {NET: options}})
    return str(result["networks"][NET]["ips"][0]["address"])


def leases(client: RawClient) -> dict[str, dict[str, Any]]:
    return {
        f"{lease['container_id']}/{lease['ifname']}": lease
        for lease in client.call("lease.list", {"network": NET})["leases"]
    }


def suspect_counts(client: RawClient) -> tuple[int, int, int]:
    """The suspect count as stats, network.get and status each give it."""
    (stats,) = [n for n in client.call("stats")["networks"] if n["name"] == NET]
    network = client.call("network.get", {"name": NET})
    return stats["suspect"], network["suspect"], client.call("status")["suspect"]


def first_boot(host: Host) -> dict[str, str]:
    """Boot one: a network and three attachments; their addresses."""
    host.start()
    with host.client() as client:
        client.call("network.create", {"name": NET, "subnets": [{"subnet": "10.77.0.0/24"}]})
        held = {
            "a/": alloc(client, "a"),
            "b/": alloc(client, "b"),
            "c/eth0": alloc(client, "c", "eth0"),
        }
        assert suspect_counts(client) == (0, 0, 0)
        assert {lease["boot"] for lease in leases(client).values()} == {"boot-one"}
    host.stop()
    return held


def test_a_reboot_makes_old_leases_suspect_until_confirmed_or_collected(host: Host) -> None:
    held = first_boot(host)
    host.reboot("boot-two")
    daemon = host.start()

    with host.client() as client:
        before = leases(client)
        assert {key: lease["suspect"] for key, lease in before.items()} == {
            "a/": True,
            "b/": True,
            "c/eth0": True,
        }
        assert {lease["boot"] for lease in before.values()} == {"boot-one"}
        assert suspect_counts(client) == (3, 3, 3)
        status = client.call("status")
        assert (status["boot"], status["reclaim_after_reboot"]) == ("boot-two", None)

        # A runtime restoring container a re-ADDs it: the same address, now current.
        assert alloc(client, "a") == held["a/"]
        assert suspect_counts(client) == (2, 2, 2)
        # A CNI CHECK (a get) of b confirms it too, and answers with it current.
        got = client.call("get", {"container_id": "b"})
        assert [(lease["boot"], lease["suspect"]) for lease in got["leases"]] == [
            ("boot-two", False)
        ]
        assert suspect_counts(client) == (1, 1, 1)

        # A dry run names c, the unconfirmed one, and changes nothing.
        valid = [{"container_id": "a"}, {"container_id": "b"}]
        dry = client.call("gc", {"network": NET, "valid": valid, "dry_run": True})
        assert [(x["container_id"], x["suspect"]) for x in dry["released"]] == [("c", True)]
        assert suspect_counts(client) == (1, 1, 1)
        # A gc that does not list c releases it; a, b stay with their addresses.
        real = client.call("gc", {"network": NET, "valid": valid})
        assert [x["container_id"] for x in real["released"]] == ["c"]
        assert suspect_counts(client) == (0, 0, 0)
        after = leases(client)
        assert {key: lease["ips"][0]["address"] for key, lease in after.items()} == {
            "a/": held["a/"],
            "b/": held["b/"],
        }
        # Nobody else gets a's or b's address while they hold them.
        assert alloc(client, "newcomer") not in (held["a/"], held["b/"])

    for line in (
        "3 lease(s) from an earlier boot are suspect (current boot boot-two)",
        "get container_id=b by ",
        "confirmed 1 suspect lease(s)",
        f"gc container_id=c ifname=eth0 network={NET} by pid=",
        f"released {held['c/eth0']}: not in gc's valid list; made in boot boot-one",
    ):
        assert daemon.wait_for_log(line), line
    host.stop()
    # The confirmations were durable: a restart in the same boot finds none suspect.
    host.start()
    with host.client() as client:
        assert suspect_counts(client) == (0, 0, 0)
    host.stop()
    check_state_dir(host.tmp / "state")


def test_a_gc_listing_a_suspect_lease_confirms_it(host: Host) -> None:
    held = first_boot(host)
    host.reboot("boot-two")
    host.start()
    with host.client() as client:
        result = client.call(
            "gc", {"network": NET, "valid": [{"container_id": "b"}, {"container_id": "c"}]}
        )
        assert [x["container_id"] for x in result["released"]] == ["a"]
        assert result["confirmed"] == 2
        assert suspect_counts(client) == (0, 0, 0)
        assert alloc(client, "c", "eth0") == held["c/eth0"]
    host.stop()


def test_a_suspect_only_gc_never_takes_a_lease_made_in_this_boot(host: Host) -> None:
    """A gc at boot may race the runtime's first ADDs: suspect_only spares them."""
    first_boot(host)
    host.reboot("boot-two")
    host.start()
    with host.client() as client:
        fresh = alloc(client, "fresh")  # ADDed while the gc's list was being made
        valid = [{"container_id": "b"}]
        dry = client.call(
            "gc", {"network": NET, "valid": valid, "suspect_only": True, "dry_run": True}
        )
        assert sorted(x["container_id"] for x in dry["released"]) == ["a", "c"]
        result = client.call("gc", {"network": NET, "valid": valid, "suspect_only": True})
        assert sorted(x["container_id"] for x in result["released"]) == ["a", "c"]
        assert set(leases(client)) == {"b/", "fresh/"}
        assert leases(client)["fresh/"]["ips"][0]["address"] == fresh
    host.stop()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uids")  # CI runs as root
def test_a_reader_sees_suspect_leases_but_cannot_keep_them_alive(tmp_path: Path) -> None:
    """Only a caller allowed to mutate confirms by `get`: reads need only the socket."""
    socket_dir = private_socket_dir()
    host = make_host(tmp_path, 'socket_mode = "0666"\n', socket=socket_dir / "ipamd.sock")
    try:
        first_boot(host)
        host.reboot("boot-two")
        daemon = host.start()
        ((error, got),) = run_as_nobody(daemon.socket, [("get", {"container_id": "a"})])
        assert error is None and got["leases"][0]["suspect"] is True
        with host.client() as client:
            assert suspect_counts(client) == (3, 3, 3)
        host.stop()
    finally:
        if host.daemon is not None:
            host.daemon.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_a_kill_9_within_one_boot_makes_nothing_suspect(host: Host) -> None:
    first_boot(host)
    daemon = host.start()
    with host.client() as client:
        alloc(client, "d")
    daemon.kill()
    host.start()
    with host.client() as client:
        assert suspect_counts(client) == (0, 0, 0)
        assert not any(lease["suspect"] for lease in leases(client).values())
    host.stop()


# -- reclaim_after_reboot ---------------------------------------------------------------------


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    return sock


def next_status(sock: socket.socket) -> str:
    """The next STATUS= the daemon sends (READY=1's included)."""
    while True:
        for line in sock.recv(4096).decode().split("\n"):
            if line.startswith("STATUS="):
                return line.removeprefix("STATUS=")


def test_reclaim_after_reboot_releases_unconfirmed_leases_only_after_the_grace(
    tmp_path: Path,
) -> None:
    host = make_host(tmp_path, leases_config='reclaim_after_reboot = "3s"\n')
    try:
        held = first_boot(host)
        host.reboot("boot-two")
        with notify_socket(tmp_path / "notify") as notes:
            host.start(NOTIFY_SOCKET=str(tmp_path / "notify"))
            ready = next_status(notes)
            assert "3 lease(s)" in ready
            assert "; 3 suspect (from an earlier boot, not confirmed yet)" in ready
            with host.client() as client:
                # Well within the grace: nothing released yet; a is re-ADDed in time.
                assert alloc(client, "a") == held["a/"]
                assert set(leases(client)) == {"a/", "b/", "c/eth0"}
                assert suspect_counts(client) == (2, 2, 2)
                # The grace ends: b and c go, a stays, and not one moment early.
                status = next_status(notes)
                while "suspect" in status:
                    status = next_status(notes)
                assert "1 lease(s)" in status
                assert client.call("status")["uptime_s"] >= 3.0
                assert set(leases(client)) == {"a/"}
                assert suspect_counts(client) == (0, 0, 0)
        assert host.daemon is not None
        for key, ip in (
            ("container_id=b", held["b/"]),
            ("container_id=c ifname=eth0", held["c/eth0"]),
        ):
            assert host.daemon.wait_for_log(
                f"reclaim {key} network={NET} by ipamd: released {ip}: made in boot boot-one,"
                " not confirmed within reclaim_after_reboot (3s) of start"
            )
        host.stop()
        assert "reclaim container_id=a " not in host.daemon.log()
    finally:
        if host.daemon is not None:
            host.daemon.close()


# -- the schema step ------------------------------------------------------------------------


def downgrade_to_schema_1(state_dir: Path) -> int:
    """Rewrite the database as ipamd before boot ids wrote it: lease values
    without "boot", schema version 1. The number of leases rewritten."""
    db = plyvel.DB(str(state_dir / "leases.ldb"))
    try:
        rewritten = 0
        for raw_key, value in db.iterator(prefix=keys.LEASE):
            old = msgpack.unpackb(value)
            del old["boot"]
            db.put(raw_key, msgpack.packb(old))
            rewritten += 1
        db.put(keys.SCHEMA_KEY, msgpack.packb(1), sync=True)
        return rewritten
    finally:
        db.close()


def test_an_old_schema_database_migrates_once_and_checks_clean(host: Host) -> None:
    held = first_boot(host)
    state_dir = host.tmp / "state"
    assert downgrade_to_schema_1(state_dir) == 3

    old = run_ipamd(["check", "--state-dir", str(state_dir)])
    assert old.returncode == 1, old.stdout + old.stderr
    assert "schema version 1, from before boot ids; start ipamd once to migrate" in old.stdout

    daemon = host.start()
    with host.client() as client:
        # Stamped with the boot it was migrated in: an upgrade is not a reboot.
        assert {lease["boot"] for lease in leases(client).values()} == {"boot-one"}
        assert suspect_counts(client) == (0, 0, 0)
        assert alloc(client, "a") == held["a/"]
    host.stop()
    migrated = "migrated database schema 1 -> 2: 3 lease(s) stamped with the current boot id"
    assert daemon.log().count(migrated) == 1
    check_state_dir(state_dir)

    host.start()
    host.stop()
    assert host.daemon is not None
    assert host.daemon.log().count(migrated) == 1  # the same log file: no second migration
    check_state_dir(state_dir)


def test_check_names_a_lease_without_its_boot_id(host: Host) -> None:
    first_boot(host)
    state_dir = host.tmp / "state"
    db = plyvel.DB(str(state_dir / "leases.ldb"))
    try:
        raw_key, value = next(iter(db.iterator(prefix=keys.LEASE)))
        old = msgpack.unpackb(value)
        del old["boot"]
        db.put(raw_key, msgpack.packb(old), sync=True)
    finally:
        db.close()
    done = run_ipamd(["check", "--state-dir", str(state_dir)])
    assert done.returncode == 1
    assert "lease a on network epochs has no boot id first in its value" in done.stdout


# -- bad configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leases_table", "message"),
    [
        ('boot_id_path = "/nonexistent/boot_id"', "cannot read the boot id from /nonexistent"),
        ('reclaim_after_reboot = "10 minutes"', "leases.reclaim_after_reboot '10 minutes'"),
        ('reclaim_after_reboot = "0s"', "leases.reclaim_after_reboot '0s' is not a positive"),
        ("reclaim_after_reboot = 600", "leases.reclaim_after_reboot must be a duration"),
        ('lifetime = "1h"', "unknown key(s) in [leases]: ['lifetime']"),
    ],
)
def test_a_bad_leases_table_is_refused_naming_the_value(
    tmp_path: Path, leases_table: str, message: str
) -> None:
    config = tmp_path / "ipamd.toml"
    config.write_text(f"[leases]\n{leases_table}\n")
    done = run_ipamd(
        [
            "--config",
            str(config),
            "--socket",
            str(tmp_path / "s.sock"),
            "--state-dir",
            str(tmp_path / "state"),
        ]
    )
    assert done.returncode == 78, done.stderr
    assert message in done.stderr
