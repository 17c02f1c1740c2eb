"""How long ipamd takes to be READY on a big database, and how much memory it holds then.

The state is built by this benchmark straight through LevelDB (plyvel), with
ipamd's own key and value encoders (ipamd.core.keys): the schema key, one
network record, every lease with its reverse entry, and the subnet's cursor,
exactly the layout the daemon writes. Leases fill an IPv4 /11 with one hole in
every ten addresses (a host after some churn), so the free-range index the
daemon rebuilds has ~N/9 runs rather than one.

Each measurement starts the real `ipamd` with NOTIFY_SOCKET pointing at a
datagram socket this program bound, and times Popen -> the READY=1 datagram
(sd_notify, DESIGN.md section 6); then it reads VmRSS (and the peak, VmHWM)
from /proc/PID/status, checks with `status` that every lease is there, and
stops the daemon with SIGTERM. Median of --reps starts (the first start after
the build replays LevelDB's last log; later ones do not).

Usage:  python benchmarks/bench_startup.py [--quick] [--json] [--reps N]
--quick measures 100,000 leases only and still emits ready_1m_s / rss_1m_mb,
holding the 100k figures, with "quick": true. Targets at 1,000,000 leases:
READY <= 3 s, RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import plyvel

from ipamd.core import keys
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import Network
from ipamd.storage.store import DB_DIRNAME

NETWORK_NAME = "big"
SUBNET = "10.32.0.0/11"  # 2,097,150 host addresses: room for 1M leases with holes
HOLE_EVERY = 10  # every 10th address stays free
BATCH = 20_000
CREATED = 1_700_000_000
READY_TIMEOUT_S = 120.0
TARGET_READY_S = 3.0
TARGET_RSS_MB = 300.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ipamd_command() -> list[str]:
    script = Path(sys.executable).with_name("ipamd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ipamd.daemon"]


def build_state(state_dir: Path, leases: int) -> float:
    """A database holding `leases` leases on one network; seconds it took."""
    started = time.monotonic()
    network = Network.from_wire({"name": NETWORK_NAME, "subnets": [{"subnet": SUBNET}]})
    subnet = network.subnets[0]
    state_dir.mkdir(parents=True, mode=0o700)
    db = plyvel.DB(str(state_dir / DB_DIRNAME), create_if_missing=True, error_if_exists=True)
    try:
        db.put(keys.SCHEMA_KEY, keys.pack(keys.SCHEMA_VERSION), sync=True)
        db.put(keys.network_key(network.name), keys.network_value(network), sync=True)
        low, _ = subnet.host_bounds
        offset = low
        address = subnet.address_at(offset)
        done = 0
        while done < leases:
            with db.write_batch() as batch:
                for _ in range(min(BATCH, leases - done)):
                    if offset % HOLE_EVERY == 0:
                        offset += 1
                    address = subnet.address_at(offset)
                    key = LeaseKey(network.name, f"c{done:010d}", "")
                    lease = Lease(key, (address,), CREATED + done)
                    batch.put(keys.lease_key(key), keys.lease_value(lease))
                    batch.put(keys.reverse_key(network.name, address), keys.reverse_value(key))
                    offset += 1
                    done += 1
        db.put(keys.cursor_key(network.name, 0), keys.packed_address(address), sync=True)
    finally:
        db.close()
    return time.monotonic() - started


def read_status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def rpc_status(path: Path) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(msgpack.packb([0, 1, "status", []], use_bin_type=True))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            for response in unpacker:
                if response[2] is not None:
                    raise RuntimeError(f"status: {response[2]}")
                return response[3]  # type: ignore[no-any-return]
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("ipamd closed the connection")
            unpacker.feed(data)


def measure_start(root: Path, state_dir: Path, leases: int) -> dict[str, float]:
    """Start ipamd once: seconds to READY=1, RSS then (MB); checks the lease count."""
    notify_path = root / "notify.sock"
    sock_path = root / "ipamd.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log_path = root / "ipamd.log"
    try:
        with open(log_path, "ab") as out:
            env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
            started = time.monotonic()
            proc = subprocess.Popen(
                [*ipamd_command(), "--socket", str(sock_path), "--state-dir", str(state_dir)],
                stdout=out,
                stderr=out,
                env=env,
            )
        try:
            ready_s = wait_ready(notify, proc, started, log_path)
            memory = read_status_kb(proc.pid)
            status = rpc_status(sock_path)
            if status["leases"] != leases:
                raise RuntimeError(f"ipamd reports {status['leases']} leases, built {leases}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        notify.close()
    return {"ready_s": ready_s, "rss_mb": memory["VmRSS"] / 1024, "hwm_mb": memory["VmHWM"] / 1024}


def wait_ready(
    notify: socket.socket, proc: subprocess.Popen[bytes], started: float, log_path: Path
) -> float:
    deadline = started + READY_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no READY=1 within {READY_TIMEOUT_S}s")
        notify.settimeout(min(remaining, 0.5))
        try:
            message = notify.recv(4096).decode(errors="replace")
        except TimeoutError:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"ipamd exited {proc.returncode} before READY: {tail}") from None
            continue
        if "READY=1" in message.splitlines():
            return time.monotonic() - started


def bench(root: Path, leases: int, reps: int) -> dict[str, Any]:
    state_dir = root / f"state-{leases}"
    build_s = build_state(state_dir, leases)
    size_mb = sum(p.stat().st_size for p in (state_dir / DB_DIRNAME).iterdir()) / 2**20
    log(f"built {leases:,} leases in {build_s:.1f} s ({size_mb:.0f} MB on disk)")
    runs = []
    for rep in range(reps):
        run = measure_start(root, state_dir, leases)
        runs.append(run)
        log(
            f"  start {rep + 1}: READY after {run['ready_s']:.2f} s,"
            f" RSS {run['rss_mb']:.0f} MB (peak {run['hwm_mb']:.0f} MB)"
        )
    shutil.rmtree(state_dir)
    return {
        "leases": leases,
        "build_s": build_s,
        "db_mb": size_mb,
        "runs": runs,
        "ready_s": statistics.median(r["ready_s"] for r in runs),
        "rss_mb": statistics.median(r["rss_mb"] for r in runs),
        "hwm_mb": statistics.median(r["hwm_mb"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 leases only, one start")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--reps", type=int, help="starts per database (default 3, quick 1)")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    sizes = (100_000,) if args.quick else (100_000, 1_000_000)
    base = Path(os.environ.get("IPAMD_BENCH_DIR", "/var/tmp"))
    root = Path(tempfile.mkdtemp(prefix="ipamd-startup-", dir=base))
    started = time.monotonic()
    try:
        results = {leases: bench(root, leases, reps) for leases in sizes}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"ipamd start-up: median of {reps} start(s); network {SUBNET}, 1 hole per {HOLE_EVERY}")
    header = f"{'leases':>9} {'db MB':>6} {'READY s':>8} {'RSS MB':>7} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for r in results.values():
        print(
            f"{r['leases']:>9,} {r['db_mb']:>6.0f} {r['ready_s']:>8.2f} {r['rss_mb']:>7.0f}"
            f" {r['hwm_mb']:>8.0f}"
        )
    big = results[max(results)]
    ready_ok = big["ready_s"] <= TARGET_READY_S
    rss_ok = big["rss_mb"] <= TARGET_RSS_MB
    scope = "" if big["leases"] == 1_000_000 else f" (quick: measured at {big['leases']:,})"
    print(f"targets at 1,000,000 leases{scope}:")
    verdict = "met" if ready_ok else "MISSED"
    print(f"  READY <= {TARGET_READY_S:.0f} s: {big['ready_s']:.2f} s {verdict}")
    print(
        f"  RSS <= {TARGET_RSS_MB:.0f} MB: {big['rss_mb']:.0f} MB {'met' if rss_ok else 'MISSED'}"
    )
    print(f"(total {time.monotonic() - started:.0f} s)")
    if args.json:
        small = results[100_000]
        summary = {
            "ready_1m_s": round(big["ready_s"], 4),
            "rss_1m_mb": round(big["rss_mb"], 1),
            "peak_rss_1m_mb": round(big["hwm_mb"], 1),
            "ready_100k_s": round(small["ready_s"], 4),
            "rss_100k_mb": round(small["rss_mb"], 1),
            "leases_measured": big["leases"],
            "quick": args.quick,
            "reps": reps,
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
