"""Shared pieces of the reliability suite: daemons, configs, checks, the lease model.

The daemon is always the real `ipamd` process (tests/support.py's `Daemon`),
here with a config file, a `preexec_fn` (to lower its descriptor limit) and a
way to expect it to refuse to start. `LeaseModel` is the plain-dict model of
what clients were told: every acknowledged result is applied to it, every
request whose answer was lost makes its container "unknown", and `verify`
compares it with what a restarted daemon serves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import IPAMD, Daemon, RawClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = sys.executable
# What clients may send per connection before reading (the daemon's max_in_flight is 64).
PIPELINE = 32
EXIT_CORRUPT = 65


def bare(address: str) -> str:
    """ "10.0.0.5/24" -> "10.0.0.5"."""
    return address.split("/", 1)[0]


def lease_ips(network_result: dict[str, Any]) -> frozenset[str]:
    """The bare addresses of one network's entry in an alloc or get result."""
    return frozenset(bare(ip["address"]) for ip in network_result["ips"])


@dataclass(frozen=True)
class Budget:
    """How long the randomised tests run (conftest.py's `budget` fixture fills it in)."""

    long: bool
    seed: int
    kill_rounds: int
    fuse_rounds: int
    corruption_flips: int
    fuzz_examples: int
    idle_connections: int


# -- config and daemon ----------------------------------------------------------------


def write_config(
    path: Path,
    *,
    networks: Sequence[dict[str, Any]] = (),
    limits: dict[str, float] | None = None,
    socket_mode: str | None = None,
    socket_group: str | int | None = None,
    allow_uids: Sequence[int] = (),
    allow_gids: Sequence[int] = (),
    log_level: str = "info",
) -> Path:
    """A TOML config for the daemon (systemd/ipamd.conf documents the keys)."""
    lines = [f'log_level = "{log_level}"']
    if socket_mode is not None:
        lines.append(f'socket_mode = "{socket_mode}"')
    if socket_group is not None:
        lines.append(f"socket_group = {json.dumps(socket_group)}")
    if allow_uids or allow_gids:
        lines += ["[auth]", f"allow_uids = {list(allow_uids)}", f"allow_gids = {list(allow_gids)}"]
    if limits:
        lines.append("[limits]")
        lines += [f"{key} = {value!r}" for key, value in limits.items()]
    for network in networks:
        lines += ["[[networks]]", f"name = {json.dumps(network['name'])}"]
        for subnet in network["subnets"]:
            lines.append("[[networks.subnets]]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in subnet.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class TestDaemon(Daemon):
    """`Daemon` plus a preexec_fn, and starts that are expected to fail."""

    __test__ = False  # not a test class, whatever its name

    preexec_fn: Callable[[], None] | None = None
    starts: int = 0

    def before_start(self) -> None:
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
        self.starts += 1

    def popen(self, env: dict[str, str], **streams: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(), env=env, preexec_fn=self.preexec_fn, **streams)

    def start_or_exit(self, timeout: float = 20.0) -> int | None:
        """Start; None once it is ready (READY=1), else its exit status (it refused to start)."""
        self.start(wait=False)
        return self.wait_ready_or_exit(timeout)

    def last_log_lines(self, n: int = 3) -> str:
        return "\n".join(self.log().strip().splitlines()[-n:])

    def ensure_dead(self) -> None:
        """Kill it if it still runs (a test's finally)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- offline checks -------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    status: int
    output: str

    def __str__(self) -> str:
        return f"ipamd check exit {self.status}: {self.output.strip()[-300:]}"


def ipamd_check(state_dir: Path) -> CheckResult:
    """`ipamd check --state-dir DIR` (the daemon must not be running on it)."""
    proc = subprocess.run(
        [*IPAMD, "check", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    return CheckResult(proc.returncode, proc.stdout + proc.stderr)


def ipamd_check_copy(state_dir: Path, scratch: Path) -> CheckResult:
    """`ipamd check` on a copy, leaving the crashed state itself for the daemon to recover.

    (Opening a LevelDB database replays and rewrites its log; the daemon's own
    recovery is what is under test.)
    """
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(state_dir, scratch)
    try:
        return ipamd_check(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- talking to the daemon ---------------------------------------------------------------


def call_many(
    client: RawClient, calls: Iterable[tuple[str, dict[str, Any] | None]]
) -> list[tuple[dict[str, Any] | None, Any]]:
    """Pipelined calls, PIPELINE at a time; (error, result) for each, in call order."""
    out: list[tuple[dict[str, Any] | None, Any]] = []
    pending = list(calls)
    for start in range(0, len(pending), PIPELINE):
        chunk = pending[start : start + PIPELINE]
        ids = [client.send(method, params) for method, params in chunk]
        answers: dict[int, tuple[dict[str, Any] | None, Any]] = {}
        while len(answers) < len(ids):
            frame = client.receive()
            assert frame[0] == 1, frame
            answers[frame[1]] = (frame[2], frame[3])
        out += [answers[msgid] for msgid in ids]
    return out


def all_leases(client: RawClient, network: str) -> list[dict[str, Any]]:
    """Every lease on `network`, through `lease.list`'s pages."""
    leases: list[dict[str, Any]] = []
    params: dict[str, Any] = {"network": network, "limit": 4000}
    while True:
        page = client.call("lease.list", params)
        leases += page["leases"]
        if "next" not in page:
            return leases
        params = {**params, "after": page["next"]}


# -- the model of acknowledged results ----------------------------------------------------


@dataclass
class LeaseModel:
    """What clients were told, per container: held (with its addresses), free, or unknown.

    `network` has one IPv4 and one IPv6 subnet; `allocatable` is the IPv4
    subnet's count (the smaller), which exhaustion must reach exactly.
    """

    network: str
    allocatable: int
    held: dict[str, frozenset[str]] = field(default_factory=dict)
    free: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)

    def apply_all(self, journals: Iterable[Iterable[Sequence[Any]]]) -> Counter[str]:
        """Apply every client's journal of a round; the counts of outcomes, "lost" summed."""
        counts: Counter[str] = Counter()
        for journal in journals:
            counts.update(self.apply(journal))
        counts["lost"] = counts["alloc lost"] + counts["release lost"]
        self.totals["lost"] += counts["lost"]
        return counts

    def apply(self, journal: Iterable[Sequence[Any]]) -> Counter[str]:
        """Apply one client's journal: [container, op, outcome, payload] in order."""
        counts: Counter[str] = Counter()
        for cid, op, outcome, payload in journal:
            counts[f"{op} {outcome}"] += 1
            if outcome == "lost":
                self._forget(cid)
                self.unknown.add(cid)
            elif outcome == "error":
                if payload != "range_exhausted" or op != "alloc":
                    self.violations.append(f"{op} {cid} failed unexpectedly: {payload}")
            elif op == "alloc":
                ips = frozenset(payload)
                if cid in self.held and self.held[cid] != ips:
                    self.violations.append(
                        f"alloc {cid} again returned {sorted(ips)}, but it holds"
                        f" {sorted(self.held[cid])} (not idempotent)"
                    )
                self._forget(cid)
                self.held[cid] = ips
            else:  # release ok
                released = frozenset(payload)
                expected = None if cid in self.unknown else self.held.get(cid, frozenset())
                if expected is not None and released != expected:
                    self.violations.append(
                        f"release {cid} released {sorted(released)}, expected {sorted(expected)}"
                    )
                self._forget(cid)
                self.free.add(cid)
        self.totals.update(counts)
        return counts

    def _forget(self, cid: str) -> None:
        self.held.pop(cid, None)
        self.free.discard(cid)
        self.unknown.discard(cid)

    def verify(self, client: RawClient, probe_prefix: str) -> dict[str, int]:
        """Compare with a (restarted) daemon, resolve unknowns, then prove no address has two
        owners by allocating until the range is exhausted. Appends to `violations`."""
        before = len(self.violations)
        served = {lease["container_id"]: lease for lease in all_leases(client, self.network)}
        served_ips = {
            cid: frozenset(bare(ip["address"]) for ip in lease["ips"])
            for cid, lease in served.items()
        }
        for cid, ips in sorted(self.held.items()):
            if cid not in served_ips:
                self.violations.append(f"acknowledged lease of {cid} ({sorted(ips)}) is gone")
            elif served_ips[cid] != ips:
                self.violations.append(
                    f"lease of {cid} holds {sorted(served_ips[cid])}, acknowledged {sorted(ips)}"
                )
        for cid in sorted(self.free):
            if cid in served_ips:
                self.violations.append(
                    f"released lease of {cid} is back: {sorted(served_ips[cid])}"
                )
        known = set(self.held) | self.free | self.unknown
        for cid in sorted(set(served_ips) - known):
            self.violations.append(f"a lease nobody asked for: {cid} {sorted(served_ips[cid])}")
        # `get`, the per-container read path, must agree with the listing.
        names = sorted(known)
        for cid, (error, result) in zip(
            names, call_many(client, [("get", {"container_id": cid}) for cid in names]), strict=True
        ):
            got = None if error else lease_ips(result["networks"][self.network])
            if error and error["name"] != "lease_not_found":
                self.violations.append(f"get {cid} failed: {error}")
            elif got != served_ips.get(cid):
                self.violations.append(f"get {cid} says {got}, lease.list {served_ips.get(cid)}")
        resolved = Counter()
        for cid in sorted(self.unknown):
            if cid in served_ips:
                self.held[cid] = served_ips[cid]
                resolved["committed"] += 1
            else:
                self.free.add(cid)
                resolved["not committed"] += 1
        self.unknown.clear()
        owners: dict[str, str] = {}
        for cid, ips in served_ips.items():
            for ip in ips:
                if ip in owners:
                    self.violations.append(f"{ip} has two owners: {owners[ip]} and {cid}")
                owners[ip] = cid
        probed = self._exhaust(client, probe_prefix, owners)
        return {
            "held": len(self.held),
            "committed": resolved["committed"],
            "not committed": resolved["not committed"],
            "probed": probed,
            "violations": len(self.violations) - before,
        }

    def _exhaust(self, client: RawClient, prefix: str, owners: dict[str, str]) -> int:
        """Allocate until range_exhausted; every new address must be unowned. Then release."""
        probes: list[str] = []
        exhausted = False
        while not exhausted and len(probes) <= self.allocatable:
            batch = [f"{prefix}-{len(probes) + i}" for i in range(PIPELINE)]
            calls = [("alloc", {"container_id": c, "networks": {self.network: {}}}) for c in batch]
            for cid, (error, result) in zip(batch, call_many(client, calls), strict=True):
                if error is not None:
                    if error["name"] != "range_exhausted":
                        self.violations.append(f"probe alloc {cid} failed: {error}")
                    exhausted = True
                    continue
                probes.append(cid)
                for ip in lease_ips(result["networks"][self.network]):
                    if ip in owners:
                        self.violations.append(
                            f"probe {cid} was given {ip}, which {owners[ip]} holds"
                        )
                    owners[ip] = cid
        if len(self.held) + len(probes) != self.allocatable:
            self.violations.append(
                f"{len(self.held)} held + {len(probes)} probed != {self.allocatable} allocatable"
            )
        releases = call_many(client, [("release", {"container_id": c}) for c in probes])
        for cid, (error, _result) in zip(probes, releases, strict=True):
            if error is not None:
                self.violations.append(f"release of probe {cid} failed: {error}")
        used = client.call("network.get", {"name": self.network})["subnets"][0]["used"]
        if used != len(self.held):
            self.violations.append(f"network.get says {used} used, the model {len(self.held)}")
        return len(probes)


# -- load clients (load_client.py) ------------------------------------------------------------


class LoadClients:
    """Client processes that allocate and release through the daemon, one journal per round."""

    def __init__(
        self, socket_path: Path, network: str, seed: int, processes: int = 4, containers: int = 30
    ) -> None:
        self.procs = [
            subprocess.Popen(
                [
                    PYTHON,
                    str(HERE / "load_client.py"),
                    "--socket",
                    str(socket_path),
                    "--network",
                    network,
                    "--prefix",
                    f"w{n}",
                    "--containers",
                    str(containers),
                    "--seed",
                    str(seed * 1000 + n),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in range(processes)
        ]

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def collect(self) -> list[list[Any]]:
        """Each client's journal of the round (they end it when the daemon dies)."""
        journals = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"load client {proc.pid} died (exit {proc.poll()})")
            journals.append(json.loads(line)["journal"])
        return journals

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    assert proc.stdin is not None
                    proc.stdin.close()
                    proc.wait(5)
                except (OSError, subprocess.TimeoutExpired):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(5)
