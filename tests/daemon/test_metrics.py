"""Metrics of the real daemon, read over its Unix socket (`metrics`), over HTTP
(`[metrics] listen`) and with `ipamd-client metrics`, parsed by prometheus_client.

After a known sequence of allocs, releases, gc and failures, every gauge must
agree with `stats` and `status`, and every counter and histogram with the
requests that were made.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.e2e import call_error, create_network, next_subnet_prefix, raw_call
from tests.daemon.metrics_support import Family, metrics_daemon, parse, scrape
from tests.support import Daemon, RawClient

README = Path(__file__).resolve().parents[2] / "README.md"

# Every family the daemon exposes, with its type. A new metric must be added
# here and to the README's metrics table (test_readme_documents_every_metric).
EXPECTED_TYPES = {
    "ipamd_build_info": "gauge",
    "ipamd_networks": "gauge",
    "ipamd_network_leases": "gauge",
    "ipamd_network_suspect_leases": "gauge",
    "ipamd_subnet_size_addresses": "gauge",
    "ipamd_subnet_allocatable_addresses": "gauge",
    "ipamd_subnet_allocated_addresses": "gauge",
    "ipamd_subnet_free_addresses": "gauge",
    "ipamd_subnet_utilisation_ratio": "gauge",
    "ipamd_allocations": "counter",
    "ipamd_releases": "counter",
    "ipamd_gc_released_leases": "counter",
    "ipamd_reclaimed_leases": "counter",
    "ipamd_errors": "counter",
    "ipamd_alloc_duration_seconds": "histogram",
    "ipamd_writer_group_size": "histogram",
    "ipamd_writer_sync_duration_seconds": "histogram",
    "ipamd_writer_failed_writes": "counter",
    "ipamd_writer_queued_mutations": "gauge",
    "ipamd_writer_up": "gauge",
    "ipamd_connections": "gauge",
    "ipamd_connections_max": "gauge",
    "ipamd_connections_accepted": "counter",
    "ipamd_connections_refused": "counter",
    # prometheus_client's process collector, from /proc/self.
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_cpu_seconds": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
}
# Only with a [cluster] config (tests/cluster/test_cluster_metrics.py checks them).
CLUSTER_TYPES = {
    "ipamd_cluster_blocks": "gauge",
    "ipamd_cluster_block_claims": "counter",
    "ipamd_cluster_etcd_up": "gauge",
}


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    daemon, port = metrics_daemon(tmp_path_factory.mktemp("metrics"))
    try:
        yield daemon, port
    finally:
        daemon.close()


def alloc(client: RawClient, container: str, network: str) -> None:
    client.call("alloc", {"container_id": container, "networks": {network: {}}})


def release(client: RawClient, container: str, network: str) -> None:
    client.call("release", {"container_id": container, "networks": {network: {}}})


PROCESS_SAMPLE = re.compile(r"^process_\w+ .*$", re.MULTILINE)


def without_process_samples(text: str) -> str:
    return PROCESS_SAMPLE.sub("", text)


def counter(families: dict[str, Family], name: str, **labels: str) -> float:
    """A counter's value; 0 when the label set was never counted."""
    family = families[name]
    assert family.type == "counter", family
    return family.samples.get(f"{name}_total", {}).get(tuple(sorted(labels.items())), 0.0)


def check_histogram(family: Family, name: str) -> tuple[float, float]:
    """Its (count, sum), after checking buckets are cumulative and end at +Inf == count."""
    assert family.type == "histogram"
    buckets = family.samples[f"{name}_bucket"]
    bounds = sorted(buckets, key=lambda labels: float(dict(labels)["le"]))
    counts = [buckets[b] for b in bounds]
    assert counts == sorted(counts), f"{name} buckets not cumulative: {counts}"
    assert dict(bounds[-1])["le"] == "+Inf"
    count = family.value(f"{name}_count")
    assert counts[-1] == count
    return count, family.value(f"{name}_sum")


@pytest.mark.slow
def test_metrics_agree_with_stats_after_a_known_sequence(metered: tuple[Daemon, int]) -> None:
    daemon, port = metered
    v4, dual, tiny = "met-v4", "met-dual", "met-tiny"
    with daemon.client() as client:
        create_network(client, v4, cidr=28)  # gateway .1: 13 allocatable
        prefix = next_subnet_prefix()
        client.call(
            "network.create",
            {
                "name": dual,
                "subnets": [{"subnet": f"{prefix}.0/24"}, {"subnet": "fd00:19::/64"}],
            },
        )
        create_network(client, tiny, cidr=30, gateway=False)  # two addresses
        for i in range(5):
            alloc(client, f"c{i}", v4)
        release(client, "c1", v4)
        release(client, "c3", v4)
        release(client, "never-held", v4)  # succeeds, releases nothing: not counted
        for i in range(3):
            alloc(client, f"d{i}", dual)
        alloc(client, "d0", dual)  # a retry: the same lease, counted again
        release(client, "d0", dual)
        alloc(client, "t0", tiny)
        alloc(client, "t1", tiny)
        call_error(client, "alloc", {"container_id": "t2", "networks": {tiny: {}}}, code=7)
        call_error(client, "alloc", {"container_id": "x", "networks": {"met-none": {}}}, code=3)
        call_error(client, "bogus.method", {}, code=2)
        call_error(client, "network.get", {"name": "met-none"}, code=3)
        # A frame that is no request (its method is not a string): counted as "frame".
        assert raw_call(client, [0, 99, 12345, []])[2]["name"] == "invalid_request"
        gc = client.call("gc", {"network": v4, "valid": [{"container_id": "c0"}]})
        assert sorted(lease["container_id"] for lease in gc["released"]) == ["c2", "c4"]
        client.call("gc", {"network": dual, "valid": [], "dry_run": True})  # not counted

        text = client.call("metrics")["text"]
        stats = client.call("stats")
        status = client.call("status")
        over_http = scrape(port)

    # The same text from both doors (nothing changed in between but the process's
    # own CPU time, memory and descriptors).
    assert without_process_samples(over_http) == without_process_samples(text)
    families = parse(text)
    assert {name: f.type for name, f in families.items()} == EXPECTED_TYPES

    # Gauges, from the committed state: exactly what `stats` says.
    assert families["ipamd_networks"].value("ipamd_networks") == len(stats["networks"])
    for network in stats["networks"]:
        name = network["name"]
        assert (
            families["ipamd_network_leases"].value("ipamd_network_leases", network=name)
            == (network["leases"])
        )
        suspect = families["ipamd_network_suspect_leases"]
        assert suspect.value("ipamd_network_suspect_leases", network=name) == network["suspect"]
        for subnet in network["subnets"]:
            labels = {"network": name, "subnet": subnet["subnet"]}
            for metric, key in (
                ("ipamd_subnet_size_addresses", "size"),
                ("ipamd_subnet_allocatable_addresses", "allocatable"),
                ("ipamd_subnet_allocated_addresses", "used"),
                ("ipamd_subnet_free_addresses", "free"),
            ):
                # Counts past 2**63 travel as decimal strings; the gauge is a float.
                assert families[metric].value(metric, **labels) == float(int(subnet[key]))
            ratio = families["ipamd_subnet_utilisation_ratio"].value(
                "ipamd_subnet_utilisation_ratio", **labels
            )
            assert 0 <= ratio <= 1
            assert math.isclose(ratio, subnet["utilisation"], abs_tol=1e-6)
    leases = families["ipamd_network_leases"]
    assert leases.value("ipamd_network_leases", network=v4) == 1  # 5 - 2 released - 2 gc
    assert leases.value("ipamd_network_leases", network=dual) == 2
    assert leases.value("ipamd_network_leases", network=tiny) == 2
    size = families["ipamd_subnet_size_addresses"]
    assert size.value("ipamd_subnet_size_addresses", network=dual, subnet="fd00:19::/64") == 2.0**64

    # Counters, from the requests answered.
    assert counter(families, "ipamd_allocations", network=v4) == 5
    assert counter(families, "ipamd_allocations", network=dual) == 4
    assert counter(families, "ipamd_allocations", network=tiny) == 2
    assert counter(families, "ipamd_releases", network=v4) == 2
    assert counter(families, "ipamd_releases", network=dual) == 1
    assert counter(families, "ipamd_gc_released_leases", network=v4) == 2
    assert counter(families, "ipamd_gc_released_leases", network=dual) == 0
    errors = {
        tuple(sorted(dict(labels).items())): value
        for labels, value in families["ipamd_errors"].samples["ipamd_errors_total"].items()
    }
    assert errors == {
        (("error", "range_exhausted"), ("method", "alloc")): 1,
        (("error", "network_not_found"), ("method", "alloc")): 1,
        (("error", "unknown_method"), ("method", "unknown")): 1,
        (("error", "network_not_found"), ("method", "network.get")): 1,
        (("error", "invalid_request"), ("method", "frame")): 1,
    }

    # Histograms: every alloc answered (the two failed ones too) was timed.
    count, total = check_histogram(
        families["ipamd_alloc_duration_seconds"], "ipamd_alloc_duration_seconds"
    )
    assert count == 5 + 4 + 3 + 1
    assert 0 < total < count * 10
    groups, mutations = check_histogram(
        families["ipamd_writer_group_size"], "ipamd_writer_group_size"
    )
    assert (groups, mutations) == (status["batches"], status["mutations"])
    syncs, sync_s = check_histogram(
        families["ipamd_writer_sync_duration_seconds"], "ipamd_writer_sync_duration_seconds"
    )
    assert 0 < syncs <= groups and sync_s > 0

    # The writer and the connections, as `status` tells them.
    assert families["ipamd_writer_up"].value("ipamd_writer_up") == 1
    assert families["ipamd_writer_queued_mutations"].value("ipamd_writer_queued_mutations") == 0
    assert counter(families, "ipamd_writer_failed_writes") == status["failed_writes"] == 0
    assert families["ipamd_connections"].value("ipamd_connections") == status["connections"]
    assert families["ipamd_connections_max"].value("ipamd_connections_max") == 1024
    assert counter(families, "ipamd_connections_accepted") >= 1
    assert families["ipamd_build_info"].value("ipamd_build_info", version=status["version"]) == 1


def test_metrics_takes_no_params(metered: tuple[Daemon, int]) -> None:
    daemon, _ = metered
    with daemon.client() as client:
        error = call_error(client, "metrics", {"format": "openmetrics"}, code=1)
    assert "format" in error.message


@pytest.mark.slow
def test_ipamd_client_metrics_prints_the_same_text(metered: tuple[Daemon, int]) -> None:
    daemon, _ = metered
    with daemon.client() as client:
        create_network(client, "met-cli", cidr=29)
        alloc(client, "cli0", "met-cli")
    command = [sys.executable, "-m", "ipamd.cli", "--socket", str(daemon.socket)]
    printed = subprocess.run(
        [*command, "metrics"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    as_json = subprocess.run(
        [*command, "--json", "metrics"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    with daemon.client() as client:
        text = client.call("metrics")["text"]

    families = parse(printed)
    assert set(families) == set(EXPECTED_TYPES)
    leases = families["ipamd_network_leases"].value("ipamd_network_leases", network="met-cli")
    assert leases == 1
    # Only the connection counts differ between the three reads: each is a new client.
    volatile = re.compile(r"^ipamd_connections(_accepted_total)? .*$", re.MULTILINE)
    assert without_process_samples(volatile.sub("", printed)) == without_process_samples(
        volatile.sub("", text)
    )
    assert '"text": "# HELP' in as_json


def test_readme_documents_every_metric() -> None:
    readme = README.read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    for name, kind in {**EXPECTED_TYPES, **CLUSTER_TYPES}.items():
        exposed = f"{name}_total" if kind == "counter" else name
        if name.startswith("process_"):  # the library's standard ones: named in a sentence
            assert f"`{exposed}`" in section, exposed
        else:
            assert re.search(rf"^\| `{exposed}` \| {kind} \|", section, re.MULTILINE), exposed


def test_promtool_finds_nothing_to_lint(metered: tuple[Daemon, int]) -> None:
    """Prometheus' own linter (naming, units, suffixes) on the daemon's real output."""
    daemon, port = metered
    with daemon.client() as client:
        create_network(client, "met-lint", cidr=29)
        alloc(client, "lint0", "met-lint")
        call_error(client, "alloc", {"container_id": "x", "networks": {"met-none": {}}}, code=3)
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: .ci/run installs Debian's prometheus"
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrape(port),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
