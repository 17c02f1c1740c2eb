"""What the hot path counts: plain integers and bucket arrays, no metrics library.

The writer, the service and the server update these on every request; the
Prometheus collector (metrics.py) reads them only when scraped. Why not
prometheus_client's own Counter and Histogram: each update takes a lock and,
for a labelled one, a dict lookup through `labels()`; benchmarks/bench_metrics.py
measures them at several times the cost of what is here. Everything runs on the
trio thread (the committer's thread counts nothing), so nothing needs a lock.
Pure: no I/O.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

from ipamd.errors import IpamError

# Request-to-reply and sync latencies, in seconds: a synced write on a disk takes
# from about 100 µs (a drive with a write cache) to tens of milliseconds.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Mutations per writer group: 1 when idle, up to max_batch (256 by default) under a burst.
GROUP_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Counts of observations per bucket, and their sum (Prometheus semantics:
    bucket i holds values <= bounds[i]; the last, unbounded one the rest)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must be strictly increasing, got {bounds}")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, so a value equal to a bound is in it ("le").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, observations <= le), ..., ("+Inf", all)], as the exposition wants."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class ConnectionCounters:
    """What the server counts of its connections, for `status` and the metrics.
    Made by main.py and handed to both the server (which counts) and the
    service (which reads): neither needs the other for it."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.refused = 0  # closed at once: max_connections were open
        self.alloc_seconds = Histogram(LATENCY_BUCKETS_S)  # an alloc read -> its answer written


class RequestCounters:
    """Outcomes of requests, as the service answers them.

    Labels are bounded: networks are the daemon's own (at most what exists or
    existed since start), methods are the daemon's own names or "unknown", and
    errors are the stable names of DESIGN.md section 4.
    """

    __slots__ = ("allocations", "errors", "gc_released", "reclaimed", "releases")

    def __init__(self) -> None:
        self.allocations: Counter[str] = Counter()  # network -> successful alloc answers
        self.releases: Counter[str] = Counter()  # network -> releases that freed something
        self.gc_released: Counter[str] = Counter()  # network -> leases gc released
        self.reclaimed: Counter[str] = Counter()  # network -> suspect leases reclaimed
        self.errors: Counter[tuple[str, str]] = Counter()  # (method, error name) -> answers

    def answered(
        self, method: str, result: Any, error: IpamError | None, *, dry_run: bool = False
    ) -> None:
        """Count one answer: the method's wire result, or the error it failed with."""
        if error is not None:
            self.errors[method, error.name] += 1
        elif not isinstance(result, dict):
            return
        elif method == "alloc":
            for network in result.get("networks", ()):
                self.allocations[network] += 1
        elif method == "release":
            # A network is in `released` only when a lease on it was released.
            for network in result.get("released", ()):
                self.releases[network] += 1
        elif method == "gc" and not dry_run:
            for lease in result.get("released", ()):
                self.gc_released[lease["network"]] += 1
