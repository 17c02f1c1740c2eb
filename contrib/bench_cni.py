"""Wall time of one CNI ADD and one DEL: ipamd-cni against Debian's host-local, same run.

    python contrib/bench_cni.py [--rounds N] [--host-local PATH] [--json]

Starts its own `ipamd` on a temp state dir and gives host-local a temp dataDir,
then for each round execs, as a runtime does (environment + config on stdin),
ADD and then DEL of a fresh container with each plugin in turn, so both see
the same machine noise. Prints the median and mean of each, and the ratio
ipamd-cni / host-local. Both plugins are whole processes here: that is the
cost a runtime pays per container start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOST_LOCAL = Path("/usr/lib/cni/host-local")
SUBNET = "10.250.200.0/24"  # never configured on any interface: host-local only records it
START_TIMEOUT_S = 20.0


def plugin_command() -> list[str]:
    console_script = Path(sys.executable).parent / "ipamd-cni"
    if console_script.exists():
        return [str(console_script)]
    return [sys.executable, "-m", "ipamd_cni.plugin"]


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


def timed(command: list[str], cni_command: str, config: dict[str, Any], container: str) -> float:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": cni_command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": f"/var/run/netns/{container}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
    }
    stdin = json.dumps(config).encode()
    start = time.perf_counter()
    done = subprocess.run(command, input=stdin, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} {cni_command} failed: {done.stdout.decode()}")
    return elapsed


def bench(rounds: int, host_local: Path) -> dict[str, dict[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="bench-cni-") as tmp:
        root = Path(tmp)
        daemon = start_daemon(root)
        try:
            host_local_ipam = {"type": "host-local", "dataDir": str(root / "host-local")}
            ipamd_ipam = {"type": "ipamd", "socket": str(root / "ipamd.sock")}
            plugins = {
                "host-local": ([str(host_local)], host_local_ipam),
                "ipamd-cni": (plugin_command(), ipamd_ipam),
            }
            times: dict[str, dict[str, list[float]]] = {
                name: {"ADD": [], "DEL": []} for name in plugins
            }
            for i in range(rounds):
                for name, (command, ipam) in plugins.items():
                    config = {
                        "cniVersion": "1.0.0",
                        "name": "bench",
                        "type": "bridge",
                        "ipam": {**ipam, "ranges": [[{"subnet": SUBNET}]]},
                    }
                    container = f"bench-{i}"
                    times[name]["ADD"].append(timed(command, "ADD", config, container))
                    times[name]["DEL"].append(timed(command, "DEL", config, container))
        finally:
            daemon.terminate()
            daemon.wait(timeout=20)
    return times


def summary(times: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Milliseconds: median and mean per plugin and command."""
    out: dict[str, dict[str, float]] = {}
    for name, by_command in times.items():
        for command, samples in by_command.items():
            out.setdefault(name, {})[f"{command} median"] = statistics.median(samples) * 1e3
            out[name][f"{command} mean"] = statistics.fmean(samples) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--host-local", type=Path, default=HOST_LOCAL)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    figures = summary(bench(args.rounds, args.host_local))
    if args.json:
        print(json.dumps(figures))
        return
    columns = ["ADD median", "ADD mean", "DEL median", "DEL mean"]
    print(f"{args.rounds} rounds, wall time per exec in ms")
    print(f"{'':12}" + "".join(f"{c:>12}" for c in columns))
    for name, row in figures.items():
        print(f"{name:12}" + "".join(f"{row[c]:12.1f}" for c in columns))
    ratio = {c: figures["ipamd-cni"][c] / figures["host-local"][c] for c in columns}
    print(f"{'ratio':12}" + "".join(f"{ratio[c]:11.1f}x" for c in columns))


if __name__ == "__main__":
    main()
