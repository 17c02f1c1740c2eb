"""Cluster mode in the metrics: blocks owned, claims, etcd reachable, from a real
ipamd against a real etcd, read with `metrics` and parsed by prometheus_client."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

from tests.cluster.support import Host
from tests.daemon.metrics_support import parse
from tests.daemon.test_metrics import CLUSTER_TYPES, EXPECTED_TYPES

HostsFactory = Callable[..., list[Host]]


def test_blocks_and_claims_follow_the_hosts_allocations(hosts: HostsFactory) -> None:
    h1, h2 = hosts(["h1", "h2"])
    net = {
        "name": "metered",
        "scope": "cluster",
        "subnets": [{"subnet": "10.40.0.0/24", "block_prefix": 28}],
    }
    h1.call("network.create", net)
    for i in range(20):  # more than one /28 holds (14 usable addresses each)
        h1.call("alloc", {"container_id": f"c{i}", "networks": {"metered": {}}})
    h2.call("alloc", {"container_id": "x", "networks": {"metered": {}}})

    for host in (h1, h2):
        families = parse(host.call("metrics")["text"])
        assert {n: f.type for n, f in families.items()} == {**EXPECTED_TYPES, **CLUSTER_TYPES}
        owned = [
            b
            for b in host.call("cluster.blocks", {"network": "metered"})["blocks"]
            if b["host"] == host.name
        ]
        status = host.call("status")["cluster"]
        blocks = families["ipamd_cluster_blocks"]
        assert blocks.type == "gauge"
        assert blocks.value("ipamd_cluster_blocks", network="metered") == len(owned)
        claims = families["ipamd_cluster_block_claims"]
        assert claims.type == "counter"
        assert claims.value("ipamd_cluster_block_claims_total") == status["claims"]
        assert families["ipamd_cluster_etcd_up"].value("ipamd_cluster_etcd_up") == 1
    h1_blocks = parse(h1.call("metrics")["text"])["ipamd_cluster_blocks"]
    assert h1_blocks.value("ipamd_cluster_blocks", network="metered") >= 2
    # Prometheus' own linter on a cluster host's real output.
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: .ci/run installs Debian's prometheus"
    lint = subprocess.run(
        [promtool, "check", "metrics"],
        input=h1.call("metrics")["text"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")
