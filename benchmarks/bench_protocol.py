"""RpcConnection's cost per request: decoding on the server, encoding the answer.

A program, not a test: it prints figures (and, with --json, one JSON object on
its last line), each a median over repeats, with ratios against msgpack itself
run in the same process on the same frames. The daemon's whole budget is about
30 us of CPU per request; the framing should take a small part of it.

What is timed, exactly:
- "parse": a server RpcConnection is handed ~50-byte alloc request frames,
  `[0, i, "alloc", [{"container_id": ..., "networks": {"n": {}}}]]`, one per
  `receive_data` ("1/recv") or 32 per `receive_data` as a pipelining client
  sends them ("32/recv"), and `next_event` is called until NEED_DATA after each.
- "encode": `send_response` of a typical alloc result, and of an error.
- Peers: a bare `msgpack.Unpacker` fed the same chunks and iterated (no checks
  at all), and `msgpack.packb` of the same response arrays.
Frames are built before the clock starts; the cyclic GC is paused while timing.

Usage: python benchmarks/bench_protocol.py [--quick] [--json] [--repeats N]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

# This checkout's ipamd, not whichever one the venv has installed.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ipamd.errors import NetworkNotFound  # noqa: E402
from ipamd.wire.protocol import NEED_DATA, RpcConnection  # noqa: E402

ALLOC_RESULT = {
    "container_id": "c00000001",
    "networks": {
        "n": {
            "ifname": "eth0",
            "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "subnet": "10.88.0.0/16"}],
        }
    },
}


def alloc_frames(count: int) -> list[bytes]:
    return [
        msgpack.packb([0, i, "alloc", [{"container_id": f"c{i:08d}", "networks": {"n": {}}}]])
        for i in range(count)
    ]


def chunks_of(frames: list[bytes], per_receive: int) -> list[bytes]:
    return [b"".join(frames[i : i + per_receive]) for i in range(0, len(frames), per_receive)]


def us_per(count: int, run: Callable[[], None]) -> float:
    gc.disable()
    try:
        started = time.perf_counter()
        run()
        return (time.perf_counter() - started) / count * 1e6
    finally:
        gc.enable()


def parse(chunks: list[bytes], count: int) -> float:
    def run() -> None:
        conn = RpcConnection("server")
        for chunk in chunks:
            conn.receive_data(chunk)
            while conn.next_event() is not NEED_DATA:
                pass

    return us_per(count, run)


def bare_unpack(chunks: list[bytes], count: int) -> float:
    def run() -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        for chunk in chunks:
            unpacker.feed(chunk)
            for _ in unpacker:
                pass

    return us_per(count, run)


def encode(count: int, failed: bool) -> float:
    error = NetworkNotFound("no network podman") if failed else None
    result = None if failed else ALLOC_RESULT

    def run() -> None:
        conn = RpcConnection("server")
        for msgid in range(count):
            conn.send_response(msgid, error, result)

    return us_per(count, run)


def bare_packb(count: int) -> float:
    def run() -> None:
        for msgid in range(count):
            msgpack.packb([1, msgid, None, ALLOC_RESULT])

    return us_per(count, run)


def run(count: int, repeats: int, say: Callable[[str], None]) -> dict[str, float]:
    frames = alloc_frames(count)
    one, batched = chunks_of(frames, 1), chunks_of(frames, 32)
    timings: dict[str, Callable[[], float]] = {
        "parse_1_us": lambda: parse(one, count),
        "parse_32_us": lambda: parse(batched, count),
        "msgpack_unpack_1_us": lambda: bare_unpack(one, count),
        "msgpack_unpack_32_us": lambda: bare_unpack(batched, count),
        "encode_us": lambda: encode(count, failed=False),
        "encode_error_us": lambda: encode(count, failed=True),
        "msgpack_packb_us": lambda: bare_packb(count),
    }
    samples: dict[str, list[float]] = {name: [] for name in timings}
    for _ in range(repeats):  # interleaved, so drift in the machine hits every figure alike
        for name, timing in timings.items():
            samples[name].append(timing())
    figures = {name: statistics.median(values) for name, values in samples.items()}
    figures["parse_1_vs_msgpack_ratio"] = figures["parse_1_us"] / figures["msgpack_unpack_1_us"]
    figures["parse_32_vs_msgpack_ratio"] = figures["parse_32_us"] / figures["msgpack_unpack_32_us"]
    figures["encode_vs_packb_ratio"] = figures["encode_us"] / figures["msgpack_packb_us"]
    say(f"{count:,} alloc frames of ~{len(frames[0])} bytes, median of {repeats} runs")
    for name, value in figures.items():
        unit = "" if name.endswith("ratio") else " us/request"
        say(f"  {name:28s} {value:7.2f}{unit}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="end with one JSON object line")
    parser.add_argument("--quick", action="store_true", help="a smoke run, about a second")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure")
    args = parser.parse_args(argv)
    count = 2_000 if args.quick else 20_000
    repeats = args.repeats or (3 if args.quick else 7)
    figures: dict[str, float | bool] = dict(run(count, repeats, print))
    figures["quick"] = args.quick
    if args.json:
        rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
        print(json.dumps(rounded))
    return 0


if __name__ == "__main__":
    sys.exit(main())
