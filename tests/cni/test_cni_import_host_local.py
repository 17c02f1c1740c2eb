"""`ipamd import host-local`: a state directory made by Debian's real host-local
plugin is imported into a stopped daemon's database; then the real ipamd CNI
plugin gives every container the address host-local gave it (an idempotent
ADD), and nobody else gets those addresses.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import plyvel
import pytest

from tests.cni.cni_support import CNI_DIR, PLUGIN_TIMEOUT_S, Cni
from tests.daemon.e2e import check_state_dir, run_ipamd
from tests.support import Daemon, RawClient

pytestmark = pytest.mark.slow

NET = "hl"
SUBNET = "10.240.0.0/24"
RANGES = [[{"subnet": SUBNET}]]


def host_local_add(data_dir: Path, container_id: str, ifname: str) -> str:
    """ADD through Debian's host-local, as a runtime would; the address it gave."""
    config = {
        "cniVersion": "1.0.0",
        "name": NET,
        "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": RANGES},
    }
    done = subprocess.run(
        [str(CNI_DIR / "host-local")],
        input=json.dumps(config).encode(),
        env={
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/var/run/netns/{container_id}",
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(CNI_DIR),
        },
        capture_output=True,
        timeout=PLUGIN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["ips"][0]["address"]).split("/")[0]


def import_host_local(state_dir: Path, directory: Path, *extra: str) -> Any:
    command = ["import", "host-local", str(directory), "--network", NET]
    return run_ipamd([*command, "--state-dir", str(state_dir), *extra])


def database_dump(state_dir: Path) -> dict[bytes, bytes]:
    db = plyvel.DB(str(state_dir / "leases.ldb"))
    try:
        return dict(db.iterator())
    finally:
        db.close()


def add(cni: Cni, container_id: str, ifname: str) -> str:
    out = cni.ok("ADD", cni.config(NET, ranges=RANGES), container_id=container_id, ifname=ifname)
    return str(out["ips"][0]["address"]).split("/")[0]


def test_import_takes_over_host_local_and_the_plugin_gives_back_the_same_addresses(
    plugin_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "cni-networks"
    directory = data_dir / NET
    given = {
        ("c1", "eth0"): host_local_add(data_dir, "c1", "eth0"),
        ("c2", "eth0"): host_local_add(data_dir, "c2", "eth0"),
        ("c3", "net1"): host_local_add(data_dir, "c3", "net1"),
    }
    assert sorted(given.values()) == ["10.240.0.2", "10.240.0.3", "10.240.0.4"]
    assert (directory / "10.240.0.2").read_bytes() == b"c1\r\neth0"
    # An older host-local wrote the container ID alone.
    (directory / "10.240.0.20").write_text("c4")
    given[("c4", "eth0")] = "10.240.0.20"
    # Not ipamd's to take: outside the subnet, and held in ipamd by another key.
    (directory / "192.168.9.9").write_text("c5\r\neth0")
    (directory / "10.240.0.30").write_text("c6\r\neth0")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock").start()
    cni = Cni(plugin_dir / "ipamd", daemon.socket)
    add(cni, "bootstrap", "eth0")  # the plugin creates the network as its config has it
    cni.ok("DEL", cni.config(NET, ranges=RANGES), container_id="bootstrap", ifname="eth0")
    with RawClient(daemon.socket) as client:
        client.call(
            "alloc",
            {"container_id": "other", "networks": {NET: {"static_ips": ["10.240.0.30"]}}},
        )
    # Online is refused, and so is an offline import while the daemon runs.
    online = run_ipamd(["import", "host-local", str(directory), "--network", NET,
                        "--socket", str(daemon.socket)])  # fmt: skip
    assert online.returncode == 64 and "the import is offline" in online.stderr
    locked = import_host_local(daemon.state_dir, directory)
    assert locked.returncode == 75 and "is ipamd running? stop it first" in locked.stderr
    assert daemon.stop() == 0
    state_dir = daemon.state_dir
    untouched = database_dump(state_dir)

    dry = import_host_local(state_dir, directory, "--dry-run")
    assert dry.returncode == 1, dry.stderr  # some were skipped
    plan = dry.stdout.splitlines()
    assert "import  10.240.0.2 -> c1 (eth0)" in plan
    assert "import  10.240.0.4 -> c3 (net1)" in plan
    assert "import  10.240.0.20 -> c4 (eth0)" in plan
    assert "skip    192.168.9.9 -> c5 (eth0): outside every subnet of hl (10.240.0.0/24)" in plan
    assert "skip    10.240.0.30 -> c6 (eth0): already held in ipamd by other" in plan
    assert "cursor  10.240.0.0/24: after 10.240.0.4 (from last_reserved_ip.0)" in plan
    assert plan[-1] == (
        "dry run: 4 lease(s) to create, 0 already there, 2 skipped, network hl; nothing written"
    )
    assert database_dump(state_dir) == untouched

    real = import_host_local(state_dir, directory)
    assert real.returncode == 1, real.stderr
    assert real.stdout.splitlines()[-1] == (
        "imported: 4 lease(s) to create, 0 already there, 2 skipped, network hl"
    )
    imported = database_dump(state_dir)
    check_state_dir(state_dir)

    again = import_host_local(state_dir, directory)
    assert again.stdout.splitlines()[-1] == (
        "nothing to change: 0 lease(s) to create, 4 already there, 2 skipped, network hl"
    )
    assert database_dump(state_dir) == imported  # importing twice changes nothing
    # host-local's directory was only read.
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before

    daemon = Daemon(state_dir=state_dir, socket=tmp_path / "ipamd.sock").start()
    try:
        cni = Cni(plugin_dir / "ipamd", daemon.socket)
        for (container_id, ifname), address in given.items():
            assert add(cni, container_id, ifname) == address, (container_id, ifname)
        with RawClient(daemon.socket) as client:
            leases = client.call("lease.list", {"network": NET})["leases"]
            assert all(not lease["suspect"] for lease in leases)  # reserved in this boot
        # Newcomers get none of them, and continue after host-local's cursor.
        newcomers = [add(cni, f"new{i}", "eth0") for i in range(3)]
        assert newcomers == ["10.240.0.5", "10.240.0.6", "10.240.0.7"]
        assert not set(newcomers) & set(given.values())
        assert daemon.stop() == 0
    finally:
        daemon.close()
    check_state_dir(state_dir)


def test_reservations_from_before_this_boot_are_imported_suspect(
    plugin_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "cni-networks"
    kept = host_local_add(data_dir, "old", "eth0")
    os.utime(data_dir / NET / kept, (0, 0))  # written long before this boot
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock").start()
    cni = Cni(plugin_dir / "ipamd", daemon.socket)
    add(cni, "bootstrap", "eth0")
    cni.ok("DEL", cni.config(NET, ranges=RANGES), container_id="bootstrap", ifname="eth0")
    assert daemon.stop() == 0

    done = import_host_local(daemon.state_dir, data_dir / NET)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"import  {kept} -> old (eth0); suspect: reserved before this boot" in done.stdout

    daemon.start()
    try:
        with RawClient(daemon.socket) as client:
            (lease,) = client.call("lease.list", {"network": NET})["leases"]
            assert (lease["suspect"], lease["created"]) == (True, 0)
            assert lease["attributes"] == {"imported_from": "host-local"}
            # The runtime re-ADDs it after all: the same address, confirmed.
            assert add(cni, "old", "eth0") == kept
            assert client.call("network.get", {"name": NET})["suspect"] == 0
        assert daemon.stop() == 0
    finally:
        daemon.close()
