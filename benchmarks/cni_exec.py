"""CNI IPAM plugins exec'd as a runtime execs them, side by side in one run.

Debian's host-local and ipamd's plugin (contrib/cni/, against a running daemon)
each get, per repetition and per count of existing leases, N ADDs of fresh
containers and then N DELs of them, one exec at a time (or `workers` at once);
the two plugins take turns going first, so machine noise hits both alike.
Figures: ADD and DEL execs per second, p50/p99 wall time per exec, ADD+DEL
pairs per second, and ipamd's over host-local's pairs (`exec ratio`).

ipamd's plugin is run with IPAMD_CNI_TIMING naming a file, so each exec also
reports where its time went, on the same clock (CLOCK_MONOTONIC) the benchmark
reads around the exec: process start (spawn to main), config parse, connect,
RPC, and exit (last reply to reaped). A VERSION exec of each plugin (no config, no I/O) is
the floor a Go plugin's start costs on this machine.

Existing leases: host-local's are its own lease files, written directly;
ipamd's are real leases on the plugin's network, made with `alloc` beforehand.
Shared by benchmarks/bench_daemon.py (its CNI section) and contrib/bench_cni.py.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST_LOCAL = Path("/usr/lib/cni/host-local")
ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "contrib" / "cni" / "build.sh"
PLUGIN_ENV = "IPAMD_CNI_PLUGIN"  # a built plugin to use instead of building one
TIMING_ENV = "IPAMD_CNI_TIMING"
SPLIT = ("start", "parse", "connect", "rpc", "exit")
# Both plugins get a /16, so 5,000 leases fit with room for the ADDs.
HOST_LOCAL_SUBNET = "10.210.0.0/16"
# One /16 per ipamd network (one per lease count), from here up: ipamd refuses a
# subnet that overlaps another network's.
IPAMD_SUBNETS = ipaddress.ip_network("10.211.0.0/16")
PREFILL_BATCH = 64  # allocs in flight while pre-filling: the daemon's default max_in_flight


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def plugin_binary(build_dir: Path) -> Path:
    """$IPAMD_CNI_PLUGIN, else the plugin built (stripped, as installed) into `build_dir`."""
    given = os.environ.get(PLUGIN_ENV)
    if given:
        return Path(given).resolve()
    binary = build_dir / "ipamd"
    done = subprocess.run([str(BUILD), str(binary)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cannot build the CNI plugin: {done.stderr.strip()}")
    return binary


@dataclass
class Exec:
    container: str
    start_ns: int  # CLOCK_MONOTONIC before the spawn
    end_ns: int  # and after the reap
    split_s: dict[str, float] | None = None  # ipamd's plugin only, from its timing line

    @property
    def wall_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def exec_cni(
    binary: str, command: str, container: str, conf: bytes, timing: Path | None = None
) -> Exec:
    """Run one CNI command as a runtime does: environment, config on stdin."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(HOST_LOCAL.parent),
    }
    if timing is not None:
        env[TIMING_ENV] = str(timing)
    t0 = time.monotonic_ns()
    proc = subprocess.run([binary], input=conf, capture_output=True, env=env, check=False)
    t1 = time.monotonic_ns()
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        raise RuntimeError(f"{binary} {command} {container} exited {proc.returncode}: {out[:600]}")
    return Exec(container, t0, t1)


def read_splits(timing: Path, execs: list[Exec]) -> None:
    """Fill in each exec's split from the plugin's timing lines (one per exec, by container)."""
    by_container = {e.container: e for e in execs}
    for line in timing.read_text().splitlines():
        _command, container, *fields = line.split()
        e = by_container.get(container)
        if e is None:
            continue
        marks = dict(field.split("=") for field in fields)
        points = (
            e.start_ns,
            *(int(marks[k]) for k in ("start", "parsed", "connected", "replied")),
            e.end_ns,
        )
        spans = zip(SPLIT, points, points[1:], strict=False)
        e.split_s = {name: (b - a) / 1e9 for name, a, b in spans}


@dataclass
class Phase:
    """N execs of one command: total time and each exec."""

    seconds: float
    execs: list[Exec]

    @property
    def rate(self) -> float:
        return len(self.execs) / self.seconds

    def lat_ms(self, q: float) -> float:
        return percentile(sorted(e.wall_s for e in self.execs), q) * 1e3


def run_phase(
    binary: str,
    command: str,
    prefix: str,
    count: int,
    workers: int,
    conf: bytes,
    timing: Path | None = None,
) -> Phase:
    """`count` execs, `workers` at a time; with `timing`, the plugin's split of each."""
    if timing is not None:
        timing.unlink(missing_ok=True)

    def one(i: int) -> Exec:
        return exec_cni(binary, command, f"{prefix}{i:08d}", conf, timing)

    start = time.monotonic()
    if workers == 1:
        execs = [one(i) for i in range(count)]
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            execs = list(pool.map(one, range(count)))
    phase = Phase(time.monotonic() - start, execs)
    if timing is not None:
        read_splits(timing, execs)
    return phase


# -- the two plugins ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plugin:
    name: str
    binary: str
    timing: Path | None  # the file ipamd's plugin writes its timing lines to
    # existing leases -> the network config for ADD/DEL, once those leases exist
    prepare: Callable[[int], bytes]


def host_local(root: Path) -> Plugin:
    def prepare(leases: int) -> bytes:
        data_dir = root / f"host-local-{leases}"
        prefill_host_local(data_dir, "bench", HOST_LOCAL_SUBNET, leases)
        ipam = {"type": "host-local", "dataDir": str(data_dir)}
        return network_conf("bench", ipam, HOST_LOCAL_SUBNET)

    return Plugin("host-local", str(HOST_LOCAL), None, prepare)


def ipamd_plugin(binary: Path, socket: Path, timing: Path) -> Plugin:
    subnets: dict[int, str] = {}  # lease count -> its network's subnet

    def prepare(leases: int) -> bytes:
        network = f"benchcni{leases}"
        if leases not in subnets:
            first = IPAMD_SUBNETS.network_address + len(subnets) * IPAMD_SUBNETS.num_addresses
            subnets[leases] = f"{first}/{IPAMD_SUBNETS.prefixlen}"
        subnet = subnets[leases]
        prefill_ipamd(socket, network, subnet, leases)
        return network_conf(network, {"type": "ipamd", "socket": str(socket)}, subnet)

    return Plugin("ipamd", str(binary), timing, prepare)


def network_conf(name: str, ipam: dict[str, Any], subnet: str) -> bytes:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": name,
            "type": "bridge",
            "ipam": {**ipam, "ranges": [[{"subnet": subnet}]]},
        }
    ).encode()


def prefill_host_local(data_dir: Path, network: str, subnet: str, leases: int) -> None:
    """`leases` leases in host-local's own on-disk format (one file per address)."""
    net_dir = data_dir / network
    net_dir.mkdir(parents=True)
    (net_dir / "lock").touch()
    base = int(ipaddress.ip_network(subnet).network_address) + 2  # .1 is the gateway
    last = None
    for i in range(leases):
        last = ipaddress.ip_address(base + i)
        (net_dir / str(last)).write_text(f"prefill{i:06d}\r\neth0")
    if last is not None:
        (net_dir / "last_reserved_ip.0").write_text(str(last))


def prefill_ipamd(socket: Path, network: str, subnet: str, leases: int) -> None:
    """The plugin's network as its ADD creates it, holding `leases` leases."""
    import trio

    from ipamd.client import TrioClient

    async def fill() -> None:
        async with TrioClient.connect(socket) as client:
            # The definition the plugin's ADD ensures: host-local's default gateway.
            gateway = str(ipaddress.ip_network(subnet).network_address + 1)
            await client.network_create(network, [{"subnet": subnet, "gateway": gateway}])
            for first in range(0, leases, PREFILL_BATCH):
                async with trio.open_nursery() as nursery:
                    for i in range(first, min(leases, first + PREFILL_BATCH)):
                        attach = {network: {"ifname": "eth0"}}
                        nursery.start_soon(client.alloc, f"prefill{i:06d}", attach)

    trio.run(fill)


# -- the comparison ----------------------------------------------------------------------


@dataclass
class Series:
    """Repetitions of one (plugin, leases, command); figures are medians over them."""

    phases: list[Phase] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(p.rate for p in self.phases)

    def lat_ms(self, q: float) -> float:
        return statistics.median(p.lat_ms(q) for p in self.phases)

    def split_ms(self) -> dict[str, float] | None:
        splits = [e.split_s for p in self.phases for e in p.execs if e.split_s]
        if not splits:
            return None
        return {k: statistics.median(s[k] for s in splits) * 1e3 for k in SPLIT}


@dataclass
class Comparison:
    reps: int
    ops: int
    workers: int
    leases: tuple[int, ...]
    series: dict[tuple[str, int, str], Series]  # (plugin, leases, command)
    version_ms: dict[str, float]  # plugin -> median VERSION exec

    def pair_rate(self, plugin: str, leases: int) -> float | None:
        """ADD+DEL execs per second: 2N over the time of N ADDs plus N DELs."""
        add = self.series.get((plugin, leases, "ADD"))
        delete = self.series.get((plugin, leases, "DEL"))
        if add is None or delete is None:
            return None
        return 2 / (1 / add.rate + 1 / delete.rate)

    def ratio(self, leases: int) -> float | None:
        ipamd, host = self.pair_rate("ipamd", leases), self.pair_rate("host-local", leases)
        return None if ipamd is None or not host else ipamd / host


def compare(
    plugins: list[Plugin],
    leases: tuple[int, ...],
    ops: int,
    reps: int,
    workers: int = 1,
    log: Callable[[str], None] = lambda _: None,
) -> Comparison:
    series: dict[tuple[str, int, str], Series] = {}
    confs = {(p.name, n): p.prepare(n) for n in leases for p in plugins}
    version_ms: dict[str, list[float]] = {p.name: [] for p in plugins}
    for rep in range(reps):
        order = plugins if rep % 2 == 0 else plugins[::-1]
        for n in leases:
            for plugin in order:
                conf = confs[plugin.name, n]
                prefix = f"r{rep}w{workers}-"
                for command in ("ADD", "DEL"):
                    phase = run_phase(
                        plugin.binary, command, prefix, ops, workers, conf, plugin.timing
                    )
                    series.setdefault((plugin.name, n, command), Series()).phases.append(phase)
                    log(
                        f"  rep {rep + 1} {plugin.name:10} {command} leases={n:5}"
                        f" workers={workers}: {phase.rate:6.0f}/s p50={phase.lat_ms(50):6.2f}ms"
                        f" p99={phase.lat_ms(99):6.2f}ms"
                    )
        for plugin in order:
            version_ms[plugin.name] += [
                exec_cni(plugin.binary, "VERSION", "v", b"").wall_s * 1e3 for _ in range(ops)
            ]
    return Comparison(
        reps,
        ops,
        workers,
        leases,
        series,
        {name: statistics.median(ms) for name, ms in version_ms.items() if ms},
    )


def summary(c: Comparison) -> dict[str, Any]:
    """Figures for a JSON line; keys end in the lease count where they depend on it."""
    out: dict[str, Any] = {}
    for n in c.leases:
        suffix = "" if n == 0 else f"_{n}"
        out[f"cni_vs_hostlocal_exec_ratio{suffix}"] = c.ratio(n)
        for plugin, key in (("ipamd", "ipamd_cni"), ("host-local", "hostlocal_cni")):
            out[f"{key}_pairs_per_s{suffix}"] = c.pair_rate(plugin, n)
            for command in ("ADD", "DEL"):
                s = c.series.get((plugin, n, command))
                for q in (50, 99):
                    name = f"{key}_{command.lower()}_p{q}_ms{suffix}"
                    out[name] = s.lat_ms(q) if s else None
    for command in ("ADD", "DEL"):
        s = c.series.get(("ipamd", 0, command))
        out[f"ipamd_cni_{command.lower()}_split_ms"] = s.split_ms() if s else None
    out["cni_version_exec_ms"] = c.version_ms
    return out


def print_comparison(c: Comparison, targets: dict[int, float]) -> None:
    p = print
    p(
        f"CNI plugins exec'd per call: {c.ops} ADDs then {c.ops} DELs of fresh containers,"
        f" {c.workers} worker(s), medians of {c.reps} rep(s)"
    )
    header = (
        f"{'plugin':10} {'leases':>6} {'ADD/s':>7} {'ADD p50':>8} {'ADD p99':>8}"
        f" {'DEL/s':>7} {'DEL p50':>8} {'DEL p99':>8} {'pairs/s':>8}"
    )
    p(header)
    p("-" * len(header))
    for n in c.leases:
        for plugin in ("host-local", "ipamd"):
            add, delete = c.series.get((plugin, n, "ADD")), c.series.get((plugin, n, "DEL"))
            if add is None or delete is None:
                continue
            p(
                f"{plugin:10} {n:>6} {add.rate:>7.0f} {add.lat_ms(50):>8.2f} {add.lat_ms(99):>8.2f}"
                f" {delete.rate:>7.0f} {delete.lat_ms(50):>8.2f} {delete.lat_ms(99):>8.2f}"
                f" {c.pair_rate(plugin, n) or 0:>8.0f}"
            )
    p("(p50/p99: wall time per exec in ms, spawn to reaped)")
    for n in c.leases:
        value, goal = c.ratio(n), targets.get(n)
        verdict = "" if goal is None or value is None else ("met" if value >= goal else "MISSED")
        aim = "" if goal is None else f" (target >= {goal:g})"
        shown = "-" if value is None else f"{value:.2f}"
        p(f"  exec ratio ipamd / host-local, ADD+DEL pairs at {n} leases: {shown}{aim} {verdict}")
    for command in ("ADD", "DEL"):
        s = c.series.get(("ipamd", 0, command))
        split = s.split_ms() if s else None
        if split:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in split.items())
            total = sum(split.values())
            p(f"  ipamd plugin {command} exec split, median ms: {parts} (sum {total:.2f})")
    if c.version_ms:
        floors = ", ".join(f"{name} {ms:.2f}" for name, ms in c.version_ms.items())
        p(f"  VERSION exec (process start and exit, no I/O), median ms: {floors}")
