"""Many runtimes' calls at once through the plugin: distinct addresses, clean DELs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cni.cni_support import Cni, Outcome, leases
from tests.support import Daemon

CONTAINERS = 20


@pytest.mark.slow
def test_concurrent_adds_get_distinct_addresses_and_dels_leave_nothing(
    cni: Cni, shared_daemon: Daemon
) -> None:
    # The network does not exist yet: twenty ADDs race to create it, identically.
    config = cni.config("cni-concurrent", ranges=[[{"subnet": "10.250.6.0/24"}]])
    ids = [f"ctr-{i:02d}" for i in range(CONTAINERS)]

    def call(command: str) -> list[Outcome]:
        with ThreadPoolExecutor(CONTAINERS) as pool:
            return list(pool.map(lambda cid: cni.run(command, config, container_id=cid), ids))

    added = call("ADD")
    assert [outcome.returncode for outcome in added] == [0] * CONTAINERS, added
    addresses = {outcome.output["ips"][0]["address"] for outcome in added}
    assert len(addresses) == CONTAINERS
    held = {lease["ips"][0]["address"] for lease in leases(shared_daemon, "cni-concurrent")}
    assert held == addresses

    for _ in range(2):  # DEL, then DEL again: both succeed, silently
        deleted = call("DEL")
        assert [(o.returncode, o.output) for o in deleted] == [(0, None)] * CONTAINERS, deleted
        assert leases(shared_daemon, "cni-concurrent") == []
