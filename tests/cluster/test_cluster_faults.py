"""Faults under load: a three-member etcd and three ipamd hosts, killed and stopped.

Each host gets a client thread allocating (dynamic, some static) for the whole
test. Between faults the test waits for every host to answer more requests
(an event from the load threads, not a sleep). Afterwards every acknowledged
lease must still be held by the host that acknowledged it, no address may be
held twice cluster-wide, and `ipamd check --cluster` must be clean on every host.
"""

from __future__ import annotations

import ipaddress
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.support import EtcdCluster, Host, check_cluster, start_hosts
from tests.support import RawClient, RpcError

# Errors a client may see while etcd or a host is down; anything else fails the test.
EXPECTED = {"unavailable", "address_in_use", "range_exhausted"}


class Load:
    """One thread per host allocating until stopped; counts answers per host."""

    def __init__(self, hosts: list[Host], network: str, subnet: str) -> None:
        self.hosts = hosts
        self.network = network
        self.subnet = ipaddress.ip_network(subnet)
        self.acknowledged: dict[str, dict[str, str]] = {h.name: {} for h in hosts}
        self.answered = {h.name: 0 for h in hosts}
        self.unexpected: list[str] = []
        self.up = {h.name: threading.Event() for h in hosts}
        self.stop = threading.Event()
        self.progress = threading.Condition()
        self.threads = [
            threading.Thread(target=self._run, args=(h, i)) for i, h in enumerate(hosts)
        ]
        for event in self.up.values():
            event.set()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for event in self.up.values():
            event.set()
        for thread in self.threads:
            thread.join()

    def _run(self, host: Host, seed: int) -> None:
        rng = random.Random(seed)
        client: RawClient | None = None
        n = 0
        while not self.stop.is_set():
            if client is None:
                self.up[host.name].wait()
                try:
                    client = host.daemon.client(timeout=60)
                except OSError:
                    self.up[host.name].clear()  # not up yet: the test sets it once it is
                    continue
            n += 1
            options: dict[str, Any] = {}
            if rng.random() < 0.1:
                offset = rng.randrange(1, self.subnet.num_addresses - 1)
                options["static_ips"] = [str(self.subnet.network_address + offset)]
            container = f"{host.name}-{n}"
            try:
                result = client.call(
                    "alloc", {"container_id": container, "networks": {self.network: options}}
                )
            except RpcError as e:
                if e.name not in EXPECTED:
                    self.unexpected.append(f"{host.name}: {e}")
            except OSError:  # the host was killed: its reply is lost, not acknowledged
                client.close()
                client = None
                continue
            else:
                address = result["networks"][self.network]["ips"][0]["address"]
                self.acknowledged[host.name][container] = address
            with self.progress:
                self.answered[host.name] += 1
                self.progress.notify_all()
        if client is not None:
            client.close()

    def wait_answers(self, count: int, names: list[str] | None = None) -> None:
        """Until each named host (default: all) has answered `count` more requests."""
        names = names or list(self.answered)
        with self.progress:
            goal = {name: self.answered[name] + count for name in names}
            ok = self.progress.wait_for(
                lambda: all(self.answered[n] >= goal[n] for n in names) or bool(self.unexpected),
                timeout=120,
            )
        assert ok, f"no progress: {self.answered}"
        assert self.unexpected == []


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd", size=3).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.mark.slow
def test_kills_and_stops_of_hosts_and_etcd_members_lose_no_acknowledged_lease(
    tmp_path: Path, etcd3: EtcdCluster
) -> None:
    hosts_cm = start_hosts(tmp_path, etcd3, ["h1", "h2", "h3"], lease_ttl=3)
    hosts = next(hosts_cm)
    try:
        net = {
            "name": "ha",
            "scope": "cluster",
            "subnets": [{"subnet": "10.30.0.0/22", "block_prefix": 27}],
        }
        hosts[0].call("network.create", net)
        _, h2, h3 = hosts
        with Load(hosts, "ha", "10.30.0.0/22") as load:
            load.wait_answers(20)
            # One etcd member SIGKILLed, then back.
            etcd3.kill(0)
            load.wait_answers(20)
            etcd3.restart(0)
            load.wait_answers(20)
            # A majority stopped: claims fail (unavailable), owned blocks still serve.
            etcd3.signal(1, signal.SIGSTOP)
            etcd3.signal(2, signal.SIGSTOP)
            load.wait_answers(10)
            etcd3.signal(1, signal.SIGCONT)
            etcd3.signal(2, signal.SIGCONT)
            load.wait_answers(20)
            # An ipamd SIGKILLed under load, restarted on its state dir.
            load.up["h2"].clear()
            h2.daemon.kill()
            load.wait_answers(20, ["h1", "h3"])
            h2.daemon.start()
            load.up["h2"].set()
            load.wait_answers(20)
            # An ipamd SIGSTOPped and continued within its lease.
            h3.daemon.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            load.wait_answers(20, ["h1", "h2"])
            h3.daemon.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            load.wait_answers(20)
        assert load.unexpected == []
        everyone: dict[str, str] = {}
        for host in hosts:
            held = {
                lease["container_id"]: lease["ips"][0]["address"] for lease in host.leases("ha")
            }
            for container, address in load.acknowledged[host.name].items():
                assert held.get(container) == address, f"{host.name} lost {container}"
            for address in held.values():
                assert address not in everyone, f"{address} held twice"
                everyone[address] = host.name
        assert sum(len(a) for a in load.acknowledged.values()) > 100
        for host in hosts:
            assert host.daemon.stop() == 0
            report = check_cluster(host)
            assert report.returncode == 0, report.stdout + report.stderr
    finally:
        hosts_cm.close()
