"""ipamd's CNI plugin against Debian's host-local, exec'd as a runtime does, in one run.

    python contrib/bench_cni.py [--ops N] [--reps N] [--leases N ...] [--workers N] [--json]

Starts its own `ipamd` on a temp state dir (on $IPAMD_BENCH_DIR, default
/var/tmp: a disk, so that fsync costs what it costs), builds the plugin with
contrib/cni/build.sh unless $IPAMD_CNI_PLUGIN names one, and gives host-local
a temp dataDir. Then, at each count of existing leases (default 0 and 5,000),
N ADDs then N DELs of fresh containers with each plugin in turn
(benchmarks/cni_exec.py says how). Prints execs per second, p50/p99 per exec,
ADD+DEL pairs per second and their ratio ipamd / host-local (the targets:
>= 1.0 on an empty network, >= 3 at 5,000 leases), and where the plugin's
exec time goes. With --json the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cni_exec  # shared with bench_daemon.py, found through the line above

START_TIMEOUT_S = 20.0
TARGETS = {0: 1.0, 5000: 3.0}  # exec ratio ipamd / host-local, ADD+DEL pairs at 1 worker


def start_daemon(root: Path) -> subprocess.Popen[bytes]:
    from ipamd.client import Client, ConnectionFailed

    socket = root / "ipamd.sock"
    command = [sys.executable, "-m", "ipamd.daemon", "--socket", str(socket)]
    log = open(root / "ipamd.log", "wb")  # noqa: SIM115 - the daemon owns it until exit
    proc = subprocess.Popen([*command, "--state-dir", str(root / "state")], stderr=log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with Client(socket, timeout=2) as client:
                client.ping()
            return proc
        except ConnectionFailed:
            if proc.poll() is not None:
                break
            time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"ipamd did not start: {(root / 'ipamd.log').read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=100, help="ADDs (then DELs) per phase")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--leases", type=int, nargs="+", default=[0, 5000])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    if not cni_exec.HOST_LOCAL.exists():
        raise SystemExit(f"{cni_exec.HOST_LOCAL} is missing: install containernetworking-plugins")
    base = os.environ.get("IPAMD_BENCH_DIR", "/var/tmp")
    with tempfile.TemporaryDirectory(prefix="bench-cni-", dir=base) as tmp:
        root = Path(tmp)
        binary = cni_exec.plugin_binary(root)
        daemon = start_daemon(root)
        try:
            plugins = [
                cni_exec.host_local(root),
                cni_exec.ipamd_plugin(binary, root / "ipamd.sock", root / "timing"),
            ]
            log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
            comparison = cni_exec.compare(
                plugins, tuple(args.leases), args.ops, args.reps, args.workers, log
            )
        finally:
            daemon.terminate()
            daemon.wait(timeout=20)
    cni_exec.print_comparison(comparison, TARGETS if args.workers == 1 else {})
    if args.json:
        print(json.dumps(cni_exec.summary(comparison)))


if __name__ == "__main__":
    main()
