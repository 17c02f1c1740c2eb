"""A load client for the crash tests: allocates and releases, journals every answer.

    python load_client.py --socket S --network N --prefix w0 --containers 30 --seed 7

It owns containers PREFIX-c0 .. PREFIX-c{N-1} (no other client touches them,
so its journal is the whole history of each). On each "go" line from stdin it
connects (retrying while the daemon starts), keeps up to IN_FLIGHT requests in
flight on distinct containers, alloc or release at random, until the daemon's
side of the connection dies; then it prints one JSON line,
{"journal": [[container, op, outcome, payload], ...]}, where outcome is "ok"
(payload: the addresses allocated or released), "error" (payload: the error
name) or "lost" (sent, never answered: the daemon died in between). EOF on
stdin ends it. Only msgpack and the standard library: it runs as its own process.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from typing import Any

import msgpack

IN_FLIGHT = 4
CONNECT_TIMEOUT_S = 20.0
# A round ends when the test kills the daemon; this only bounds a broken test.
ROUND_LIMIT_S = 60.0


def connect(path: str) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def addresses(op: str, result: dict[str, Any]) -> list[str]:
    if op == "alloc":
        return sorted(
            ip["address"].split("/")[0] for net in result["networks"].values() for ip in net["ips"]
        )
    return sorted(ip for ips in result["released"].values() for ip in ips)


def run_round(args: argparse.Namespace, rng: random.Random) -> list[list[Any]]:
    journal: list[list[Any]] = []
    sock = connect(args.socket)
    sock.settimeout(ROUND_LIMIT_S)
    unpacker = msgpack.Unpacker(raw=False)
    containers = [f"{args.prefix}-c{i}" for i in range(args.containers)]
    in_flight: dict[int, tuple[str, str]] = {}  # msgid -> (container, op)
    msgid = 0
    deadline = time.monotonic() + ROUND_LIMIT_S
    try:
        while time.monotonic() < deadline:
            busy = {cid for cid, _ in in_flight.values()}
            while len(in_flight) < IN_FLIGHT:
                cid = rng.choice([c for c in containers if c not in busy])
                busy.add(cid)
                op = "alloc" if rng.random() < 0.55 else "release"
                params: dict[str, Any] = {"container_id": cid}
                if op == "alloc":
                    params["networks"] = {args.network: {}}
                msgid += 1
                in_flight[msgid] = (cid, op)
                sock.sendall(msgpack.packb([0, msgid, op, [params]], use_bin_type=True))
            data = sock.recv(1 << 16)
            if not data:
                break
            unpacker.feed(data)
            for frame in unpacker:
                cid, op = in_flight.pop(frame[1])
                if frame[2] is not None:
                    journal.append([cid, op, "error", frame[2]["name"]])
                else:
                    journal.append([cid, op, "ok", addresses(op, frame[3])])
    except OSError:
        pass  # the daemon died: what was answered is in the journal
    finally:
        sock.close()
    for cid, op in in_flight.values():
        journal.append([cid, op, "lost", None])
    return journal


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--network", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--containers", type=int, default=30)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        journal = run_round(args, rng)
        sys.stdout.write(json.dumps({"journal": journal}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
