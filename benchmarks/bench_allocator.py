"""Allocator benchmark: does the cost of one allocation stay flat as ranges fill and grow?

A program, not a test: it prints a table of figures (and, with --json, one JSON
object on its last line), each a median over repeats, with ratios against the
same run. Targets (DESIGN.md section 3, rule 7):

  fill_last_first_ratio  <= 1.05  last 1,000 of 60,000 allocations in a /16 over the first 1,000
  full16_alloc_us        <= 1000  a /16 with one free address left, behind the cursor
                                  (podman v3's boltdb IPAM: 155 ms here)
  v6_64_vs_v4_24_ratio   <= 1.2   per alloc, a /64 holding 1,000,000 leases over a /24
  bytes_per_lease                 index memory at 1,000,000 leases in a /64 with holes

What is timed, exactly:
- "Allocator.alloc" is one dynamic `Allocator.alloc` call for a new key on one
  network: lease lookup in a MemoryLeases view, `next_dynamic`, `take`, the
  Lease and its changes. Requests are built before the clock starts.
- The fill's first and last 1,000 allocations are timed call by call in
  alternation (see bench_fill). The headline uses a view holding only the
  timed calls' leases; the same with the MemoryLeases of the whole fill (60,000
  leases: its dict lookups miss the cache more) is reported next to it.
- Where a range must hold a million leases (or be full), its pool is built
  directly, `SubnetPool(subnet, used=..., cursor=...)`, as the daemon rebuilds
  it at start, and the view holds only the leases the timed calls make.
- Alloc/release cycles: each timed alloc is followed by an untimed release, so
  occupancy stays constant while the cursor walks on. "Round-robin cursor":
  the cursor where handing out in order leaves it, past every lease (in a /64
  it never comes back round). "Behind holes": the cursor placed at ten points
  over the leased span, so each pick fills a hole, as after a wrap.
- The cyclic garbage collector is paused while timing (as `timeit` does): its
  full collections scale with the heap of the whole process, not with the
  index; the fill is also reported with it running.
- Peers, run in the same process: the seed's `getFreeIPFromBucket` scan ported
  to Python over a set (no database at all), on the same state, a lower bound
  for podman's cost; and, when installed, sortedcontainers' SortedList for the
  cost of one insert/delete at a million entries.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import ipamd  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipamd.core.allocator import Allocator, SubnetPool
from ipamd.core.freeranges import FreeRanges
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import Network, Subnet
from ipamd.core.requests import AllocRequest, Attachment, ReleaseRequest
from ipamd.core.view import MemoryLeases, PutLease
from ipamd.errors import RangeExhausted

now_ns = time.perf_counter_ns
# Fixed, so two runs build the same holes; printed with the results.
SEED = 20240229

TARGETS = {
    "fill_last_first_ratio": 1.05,
    "full16_alloc_us": 1000.0,
    "v6_64_vs_v4_24_ratio": 1.2,
}


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def network(name: str, subnet: dict[str, Any]) -> Network:
    return Network.from_wire({"name": name, "subnets": [subnet]})


def requests(name: str, count: int, prefix: str = "c") -> list[AllocRequest]:
    return [AllocRequest(f"{prefix}{i}", {name: Attachment()}) for i in range(count)]


def release_request(name: str, request: AllocRequest) -> ReleaseRequest:
    return ReleaseRequest(request.container_id, {name: ""})


# -- 1. filling a /16 -----------------------------------------------------------

FILL_NETWORK = {"subnet": "10.0.0.0/16", "gateway": "10.0.0.1"}


def filled(count: int) -> tuple[Allocator, MemoryLeases]:
    """A /16 after `count` allocations through `Allocator.alloc`, as a fill leaves it."""
    allocator, view = Allocator(), MemoryLeases()
    allocator.create_network(network("fill", FILL_NETWORK))
    for request in requests("fill", count, prefix="pre"):
        allocator.alloc(request, view, 0)
    return allocator, view


def fill_times(total: int, collector: bool) -> list[int]:
    """Per-call ns of `total` allocations into an empty /16, in order."""
    allocator, view = filled(0)
    times = [0] * total
    alloc = allocator.alloc
    with gc_paused():
        if collector:
            gc.enable()
        for i, request in enumerate(requests("fill", total)):
            start = now_ns()
            alloc(request, view, 0)
            times[i] = now_ns() - start
    return times


def bench_fill(repeats: int, total: int, block: int) -> dict[str, float]:
    """The first and the last `block` allocations of a fill to `total`, call by call.

    One /16 starts empty (allocations 1 .. block), the other was filled to
    `total - block` through `Allocator.alloc` (allocations total - block + 1 ..
    total). Calls alternate between the two, so a noisy neighbour slows both
    alike; after each repeat both batches are released and the cursors put
    back, which restores both pools exactly. A block's time is the sum over its
    positions of each position's median across repeats.

    Two views for the late side, in alternate repeats: "batch" holds only the
    leases the timed calls make (the allocator and its index, as the daemon's
    view over the store would see them), "full" is the MemoryLeases the fill
    used, holding all 60,000 (adds the test view's own dict cache misses).
    """
    fill_times(2 * block, collector=False)  # warm up the interpreter's specialised paths
    early, early_view = filled(0)
    late, full_view = filled(total - block)
    views = {"batch": MemoryLeases(), "full": full_view}
    early_batch = requests("fill", block, prefix="e")
    late_batch = requests("fill", block, prefix="l")
    times: dict[tuple[str, str], list[list[int]]] = {
        (kind, side): [[] for _ in range(block)] for kind in views for side in ("early", "late")
    }
    for repeat in range(2 * repeats):
        kind = "batch" if repeat % 2 == 0 else "full"
        late_view = views[kind]
        early_times, late_times = times[(kind, "early")], times[(kind, "late")]
        homes = [allocator.pool("fill").subnets[0].cursor for allocator in (early, late)]
        with gc_paused():
            for i in range(block):
                start = now_ns()
                early.alloc(early_batch[i], early_view, 0)
                middle = now_ns()
                late.alloc(late_batch[i], late_view, 0)
                late_times[i].append(now_ns() - middle)
                early_times[i].append(middle - start)
        assert late.pool("fill").subnets[0].stats().used == total
        for allocator, view, batch, home in (
            (early, early_view, early_batch, homes[0]),
            (late, late_view, late_batch, homes[1]),
        ):
            for request in batch:
                allocator.release(release_request("fill", request), view)
            allocator.pool("fill").subnets[0].cursor = home

    def block_time(kind: str, side: str) -> float:
        return sum(median(t) for t in times[(kind, side)])

    sequential = [fill_times(total, collector=False) for _ in range(2)]
    with_gc = [fill_times(total, collector=True) for _ in range(2)]

    def block_ratio(times: list[int]) -> float:
        return sum(times[-block:]) / sum(times[:block])

    first = block_time("batch", "early")
    return {
        "fill_last_first_ratio": block_time("batch", "late") / first,
        "fill_last_first_ratio_full_view": block_time("full", "late") / block_time("full", "early"),
        "fill_first_block_us": first / 1e3,
        "fill_last_block_us": block_time("batch", "late") / 1e3,
        "fill_alloc_us": first / block / 1e3,
        "fill_sequential_ratio": median([block_ratio(t) for t in sequential]),
        "fill_with_gc_ratio": median([block_ratio(t) for t in with_gc]),
    }


# -- 2. a full /16: one free address, behind the cursor -----------------------------


def seed_scan(used: set[int], first: int, last: int, last_ip: int | None, gateway: int) -> int:
    """podman v3's getFreeIPFromBucket, over offsets and a set instead of a bbolt bucket."""
    current = first if last_ip is None else last_ip + 1
    start = current
    while True:
        if current == gateway:
            current += 1
            continue
        if current > last:
            if first == start:
                raise RangeExhausted("failed to find free IP in range")
            current = first
            continue
        if current not in used:
            return current
        current += 1
        if current == start:
            raise RangeExhausted("failed to find free IP in range")


def bench_full16(samples: int, seed_samples: int) -> dict[str, float]:
    name = "full"
    net = network(name, {"subnet": "10.1.0.0/16", "gateway": "10.1.0.1"})
    subnet = net.subnets[0]
    first, last = subnet.lease_range  # 1 .. 65534; the gateway is offset 1
    hole = 1000
    behind = hole + 1  # the cursor has just passed the hole: the search wraps to find it
    used = [offset for offset in range(2, last + 1) if offset != hole]
    allocator, view = Allocator(), MemoryLeases()
    allocator.create_network(net)
    pool = SubnetPool(subnet, used=used, cursor=behind)
    allocator.pools[name].subnets[0] = pool
    assert pool.free.run_count == 1 and pool.stats().free == 1

    batch = requests(name, samples)
    times = []
    with gc_paused():
        for request in batch:
            pool.cursor = behind
            start = now_ns()
            leases, _ = allocator.alloc(request, view, 0)
            times.append(now_ns() - start)
            assert subnet.offset(leases[name].addresses[0]) == hole
            allocator.release(release_request(name, request), view)
        pool.cursor = behind
        allocator.alloc(AllocRequest("last", {name: Attachment()}), view, 0)  # now it is full
        exhausted = []
        for _ in range(samples):
            start = now_ns()
            try:
                allocator.alloc(AllocRequest("late", {name: Attachment()}), view, 0)
            except RangeExhausted:
                exhausted.append(now_ns() - start)
            else:
                raise AssertionError("a full /16 handed out an address")

    used_set = set(used)
    seed_times = []
    for _ in range(seed_samples):
        start = now_ns()
        found = seed_scan(used_set, first, last, behind, gateway=1)
        seed_times.append(now_ns() - start)
        assert found == hole
    ours = median(times) / 1e3
    seed = median(seed_times) / 1e3
    return {
        "full16_alloc_us": ours,
        "full16_exhausted_us": median(exhausted) / 1e3,
        "seed_scan_full16_us": seed,
        "seed_scan_over_ours": seed / ours,
    }


# -- 3. a /64 holding a million leases against a /24 -----------------------------------


def holed_pool(subnet: Subnet, leased: int, released: int, rng: random.Random) -> SubnetPool:
    """`leased` addresses handed out in order from the range start, then `released` at random."""
    first = subnet.lease_range[0]
    reserved = {subnet.offset(subnet.gateway)} if subnet.gateway else set()
    handed = [o for o in range(first, first + leased + len(reserved)) if o not in reserved]
    gone = set(rng.sample(handed, released))
    return SubnetPool(subnet, used=[o for o in handed if o not in gone], cursor=handed[-1])


class Side:
    """One pool under test, with its requests built before any clock starts."""

    def __init__(self, allocator: Allocator, name: str, count: int) -> None:
        self.allocator = allocator
        self.name = name
        self.pool = allocator.pool(name).subnets[0]
        self.home = self.pool.cursor  # where round-robin left the cursor
        self.view = MemoryLeases()
        self.batch = requests(name, count, prefix="b")
        self.releases = [release_request(name, request) for request in self.batch]

    def behind(self, k: int, of: int) -> int:
        """The k-th of `of` cursors spread over the handed-out span: picks land in holes."""
        low, high = self.pool.subnet.lease_range[0], self.home or 0
        return low + (high - low) * k // of

    def alloc_cycles(self, cursor: int | None) -> list[int]:
        """`Allocator.alloc` (timed), each followed by an untimed release."""
        self.pool.cursor = cursor
        times = []
        for request, release in zip(self.batch, self.releases, strict=True):
            start = now_ns()
            self.allocator.alloc(request, self.view, 0)
            times.append(now_ns() - start)
            self.allocator.release(release, self.view)
        self.pool.cursor = self.home
        return times

    def pick_cycles(self, cursor: int | None) -> list[int]:
        """Pool level: `next_dynamic` + `take` (timed), then given back untimed."""
        pool = self.pool
        pool.cursor = cursor
        times = []
        for _ in self.batch:
            start = now_ns()
            offset = pool.next_dynamic()
            pool.take(offset)
            times.append(now_ns() - start)
            pool.cursor = offset
            pool.give(offset)
        pool.cursor = self.home
        return times

    def release_cycles(self, rng: random.Random) -> list[int]:
        """`Allocator.release` of a lease on a random used address (timed), then taken back."""
        pool, subnet = self.pool, self.pool.subnet
        low, high = subnet.lease_range[0], self.home or 0
        key = LeaseKey(self.name, "r")
        request = ReleaseRequest("r", {self.name: ""})
        times: list[int] = []
        while len(times) < len(self.batch):
            offset = rng.randint(low, high)
            if pool.free.is_free(offset) or subnet.reserved_reason(subnet.address_at(offset)):
                continue
            self.view.apply(PutLease(Lease(key, (subnet.address_at(offset),), 0)))
            start = now_ns()
            self.allocator.release(request, self.view)
            times.append(now_ns() - start)
            pool.take(offset)
        return times


def index_bytes(index: FreeRanges) -> int:
    """The index's own memory: the SortedDict of runs (its dict, its sorted key
    lists and their index) and the int objects it holds."""
    runs = index._runs  # private, measured on purpose
    keys = runs._list  # the SortedList of starts
    containers = [runs, keys._lists, keys._maxes, keys._index, *keys._lists]
    ints = {id(v): sys.getsizeof(v) for start, end in runs.items() for v in (start, end)}
    return sys.getsizeof(index) + sum(map(sys.getsizeof, containers)) + sum(ints.values())


def bench_v6_vs_v4(leases: int, churn: int, rounds: int, per_batch: int) -> dict[str, float]:
    """A /64 holding `leases` (with holes) against a /24, in alternating batches.

    Each round times one batch on each side (which goes first alternates) for
    each case; a ratio is the median over rounds of the two batches' medians.
    """
    rng = random.Random(SEED)
    v4 = network("v4", {"subnet": "10.2.0.0/24", "gateway": "10.2.0.1"})
    v6 = network("v6", {"subnet": "fd00::/64", "gateway": "fd00::1"})
    allocator = Allocator()
    allocator.create_network(v4)
    allocator.create_network(v6)
    # The /24: 253 handed out in order, 53 released at random: 200 leases, ~50 holes.
    allocator.pools["v4"].subnets[0] = holed_pool(v4.subnets[0], 253, 53, rng)
    # The /64: leases + churn handed out in order, churn released at random.
    v6_pool = holed_pool(v6.subnets[0], leases + churn, churn, rng)
    allocator.pools["v6"].subnets[0] = v6_pool
    assert v6_pool.used == leases
    sides = {"v4": Side(allocator, "v4", per_batch), "v6": Side(allocator, "v6", per_batch)}

    cases: dict[str, Callable[[Side, int], list[int]]] = {
        # Where round-robin leaves the cursor: after the last address handed out.
        "alloc": lambda side, _: side.alloc_cycles(side.home),
        "pick": lambda side, _: side.pick_cycles(side.home),
        # After a wrap (a small range, or a lease range inside the /64): through the holes.
        "behind_alloc": lambda side, k: side.alloc_cycles(side.behind(k % 10, 10)),
        "release": lambda side, _: side.release_cycles(rng),
    }
    per_round: dict[str, dict[str, list[float]]] = {c: {"v4": [], "v6": []} for c in cases}
    with gc_paused():
        for k in range(rounds):
            order = ("v4", "v6") if k % 2 else ("v6", "v4")
            for case, run in cases.items():
                for name in order:
                    per_round[case][name].append(median(run(sides[name], k)))

    out: dict[str, float] = {}
    for case, by_side in per_round.items():
        ratio = median([b / a for a, b in zip(by_side["v4"], by_side["v6"], strict=True)])
        out[f"v4_24_{case}_us"] = median(by_side["v4"]) / 1e3
        out[f"v6_64_{case}_us"] = median(by_side["v6"]) / 1e3
        out[f"v6_64_vs_v4_24_{case}_ratio"] = ratio
    out["v6_64_vs_v4_24_ratio"] = out.pop("v6_64_vs_v4_24_alloc_ratio")

    v6_runs = v6_pool.free.run_count
    v6_bytes = index_bytes(v6_pool.free)
    solid = SubnetPool(v6.subnets[0], used=range(2, leases + 2), cursor=leases + 1)
    out |= {
        "v6_64_leases": leases,
        "v6_64_runs": v6_runs,
        "bytes_per_lease": v6_bytes / leases,
        "bytes_per_run": v6_bytes / v6_runs,
        "bytes_per_lease_no_holes": index_bytes(solid.free) / leases,
    }
    return out


# -- 4. the list-based index at a million runs -------------------------------------------


def bench_take_give(runs: int, samples: int) -> dict[str, float]:
    """take/give of single-address runs at the front, middle and end of the run lists.

    Alternating used and free addresses is the index's worst case: every run is
    one address, so every take deletes a list slot and every give inserts one
    (a memmove of the pointers after it, in both lists). The peer, when
    installed, is sortedcontainers' SortedList (a list of ~1,000-item lists)
    removing and adding the same values: what a chunked index would pay per list.
    """
    try:
        from sortedcontainers import SortedList  # type: ignore[import-untyped]
    except ImportError:  # not a dependency; the peer is only reported when present
        SortedList = None

    out: dict[str, float] = {}
    for count in (1_000, runs):
        label = "1m" if count == runs else "1k"
        index = FreeRanges.from_used(0, 2 * count - 2, range(1, 2 * count - 2, 2))
        assert index.run_count == count
        peer = SortedList(range(0, 2 * count - 1, 2)) if SortedList is not None else None
        places = (("front", 0), ("middle", (count // 2) * 2), ("end", 2 * count - 2))
        for where, address in places:
            take_ns, give_ns, peer_ns = [], [], []
            with gc_paused():
                for _ in range(samples):
                    start = now_ns()
                    index.take(address)
                    middle = now_ns()
                    index.give(address)
                    give_ns.append(now_ns() - middle)
                    take_ns.append(middle - start)
                    if peer is not None:
                        start = now_ns()
                        peer.remove(address)
                        peer.add(address)
                        peer_ns.append(now_ns() - start)
            out[f"take_{label}_runs_{where}_us"] = median(take_ns) / 1e3
            out[f"give_{label}_runs_{where}_us"] = median(give_ns) / 1e3
            if peer_ns:
                out[f"sortedlist_remove_add_{label}_{where}_us"] = median(peer_ns) / 1e3
    return out


# -- the report ---------------------------------------------------------------------------


def measure(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"quick": quick, "seed": SEED, "python": sys.version.split()[0]}
    steps: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("fill", lambda: bench_fill(repeats=3 if quick else 15, total=60_000, block=1_000)),
        ("full16", lambda: bench_full16(samples=300 if quick else 2_000, seed_samples=5)),
        (
            "v6_vs_v4",
            lambda: bench_v6_vs_v4(
                leases=1_000_000,
                churn=200_000,
                rounds=10 if quick else 60,
                per_batch=50,
            ),
        ),
        ("take_give", lambda: bench_take_give(1_000_000, samples=100 if quick else 1_000)),
    ]
    for label, step in steps:
        started = time.monotonic()
        results.update(step())
        print(f"  {label}: {time.monotonic() - started:.1f} s", file=sys.stderr)
    results["targets_met"] = {
        key: results[key] <= limit for key, limit in TARGETS.items() if key in results
    }
    return results


def table(r: dict[str, Any]) -> str:
    def met(key: str) -> str:
        return "yes" if r["targets_met"][key] else "NO"

    def pair(a: str, b: str, unit: str = " us") -> str:
        return f"{r[a]:.2f} | {r[b]:.2f}{unit}"

    rows = [
        ("figure", "value", "target", "met"),
        ("fill a /16 to 60,000 (Allocator.alloc)", "", "", ""),
        ("  last 1k / first 1k, time, batch view", f"{r['fill_last_first_ratio']:.3f}",
         "<= 1.05", met("fill_last_first_ratio")),
        ("  same, MemoryLeases holding all 60k", f"{r['fill_last_first_ratio_full_view']:.3f}",
         "", ""),
        ("  same, plain sequential fills (noisy)", f"{r['fill_sequential_ratio']:.3f}", "", ""),
        ("  same, and garbage collector running", f"{r['fill_with_gc_ratio']:.3f}", "", ""),
        ("  one alloc, first 1k (mean)", f"{r['fill_alloc_us']:.2f} us", "", ""),
        ("full /16, one free address behind the cursor", "", "", ""),
        ("  Allocator.alloc", f"{r['full16_alloc_us']:.2f} us", "<= 1000 us",
         met("full16_alloc_us")),
        ("  Allocator.alloc when exhausted", f"{r['full16_exhausted_us']:.2f} us", "", ""),
        ("  seed's scan ported to Python (a set)", f"{r['seed_scan_full16_us']:.0f} us",
         "podman: 155 ms", ""),
        ("  seed scan / ours", f"{r['seed_scan_over_ours']:.0f}x", "", ""),
        (f"/64 with {r['v6_64_leases']:,} leases, {r['v6_64_runs']:,} runs vs /24 with 200",
         "/24 | /64", "", ""),
        ("  Allocator.alloc, round-robin cursor", pair("v4_24_alloc_us", "v6_64_alloc_us"), "",
         ""),
        ("  ratio /64 over /24", f"{r['v6_64_vs_v4_24_ratio']:.3f}", "<= 1.2",
         met("v6_64_vs_v4_24_ratio")),
        ("  next_dynamic + take, same", pair("v4_24_pick_us", "v6_64_pick_us"),
         f"ratio {r['v6_64_vs_v4_24_pick_ratio']:.3f}", ""),
        ("  Allocator.alloc, cursor behind holes",
         pair("v4_24_behind_alloc_us", "v6_64_behind_alloc_us"),
         f"ratio {r['v6_64_vs_v4_24_behind_alloc_ratio']:.3f}", ""),
        ("  Allocator.release, a random lease", pair("v4_24_release_us", "v6_64_release_us"),
         f"ratio {r['v6_64_vs_v4_24_release_ratio']:.3f}", ""),
        ("index memory, that /64", "", "", ""),
        ("  bytes per lease", f"{r['bytes_per_lease']:.1f} B", "", ""),
        ("  bytes per run", f"{r['bytes_per_run']:.1f} B", "", ""),
        ("  bytes per lease, 1M leases, no holes", f"{r['bytes_per_lease_no_holes']:.6f} B", "",
         ""),
        ("take | give, single-address runs (worst case)", "1M runs", "1k runs", ""),
    ]  # fmt: skip
    for where in ("front", "middle", "end"):
        rows.append(
            (
                f"  {where} of the lists",
                pair(f"take_1m_runs_{where}_us", f"give_1m_runs_{where}_us"),
                pair(f"take_1k_runs_{where}_us", f"give_1k_runs_{where}_us"),
                "",
            )
        )
    for where in ("front", "middle", "end"):
        key = f"sortedlist_remove_add_1m_{where}_us"
        if key in r:
            rows.append(
                (
                    f"  peer: SortedList remove+add, {where}",
                    f"{r[key]:.2f} us",
                    f"{r[f'sortedlist_remove_add_1k_{where}_us']:.2f} us",
                    "",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="end with one JSON object line")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 10 s)")
    args = parser.parse_args(argv)
    print(f"bench_allocator ({'quick' if args.quick else 'full'} run):", file=sys.stderr)
    results = measure(args.quick)
    print(table(results))
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
