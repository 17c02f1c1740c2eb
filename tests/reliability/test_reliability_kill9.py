"""kill -9 under load: every acknowledged lease survives, no address gets two owners.

Four client processes (load_client.py) allocate and release through the daemon
and journal every answer; the daemon is SIGKILLed at a random moment of each
round and restarted. After every round: `ipamd check` on (a copy of) the
crashed state is clean; the restarted daemon serves every acknowledged,
unreleased lease with its addresses, no released one, nothing nobody asked
for; allocating until the range is exhausted hands out exactly the addresses
nobody holds (so none has two owners). bbolt's kill-and-check, with etcd's
client histories.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.reliability.harness import (
    Budget,
    LeaseModel,
    LoadClients,
    TestDaemon,
    ipamd_check,
    ipamd_check_copy,
    write_config,
)

NETWORK = {
    "name": "crash",
    "subnets": [
        {"subnet": "10.77.0.0/24", "gateway": "10.77.0.1"},
        {"subnet": "fd77::/120", "gateway": "fd77::1"},
    ],
}
ALLOCATABLE = 253  # 10.77.0.2 - 10.77.0.254; the IPv6 subnet has one more
LOAD_S = (0.2, 0.5)


@pytest.mark.slow
def test_kill9_under_load(tmp_path: Path, budget: Budget) -> None:
    rounds = budget.kill_rounds
    rng = random.Random(budget.seed)
    print(f"\nkill -9 under load: {rounds} rounds, seed {budget.seed}")
    config = write_config(tmp_path / "ipamd.toml", networks=[NETWORK])
    daemon = TestDaemon(state_dir=tmp_path / "state", socket=tmp_path / "k9.sock", config=config)
    model = LeaseModel("crash", ALLOCATABLE)
    clients = LoadClients(daemon.socket, "crash", budget.seed)
    try:
        daemon.start()
        for n in range(1, rounds + 1):
            clients.go()
            load_s = rng.uniform(*LOAD_S)
            time.sleep(load_s)
            daemon.kill()
            counts = model.apply_all(clients.collect())
            check = ipamd_check_copy(daemon.state_dir, tmp_path / "check-copy")
            daemon.start()
            with daemon.client() as client:
                figures = model.verify(client, probe_prefix=f"probe{n}")
            print(
                f"round {n}/{rounds}: killed after {load_s:.2f}s of load;"
                f" acknowledged {counts['alloc ok']} allocs, {counts['release ok']} releases,"
                f" {counts['alloc error']} range_exhausted; {counts['lost']} answers lost"
                f" ({figures['committed']} had committed); {figures['held']} leases held,"
                f" {figures['probed']} more allocated until exhausted; {check.output.strip()}"
            )
            assert check.status == 0, f"round {n}: {check}"
            assert not model.violations, f"round {n}: " + "; ".join(model.violations[:20])
        assert daemon.stop() == 0, daemon.log()
        final = ipamd_check(daemon.state_dir)
        assert final.status == 0, str(final)
    finally:
        clients.close()
        daemon.ensure_dead()
    totals = model.totals
    print(
        f"total: {rounds} SIGKILLs, {totals['alloc ok']} acknowledged allocs,"
        f" {totals['release ok']} acknowledged releases, {totals['lost']} lost answers,"
        f" {len(model.held)} leases at the end; {final.output.strip()}"
    )
