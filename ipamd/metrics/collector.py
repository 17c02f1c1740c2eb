"""The Prometheus collector: every ipamd metric, as prometheus_client renders it.

Rules it keeps:
- Gauges are computed when scraped, from the committed state (the writer's
  snapshot, replaced only after a synced write): never running deltas, so they
  cannot drift from what `stats` says.
- Counters and histograms are the plain numbers that the writer, the service
  and the server keep (instruments.py); this only reads them.
- It runs on the trio thread, like every other read, and takes no lock: the
  state it reads is only changed there. Names follow Prometheus' conventions:
  base units (seconds), `_total` only on counters, `_ratio` for 0-1.
- prometheus_client is imported only here, and this module only when metrics
  are first asked for (metrics.py): its import costs about 18 ms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from ipamd import __version__
from ipamd.daemon.service import Service
from ipamd.metrics.instruments import Histogram

SUBNET_LABELS = ("network", "subnet")


class IpamdCollector(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterable[Metric]:
        yield from self._state()
        yield from self._requests()
        yield from self._writer()
        yield from self._connections()
        yield from self._cluster()

    def _state(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            "ipamd_subnet_size_addresses",
            "Addresses in the subnet's CIDR, network and broadcast included.",
            labels=SUBNET_LABELS,
        )
        allocatable = GaugeMetricFamily(
            "ipamd_subnet_allocatable_addresses",
            "Addresses of the subnet's lease range that may be handed out"
            " (gateway, exclusions, network and broadcast not counted).",
            labels=SUBNET_LABELS,
        )
        allocated = GaugeMetricFamily(
            "ipamd_subnet_allocated_addresses",
            "Addresses of the subnet held by a lease (static ones outside the range too).",
            labels=SUBNET_LABELS,
        )
        free = GaugeMetricFamily(
            "ipamd_subnet_free_addresses",
            "Addresses of the subnet's lease range that are not held.",
            labels=SUBNET_LABELS,
        )
        utilisation = GaugeMetricFamily(
            "ipamd_subnet_utilisation_ratio",
            "Share of the lease range in use, 0-1: (allocatable - free) / allocatable;"
            " 1 when nothing is allocatable.",
            labels=SUBNET_LABELS,
        )
        leases = GaugeMetricFamily(
            "ipamd_network_leases", "Leases held on the network.", labels=("network",)
        )
        suspect = GaugeMetricFamily(
            "ipamd_network_suspect_leases",
            "Leases made or last confirmed in an earlier boot of the host, not confirmed"
            " since (suspect: their containers may be gone).",
            labels=("network",),
        )
        committed = self.service.committed.networks
        for name in sorted(committed):
            snap = committed[name]
            leases.add_metric((name,), snap.leases)
            suspect.add_metric((name,), snap.suspect)
            for subnet, stats in zip(snap.network.subnets, snap.subnets, strict=True):
                labels = (name, str(subnet.cidr))
                size.add_metric(labels, stats.size)
                allocatable.add_metric(labels, stats.allocatable)
                allocated.add_metric(labels, stats.used)
                free.add_metric(labels, stats.free)
                utilisation.add_metric(labels, stats.utilisation)
        networks = GaugeMetricFamily("ipamd_networks", "Networks defined.", value=len(committed))
        info = GaugeMetricFamily(
            "ipamd_build_info", "Always 1; the daemon's version.", labels=("version",)
        )
        info.add_metric((__version__,), 1)
        yield from (info, networks, leases, suspect, size, allocatable, allocated, free)
        yield utilisation

    def _requests(self) -> Iterator[Metric]:
        counters = self.service.counters
        yield per_network(
            "ipamd_allocations",
            "Successful alloc answers, once per network the request named"
            " (a retried alloc that returns the lease already held counts again).",
            counters.allocations,
        )
        yield per_network(
            "ipamd_releases",
            "Successful release answers that released at least one lease on the network.",
            counters.releases,
        )
        yield per_network(
            "ipamd_gc_released_leases",
            "Leases released by gc (dry runs not counted).",
            counters.gc_released,
        )
        yield per_network(
            "ipamd_reclaimed_leases",
            "Suspect leases released because [leases] reclaim_after_reboot passed"
            " without a confirmation.",
            counters.reclaimed,
        )
        errors = CounterMetricFamily(
            "ipamd_errors",
            "Error answers by method and error name (DESIGN.md section 4); method is"
            ' "unknown" for a name the daemon does not serve, "frame" for a frame'
            " that was not a usable request.",
            labels=("method", "error"),
        )
        for (method, error), count in sorted(counters.errors.items()):
            errors.add_metric((method, error), count)
        yield errors
        yield histogram(
            "ipamd_alloc_duration_seconds",
            "alloc requests, from when the daemon read the request to when it wrote"
            " the answer (the synced write included).",
            self.service.connections.alloc_seconds,
        )

    def _writer(self) -> Iterator[Metric]:
        writer = self.service.writer
        counters = writer.counters
        yield histogram(
            "ipamd_writer_group_size",
            "Mutations per group the writer published (one synced write each);"
            " _count is the groups, _sum the mutations.",
            counters.group_sizes,
        )
        yield histogram(
            "ipamd_writer_sync_duration_seconds",
            "Time to write and sync one group's LevelDB batch.",
            counters.sync_seconds,
        )
        yield CounterMetricFamily(
            "ipamd_writer_failed_writes",
            "Group writes the disk refused (each answered storage_error).",
            value=counters.failed_writes,
        )
        yield GaugeMetricFamily(
            "ipamd_writer_queued_mutations",
            "Mutations waiting for the writer.",
            value=writer.queued,
        )
        yield GaugeMetricFamily(
            "ipamd_writer_up",
            "1 while the writer accepts mutations with the database open and no failed"
            " write since the last rebuild; 0 otherwise.",
            value=1 if writer.healthy else 0,
        )

    def _connections(self) -> Iterator[Metric]:
        connections = self.service.connections
        yield GaugeMetricFamily(
            "ipamd_connections", "Client connections open now.", value=connections.open
        )
        yield GaugeMetricFamily(
            "ipamd_connections_max",
            "Client connections allowed at once ([limits] max_connections).",
            value=self.service.config.limits.max_connections,
        )
        yield CounterMetricFamily(
            "ipamd_connections_accepted", "Client connections accepted.", value=connections.accepted
        )
        yield CounterMetricFamily(
            "ipamd_connections_refused",
            "Client connections closed at once because max_connections were open.",
            value=connections.refused,
        )

    def _cluster(self) -> Iterator[Metric]:
        """Only with a [cluster] config. Blocks as the writer holds them: a claim
        counts once decided, with (at most) its group's sync still to come."""
        frontend = self.service.cluster
        if frontend is None:
            return
        node = frontend.node
        committed = self.service.committed.networks
        blocks = GaugeMetricFamily(
            "ipamd_cluster_blocks",
            "Blocks of the cluster network this host owns (hands out addresses from).",
            labels=("network",),
        )
        for name in sorted(node.local.owned):
            if name in committed:
                blocks.add_metric((name,), len(node.local.owned[name]))
        yield blocks
        yield CounterMetricFamily(
            "ipamd_cluster_block_claims",
            "Blocks this host claimed in etcd since it started.",
            value=node.claims,
        )
        yield GaugeMetricFamily(
            "ipamd_cluster_etcd_up",
            "1 when the last call to etcd was answered, 0 when none answered or none was made yet.",
            value=1 if node.etcd.reachable else 0,
        )


def per_network(name: str, documentation: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=("network",))
    for network, count in sorted(counts.items()):
        family.add_metric((network,), count)
    return family


def histogram(name: str, documentation: str, values: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], buckets=values.cumulative(), sum_value=values.sum)
    return family


def renderer(service: Service) -> Callable[[], bytes]:
    """A function that renders the text exposition (format 0.0.4) of every ipamd metric."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IpamdCollector(service))
    # The standard process_* metrics (CPU, memory, open fds against the limit),
    # from /proc/self; ipamd.service leaves /proc/self and /proc/stat readable.
    ProcessCollector(registry=registry)
    return functools.partial(generate_latest, registry)
