"""Full disk: clean `storage_error`s, reads go on, recovery without a restart, nothing lost.

The state directory is a 1 MiB tmpfs, most of it taken by a ballast file.
Allocations (with fat attributes, to fill it fast) run until the disk refuses:
every answer is a success or a `storage_error` and the connection stays up;
while the disk is full, reads (`ping`, `get`, `lease.list`, `network.get`,
`status`) keep working and a release fails cleanly, changing nothing. Then the
ballast is deleted: allocations work again at once, in the same daemon. Twice
over; then a clean stop, `ipamd check`, and a restart must show every
acknowledged lease.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import (
    TestDaemon,
    all_leases,
    call_many,
    ipamd_check,
    lease_ips,
    write_config,
)
from tests.support import RawClient

NETWORK = {"name": "disk", "subnets": [{"subnet": "10.64.0.0/16", "gateway": "10.64.0.1"}]}
DISK = "1m"
# Leaves room for ~350 KiB of LevelDB log; freeing it leaves room to reopen
# (the writer waits for the log's size + 64 KiB, see ipamd/storage/opening.py).
BALLAST_BYTES = 640 << 10
# About 2 KiB per lease, to fill the disk in a few hundred allocations.
ATTRIBUTES = {f"k{i}": "x" * 250 for i in range(8)}
CYCLES = 2
# Bound on allocations per cycle: the disk is full long before.
MAX_ALLOCS = 2000


def alloc_params(cid: str) -> dict[str, Any]:
    return {"container_id": cid, "networks": {"disk": {"attributes": ATTRIBUTES}}}


def fill(client: RawClient, prefix: str, acked: dict[str, frozenset[str]]) -> Counter[str]:
    """Allocate until the disk refuses, and a few rounds more; acknowledged ones go to `acked`."""
    outcomes: Counter[str] = Counter()
    sent = 0
    refused_rounds = 0
    while refused_rounds < 3:
        assert sent < MAX_ALLOCS, f"the disk never filled: {outcomes}"
        batch = [f"{prefix}-{sent + i}" for i in range(16)]
        sent += len(batch)
        answers = call_many(client, [("alloc", alloc_params(cid)) for cid in batch])
        for cid, (error, result) in zip(batch, answers, strict=True):
            if error is None:
                acked[cid] = lease_ips(result["networks"]["disk"])
                outcomes["ok"] += 1
            else:
                assert error["name"] == "storage_error", f"alloc {cid}: {error}"
                assert error["code"] == 12, error
                if not outcomes["storage_error"]:
                    print(f"first refusal: {error['message']}")
                outcomes["storage_error"] += 1
        if outcomes["storage_error"]:
            refused_rounds += 1
    return outcomes


def reads_work(client: RawClient, acked: dict[str, frozenset[str]]) -> int:
    """Every read method answers while the disk is full; the number of reads made."""
    client.call("ping")
    client.call("status")
    client.call("stats")
    assert client.call("network.get", {"name": "disk"})["subnets"][0]["used"] == len(acked)
    served = {lease["container_id"] for lease in all_leases(client, "disk")}
    assert served == set(acked), "the leases served differ from those acknowledged"
    gets = call_many(client, [("get", {"container_id": cid}) for cid in sorted(acked)])
    for cid, (error, result) in zip(sorted(acked), gets, strict=True):
        assert error is None, f"get {cid} while the disk is full: {error}"
        assert lease_ips(result["networks"]["disk"]) == acked[cid]
    some = next(iter(acked.values()))
    owner = client.call("lease.owner", {"ip": sorted(some)[0]})
    assert owner["network"] == "disk"
    return 6 + len(acked)


@pytest.mark.slow
@pytest.mark.root
def test_full_disk_recovers_without_restart(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(disk)], check=True
    )
    config = write_config(tmp_path / "ipamd.toml", networks=[NETWORK])
    daemon = TestDaemon(state_dir=disk, socket=tmp_path / "disk.sock", config=config)
    acked: dict[str, frozenset[str]] = {}
    print(f"\nfull disk: a {DISK} tmpfs, {BALLAST_BYTES >> 10} KiB of ballast, {CYCLES} cycles")
    try:
        daemon.start()
        with daemon.client() as client:
            for cycle in range(1, CYCLES + 1):
                (disk / "ballast").write_bytes(b"\0" * BALLAST_BYTES)
                outcomes = fill(client, f"c{cycle}", acked)
                free_kib = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize >> 10
                reads = reads_work(client, acked)
                victim = sorted(acked)[0]
                error, _ = call_many(client, [("release", {"container_id": victim})])[0]
                assert error is not None and error["name"] == "storage_error", error
                assert client.call("get", {"container_id": victim})  # still held
                status = client.call("status")
                (disk / "ballast").unlink()
                answers = call_many(
                    client, [("alloc", alloc_params(f"after{cycle}-{i}")) for i in range(8)]
                )
                for i, (error, result) in enumerate(answers):
                    assert error is None, f"alloc {i} after space was freed: {error}"
                    acked[f"after{cycle}-{i}"] = lease_ips(result["networks"]["disk"])
                released = client.call("release", {"container_id": victim})["released"]["disk"]
                assert set(released) == acked.pop(victim)
                reads_work(client, acked)
                print(
                    f"cycle {cycle}: {outcomes['ok']} allocations acknowledged, then"
                    f" {outcomes['storage_error']} storage_error replies with {free_kib} KiB free;"
                    f" {reads} reads and a refused release while full; writer saw"
                    f" {status['failed_writes']} failed write(s); ballast deleted: 8 allocations"
                    f" and the release acknowledged without a restart; {len(acked)} leases held"
                )
        assert daemon.stop() == 0, daemon.log()
        check = ipamd_check(disk)
        assert check.status == 0, str(check)
        daemon.start()
        with daemon.client() as client:
            reads_work(client, acked)
        assert daemon.stop() == 0, daemon.log()
        print(
            f"after a restart: all {len(acked)} acknowledged leases present; {check.output.strip()}"
        )
    finally:
        daemon.ensure_dead()
        subprocess.run(["umount", "-l", str(disk)], check=False)
