"""Two checkouts of ipamd side by side: durable allocs/s at 64 clients, interleaved.

For a change that must keep the speed (a restructuring, a refactor of the hot
path): each checkout's daemon runs from its own source tree, under this venv's
interpreter and packages, with its own state dir on the same disk; then, in
turns, each takes the same phase of `--ops` allocs from 64 closed-loop clients
(bench_daemon.py's client processes and request frames), then releases them.
The order alternates every repetition (old-new, new-old, ...) so the machine's
noise, which comes and goes for seconds, hits both alike.

Figures: per checkout the median alloc and release rates, the median p50 and
p99 of allocs and the daemon's CPU time per alloc (user + system, all threads);
`new_vs_old_64` is the median of the per-repetition ratios (new / old) of
alloc rates, and `p99_new_vs_old_64` the same for p99 latency; each with the
quartiles of those ratios (a single repetition's p99 moves by a third here).

Usage:  python benchmarks/bench_checkouts.py OLD NEW [--reps N] [--ops N] [--quick] [--json]
OLD and NEW are directories holding an `ipamd/` package (git worktrees: e.g.
`git worktree add /tmp/ipamd-old <commit>`). With --json the last line of
stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_daemon
from bench_daemon import Phase, Rpc, Server, log, run_load, start_ipamd, temp_root

CLIENTS = 64
NETWORK = {"name": "bench4", "subnets": [{"subnet": "10.200.0.0/16"}]}


def checkout_env(source: Path) -> dict[str, str]:
    """This interpreter's environment with `source` first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    return env


def check_source(source: Path) -> None:
    """Refuse a directory without ipamd, or one this interpreter would not import from."""
    if not (source / "ipamd" / "__init__.py").is_file():
        raise SystemExit(f"{source}: not an ipamd checkout (no ipamd/__init__.py)")
    found = subprocess.run(
        [sys.executable, "-c", "import ipamd; print(ipamd.__file__)"],
        env=checkout_env(source),
        cwd="/",  # as the daemons run: a checkout in the current directory would come first
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(source.resolve()):
        raise SystemExit(f"{source}: this interpreter imports ipamd from {found} instead")


def start(root: Path, name: str, source: Path) -> Server:
    base = root / name
    base.mkdir()
    server = start_ipamd(
        base, command=[sys.executable, "-m", "ipamd.daemon"], env=checkout_env(source)
    )
    server.name = name
    return server


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    return statistics.median(new / old for old, new in pairs)


def quartiles(pairs: list[tuple[float, float]]) -> list[float]:
    """The first and third quartiles of the per-repetition ratios: how far one
    repetition's ratio moves on this machine, against which to read the median."""
    ratios = [new / old for old, new in pairs]
    if len(ratios) < 2:
        return [round(ratios[0], 4)] * 2
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return [round(q1, 4), round(q3, 4)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="the reference checkout")
    parser.add_argument("new", type=Path, help="the checkout under test")
    parser.add_argument("--reps", type=int, default=7, help="repetitions (default 7)")
    parser.add_argument("--ops", type=int, default=24000, help="allocs per phase (default 24000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 reps of 1500")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.ops = 2, 1500
    sources = {"old": args.old.resolve(), "new": args.new.resolve()}
    for source in sources.values():
        check_source(source)
    procs = bench_daemon.CLIENT_PROCESSES[CLIENTS]
    params: dict[str, Any] = {"networks": {NETWORK["name"]: {}}}
    phases: dict[str, dict[str, list[Phase]]] = {
        name: {"alloc": [], "release": []} for name in sources
    }
    started = time.monotonic()
    log(
        f"bench_checkouts: {platform.python_implementation()} {platform.python_version()},"
        f" {os.cpu_count()} CPU(s), {args.reps} rep(s) of {args.ops} allocs at {CLIENTS} clients"
    )
    for name, source in sources.items():
        log(f"  {name}: {source}")
    with temp_root(keep=False) as root:
        os.chdir(root)  # `python -m` puts the current directory first on the import path
        servers = {name: start(root, name, source) for name, source in sources.items()}
        controls = {name: Rpc(server.socket) for name, server in servers.items()}
        try:
            for control in controls.values():
                control.call("network.create", NETWORK)
            for rep in range(args.reps):
                order = ("old", "new") if rep % 2 == 0 else ("new", "old")
                for name in order:
                    for method in ("alloc", "release"):
                        phase = run_load(
                            servers[name],
                            method,
                            params,
                            f"r{rep}-",
                            args.ops,
                            CLIENTS,
                            procs,
                            controls[name],
                        )
                        if phase.errors:
                            raise SystemExit(f"{name} {method}: {phase.errors} errors")
                        phases[name][method].append(phase)
                        log(
                            f"  rep {rep + 1} {name} {method:7}: {phase.rate:8.0f}/s"
                            f" p99={phase.lat_ms(99):6.2f}ms batch={phase.mean_batch or 0:.1f}"
                        )
        finally:
            for control in controls.values():
                control.close()
            for server in servers.values():
                server.stop()
    summary = summarise(phases)
    summary["quick"] = args.quick
    summary["reps"] = args.reps
    summary["ops"] = args.ops
    summary["seconds"] = round(time.monotonic() - started, 1)
    print_summary(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


def summarise(phases: dict[str, dict[str, list[Phase]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, by_method in phases.items():
        out[f"{name}_alloc_per_s"] = round(statistics.median(p.rate for p in by_method["alloc"]))
        out[f"{name}_release_per_s"] = round(
            statistics.median(p.rate for p in by_method["release"])
        )
        out[f"{name}_alloc_p50_ms"] = round(
            statistics.median(p.lat_ms(50) for p in by_method["alloc"]), 3
        )
        out[f"{name}_alloc_p99_ms"] = round(
            statistics.median(p.lat_ms(99) for p in by_method["alloc"]), 3
        )
        out[f"{name}_alloc_cpu_us"] = round(
            statistics.median(p.server_cpu_s / p.ops * 1e6 for p in by_method["alloc"]), 2
        )
    allocs = list(zip(phases["old"]["alloc"], phases["new"]["alloc"], strict=True))
    rates = [(o.rate, n.rate) for o, n in allocs]
    p99s = [(o.lat_ms(99), n.lat_ms(99)) for o, n in allocs]
    out["new_vs_old_64"] = round(median_ratio(rates), 4)
    out["new_vs_old_64_quartiles"] = quartiles(rates)
    out["p99_new_vs_old_64"] = round(median_ratio(p99s), 4)
    out["p99_new_vs_old_64_quartiles"] = quartiles(p99s)
    releases = list(zip(phases["old"]["release"], phases["new"]["release"], strict=True))
    out["release_new_vs_old_64"] = round(median_ratio([(o.rate, n.rate) for o, n in releases]), 4)
    return out


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"\n{'':6} {'allocs/s':>10} {'releases/s':>11} {'alloc p50 ms':>13} {'alloc p99 ms':>13}"
        f" {'daemon CPU µs/alloc':>20}"
    )
    for name in ("old", "new"):
        print(
            f"{name:6} {summary[f'{name}_alloc_per_s']:>10} {summary[f'{name}_release_per_s']:>11}"
            f" {summary[f'{name}_alloc_p50_ms']:>13} {summary[f'{name}_alloc_p99_ms']:>13}"
            f" {summary[f'{name}_alloc_cpu_us']:>20}"
        )
    print(
        f"\nnew/old at {CLIENTS} clients (median of per-repetition ratios): allocs"
        f" {summary['new_vs_old_64']:.3f}, releases {summary['release_new_vs_old_64']:.3f},"
        f" alloc p99 {summary['p99_new_vs_old_64']:.3f} (target: allocs >= 0.97, p99 <= 1)"
    )
    print(
        "quartiles of the per-repetition ratios: allocs"
        f" {summary['new_vs_old_64_quartiles']}, p99 {summary['p99_new_vs_old_64_quartiles']}"
    )


if __name__ == "__main__":
    sys.exit(main())
