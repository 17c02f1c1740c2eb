"""What metrics cost: the hot path's updates, and one scrape's render, in-process.

  updates   per request the daemon updates a few plain numbers (instruments.py):
            a histogram observation (bisect into a bucket list) and a counter
            increment by label (collections.Counter). Side by side: the same
            with prometheus_client's own Histogram and Counter (a lock per
            update, `labels()` per labelled one), which the daemon does not use.
            Also `RequestCounters.answered` as the service calls it per alloc.
  render    one scrape's text (Metrics.render: the collector over a real
            writer's committed state, prometheus_client's generate_latest) with
            1, 10 and 100 dual-stack networks holding leases.

Figures are medians of --reps runs (default 5), each timing many calls.
Usage:  python benchmarks/bench_metrics.py [--quick] [--json]
With --json the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import prometheus_client  # noqa: E402
import trio  # noqa: E402

from ipamd.config import Config  # noqa: E402
from ipamd.core.network import Network  # noqa: E402
from ipamd.core.requests import AllocRequest, Attachment, CreateNetworkRequest  # noqa: E402
from ipamd.daemon.service import Service  # noqa: E402
from ipamd.daemon.writer import Writer  # noqa: E402
from ipamd.metrics.instruments import LATENCY_BUCKETS_S, Histogram, RequestCounters  # noqa: E402
from ipamd.storage.store import Store  # noqa: E402

NETWORK_COUNTS = (1, 10, 100)
LEASES_PER_NETWORK = 20


def per_call_us(fn: Callable[[], object], calls: int, reps: int) -> float:
    """Median over `reps` of the mean wall time of one call, in µs."""
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


def bench_updates(calls: int, reps: int) -> dict[str, float]:
    ours = Histogram(LATENCY_BUCKETS_S)
    registry = prometheus_client.CollectorRegistry()
    theirs = prometheus_client.Histogram(
        "bench_seconds", "", buckets=LATENCY_BUCKETS_S, registry=registry
    )
    counts: dict[str, int] = RequestCounters().allocations
    counter = prometheus_client.Counter("bench", "", ["network"], registry=registry)
    counters = RequestCounters()
    result = {"container_id": "c", "networks": {"podman": {"ifname": "", "ips": []}}}

    def count_ours() -> None:
        counts["podman"] += 1

    out = {
        "observe_us": per_call_us(lambda: ours.observe(0.0031), calls, reps),
        "prom_observe_us": per_call_us(lambda: theirs.observe(0.0031), calls, reps),
        "count_us": per_call_us(count_ours, calls, reps),
        "prom_count_us": per_call_us(lambda: counter.labels("podman").inc(), calls, reps),
        "answered_us": per_call_us(lambda: counters.answered("alloc", result, None), calls, reps),
    }
    out["observe_vs_prom_ratio"] = out["prom_observe_us"] / out["observe_us"]
    out["count_vs_prom_ratio"] = out["prom_count_us"] / out["count_us"]
    return out


async def fill(writer: Writer, networks: int) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for n in range(networks):
            network = Network.from_wire(
                {
                    "name": f"net{n}",
                    "subnets": [
                        {"subnet": f"10.{n // 250}.{n % 250}.0/24"},
                        {"subnet": f"fd00:{n:x}::/64"},
                    ],
                }
            )
            await writer.submit(CreateNetworkRequest(network))
            for i in range(LEASES_PER_NETWORK):
                await writer.submit(AllocRequest(f"c{n}x{i}", {network.name: Attachment()}))
        nursery.cancel_scope.cancel()


def bench_render(networks: int, reps: int, calls: int) -> tuple[float, int]:
    """(µs per render, bytes) with `networks` networks in a real database."""
    with tempfile.TemporaryDirectory(prefix="ipamd-bench-metrics-") as tmp:
        store = Store(Path(tmp))
        store.open()
        try:
            writer = Writer(store, store.load())
            trio.run(fill, writer, networks)
            service = Service(writer.published, writer, Config(state_dir=Path(tmp)))
            metrics = service.exposition
            text = metrics.render()  # the import and the first build, not timed
            return per_call_us(metrics.render, calls, reps), len(text)
        finally:
            store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    calls = 20_000 if args.quick else 200_000
    render_calls = 20 if args.quick else 200
    figures: dict[str, Any] = {"quick": args.quick, "reps": args.reps}
    figures.update(bench_updates(calls, args.reps))
    for networks in NETWORK_COUNTS:
        us, size = bench_render(networks, args.reps, max(2, render_calls // networks))
        figures[f"render_us_{networks}"] = us
        figures[f"render_bytes_{networks}"] = size

    print(f"hot-path updates (median of {args.reps} runs of {calls} calls)")
    print(
        f"  histogram observe: {figures['observe_us']:.3f} µs (prometheus_client:"
        f" {figures['prom_observe_us']:.3f} µs, {figures['observe_vs_prom_ratio']:.1f}x)"
    )
    print(
        f"  labelled counter +1: {figures['count_us']:.3f} µs (prometheus_client:"
        f" {figures['prom_count_us']:.3f} µs, {figures['count_vs_prom_ratio']:.1f}x)"
    )
    print(f"  the service's count of one alloc answer: {figures['answered_us']:.3f} µs")
    print(f"one scrape's render ({LEASES_PER_NETWORK} leases per dual-stack network)")
    for networks in NETWORK_COUNTS:
        print(
            f"  {networks:4} network(s): {figures[f'render_us_{networks}']:8.0f} µs,"
            f" {figures[f'render_bytes_{networks}']:7} bytes"
        )
    if args.json:
        print(
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
