"""Cluster mode end to end: real etcd, several real ipamd processes sharing networks."""

from __future__ import annotations

import collections
import ipaddress
import json
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ipamd.cluster.etcd import EtcdSession
from ipamd.cluster.keys import Layout
from tests.cluster.support import (
    EtcdCluster,
    Host,
    check_cluster,
    client_check,
    free_port,
    start_hosts,
)
from tests.support import RpcError

HostsFactory = Callable[..., list[Host]]


def cluster_net(name: str, subnet: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "scope": "cluster", "subnets": [{"subnet": subnet, **extra}]}


def address_of(result: dict[str, Any], network: str) -> ipaddress.IPv4Address:
    text = result["networks"][network]["ips"][0]["address"].split("/")[0]
    return ipaddress.IPv4Address(text)


def block_owners(host: Host, network: str) -> dict[ipaddress.IPv4Network, str]:
    blocks = host.call("cluster.blocks", {"network": network})["blocks"]
    return {ipaddress.IPv4Network(b["block"]): b["host"] for b in blocks}


def owner_of(owners: dict[ipaddress.IPv4Network, str], address: ipaddress.IPv4Address) -> str:
    return next(host for block, host in owners.items() if address in block)


def test_a_cluster_network_is_defined_once_and_seen_everywhere(hosts: HostsFactory) -> None:
    h1, h2, h3 = hosts(["h1", "h2", "h3"])
    net = cluster_net("shared", "10.20.0.0/24")
    created = h1.call("network.create", net)
    assert created["scope"] == "cluster"
    assert created["subnets"] == [{"subnet": "10.20.0.0/24", "block_prefix": 26}]
    # The same definition again, on another host: success (ensure).
    assert h2.call("network.create", net) == created
    # A different one under that name, anywhere: network_exists, and nothing changes.
    different = cluster_net("shared", "10.20.0.0/23")
    assert h3.error("network.create", different).name == "network_exists"
    assert h1.error("network.create", different).name == "network_exists"
    # h3 never created it: after a catch-up with etcd it lists it.
    h3.call("cluster.status")
    listed = {n["name"]: n for n in h3.call("network.list")}
    assert listed["shared"]["scope"] == "cluster"
    assert "shared" in {n["name"] for n in h3.call("stats")["networks"]}
    # A scope the host cannot serve is refused, naming it.
    assert "scope" in h1.error("network.create", {**net, "scope": "everywhere"}).message
    # Deleting it is refused on any host, naming the hosts that hold blocks
    # of it; the network and its leases stay.
    h1.call("alloc", {"container_id": "c1", "networks": {"shared": {}}})
    h2.call("alloc", {"container_id": "c2", "networks": {"shared": {}}})
    refused = h3.error("network.delete", {"name": "shared", "force": True})
    assert refused.name == "invalid_request"
    assert "hosts holding blocks of it: h1, h2" in refused.message
    assert h1.error("network.delete", {"name": "shared"}).name == "invalid_request"
    assert [lease["container_id"] for lease in h1.leases("shared")] == ["c1"]


def test_a_host_allocates_on_a_network_it_has_not_seen_yet(hosts: HostsFactory) -> None:
    h1, h2 = hosts(["h1", "h2"])
    h1.call("network.create", cluster_net("late", "10.21.0.0/24"))
    result = h2.call("alloc", {"container_id": "c1", "networks": {"late": {}}})
    assert address_of(result, "late") in ipaddress.IPv4Network("10.21.0.0/24")
    assert h2.error("alloc", {"container_id": "c2", "networks": {"nowhere": {}}}).name == (
        "network_not_found"
    )


def test_statics_claim_a_free_block_and_name_the_owner_of_a_taken_one(
    hosts: HostsFactory,
) -> None:
    h1, h2 = hosts(["h1", "h2"])
    h1.call("network.create", cluster_net("st", "10.22.0.0/24"))
    first = address_of(h1.call("alloc", {"container_id": "a", "networks": {"st": {}}}), "st")
    owners = block_owners(h1, "st")
    assert owner_of(owners, first) == "h1"
    assert list(owners.values()) == ["h1"]  # one block claimed: the one it allocates from
    # Another free address of h1's block, asked for by h2: h1 owns it.
    neighbour = next(
        ipaddress.IPv4Address(int(b.network_address) + 5) for b in owners if first in b
    )
    error = h2.error(
        "alloc", {"container_id": "b", "networks": {"st": {"static_ips": [str(neighbour)]}}}
    )
    assert error.name == "address_in_use"
    assert "host h1" in error.message and str(neighbour) in error.message
    # A static address in a free block: h2 claims that block and gets it.
    free_block = next(
        ipaddress.IPv4Network(f"10.22.0.{n}/26")
        for n in (0, 64, 128, 192)
        if ipaddress.IPv4Network(f"10.22.0.{n}/26") not in owners
    )
    wanted = free_block.network_address + 10
    got = h2.call("alloc", {"container_id": "b", "networks": {"st": {"static_ips": [str(wanted)]}}})
    assert address_of(got, "st") == wanted
    assert block_owners(h1, "st")[free_block] == "h2"
    error = h1.error(
        "alloc", {"container_id": "c", "networks": {"st": {"static_ips": [str(wanted + 1)]}}}
    )
    assert error.name == "address_in_use" and "host h2" in error.message
    # h2's dynamic allocations come from its own block.
    dynamic = address_of(h2.call("alloc", {"container_id": "d", "networks": {"st": {}}}), "st")
    assert dynamic in free_block


@pytest.mark.slow
def test_four_hosts_fill_a_subnet_concurrently_without_a_duplicate(
    hosts: HostsFactory,
) -> None:
    names = ["h1", "h2", "h3", "h4"]
    cluster = hosts(names)
    net = cluster_net("fill", "10.23.0.0/24", block_prefix=28)
    for host in cluster:
        host.call("network.create", net)
    subnet = ipaddress.IPv4Network("10.23.0.0/24")
    acknowledged: dict[str, list[ipaddress.IPv4Address]] = {name: [] for name in names}
    exhausted: dict[str, str] = {}
    unexpected: list[str] = []

    def load(host: Host, seed: int) -> None:
        rng = random.Random(seed)
        with host.daemon.client(timeout=30) as client:
            for n in range(10_000):
                options: dict[str, Any] = {}
                if rng.random() < 0.2:  # a static address anywhere: free, taken, or elsewhere
                    options["static_ips"] = [str(subnet.network_address + rng.randrange(1, 255))]
                try:
                    result = client.call(
                        "alloc", {"container_id": f"{host.name}-{n}", "networks": {"fill": options}}
                    )
                except RpcError as e:
                    if e.name == "range_exhausted" and not options:
                        exhausted[host.name] = e.message
                        return
                    if e.name != "address_in_use":
                        unexpected.append(f"{host.name}: {e}")
                    continue
                acknowledged[host.name].append(address_of(result, "fill"))

    threads = [threading.Thread(target=load, args=(host, i)) for i, host in enumerate(cluster)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert unexpected == []
    every = [a for addresses in acknowledged.values() for a in addresses]
    assert len(every) == len(set(every)), "an address was leased twice"
    # Every address of the /24 but the network and broadcast address is leased.
    assert len(every) == 254
    # Exhaustion was reported by every host, naming the range.
    assert set(exhausted) == set(names)
    assert all(
        "failed to find free IP in range: 10.23.0.1 - 10.23.0.254" in m for m in exhausted.values()
    )
    # What each host holds agrees with what it acknowledged, and lies in its blocks.
    owners = block_owners(cluster[0], "fill")
    for host in cluster:
        held = {
            ipaddress.IPv4Address(lease["ips"][0]["address"].split("/")[0])
            for lease in host.leases("fill")
        }
        assert held == set(acknowledged[host.name])
        assert all(owner_of(owners, a) == host.name for a in held)
    # After the fill, a new request fails on every host.
    for host in cluster:
        error = host.error("alloc", {"container_id": "late", "networks": {"fill": {}}})
        assert error.name == "range_exhausted"
    # stats: per host and cluster-wide, once every host has published its
    # summary (each catch-up does) and h1 has read them (its next one).
    for host in [*cluster, cluster[0]]:
        host.call("cluster.status")
    (fill,) = [n for n in cluster[0].call("stats")["networks"] if n["name"] == "fill"]
    assert fill["cluster"]["used"] == 254 and fill["cluster"]["utilisation"] == 1.0
    assert fill["cluster"]["blocks"] == 16 and fill["cluster"]["free_in_blocks"] == 0
    per_host = {h["name"]: h["used"] for h in fill["cluster"]["hosts"]}
    assert per_host == {name: len(acknowledged[name]) for name in names}
    for host in cluster:
        online = client_check(host)  # running: the daemon checks itself
        assert online.returncode == 0, online.stdout + online.stderr
        assert f"cluster ok: host {host.name}, 1 cluster network(s)" in online.stdout
        assert host.daemon.stop() == 0
        result = check_cluster(host)
        assert result.returncode == 0, result.stdout + result.stderr


def test_ready_without_etcd_allocates_from_owned_blocks_and_fails_claims_unavailable(
    hosts: HostsFactory, etcd: EtcdCluster, tmp_path: Any
) -> None:
    (h1,) = hosts(["h1"])
    h1.call("network.create", cluster_net("cut", "10.24.0.0/24"))
    first = address_of(h1.call("alloc", {"container_id": "c0", "networks": {"cut": {}}}), "cut")
    assert h1.daemon.stop() == 0
    # Restarted with no etcd it can reach: READY from the local state all the same.
    config = h1.daemon.config
    assert config is not None
    text = config.read_text()
    dead = f'["http://127.0.0.1:{free_port()}"]'
    config.write_text(
        "\n".join(
            f"endpoints = {dead}" if line.startswith("endpoints") else line
            for line in text.splitlines()
        )
        + "\n"
    )
    h1.daemon.start()
    block = ipaddress.IPv4Network(f"{first}/26", strict=False)
    served = [first]
    while True:
        try:
            result = h1.call("alloc", {"container_id": f"c{len(served)}", "networks": {"cut": {}}})
        except RpcError as e:
            error = e
            break
        served.append(address_of(result, "cut"))
    assert all(a in block for a in served)
    assert len(served) == 63  # the whole owned block: a /26 minus the network address
    assert error.name == "unavailable"
    assert "etcd is unreachable since 20" in error.message
    status = h1.call("status")["cluster"]
    assert status["etcd_reachable"] is False and "unreachable since" in status["etcd_error"]
    cluster_status = h1.call("cluster.status")
    assert cluster_status["etcd"]["reachable"] is False
    assert "unreachable_since" in cluster_status["etcd"]
    # Releases are local: they work without etcd.
    h1.call("release", {"container_id": "c1"})


@pytest.mark.slow
def test_a_stopped_host_is_released_by_an_operator_and_fenced_when_it_returns(
    hosts: HostsFactory, etcd: EtcdCluster, prefix: str
) -> None:
    h1, h2 = hosts(["h1", "h2"], lease_ttl=2)
    h1.call("network.create", cluster_net("fence", "10.25.0.0/24"))
    held = address_of(h1.call("alloc", {"container_id": "old", "networks": {"fence": {}}}), "fence")
    block = ipaddress.IPv4Network(f"{held}/26", strict=False)
    before = {b["block"]: b for b in h2.call("cluster.blocks", {"network": "fence"})["blocks"]}
    token = before[str(block)]["revision"]
    # While h1 is alive, release-host is refused (h2's too, from h1).
    refused = h2.error("cluster.release_host", {"host": "h1"})
    assert refused.name == "invalid_request" and "alive" in refused.message
    assert h1.error("cluster.release_host", {"host": "h2"}).name == "invalid_request"
    # h1 stops (SIGSTOP) past its liveness lease: etcd deletes its key.
    gone = etcd.watch_deleted(f"{prefix}/hosts/h1")
    h1.daemon.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    gone.wait()
    alive = {h["name"]: h["alive"] for h in h2.call("cluster.status")["hosts"]}
    assert alive == {"h1": False, "h2": True}
    released = h2.call("cluster.release_host", {"host": "h1"})
    assert f"fence/{block}" in released["released"]
    # h2 takes that block over through a static address in it.
    taken = block.network_address + 40
    h2.call("alloc", {"container_id": "new", "networks": {"fence": {"static_ips": [str(taken)]}}})
    after = {b["block"]: b for b in h2.call("cluster.blocks", {"network": "fence"})["blocks"]}
    assert after[str(block)]["host"] == "h2"
    assert after[str(block)]["revision"] != token
    # The fencing token: a release compared on h1's old token changes nothing.
    session = EtcdSession(tuple(etcd.endpoints))
    assert not session.delete_if_created(f"{prefix}/blocks/fence/{block}", token)
    assert etcd.get_json(f"{prefix}/blocks/fence/{block}")["host"] == "h2"
    # h1 comes back: at its next catch-up it finds the block taken, stops
    # allocating from it, and says so loudly.
    h1.daemon.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    h1.call("cluster.status")
    assert "BLOCK LOST" in h1.daemon.log() and str(block) in h1.daemon.log()
    for n in range(70):
        got = address_of(
            h1.call("alloc", {"container_id": f"back{n}", "networks": {"fence": {}}}), "fence"
        )
        assert got not in block
    # Its lease in the lost block is what `ipamd check --cluster` reports:
    # on the running host through the daemon (offline, the lock is held, and
    # it says what to run instead), and with the daemon stopped.
    lost = f"{held} lies in block {block}, which this host does not own (etcd: h2)"
    online = client_check(h1)
    assert online.returncode == 1
    assert lost in online.stdout and "cluster_problems: 1 problem(s)" in online.stderr
    locked = check_cluster(h1)
    assert locked.returncode == 75
    assert "ipamd-client cluster check" in locked.stderr
    assert h1.daemon.stop() == 0
    report = check_cluster(h1)
    assert report.returncode == 1
    assert lost in report.stdout


@pytest.mark.slow
def test_empty_blocks_go_back_to_etcd_keeping_one_per_subnet(
    hosts: HostsFactory, etcd: EtcdCluster, prefix: str
) -> None:
    (h1,) = hosts(["h1"], return_empty_after="1s", sync_interval="0.5s")
    h1.call("network.create", cluster_net("ret", "10.26.0.0/24"))
    for n in range(100):  # two blocks' worth
        h1.call("alloc", {"container_id": f"c{n}", "networks": {"ret": {}}})
    blocks = [b["block"] for b in h1.call("cluster.blocks", {"network": "ret"})["blocks"]]
    assert len(blocks) >= 2
    deletes = etcd.watch_deleted(f"{prefix}/blocks/ret/", prefix=True)
    for n in range(100):
        h1.call("release", {"container_id": f"c{n}"})
    # All but one of the empty blocks go back: one delete each.
    deletes.wait(count=len(blocks) - 1)
    left = h1.call("cluster.blocks", {"network": "ret"})["blocks"]
    assert len(left) == 1 and left[0]["host"] == "h1"
    assert "returned empty block" in h1.daemon.log()


def ipamd_client(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ipamd.cli", "--socket", str(host.daemon.socket), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ipamd_client_cluster_commands(hosts: HostsFactory) -> None:
    h1, h2 = hosts(["h1", "h2"])
    created = ipamd_client(
        h1,
        "network",
        "create",
        "cli",
        "--scope",
        "cluster",
        "--subnet",
        "10.27.0.0/24",
        "--block-prefix",
        "28",
    )
    assert created.returncode == 0, created.stderr
    h2.call("alloc", {"container_id": "c", "networks": {"cli": {}}})
    status = ipamd_client(h1, "cluster", "status")
    assert status.returncode == 0, status.stderr
    assert "host h1: etcd reachable" in status.stdout
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    assert ["h1", "alive", "0"] in rows and ["h2", "alive", "1"] in rows
    blocks = ipamd_client(h1, "--json", "cluster", "blocks", "cli")
    assert blocks.returncode == 0, blocks.stderr
    (block,) = json.loads(blocks.stdout)["blocks"]
    assert block["host"] == "h2" and ipaddress.ip_network(block["block"]).prefixlen == 28
    refused = ipamd_client(h1, "cluster", "release-host", "h2")
    assert refused.returncode != 0 and "alive" in refused.stderr


@pytest.mark.slow
def test_a_dead_hosts_empty_blocks_are_reclaimed_when_configured(
    tmp_path: Any, etcd: EtcdCluster, prefix: str, hosts: HostsFactory
) -> None:
    (h1,) = hosts(["h1"], lease_ttl=2)
    (h2,) = hosts(["h2"], lease_ttl=2, reclaim_dead_after="1s", sync_interval="0.3s")
    h1.call("network.create", cluster_net("dead", "10.28.0.0/24"))
    for n in range(70):  # one full /26 and a few in a second block
        h1.call("alloc", {"container_id": f"c{n}", "networks": {"dead": {}}})
    for n in range(63):
        h1.call("release", {"container_id": f"c{n}"})
    h1.call("cluster.status")  # publishes h1's summary
    blocks = h1.call("cluster.blocks", {"network": "dead"})["blocks"]
    assert {b["host"] for b in blocks} == {"h1"}
    empty = [b["block"] for b in blocks if b["used"] == 0]
    (busy,) = [b["block"] for b in blocks if b["used"] == 7]
    assert empty  # the block emptied (and any claimed ahead)
    gone = etcd.watch_deleted(f"{prefix}/hosts/h1")
    reclaimed = etcd.watch_deleted(f"{prefix}/blocks/dead/", prefix=True)
    h1.daemon.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    gone.wait()
    reclaimed.wait(count=len(empty))
    h2.call("cluster.status")  # one more full pass: the non-empty block stays h1's
    left = {b["block"]: b["host"] for b in h2.call("cluster.blocks", {"network": "dead"})["blocks"]}
    assert left == {busy: "h1"}
    full = empty[0]
    assert f"reclaimed empty block {full} of network dead from host h1" in h2.daemon.log()


def test_claims_shrink_to_fit_an_etcd_with_a_low_max_txn_ops(tmp_path: Any) -> None:
    # A burst sizes claims at many blocks a transaction; this etcd takes at
    # most 4 puts in one. Every alloc still succeeds, claims are still batched,
    # and none is larger than etcd allows.
    etcd = EtcdCluster(tmp_path / "etcd", extra_args=("--max-txn-ops", "4")).start()
    hosts = start_hosts(tmp_path, etcd, ["h1"], prefix="/low")
    try:
        (host,) = next(hosts)
        host.call("network.create", cluster_net("burst", "10.24.0.0/20", block_prefix=28))
        errors: list[str] = []

        def load(worker: int) -> None:
            with host.daemon.client(timeout=30) as client:
                for n in range(250):
                    try:
                        client.call(
                            "alloc", {"container_id": f"w{worker}-{n}", "networks": {"burst": {}}}
                        )
                    except RpcError as e:
                        errors.append(str(e))

        threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        layout = Layout("/low")
        blocks = [
            kv
            for kv in EtcdSession(tuple(etcd.endpoints)).get_prefix("/low/")
            if layout.parse_block(kv.key) is not None
        ]
        assert len(blocks) >= 2000 // 16
        per_transaction = collections.Counter(kv.create_revision for kv in blocks)
        assert 1 < max(per_transaction.values()) <= 4
    finally:
        hosts.close()
        etcd.close()
