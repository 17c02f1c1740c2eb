"""ipamd under a burst of container starts, side by side with its peers, in one run.

What runs (all state on the same disk, in one temp directory):

  ipamd       the real daemon (`ipamd` console script), driven over its Unix socket
              by separate client processes (rpc_load.py), so client CPU is not in
              the daemon's process: durable `alloc`, then `release`, for N
              containers on one network (IPv4 /16, and dual stack /16 + /64), at
              1, 8, 64 and 256 concurrent clients (= requests in flight).
  echo        the floor: the same client processes and the same request frames
              against echo_server.py (trio + msgpack, a task per connection,
              answers every request at once, stores nothing).
  echo-ep     the same echo served the way ipamd's server serves (one epoll set,
              one task, rounds): the floor for ipamd's own I/O design, which is
              cheaper per request than a task per connection.
  host-local  CNI host-local exec'd per call as a runtime does (ADD, then DEL),
              with 1 and 8 workers, at 0, 1,000 and 5,000 existing leases
              (pre-filled by writing its lease files directly).
  seed        the seed's (podman v3 boltdb IPAM) way, in Python with plyvel: per
              allocation open the database, read the cursor, scan for a free
              address, one synced batch, close; one at a time.
  cni         ipamd's CNI plugin (contrib/cni/, built unless $IPAMD_CNI_PLUGIN names
              it) against the daemon, and host-local again, exec'd in turns at 1
              worker on 0 and 5,000 existing leases (cni_exec.py): ADD+DEL pairs/s,
              p50/p99 per exec, and the plugin's exec time split (skipped, and
              reported as such, when it cannot be built).
  scrape      ipamd with its metrics endpoint on: allocs at 64 clients while a
              scraper GETs /metrics every 100 ms (scraper.py) against the same
              without one, in pairs, in both orders (the figure is the median
              of the pairs' ratios: `scrape_vs_none_64`).

Every phase runs a fixed count of operations (not a fixed time), so runs are
comparable; each is repeated (--reps, default 3) and the median is reported.
Peers that are compared run interleaved in the same repetition (echo then
ipamd at each client count) so background noise hits both alike. Client
processes are few (CLIENT_PROCESSES, printed with the table), each running many
closed-loop connections in one epoll loop, so 256 clients do not need 256
processes on two cores. Latency is measured by the clients, send to answer;
the writer's mean batch size comes from `status` before and after each phase.
State lives under $IPAMD_BENCH_DIR (default /var/tmp: a disk, not a tmpfs,
so that fsync costs what it costs).

Usage:  python benchmarks/bench_daemon.py [--quick] [--json] [--reps N] [--only SECTION ...]
With --json the last line of stdout is one JSON object (see `summary_json`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ipaddress
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cni_exec
import msgpack
from scraper import Scraper

HERE = Path(__file__).resolve().parent
RPC_LOAD = HERE / "rpc_load.py"
ECHO_SERVER = HERE / "echo_server.py"
HOST_LOCAL = Path("/usr/lib/cni/host-local")
START_TIMEOUT_S = 30.0
CLIENT_LEVELS = (1, 8, 64, 256)
# Client processes per client count. Two cores: more processes than that only
# adds context switches, so many connections share one process's epoll loop.
CLIENT_PROCESSES = {1: 1, 8: 2, 64: 2, 256: 2}

NET_V4 = {"name": "bench4", "subnets": [{"subnet": "10.200.0.0/16"}]}
NET_DUAL = {
    "name": "bench46",
    "subnets": [{"subnet": "10.201.0.0/16"}, {"subnet": "fd00:200::/64"}],
}
# The CNI section: existing leases per configuration, and the exec ratio targets there.
CNI_LEASES = (0, 5000)
CNI_TARGETS = {0: 1.0, 5000: 3.0}
HOST_LOCAL_SUBNET = "10.200.0.0/16"
SEED_SUBNET = ipaddress.IPv4Network("10.203.0.0/16")
NET_SCRAPE = {"name": "benchscrape", "subnets": [{"subnet": "10.204.0.0/16"}]}
SCRAPE_CLIENTS = 64
SCRAPE_PERIOD_S = 0.1
# Allocations per measured phase (1 to 2 s at 64 clients on two shared cores);
# a pair's two phases hold twice that in NET_SCRAPE's /16 at most.
SCRAPE_OPS = {"full": 24000, "quick": 3000}


@dataclass(frozen=True)
class Sizes:
    """Operation counts per phase; --quick shrinks them for a smoke check."""

    ops_per_level: dict[int, int]
    hostlocal_ops: dict[int, int]  # existing leases -> ADDs (then as many DELs)
    seed_ops: int
    cni_ops: int
    reps: int


FULL = Sizes(
    ops_per_level={1: 1000, 8: 4000, 64: 24000, 256: 24000},
    hostlocal_ops={0: 300, 1000: 200, 5000: 100},
    seed_ops=400,
    cni_ops=100,
    reps=3,
)
QUICK = Sizes(
    ops_per_level={1: 100, 8: 400, 64: 1500, 256: 1500},
    hostlocal_ops={0: 40, 1000: 20, 5000: 10},
    seed_ops=40,
    cni_ops=30,
    reps=1,
)


# -- small helpers -------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Rpc:
    """A minimal blocking msgpack-RPC client for set-up and `status` (not the hot loop)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.unpacker = msgpack.Unpacker(raw=False)
        self.msgid = 0

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.msgid += 1
        frame = [0, self.msgid, method, [params] if params else []]
        self.sock.sendall(msgpack.packb(frame, use_bin_type=True))
        while True:
            for response in self.unpacker:
                if response[2] is not None:
                    raise RuntimeError(f"{method}: {response[2]}")
                return response[3]
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("server closed the connection")
            self.unpacker.feed(data)

    def close(self) -> None:
        self.sock.close()


# -- the servers -----------------------------------------------------------------------


def ipamd_command() -> list[str]:
    script = Path(sys.executable).with_name("ipamd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ipamd.daemon"]


@dataclass
class Server:
    name: str
    socket: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def cpu_s(self) -> float:
        return process_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for_socket(server: Server, probe: Callable[[], None]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited {server.proc.returncode}: {tail}")
        try:
            probe()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{server.name} did not answer within {START_TIMEOUT_S}s")


def start_ipamd(
    root: Path,
    config: Path | None = None,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """The daemon in `root`; `command` and `env` run another checkout's (bench_checkouts.py)."""
    sock, state, log_path = root / "ipamd.sock", root / "ipamd-state", root / "ipamd.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [*(command or ipamd_command()), "--socket", str(sock), "--state-dir", str(state)]
            + (["--config", str(config)] if config is not None else []),
            stdout=out,
            stderr=out,
            env=env,
        )
    server = Server("ipamd", sock, proc, log_path)

    def ping() -> None:
        client = Rpc(sock, timeout=2)
        try:
            client.call("ping")
        finally:
            client.close()

    wait_for_socket(server, ping)
    return server


def start_echo(root: Path, epoll: bool = False) -> Server:
    name = "echo-ep" if epoll else "echo"
    sock, log_path = root / f"{name}.sock", root / f"{name}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ECHO_SERVER), *(["--epoll"] if epoll else []), str(sock)],
            stdout=out,
            stderr=out,
        )
    server = Server(name, sock, proc, log_path)

    def connect() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(sock))

    wait_for_socket(server, connect)
    return server


# -- the RPC load phases --------------------------------------------------------------


@dataclass
class Phase:
    """One measured phase: `ops` requests from `clients` closed-loop connections."""

    ops: int
    errors: int
    error_sample: Any
    seconds: float
    lat_us: list[float]
    client_cpu_s: float
    server_cpu_s: float
    batches: int | None = None
    mutations: int | None = None

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else float("nan")

    @property
    def mean_batch(self) -> float | None:
        if not self.batches or self.mutations is None:
            return None
        return self.mutations / self.batches

    def lat_ms(self, q: float) -> float:
        return percentile(self.lat_us, q) / 1000


def split(first: int, count: int, parts: int) -> list[tuple[int, int]]:
    """[first, first+count) cut into `parts` contiguous ranges of near-equal size."""
    bounds = [first + count * k // parts for k in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def run_load(
    server: Server,
    method: str,
    params: dict[str, Any],
    prefix: str,
    count: int,
    clients: int,
    procs: int,
    status: Rpc | None = None,
) -> Phase:
    """`count` requests of `method` from `clients` connections spread over `procs` processes."""
    conns = split(0, count, clients)
    per_proc = [conns[k::procs] for k in range(procs)]
    workers = []
    for share in per_proc:
        job = {
            "socket": str(server.socket),
            "method": method,
            "params": params,
            "prefix": prefix,
            "conns": share,
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, str(RPC_LOAD), json.dumps(job)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a client process failed to start (exit {worker.wait()})")
        before = status.call("status") if status is not None else None
        cpu0 = server.cpu_s()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if worker.wait() != 0 or not line:
                raise RuntimeError(f"a client process failed (exit {worker.returncode})")
            results.append(json.loads(line))
        cpu1 = server.cpu_s()
        after = status.call("status") if status is not None else None
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    phase = Phase(
        ops=sum(r["ok"] for r in results),
        errors=sum(r["errors"] for r in results),
        error_sample=next((r["error_sample"] for r in results if r["error_sample"]), None),
        seconds=max(r["end"] for r in results) - min(r["start"] for r in results),
        lat_us=sorted(x for r in results for x in r["lat_us"]),
        client_cpu_s=sum(r["cpu_s"] for r in results),
        server_cpu_s=cpu1 - cpu0,
    )
    if before is not None and after is not None:
        phase.batches = after["batches"] - before["batches"]
        phase.mutations = after["mutations"] - before["mutations"]
    if phase.errors:
        log(f"  ! {server.name} {method}: {phase.errors} error(s), e.g. {phase.error_sample}")
    return phase


@dataclass
class Series:
    """Repetitions of one configuration; figures are medians over them."""

    phases: list[Phase] = field(default_factory=list)

    def med(self, get: Callable[[Phase], float | None]) -> float | None:
        values = [v for v in (get(p) for p in self.phases) if v is not None]
        return median(values) if values else None

    @property
    def rate(self) -> float | None:
        return self.med(lambda p: p.rate)

    def lat(self, q: float) -> float | None:
        return self.med(lambda p: p.lat_ms(q))

    @property
    def max_ms(self) -> float | None:
        return self.med(lambda p: p.lat_us[-1] / 1000 if p.lat_us else None)

    @property
    def mean_batch(self) -> float | None:
        return self.med(lambda p: p.mean_batch)

    @property
    def server_us_per_op(self) -> float | None:
        return self.med(lambda p: p.server_cpu_s / p.ops * 1e6 if p.ops else None)

    @property
    def client_us_per_op(self) -> float | None:
        return self.med(lambda p: p.client_cpu_s / p.ops * 1e6 if p.ops else None)

    @property
    def errors(self) -> int:
        return sum(p.errors for p in self.phases)


def bench_rpc(root: Path, sizes: Sizes, levels: tuple[int, ...], results: dict[str, Any]) -> Server:
    """echo and ipamd, interleaved. Returns the running ipamd."""
    echo = start_echo(root)
    echo_epoll = start_echo(root, epoll=True)
    ipamd = start_ipamd(root)
    control = Rpc(ipamd.socket)
    for net in (NET_V4, NET_DUAL):
        control.call("network.create", net)
    series: dict[tuple[str, str, str, int], Series] = {}
    try:
        for rep in range(sizes.reps):
            for clients in levels:
                count = sizes.ops_per_level[clients]
                procs = min(CLIENT_PROCESSES.get(clients, 2), clients)
                for net in (NET_V4, NET_DUAL):
                    prefix = f"r{rep}c{clients}{net['name']}-"
                    for method in ("alloc", "release"):
                        params: dict[str, Any] = {"networks": {net["name"]: {}}}
                        targets: list[tuple[Server, Rpc | None]] = [(ipamd, control)]
                        if net is NET_V4:  # the floors right before
                            targets[:0] = [(echo, None), (echo_epoll, None)]
                        for server, status in targets:
                            phase = run_load(
                                server, method, params, prefix, count, clients, procs, status
                            )
                            key = (server.name, str(net["name"]), method, clients)
                            series.setdefault(key, Series()).phases.append(phase)
                            log(
                                f"  rep {rep + 1} {server.name:7} {net['name']:7} {method:7}"
                                f" clients={clients:3}: {phase.rate:9.0f}/s"
                                f" p99={phase.lat_ms(99):7.2f}ms"
                                + (
                                    f" batch={phase.mean_batch:.1f}"
                                    if phase.mean_batch is not None
                                    else ""
                                )
                            )
    finally:
        control.close()
        echo.stop()
        echo_epoll.stop()
    results["rpc"] = series
    return ipamd


# -- a scraper against none ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ScrapePhase:
    phase: Phase
    scraper: Scraper | None


def bench_scrape(root: Path, sizes: Sizes, quick: bool, results: dict[str, Any]) -> None:
    """Pairs of alloc phases, one with a scraper and one without, in both orders."""
    base = root / "scrape"
    base.mkdir()
    port = free_port()
    config = base / "ipamd.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    ipamd = start_ipamd(base, config)
    control = Rpc(ipamd.socket)
    control.call("network.create", NET_SCRAPE)
    count = SCRAPE_OPS["quick" if quick else "full"]
    procs = CLIENT_PROCESSES[SCRAPE_CLIENTS]
    params: dict[str, Any] = {"networks": {NET_SCRAPE["name"]: {}}}
    pairs: list[dict[str, ScrapePhase]] = []
    try:
        for rep in range(sizes.reps):
            for order in (("none", "scrape"), ("scrape", "none")):
                # The pair's two phases run back to back, so that the machine's
                # noise (other processes come and go for seconds) hits both alike.
                pair: dict[str, ScrapePhase] = {}
                for mode in order:
                    prefix = f"s{rep}{order[0]}{mode}-"
                    scraper = Scraper(port, SCRAPE_PERIOD_S) if mode == "scrape" else None
                    with scraper or contextlib.nullcontext():
                        phase = run_load(
                            ipamd, "alloc", params, prefix, count, SCRAPE_CLIENTS, procs, control
                        )
                    pair[mode] = ScrapePhase(phase, scraper)
                    scraped = (
                        f" scrapes={len(scraper.latencies_s)} failed={scraper.failures}"
                        if scraper
                        else ""
                    )
                    log(
                        f"  rep {rep + 1} ipamd alloc clients={SCRAPE_CLIENTS} scraper={mode:6}:"
                        f" {phase.rate:9.0f}/s p99={phase.lat_ms(99):7.2f}ms{scraped}"
                    )
                # Back to an empty network before the next pair (unmeasured).
                for mode in order:
                    prefix = f"s{rep}{order[0]}{mode}-"
                    run_load(ipamd, "release", params, prefix, count, SCRAPE_CLIENTS, procs)
                pairs.append(pair)
    finally:
        control.close()
        ipamd.stop()
    results["scrape"] = pairs


def summarise_scrape(pairs: list[dict[str, ScrapePhase]] | None) -> dict[str, Any]:
    if not pairs:
        return {"scrape_vs_none_64": None}
    scraped = [p["scrape"] for p in pairs]
    plain = [p["none"] for p in pairs]
    latencies = sorted(x for s in scraped if s.scraper for x in s.scraper.latencies_s)
    scrapes = sum(len(s.scraper.latencies_s) for s in scraped if s.scraper)
    return {
        "scrape_vs_none_64": median([p["scrape"].phase.rate / p["none"].phase.rate for p in pairs]),
        "scrape_allocs_per_s_64": median([s.phase.rate for s in scraped]),
        "no_scrape_allocs_per_s_64": median([s.phase.rate for s in plain]),
        "scrape_p99_ms_64": median([s.phase.lat_ms(99) for s in scraped]),
        "no_scrape_p99_ms_64": median([s.phase.lat_ms(99) for s in plain]),
        "scrape_srv_us_per_op_64": median(
            [s.phase.server_cpu_s / s.phase.ops * 1e6 for s in scraped]
        ),
        "no_scrape_srv_us_per_op_64": median(
            [s.phase.server_cpu_s / s.phase.ops * 1e6 for s in plain]
        ),
        "scrape_ms_p50": percentile(latencies, 50) * 1000,
        "scrape_ms_p99": percentile(latencies, 99) * 1000,
        "scrapes": scrapes,
        "scrape_failures": sum(s.scraper.failures for s in scraped if s.scraper),
        "scrape_bytes": max((s.scraper.body_bytes for s in scraped if s.scraper), default=0),
    }


def print_scrape(summary: dict[str, Any], results: dict[str, Any]) -> None:
    p = print
    p()
    if not results.get("scrape"):
        p("scrape: not run")
        return
    p(
        f"ipamd alloc at {SCRAPE_CLIENTS} clients, a scraper every {SCRAPE_PERIOD_S * 1000:.0f} ms"
        f" against none ({len(results['scrape'])} pairs, both orders; medians)"
    )
    for mode, key in (("none", "no_scrape"), ("scrape", "scrape")):
        p(
            f"  {mode:6}  {fmt(summary[f'{key}_allocs_per_s_64']):>8}/s"
            f"  p99 {fmt(summary[f'{key}_p99_ms_64'], '.2f')} ms"
            f"  server {fmt(summary[f'{key}_srv_us_per_op_64'], '.1f')} us/alloc"
        )
    p(
        f"  scrapes: {summary['scrapes']} ({summary['scrape_failures']} failed),"
        f" {summary['scrape_bytes']} bytes each, p50 {fmt(summary['scrape_ms_p50'], '.2f')} ms,"
        f" p99 {fmt(summary['scrape_ms_p99'], '.2f')} ms"
    )
    value = summary["scrape_vs_none_64"]
    verdict = "n/a" if value is None else ("met" if value >= 0.97 else "MISSED")
    p(f"  {'with a scraper >= 97% of without':40} {fmt(value, '.1%'):>8}  {verdict}")


# -- host-local -------------------------------------------------------------------------


def hostlocal_conf(data_dir: Path, subnet: str = HOST_LOCAL_SUBNET) -> bytes:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "bridge",
            "ipam": {
                "type": "host-local",
                "dataDir": str(data_dir),
                "ranges": [[{"subnet": subnet}]],
            },
        }
    ).encode()


def ensure_host_local() -> str | None:
    """None when /usr/lib/cni/host-local is runnable, else why not (after trying apt)."""
    if HOST_LOCAL.exists():
        return None
    if shutil.which("apt-get") and os.geteuid() == 0:
        log("installing containernetworking-plugins for /usr/lib/cni/host-local ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "containernetworking-plugins"],
            env=env,
            capture_output=True,
            check=False,
        )
    return None if HOST_LOCAL.exists() else f"{HOST_LOCAL} is missing"


def exec_cni(
    binary: list[str], command: str, container: str, conf: bytes, env: dict[str, str]
) -> float:
    """Run one CNI command as a runtime does; its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        binary,
        input=conf,
        capture_output=True,
        env={
            **env,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": "/proc/self/ns/net",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/usr/lib/cni",
        },
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        raise RuntimeError(
            f"{' '.join(binary)} {command} {container} exited {proc.returncode}: {out[:600]}"
        )
    return elapsed


def run_exec_phase(
    binary: list[str],
    command: str,
    prefix: str,
    count: int,
    workers: int,
    conf: bytes,
    env: dict[str, str],
) -> Phase:
    """`count` execs of `command`, `workers` at a time (threads that each wait on a child)."""
    cpu0 = os.times()
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        lat = list(
            pool.map(
                lambda i: exec_cni(binary, command, f"{prefix}{i:08d}", conf, env), range(count)
            )
        )
    seconds = time.monotonic() - start
    cpu1 = os.times()
    children = (cpu1.children_user - cpu0.children_user) + (
        cpu1.children_system - cpu0.children_system
    )
    return one_at_a_time_phase(count, seconds, lat, children)


def one_at_a_time_phase(count: int, seconds: float, lat_s: list[float], cpu_s: float) -> Phase:
    """A phase of calls the benchmark made itself (no client processes), none failed."""
    return Phase(
        ops=count,
        errors=0,
        error_sample=None,
        seconds=seconds,
        lat_us=sorted(x * 1e6 for x in lat_s),
        client_cpu_s=0.0,
        server_cpu_s=cpu_s,
    )


def bench_host_local(root: Path, sizes: Sizes, results: dict[str, Any]) -> None:
    problem = ensure_host_local()
    if problem is not None:
        log(f"host-local: not available ({problem}); skipped")
        results["hostlocal"] = None
        return
    series: dict[tuple[str, int, int], Series] = {}
    env = dict(os.environ)
    for rep in range(sizes.reps):
        for leases, count in sizes.hostlocal_ops.items():
            for workers in (1, 8):
                data_dir = root / f"host-local-{rep}-{leases}-{workers}"
                cni_exec.prefill_host_local(data_dir, "bench", HOST_LOCAL_SUBNET, leases)
                conf = hostlocal_conf(data_dir)
                prefix = f"hl{rep}w{workers}-"
                for command in ("ADD", "DEL"):
                    phase = run_exec_phase(
                        [str(HOST_LOCAL)], command, prefix, count, workers, conf, env
                    )
                    series.setdefault((command, leases, workers), Series()).phases.append(phase)
                    log(
                        f"  rep {rep + 1} host-local {command} leases={leases:5}"
                        f" workers={workers}: {phase.rate:7.0f}/s p99={phase.lat_ms(99):7.2f}ms"
                    )
                shutil.rmtree(data_dir)
    results["hostlocal"] = series


# -- the seed's way --------------------------------------------------------------------


def seed_alloc(path: str, container: str, subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """podman v3's allocIPs, in Python: open, find the next free address after the
    cursor by a linear scan (one get per candidate), one synced batch, close."""
    import plyvel

    bucket = f"bench/{subnet}/".encode()
    range_start = subnet.network_address + 1
    range_end = subnet.broadcast_address - 1
    gateway = None  # the seed skips it when set; none here, as for ipamd's networks
    db = plyvel.DB(path, create_if_missing=True)
    try:
        last = db.get(bucket + b"lastIP")
        current = range_start if last is None else ipaddress.IPv4Address(last) + 1
        start = current
        while True:
            if gateway is not None and current == gateway:
                current += 1
                continue
            if current > range_end:
                if start == range_start:
                    raise RuntimeError(
                        f"failed to find free IP in range: {range_start} - {range_end}"
                    )
                current = range_start
                continue
            if db.get(bucket + current.packed) is None:
                break
            current += 1
            if current == start:
                raise RuntimeError(f"failed to find free IP in range: {range_start} - {range_end}")
        with db.write_batch(sync=True) as batch:
            batch.put(bucket + b"lastIP", current.packed)
            batch.put(bucket + current.packed, container.encode())
            batch.put(b"bench/ids/" + container.encode(), json.dumps([str(current)]).encode())
    finally:
        db.close()
    return current


def seed_release(path: str, container: str, subnet: ipaddress.IPv4Network) -> None:
    """getAssignedIPs + deallocIPs in one open (the seed opens twice): read the
    container's addresses, delete them and it in one synced batch, close."""
    import plyvel

    bucket = f"bench/{subnet}/".encode()
    db = plyvel.DB(path, create_if_missing=True)
    try:
        raw = db.get(b"bench/ids/" + container.encode())
        if raw is None:
            raise RuntimeError(f"failed to get ips for container ID {container}")
        with db.write_batch(sync=True) as batch:
            for ip in json.loads(raw):
                batch.delete(bucket + ipaddress.ip_address(ip).packed)
            batch.delete(b"bench/ids/" + container.encode())
    finally:
        db.close()


def run_seed_phase(
    fn: Callable[[str, str, ipaddress.IPv4Network], Any], path: str, prefix: str, count: int
) -> Phase:
    lat = []
    cpu0 = os.times()
    start = time.monotonic()
    for i in range(count):
        t0 = time.perf_counter()
        fn(path, f"{prefix}{i:08d}", SEED_SUBNET)
        lat.append(time.perf_counter() - t0)
    seconds = time.monotonic() - start
    cpu1 = os.times()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return one_at_a_time_phase(count, seconds, lat, cpu_s)


def bench_seed(root: Path, sizes: Sizes, results: dict[str, Any]) -> None:
    series: dict[str, Series] = {}
    for rep in range(sizes.reps):
        path = str(root / f"seed-{rep}.ldb")
        for method, fn in (("alloc", seed_alloc), ("release", seed_release)):
            phase = run_seed_phase(fn, path, f"seed{rep}-", sizes.seed_ops)
            series.setdefault(method, Series()).phases.append(phase)
            log(
                f"  rep {rep + 1} seed-style {method:7}: {phase.rate:7.0f}/s"
                f" p99={phase.lat_ms(99):7.2f}ms"
            )
        shutil.rmtree(path)
    results["seed"] = series


# -- ipamd's CNI plugin ----------------------------------------------------------------


def bench_cni(root: Path, sizes: Sizes, results: dict[str, Any]) -> None:
    """The plugin (contrib/cni/) and host-local side by side at 1 worker (cni_exec.py).

    ipamd gets a daemon of its own on a fresh state directory, as host-local gets
    a fresh dataDir: not the one the RPC section just put 300,000 mutations
    through, whose LevelDB compactions would still be running."""
    if ensure_host_local() is not None:
        results["cni"] = None
        results["cni_problem"] = f"{HOST_LOCAL} is missing"
        return
    try:
        binary = cni_exec.plugin_binary(root)
    except RuntimeError as e:
        log(f"ipamd's CNI plugin: not available ({e}); skipped")
        results["cni"] = None
        results["cni_problem"] = str(e)
        return
    home = root / "cni"
    home.mkdir()
    ipamd = start_ipamd(home)
    try:
        plugins = [
            cni_exec.host_local(home),
            cni_exec.ipamd_plugin(binary, ipamd.socket, home / "timing"),
        ]
        results["cni"] = cni_exec.compare(
            plugins, CNI_LEASES, sizes.cni_ops, sizes.reps, workers=1, log=log
        )
    finally:
        ipamd.stop()


# -- report ---------------------------------------------------------------------------------


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def pair_rate(add: Series | None, delete: Series | None) -> float | None:
    """ADD+DEL operations per second: 2N over the time of N ADDs plus N DELs."""
    if add is None or delete is None or add.rate is None or delete.rate is None:
        return None
    return 2 / (1 / add.rate + 1 / delete.rate)


def summarise(results: dict[str, Any], levels: tuple[int, ...]) -> dict[str, Any]:
    rpc: dict[tuple[str, str, str, int], Series] = results.get("rpc") or {}
    out: dict[str, Any] = {}

    def get(server: str, net: str, method: str, clients: int) -> Series | None:
        return rpc.get((server, net, method, clients))

    for clients in levels:
        alloc = get("ipamd", "bench4", "alloc", clients)
        release = get("ipamd", "bench4", "release", clients)
        echo = get("echo", "bench4", "alloc", clients)
        echo_epoll = get("echo-ep", "bench4", "alloc", clients)
        dual = get("ipamd", "bench46", "alloc", clients)
        out[f"ipamd_allocs_per_s_{clients}"] = alloc.rate if alloc else None
        out[f"ipamd_releases_per_s_{clients}"] = release.rate if release else None
        out[f"ipamd_dual_allocs_per_s_{clients}"] = dual.rate if dual else None
        out[f"echo_rps_{clients}"] = echo.rate if echo else None
        out[f"ratio_vs_echo_{clients}"] = ratio(
            alloc.rate if alloc else None, echo.rate if echo else None
        )
        out[f"echo_epoll_rps_{clients}"] = echo_epoll.rate if echo_epoll else None
        out[f"ratio_vs_echo_epoll_{clients}"] = ratio(
            alloc.rate if alloc else None, echo_epoll.rate if echo_epoll else None
        )
        out[f"p50_ms_{clients}"] = alloc.lat(50) if alloc else None
        out[f"p99_ms_{clients}"] = alloc.lat(99) if alloc else None
        out[f"max_ms_{clients}"] = alloc.max_ms if alloc else None
        out[f"mean_batch_{clients}"] = alloc.mean_batch if alloc else None

    hostlocal: dict[tuple[str, int, int], Series] | None = results.get("hostlocal")
    best_hl_add = None
    if hostlocal:
        best_hl_add = max(s.rate or 0 for (cmd, _, _), s in hostlocal.items() if cmd == "ADD")
        hl_pair_1 = pair_rate(hostlocal.get(("ADD", 0, 1)), hostlocal.get(("DEL", 0, 1)))
    else:
        hl_pair_1 = None
    out["hostlocal_best_adds_per_s"] = best_hl_add
    if hostlocal:
        # Per configuration "LEASESxWORKERS": ipamd at 64 clients over host-local's ADDs.
        out["ratio_vs_hostlocal_by_config"] = {
            f"{leases}x{workers}": _round(ratio(out.get("ipamd_allocs_per_s_64"), s.rate))
            for (cmd, leases, workers), s in sorted(hostlocal.items())
            if cmd == "ADD"
        }
    out["hostlocal_exec_pairs_per_s_1"] = hl_pair_1
    out["ratio_vs_hostlocal"] = ratio(out.get("ipamd_allocs_per_s_64"), best_hl_add)

    seed: dict[str, Series] | None = results.get("seed")
    seed_rate = seed["alloc"].rate if seed else None
    out["seed_style_allocs_per_s"] = seed_rate
    out["ratio_vs_seed_style"] = ratio(out.get("ipamd_allocs_per_s_64"), seed_rate)

    cni: cni_exec.Comparison | None = results.get("cni")
    out["ipamd_cni_exec_pairs_per_s_1"] = cni.pair_rate("ipamd", 0) if cni else None
    out.update(cni_exec.summary(cni) if cni else {"cni_vs_hostlocal_exec_ratio": None})
    out.update(summarise_scrape(results.get("scrape")))
    return out


def print_tables(results: dict[str, Any], summary: dict[str, Any], levels: tuple[int, ...]) -> None:
    p = print
    rpc: dict[tuple[str, str, str, int], Series] = results.get("rpc") or {}
    p()
    p(f"ipamd vs the echo floor (medians of {results['reps']} run(s); rate = ops/s)")
    p(
        "clients -> processes x connections: "
        + ", ".join(
            f"{c} -> {min(CLIENT_PROCESSES.get(c, 2), c)}x{c // min(CLIENT_PROCESSES.get(c, 2), c)}"
            for c in levels
        )
    )
    header = (
        f"{'server':7} {'network':8} {'method':8} {'clients':>7} {'ops/s':>8} {'p50 ms':>7}"
        f" {'p99 ms':>7} {'max ms':>7} {'batch':>6} {'srv us/op':>9} {'cli us/op':>9}"
        f" {'vs echo':>7} {'vs ep':>6}"
    )
    p(header)
    p("-" * len(header))
    for net, method in (
        ("bench4", "alloc"),
        ("bench4", "release"),
        ("bench46", "alloc"),
        ("bench46", "release"),
    ):
        for clients in levels:
            echo = rpc.get(("echo", "bench4", method, clients))
            echo_epoll = rpc.get(("echo-ep", "bench4", method, clients))
            for server in ("echo", "echo-ep", "ipamd"):
                s = rpc.get((server, net, method, clients))
                if s is None or (server != "ipamd" and net != "bench4"):
                    continue
                vs, vs_ep = None, None
                if server == "ipamd":
                    vs = ratio(s.rate, echo.rate if echo else None)
                    vs_ep = ratio(s.rate, echo_epoll.rate if echo_epoll else None)
                p(
                    f"{server:7} {net:8} {method:8} {clients:>7} {fmt(s.rate):>8}"
                    f" {fmt(s.lat(50), '.2f'):>7} {fmt(s.lat(99), '.2f'):>7}"
                    f" {fmt(s.max_ms, '.1f'):>7} {fmt(s.mean_batch, '.1f'):>6}"
                    f" {fmt(s.server_us_per_op):>9} {fmt(s.client_us_per_op):>9}"
                    f" {fmt(vs, '.0%'):>7} {fmt(vs_ep, '.0%'):>6}"
                    + (f"  ({s.errors} errors)" if s.errors else "")
                )
    p("(network bench4: IPv4 /16; bench46: IPv4 /16 + IPv6 /64; batch: writer's mean batch")
    p(" size from `status`; srv/cli us/op: CPU time of the server / client processes per op;")
    p(" echo: trio, a task per connection (the floor the target is set against); echo-ep:")
    p(" one epoll set served by one task, as ipamd's server does)")

    hostlocal = results.get("hostlocal")
    p()
    if hostlocal is None:
        p("host-local: not available (skipped)")
    else:
        p("CNI host-local, exec'd per call (lease files pre-filled directly; no fsync)")
        header = (
            f"{'command':7} {'leases':>6} {'workers':>7} {'ops/s':>8} {'p50 ms':>7}"
            f" {'p99 ms':>7} {'max ms':>7} {'ipamd x':>8}"
        )
        p(header)
        p("-" * len(header))
        ipamd_rate = {
            "ADD": summary.get("ipamd_allocs_per_s_64"),
            "DEL": summary.get("ipamd_releases_per_s_64"),
        }
        for (command, leases, workers), s in sorted(hostlocal.items()):
            p(
                f"{command:7} {leases:>6} {workers:>7} {fmt(s.rate):>8} {fmt(s.lat(50), '.2f'):>7}"
                f" {fmt(s.lat(99), '.2f'):>7} {fmt(s.max_ms, '.1f'):>7}"
                f" {fmt(ratio(ipamd_rate[command], s.rate), '.0f'):>7}x"
            )
        p("(ipamd x: ipamd's rate at 64 clients over this one)")

    seed = results.get("seed")
    p()
    if seed:
        p("the seed's way in Python (open, scan, one synced batch, close; one at a time)")
        for method, s in seed.items():
            ipamd_64 = summary.get(
                "ipamd_allocs_per_s_64" if method == "alloc" else "ipamd_releases_per_s_64"
            )
            p(
                f"  {method:8} {fmt(s.rate):>6}/s  p50 {fmt(s.lat(50), '.2f')} ms"
                f"  p99 {fmt(s.lat(99), '.2f')} ms"
                f"  ipamd@64 is {fmt(ratio(ipamd_64, s.rate), '.0f')}x"
            )

    cni = results.get("cni")
    p()
    if cni is None:
        p(f"ipamd's CNI plugin: not available ({results.get('cni_problem', 'skipped')})")
    else:
        cni_exec.print_comparison(cni, CNI_TARGETS)

    p()
    p("targets at 64 clients:")
    echo_epoll = summary.get("ratio_vs_echo_epoll_64")
    p(
        f"  (ipamd is {fmt(echo_epoll, '.0%')} of the epoll echo: the floor for its own I/O;"
        " no target)"
    )
    checks = [
        ("ipamd >= 70% of the echo floor", summary.get("ratio_vs_echo_64"), 0.70, "{:.0%}"),
        ("ipamd >= 100x host-local (its best)", summary.get("ratio_vs_hostlocal"), 100, "{:.0f}x"),
        ("ipamd >= 10x the seed's way", summary.get("ratio_vs_seed_style"), 10, "{:.0f}x"),
    ]
    for text, value, goal, spec in checks:
        verdict = "n/a" if value is None else ("met" if value >= goal else "MISSED")
        p(f"  {text:40} {'-' if value is None else spec.format(value):>8}  {verdict}")
    p99 = summary.get("p99_ms_64")
    verdict = "n/a" if p99 is None else ("met" if p99 <= 10 else "MISSED")
    p(f"  {'p99 latency <= 10 ms':40} {fmt(p99, '.2f'):>5} ms  {verdict}")


def summary_json(summary: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()
    }
    out["quick"] = results["quick"]
    out["reps"] = results["reps"]
    out["client_processes"] = {
        str(c): min(CLIENT_PROCESSES.get(c, 2), c) for c in results["levels"]
    }
    out["ipamd_cni_available"] = results.get("cni") is not None
    out["seconds"] = round(results["seconds"], 1)
    return out


@contextlib.contextmanager
def temp_root(keep: bool) -> Iterator[Path]:
    # On the disk (/var/tmp), not a tmpfs: fsync must cost what it costs.
    base = Path(os.environ.get("IPAMD_BENCH_DIR", "/var/tmp"))
    root = Path(tempfile.mkdtemp(prefix="ipamd-bench-", dir=base))
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--reps", type=int, help="repetitions per configuration")
    parser.add_argument(
        "--clients", type=int, nargs="+", choices=CLIENT_LEVELS, help="client counts to run"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("rpc", "hostlocal", "seed", "cni", "scrape"),
        help="run only these sections",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.reps:
        sizes = Sizes(
            sizes.ops_per_level, sizes.hostlocal_ops, sizes.seed_ops, sizes.cni_ops, args.reps
        )
    levels = tuple(args.clients or CLIENT_LEVELS)
    sections = set(args.only or ("rpc", "hostlocal", "seed", "cni", "scrape"))
    results: dict[str, Any] = {"quick": args.quick, "reps": sizes.reps, "levels": levels}
    started = time.monotonic()
    log(
        f"bench_daemon: {platform.python_implementation()} {platform.python_version()},"
        f" {os.cpu_count()} CPU(s), {'quick' if args.quick else 'full'} run, {sizes.reps} rep(s)"
    )
    with temp_root(args.keep) as root:
        log(f"state under {root}")
        ipamd: Server | None = None
        try:
            if "rpc" in sections:
                log("ipamd vs echo ...")
                ipamd = bench_rpc(root, sizes, levels, results)
                ipamd.stop()  # done: its compactions must not run into later sections
            if "hostlocal" in sections:
                log("host-local ...")
                bench_host_local(root, sizes, results)
            if "seed" in sections:
                log("seed-style ...")
                bench_seed(root, sizes, results)
            if "cni" in sections:
                log("CNI plugins ...")
                bench_cni(root, sizes, results)
            if "scrape" in sections:
                log("a scraper against none ...")
                bench_scrape(root, sizes, args.quick, results)
        finally:
            if ipamd is not None:
                ipamd.stop()
    results["seconds"] = time.monotonic() - started
    summary = summarise(results, levels)
    print_tables(results, summary, levels)
    print_scrape(summary, results)
    print(f"\n(total {results['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(summary_json(summary, results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
