"""A load-generating client process for bench_daemon.py.

One process drives several msgpack-RPC connections to a Unix socket, each a
closed loop: send one request, wait for its answer, send the next. So the
number of connections across all worker processes is the number of requests in
flight, i.e. the number of "concurrent clients". The wire work is the plain
msgpack of tests/support.RawClient; every request frame is encoded before the
clock starts, so the client's own cost per request is one send, one receive
and one unpack, the same whichever server answers.

Protocol with the parent (bench_daemon.py), one JSON object per line:
  argv[1]  the job: {"socket", "method", "params", "prefix", "conns": [[first, stop], ...]}
           (connection k sends `method` for container ids prefix+first .. prefix+stop-1,
           with `params` plus that "container_id")
  stdout   "ready" once every connection is open and every frame encoded
  stdin    any line: go
  stdout   the result: {"ok", "errors", "error_sample", "start", "end", "cpu_s", "lat_us"}
           (start/end are CLOCK_MONOTONIC, comparable across processes on Linux)
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time
from typing import Any

import msgpack

RECEIVE_BYTES = 64 << 10


def container_id(prefix: str, index: int) -> str:
    return f"{prefix}{index:08d}"


class Conn:
    __slots__ = ("errors", "frames", "lat", "next", "sent_at", "sock", "unpacker")

    def __init__(self, path: str, frames: list[bytes]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.frames = frames
        self.next = 0
        self.sent_at = 0.0
        self.lat: list[float] = []
        self.errors: list[Any] = []

    def send_next(self) -> bool:
        """Send the next request; False when there is none left."""
        if self.next >= len(self.frames):
            return False
        frame = self.frames[self.next]
        self.next += 1
        self.sent_at = time.perf_counter()
        self.sock.sendall(frame)
        return True

    def answered(self, response: list[Any]) -> None:
        self.lat.append(time.perf_counter() - self.sent_at)
        if response[2] is not None:
            self.errors.append(response[2])


def encode_frames(job: dict[str, Any], first: int, stop: int) -> list[bytes]:
    frames = []
    for msgid, index in enumerate(range(first, stop), start=1):
        params = dict(job["params"], container_id=container_id(job["prefix"], index))
        frames.append(msgpack.packb([0, msgid, job["method"], [params]], use_bin_type=True))
    return frames


def run_one(conn: Conn) -> None:
    """One connection: plain blocking loop (no selector cost)."""
    recv = conn.sock.recv
    while conn.send_next():
        while True:
            data = recv(RECEIVE_BYTES)
            if not data:
                raise ConnectionError("server closed the connection")
            conn.unpacker.feed(data)
            response = next(conn.unpacker, None)
            if response is not None:
                conn.answered(response)
                break


def run_many(conns: list[Conn]) -> None:
    """Many connections in one epoll loop, each closed-loop."""
    selector = selectors.EpollSelector()
    active = 0
    for conn in conns:
        if conn.send_next():
            selector.register(conn.sock, selectors.EVENT_READ, conn)
            active += 1
    while active:
        for key, _ in selector.select():
            conn = key.data
            data = conn.sock.recv(RECEIVE_BYTES)
            if not data:
                raise ConnectionError("server closed the connection")
            conn.unpacker.feed(data)
            for response in conn.unpacker:
                conn.answered(response)
                if not conn.send_next():
                    selector.unregister(conn.sock)
                    active -= 1


def main() -> int:
    job = json.loads(sys.argv[1])
    conns = [Conn(job["socket"], encode_frames(job, first, stop)) for first, stop in job["conns"]]
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = os.times()
    start = time.monotonic()
    if len(conns) == 1:
        run_one(conns[0])
    else:
        run_many(conns)
    end = time.monotonic()
    cpu1 = os.times()
    lat = [round(x * 1e6, 1) for conn in conns for x in conn.lat]
    errors = [e for conn in conns for e in conn.errors]
    for conn in conns:
        conn.sock.close()
    result = {
        "ok": len(lat) - len(errors),
        "errors": len(errors),
        "error_sample": errors[0] if errors else None,
        "start": start,
        "end": end,
        "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "lat_us": lat,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
