"""Holds many connections to the daemon open from a process of its own.

    python conn_hog.py --socket S --idle N --half H

Opens N connections that send nothing and H that send the first bytes of a
request and stop, prints "ready N H" once all are connected, then holds them
until stdin closes. It raises its own descriptor limit to the hard limit, so
that 10,000 connections fit beside the test's own.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys

# [0, 1, "ping", []] is 94 00 01 a4 70 69 6e 67 90: this stops inside "ping".
HALF_FRAME = b"\x94\x00\x01\xa4pi"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--half", type=int, default=0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held: list[socket.socket] = []
    for n in range(args.idle + args.half):
        # Blocking: a Unix socket's connect waits while the listen backlog is full
        # (with a timeout set, it fails with EAGAIN instead).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
        if n >= args.idle:
            sock.sendall(HALF_FRAME)
        held.append(sock)
    print(f"ready {args.idle} {args.half}", flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main()
