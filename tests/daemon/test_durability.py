"""Durability: an answered mutation survives SIGKILL right after the answer."""

from __future__ import annotations

from pathlib import Path

import msgpack

from tests.daemon.e2e import check_state_dir, create_network, next_subnet_prefix
from tests.support import Daemon


def test_an_answered_alloc_survives_sigkill(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock").start()
    prefix = next_subnet_prefix()
    try:
        with daemon.client() as client:
            create_network(client, "net", prefix)
            result = client.call("alloc", {"container_id": "c1", "networks": {"net": {}}})
            daemon.kill()  # SIGKILL, the moment the answer is in
        check_state_dir(daemon.state_dir)
        restarted = Daemon(state_dir=daemon.state_dir, socket=daemon.socket).start()
        with restarted.client() as client:
            got = client.call("get", {"container_id": "c1"})
            owner = client.call("lease.owner", {"ip": f"{prefix}.2"})
            # The restarted index knows the address is taken: the next one is .3.
            fresh = client.call("alloc", {"container_id": "c2", "networks": {"net": {}}})
    finally:
        daemon.close()
        if "restarted" in locals():
            restarted.close()

    assert got["networks"] == result["networks"]
    assert owner["container_id"] == "c1"
    assert fresh["networks"]["net"]["ips"][0]["address"] == f"{prefix}.3/24"


def test_a_pipelined_burst_survives_sigkill(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock").start()
    prefix = next_subnet_prefix()
    answered: dict[str, str] = {}
    try:
        with daemon.client() as client:
            create_network(client, "net", prefix)
            frames = b"".join(
                msgpack.packb(
                    [0, i, "alloc", [{"container_id": f"c{i}", "networks": {"net": {}}}]],
                    use_bin_type=True,
                )
                for i in range(1, 101)
            )
            client.sock.sendall(frames)
            # Kill after half the answers are in: those must be on disk.
            for _ in range(50):
                _, msgid, error, result = client.receive()
                assert error is None, error
                answered[f"c{msgid}"] = result["networks"]["net"]["ips"][0]["address"]
            daemon.kill()
        check_state_dir(daemon.state_dir)
        restarted = Daemon(state_dir=daemon.state_dir, socket=daemon.socket).start()
        with restarted.client() as client:
            leases = client.call("lease.list", {"network": "net"})["leases"]
    finally:
        daemon.close()
        if "restarted" in locals():
            restarted.close()

    on_disk = {lease["container_id"]: lease["ips"][0]["address"] for lease in leases}
    for container, address in answered.items():
        assert on_disk.get(container) == address, container
    assert len(set(on_disk.values())) == len(on_disk)
