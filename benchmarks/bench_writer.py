"""Group commit against the seed's way, and the rebuild of a million leases.

A program, not a test: it prints figures (and, with --json, one JSON object on
its last line), each a median over repeats, with ratios against a peer run in
the same process on the same disk. Targets (the storage issue):

  group_vs_single_ratio_64  >= 20   durable allocs/s, writer with 64 tasks, over the seed's way
  rebuild_1m_s              <= 3.0  Store.open + Store.load of 1,000,000 leases
  rss_1m_mb                 <= 300  the loading process's RSS once loaded
and, with no target, `absent_lookup_us` / `absent_lookup_no_filter_us`: the
lookup every alloc of a new container starts with, against LevelDB without
bloom filters.

What is timed, exactly:
- "writer, N tasks": a fresh database per repeat, one network (10.0.0.0/12);
  N trio tasks each submit allocations for new container IDs one after the
  other, through the real `Writer` (decide, one `WriteBatch(sync=True)` per
  group in a worker thread, publish, answer) on the real `Store`. From the
  first submit to the last answer; every answer is durable (synced).
- "seed's way": what podman's boltdb IPAM does per allocation, on LevelDB:
  open the database, read the cursor, probe reverse entries for the next free
  address, write lease + reverse entry + cursor in one synced batch, close.
  One allocation at a time, same keys, same disk (the --dir filesystem).
- "rebuild": a database of N leases built directly with plyvel write batches
  and ipamd's key encoders (not through the writer), then, in a fresh
  subprocess per repeat (so the memory is the loader's own, as the daemon's
  would be), `Store.open()` + `Store.load()`; RSS is VmRSS read from
  /proc/self/status right after the load, with the peak (VmHWM) next to it.
  Layout: four networks of N/4 leases, with one address in ten left free
  (churn), so the index has holes: two IPv4 /12, one dual stack (/12 + /64,
  two reverse entries per lease), one IPv6 /64. The first load after the build
  also replays LevelDB's last log; the median hides it, the list shows it.
- "absent leases": `Store.lease` of container IDs the store has never seen (as
  every alloc of a new container asks first), CPU time per lookup, on a store
  of N leases under random 64-hex container IDs (as podman and containerd make
  them) written through `Store.prepare`/`commit` in groups of 64, with every
  other lease then released (churn). Peer: the same store opened with LevelDB's
  bloom filters off (BLOOM_FILTER_BITS = 0), as ipamd did before.

Usage: python benchmarks/bench_writer.py [--quick] [--json] [--repeats N] [--dir DIR]
--quick (about 20 s) runs fewer allocations and rebuilds 100,000 leases; the
JSON keys keep their names (rebuild_1m_s, rss_1m_mb hold the 100k figures),
with "quick": true and "rebuild_leases" saying how many were loaded.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import plyvel  # noqa: E402
import trio  # noqa: E402

import ipamd.storage.opening  # noqa: E402
from ipamd.core import keys  # noqa: E402
from ipamd.core.lease import Lease, LeaseKey  # noqa: E402
from ipamd.core.network import Network  # noqa: E402
from ipamd.core.requests import AllocRequest, Attachment, CreateNetworkRequest  # noqa: E402
from ipamd.core.view import DeleteLease, PutLease  # noqa: E402
from ipamd.daemon.writer import Writer  # noqa: E402
from ipamd.storage.store import DB_DIRNAME, Store  # noqa: E402

NOW = 1_700_000_000
BENCH_NETWORK = Network.from_wire({"name": "bench", "subnets": [{"subnet": "10.0.0.0/12"}]})


@dataclass(frozen=True)
class Plan:
    repeats: int
    allocs_by_tasks: dict[int, int]  # concurrent tasks -> allocations per repeat
    seed_allocs: int
    rebuild_leases: int
    lookup_leases: int


FULL = Plan(3, {1: 1_000, 8: 4_000, 64: 16_000}, 400, 1_000_000, 200_000)
QUICK = Plan(3, {1: 300, 8: 1_500, 64: 4_000}, 150, 100_000, 20_000)
LOOKUPS = 20_000


# -- group commit through the writer -------------------------------------------


async def writer_run(state_dir: Path, tasks: int, allocs: int) -> tuple[float, float]:
    """(durable allocations per second, mean batch size) for one fresh database."""
    store = Store(state_dir)
    store.open()
    writer = Writer(store, store.load())
    per_task = allocs // tasks
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.submit(CreateNetworkRequest(BENCH_NETWORK))
            requests = [
                [
                    AllocRequest(f"t{t}n{i}", {BENCH_NETWORK.name: Attachment()})
                    for i in range(per_task)
                ]
                for t in range(tasks)
            ]
            batches, mutations = writer.counters.batches, writer.counters.mutations

            async def client(mine: list[AllocRequest]) -> None:
                for request in mine:
                    await writer.submit(request)

            started = time.perf_counter()
            async with trio.open_nursery() as clients:
                for mine in requests:
                    clients.start_soon(client, mine)
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    done = per_task * tasks
    assert writer.counters.mutations - mutations == done
    return done / elapsed, done / (writer.counters.batches - batches)


# -- the seed's way ------------------------------------------------------------


def seed_alloc(path: str, container_id: str) -> None:
    """One allocation as podman v3 does it: open, decide, one synced write, close."""
    subnet = BENCH_NETWORK.subnets[0]
    db = plyvel.DB(path, create_if_missing=True)
    try:
        raw = db.get(keys.cursor_key(BENCH_NETWORK.name, 0))
        offset = (
            subnet.host_bounds[0] if raw is None else subnet.offset(ipaddress.ip_address(raw)) + 1
        )
        while db.get(keys.reverse_key(BENCH_NETWORK.name, subnet.address_at(offset))) is not None:
            offset += 1
        address = subnet.address_at(offset)
        lease = Lease(LeaseKey(BENCH_NETWORK.name, container_id), (address,), NOW)
        with db.write_batch(sync=True) as batch:
            batch.put(keys.lease_key(lease.key), keys.lease_value(lease))
            batch.put(keys.reverse_key(BENCH_NETWORK.name, address), keys.reverse_value(lease.key))
            batch.put(keys.cursor_key(BENCH_NETWORK.name, 0), address.packed)
    finally:
        db.close()


def seed_run(state_dir: Path, allocs: int) -> float:
    """Durable allocations per second, the seed's way, on a fresh database."""
    store = Store(state_dir)
    store.open()  # the same schema and network as the writer's runs
    store.db.put(keys.network_key(BENCH_NETWORK.name), keys.network_value(BENCH_NETWORK))
    store.close()
    path = str(state_dir / DB_DIRNAME)
    started = time.perf_counter()
    for i in range(allocs):
        seed_alloc(path, f"s{i}")
    return allocs / (time.perf_counter() - started)


# -- rebuild -------------------------------------------------------------------


def rebuild_networks() -> list[Network]:
    def net(name: str, *cidrs: str) -> Network:
        return Network.from_wire({"name": name, "subnets": [{"subnet": c} for c in cidrs]})

    return [
        net("v4a", "10.0.0.0/12"),
        net("v4b", "10.16.0.0/12"),
        net("dual", "10.32.0.0/12", "fd32::/64"),
        net("v6", "fd48::/64"),
    ]


def build_database(state_dir: Path, leases: int) -> int:
    """Write `leases` leases straight into LevelDB; returns the reverse entries written."""
    store = Store(state_dir)
    store.open()  # schema key, as the daemon writes it
    store.close()
    db = plyvel.DB(str(state_dir / DB_DIRNAME))
    reverse = 0
    try:
        networks = rebuild_networks()
        per_network = leases // len(networks)
        for network in networks:
            db.put(keys.network_key(network.name), keys.network_value(network))
            batch = db.write_batch()
            offset = 0
            for i in range(per_network):
                offset += 2 if i % 9 == 8 else 1  # one address in ten stays free
                addresses = tuple(s.address_at(offset) for s in network.subnets)
                lease = Lease(LeaseKey(network.name, f"{network.name}-{i:07d}"), addresses, NOW)
                batch.put(keys.lease_key(lease.key), keys.lease_value(lease))
                value = keys.reverse_value(lease.key)
                for address in addresses:
                    batch.put(keys.reverse_key(network.name, address), value)
                reverse += len(addresses)
                if i % 10_000 == 9_999:
                    batch.write()
                    batch = db.write_batch()
            batch.write()
            for index, subnet in enumerate(network.subnets):
                db.put(keys.cursor_key(network.name, index), subnet.address_at(offset).packed)
    finally:
        db.close()
    return reverse


def measure_load(state_dir: Path) -> dict[str, float]:
    """Run in the child: open + load, and this process's memory after it."""
    started = time.perf_counter()
    store = Store(state_dir)
    store.open(create=False)
    opened = time.perf_counter()
    allocator = store.load()
    loaded = time.perf_counter()
    status = Path("/proc/self/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS:", "VmHWM:")))
    leases = sum(pool.subnets[0].used for pool in allocator.pools.values())
    runs = sum(s.free.run_count for pool in allocator.pools.values() for s in pool.subnets)
    store.close()
    return {
        "open_s": opened - started,
        "load_s": loaded - opened,
        "total_s": loaded - started,
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,  # kB
        "hwm_mb": int(fields["VmHWM"].split()[0]) / 1024,
        "leases": leases,
        "runs": runs,
    }


def load_in_child(state_dir: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure-load", str(state_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


# -- lookups of absent leases ---------------------------------------------------


def random_container_id() -> str:
    return os.urandom(32).hex()


DEFAULT_FILTER_BITS = ipamd.storage.opening.BLOOM_FILTER_BITS


def absent_lookup_us(state_dir: Path, leases: int, filter_bits: int, repeats: int) -> float:
    """CPU µs per `Store.lease` of an unknown container, on a churned store."""
    ipamd.storage.opening.BLOOM_FILTER_BITS = filter_bits
    store = Store(state_dir)
    store.open()
    try:
        subnet = BENCH_NETWORK.subnets[0]
        held: list[Lease] = []
        for first in range(0, leases, 64):
            group = [
                Lease(LeaseKey("bench", random_container_id()), (subnet.address_at(i + 1),), NOW)
                for i in range(first, min(first + 64, leases))
            ]
            store.commit(store.prepare([PutLease(lease) for lease in group]))
            held += group
        released = held[::2]
        for first in range(0, len(released), 64):
            group = released[first : first + 64]
            store.commit(store.prepare([DeleteLease(lease, lease.addresses) for lease in group]))
        timings = []
        for _ in range(repeats):
            absent = [LeaseKey("bench", random_container_id()) for _ in range(LOOKUPS)]
            started = time.process_time()
            for key in absent:
                assert store.lease(key) is None
            timings.append((time.process_time() - started) / LOOKUPS * 1e6)
        return median(timings)
    finally:
        store.close()
        ipamd.storage.opening.BLOOM_FILTER_BITS = DEFAULT_FILTER_BITS


# -- the run -------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def run(plan: Plan, base: Path, say: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    n = 0

    def fresh() -> Path:
        nonlocal n
        n += 1
        return base / f"db{n}"

    say(f"durable allocations per second (median of {plan.repeats}; disk: {base})")
    seed: list[float] = []
    for _ in range(plan.repeats):
        seed.append(seed_run(fresh(), plan.seed_allocs))
    figures["seed_allocs_per_s"] = median(seed)
    for tasks, allocs in plan.allocs_by_tasks.items():
        rates: list[float] = []
        batches: list[float] = []
        for _ in range(plan.repeats):
            rate, batch = trio.run(writer_run, fresh(), tasks, allocs)
            rates.append(rate)
            batches.append(batch)
        figures[f"allocs_per_s_{tasks}"] = median(rates)
        figures[f"mean_batch_{tasks}"] = median(batches)
        figures[f"group_vs_single_ratio_{tasks}"] = median(rates) / figures["seed_allocs_per_s"]
        runs = ", ".join(f"{r:.0f}" for r in rates)
        ratio = figures[f"group_vs_single_ratio_{tasks}"]
        say(
            f"  writer, {tasks:2d} task(s): {median(rates):9.0f}/s"
            f"   mean batch {median(batches):6.1f}   x{ratio:.1f} the seed's way   (runs: {runs})"
        )
    say(
        f"  seed's way (open, synced write, close): {figures['seed_allocs_per_s']:9.0f}/s"
        f"   (runs: {', '.join(f'{r:.0f}' for r in seed)})"
    )
    ratio = figures["group_vs_single_ratio_64"]
    say(f"  group commit vs one-at-a-time, 64 tasks: x{ratio:.1f}  (target >= 20)")

    rebuild_dir = fresh()
    started = time.perf_counter()
    reverse = build_database(rebuild_dir, plan.rebuild_leases)
    say(
        f"rebuild of {plan.rebuild_leases:,} leases ({reverse:,} reverse entries, 4 networks,"
        f" one address in ten free); built directly in {time.perf_counter() - started:.1f} s"
    )
    loads = [load_in_child(rebuild_dir) for _ in range(plan.repeats)]
    assert all(load["leases"] == plan.rebuild_leases for load in loads), loads
    total = median([load["total_s"] for load in loads])
    rss = median([load["rss_mb"] for load in loads])
    hwm = median([load["hwm_mb"] for load in loads])
    totals = ", ".join(f"{load['total_s']:.2f}" for load in loads)
    opens = median([load["open_s"] for load in loads])
    say(
        f"  Store.open + Store.load: {total:.2f} s  (target <= 3 s;"
        f" runs: {totals}; open {opens:.2f} s)"
    )
    say(
        f"  RSS after load: {rss:.0f} MB, peak {hwm:.0f} MB  (target <= 300 MB;"
        f" {int(loads[0]['runs']):,} free runs in the index)"
    )
    figures.update(
        rebuild_1m_s=total,
        rss_1m_mb=rss,
        rss_peak_1m_mb=hwm,
        rebuild_leases=plan.rebuild_leases,
        rebuild_reverse_entries=reverse,
    )

    with_filter = absent_lookup_us(fresh(), plan.lookup_leases, DEFAULT_FILTER_BITS, plan.repeats)
    without = absent_lookup_us(fresh(), plan.lookup_leases, 0, plan.repeats)
    say(
        f"lookups of absent leases, {plan.lookup_leases:,} leases (half released),"
        f" random 64-hex container IDs:"
    )
    say(f"  with bloom filters ({DEFAULT_FILTER_BITS} bits/key): {with_filter:.2f} µs CPU")
    say(f"  without (LevelDB's default):     {without:.2f} µs CPU   x{without / with_filter:.1f}")
    figures.update(
        absent_lookup_us=with_filter,
        absent_lookup_no_filter_us=without,
        lookup_leases=plan.lookup_leases,
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="end with one JSON object line")
    parser.add_argument("--quick", action="store_true", help="a smoke run, about 20 s")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure")
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    parser.add_argument("--measure-load", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_load is not None:
        print(json.dumps(measure_load(args.measure_load)))
        return 0
    plan = QUICK if args.quick else FULL
    if args.repeats:
        plan = Plan(
            args.repeats,
            plan.allocs_by_tasks,
            plan.seed_allocs,
            plan.rebuild_leases,
            plan.lookup_leases,
        )
    base = Path(tempfile.mkdtemp(prefix="bench-writer-", dir=args.dir))
    try:
        figures = run(plan, base, print)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    figures["quick"] = args.quick
    if args.json:
        rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
        print(json.dumps(rounded))
    return 0


if __name__ == "__main__":
    sys.exit(main())
