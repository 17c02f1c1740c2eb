"""Cluster mode against local mode, on one host, in the same run.

Figures (medians over --reps repetitions, local and cluster phases in turns):
- cluster_vs_local_64: durable allocs/s at 64 closed-loop clients on a cluster
  network divided by the same on a local network of the same daemon, in the
  same repetition (target >= 0.9: allocation never leaves the host; only
  claims do, ahead of need). Each repetition runs its two phases back to back,
  in alternating order (local first, then cluster first, ...), and the figure
  is the median of the repetitions' ratios: on a shared machine whose load
  drifts, a ratio of two medians taken minutes apart swings far more;
- local_/cluster_server_us_per_alloc: the daemon's CPU time per alloc in each
  mode (its etcd thread included; medians): steadier than rates under load;
- first_alloc_fresh_host_ms: a new host (empty state dir) whose first alloc
  names a cluster network defined elsewhere: the time to its answer, which
  includes reading the definition and claiming a block;
- claims_per_s: static allocations each in a new block, one client: every one
  is a create-if-absent transaction in etcd and a synced write here;
- etcd_keys_per_10k_leases: etcd keys written while 10,000 leases were
  allocated, scaled from the leases allocated in the cluster phases (target:
  about one per block, never one per lease).

It starts its own single-member etcd (Debian's /usr/bin/etcd) on loopback
ports with its data under $IPAMD_BENCH_DIR (default /var/tmp: a disk, so
etcd's fsyncs cost what they cost), and ipamd processes as bench_daemon.py does.

Usage:  python benchmarks/bench_cluster.py [--quick] [--json] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
for path in (str(ROOT), str(BENCHMARKS)):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_daemon import Rpc, Series, log, median, run_load, start_ipamd, temp_root  # noqa: E402

from ipamd.cluster.etcd import EtcdSession  # noqa: E402

CLIENTS = 64
LOAD_PROCS = 2  # client processes sharing the 64 connections (2 cores)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_etcd(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    notify = root / "etcd-notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify))
    receiver.settimeout(30)
    with open(root / "etcd.log", "wb") as out:
        proc = subprocess.Popen(
            [
                "/usr/bin/etcd",
                "--name=bench",
                f"--data-dir={root / 'etcd-data'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=bench={peer_url}",
            ],
            stdout=out,
            stderr=out,
            env={**os.environ, "NOTIFY_SOCKET": str(notify)},
        )
    try:
        if b"READY=1" not in receiver.recv(4096):  # etcd speaks sd_notify
            raise RuntimeError("etcd did not get ready")
    finally:
        receiver.close()
    return proc, url


def write_config(path: Path, endpoint: str, host: str) -> Path:
    path.write_text(
        f'[cluster]\nendpoints = ["{endpoint}"]\nhost = "{host}"\nprefix = "/bench"\n'
        # Long enough that no summary is published during a phase: the key
        # count then shows claims alone, the steady-state cost.
        'sync_interval = "60s"\n'
    )
    return path


def bench(root: Path, quick: bool, reps: int) -> dict[str, Any]:
    etcd, endpoint = start_etcd(root)
    session = EtcdSession((endpoint,))
    servers = []
    try:
        (root / "h1").mkdir()
        server = start_ipamd(root / "h1", write_config(root / "h1.toml", endpoint, "h1"))
        servers.append(server)
        rpc = Rpc(server.socket)
        rpc.call("network.create", {"name": "lo", "subnets": [{"subnet": "10.0.0.0/10"}]})
        rpc.call(
            "network.create",
            {"name": "cl", "scope": "cluster", "subnets": [{"subnet": "10.64.0.0/10"}]},
        )
        count = 3000 if quick else 20_000
        local, cluster = Series(), Series()
        writes = leases = 0
        ratios = []
        for rep in range(reps):
            order = ("local", "cluster") if rep % 2 == 0 else ("cluster", "local")
            log(
                f"rep {rep + 1}/{reps}: {order[0]}, then {order[1]},"
                f" {count} allocs at {CLIENTS} clients"
            )
            for phase in order:
                if phase == "local":
                    local.phases.append(
                        run_load(
                            server,
                            "alloc",
                            {"networks": {"lo": {}}},
                            f"l{rep}-",
                            count,
                            CLIENTS,
                            LOAD_PROCS,
                        )
                    )
                    continue
                before = session.revision()
                keys_before = len(session.get_prefix("/bench/"))
                cluster.phases.append(
                    run_load(
                        server,
                        "alloc",
                        {"networks": {"cl": {}}},
                        f"c{rep}-",
                        count,
                        CLIENTS,
                        LOAD_PROCS,
                    )
                )
                # Keys written during the phase: each block key once, plus any
                # summary (none at this sync_interval); revisions would count a
                # transaction claiming several blocks as one.
                after = session.get_prefix("/bench/")
                writes += sum(1 for kv in after if kv.mod_revision > before)
                assert len(after) >= keys_before
                leases += cluster.phases[-1].ops
            ratio = cluster.phases[-1].rate / local.phases[-1].rate
            ratios.append(ratio)
            log(
                f"  local {local.phases[-1].rate:,.0f}/s, cluster {cluster.phases[-1].rate:,.0f}/s:"
                f" {ratio:.3f}"
            )
        local_rate, cluster_rate = local.rate or 0.0, cluster.rate or 0.0
        log(f"  medians: local {local_rate:,.0f}/s, cluster {cluster_rate:,.0f}/s")

        # Claims: statics each in a block of their own, from one client.
        rpc.call(
            "network.create",
            {
                "name": "claims",
                "scope": "cluster",
                "subnets": [{"subnet": "10.128.0.0/12", "block_prefix": 28}],
            },
        )
        claims = 50 if quick else 300
        started = time.monotonic()
        for n in range(claims):
            address = f"10.{128 + (n * 16) // 65536}.{(n * 16) // 256 % 256}.{(n * 16) % 256 + 1}"
            rpc.call(
                "alloc",
                {"container_id": f"claim{n}", "networks": {"claims": {"static_ips": [address]}}},
            )
        claims_per_s = claims / (time.monotonic() - started)
        rpc.close()

        # Fresh hosts: the first alloc names a network defined by h1.
        first_ms = []
        for n in range(1 if quick else 3):
            name = f"fresh{n}"
            (root / name).mkdir()
            fresh = start_ipamd(root / name, write_config(root / f"{name}.toml", endpoint, name))
            servers.append(fresh)
            client = Rpc(fresh.socket)
            started = time.monotonic()
            client.call("alloc", {"container_id": "first", "networks": {"cl": {}}})
            first_ms.append((time.monotonic() - started) * 1000)
            client.close()
            fresh.stop()
        return {
            "quick": quick,
            "reps": reps,
            "clients": CLIENTS,
            "local_allocs_per_s_64": round(local_rate, 1),
            "cluster_allocs_per_s_64": round(cluster_rate, 1),
            "cluster_vs_local_64": round(median(ratios), 3),
            "cluster_vs_local_64_each": [round(r, 3) for r in ratios],
            "local_server_us_per_alloc": round(local.server_us_per_op or 0.0, 1),
            "cluster_server_us_per_alloc": round(cluster.server_us_per_op or 0.0, 1),
            "first_alloc_fresh_host_ms": round(median(first_ms), 2),
            "claims_per_s": round(claims_per_s, 1),
            "etcd_keys_per_10k_leases": round(writes / leases * 10_000, 1) if leases else None,
            # Measured, not assumed: leases allocated per block key written.
            "leases_per_block": round(leases / writes, 1) if writes else None,
            "errors": local.errors + cluster.errors,
        }
    finally:
        for server in servers:
            server.stop()
        etcd.kill()
        etcd.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 1)")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 5)
    with temp_root(keep=False) as root:
        figures = bench(root, args.quick, reps)
    for key, value in figures.items():
        print(f"{key:28} {value}")
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
