"""Hostile input: hypothesis-driven frames and params against the real daemon.

Each example opens a connection and sends one payload: random bytes, frames of
every shape with params of every type (unknown methods, wrong types, big and
negative integers, invalid UTF-8), truncated frames, msgpack headers claiming
2**32 - 1 items or bytes, nesting thousands deep, arrays past the limits,
frames over 1 MiB, or several of these back to back. Then it half-closes and
reads until the daemon closes (every answer must be a well-formed response),
or just drops the connection. Throughout, a well-behaved client on its own
connection pings after every example and allocates, reads and releases every
few: it must never see an error. The daemon must stay up and its memory
(VmRSS) bounded.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.reliability.harness import Budget, TestDaemon, vmrss_kib, write_config

STEADY = {"name": "steady-net", "subnets": [{"subnet": "10.61.0.0/24"}, {"subnet": "fd61::/64"}]}
METHODS = [
    "ping",
    "status",
    "stats",
    "network.get",
    "network.list",
    "get",
    "lease.list",
    "lease.owner",
    "network.create",
    "network.delete",
    "alloc",
    "release",
    "gc",
]
KEYS = [
    "name",
    "subnets",
    "driver",
    "force",
    "container_id",
    "networks",
    "ifname",
    "static_ips",
    "attributes",
    "network",
    "after",
    "limit",
    "ip",
    "valid",
    "dry_run",
    "subnet",
    "gateway",
    "range_start",
    "range_end",
    "exclude",
]
# Never "steady-net": the fuzzer must not delete the well-behaved client's network.
NAMES = ["fuzz0", "fuzz1", "nope", "", "-", "a" * 65, "x.y_z"]
ADDRESSES = [
    "10.200.0.0/24",
    "10.200.0.7",
    "10.200.0.255",
    "10.201.0.0/31",
    "10.202.0.1/32",
    "fd99::/64",
    "fd99::1",
    "fd99::/128",
    "300.1.1.1/8",
    "::",
    "0.0.0.0/0",
    "10.200.0.2-10.200.0.9",
    "10.200.0.9-10.200.0.2",
    "fe80::1%eth0",
]
# How long the daemon may take to answer and close after we half-close.
CLOSE_TIMEOUT_S = 15.0
# VmRSS may grow by this much over the warmed-up daemon, and no more.
RSS_GROWTH_LIMIT_KIB = 128 << 10
STEADY_EVERY = 10

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=30),
    st.binary(max_size=30),
    st.sampled_from(NAMES + ADDRESSES),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5),
    ),
    max_leaves=25,
)
names = st.sampled_from(NAMES) | values
name_keys = st.sampled_from(NAMES) | st.text(max_size=10)
subnet = st.fixed_dictionaries(
    {"subnet": st.sampled_from(ADDRESSES) | values},
    optional={
        "gateway": st.sampled_from(ADDRESSES) | values,
        "range_start": st.sampled_from(ADDRESSES) | values,
        "range_end": st.sampled_from(ADDRESSES) | values,
        "exclude": st.lists(st.sampled_from(ADDRESSES) | values, max_size=3),
    },
)
container_ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True) | values
attachment = st.fixed_dictionaries(
    {},
    optional={
        "ifname": st.sampled_from(["", "eth0", "x" * 20]) | values,
        "static_ips": st.lists(st.sampled_from(ADDRESSES) | values, max_size=3) | values,
        "attributes": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)
        | values,
    },
)
method_params = {
    "network.create": st.fixed_dictionaries(
        {"name": names, "subnets": st.lists(subnet, max_size=3) | values},
        optional={"driver": st.sampled_from(["host-local", "none"]) | values},
    ),
    "alloc": st.fixed_dictionaries(
        {
            "container_id": container_ids,
            "networks": st.dictionaries(name_keys, attachment, max_size=3) | values,
        }
    ),
    "release": st.fixed_dictionaries(
        {"container_id": container_ids},
        optional={"networks": st.dictionaries(name_keys, attachment, max_size=2) | values},
    ),
    "gc": st.fixed_dictionaries(
        {
            "network": names,
            "valid": st.lists(st.fixed_dictionaries({"container_id": container_ids}), max_size=3)
            | values,
        },
        optional={"dry_run": values},
    ),
    "lease.list": st.fixed_dictionaries(
        {"network": names}, optional={"after": st.sampled_from(ADDRESSES) | values, "limit": values}
    ),
}
any_params = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=5)


@st.composite
def frames(draw: st.DrawFn) -> Any:
    """A msgpack value shaped like a frame, or not quite."""
    # Mostly well-formed around the edges, so that the params reach the methods.
    shape = draw(st.integers(min_value=0, max_value=9))
    if shape < 7:
        method: Any = draw(st.sampled_from(METHODS))
    else:
        method = draw(st.text(max_size=20) if shape < 9 else values)
    params = draw(method_params.get(method, any_params) if isinstance(method, str) else any_params)
    msgid = draw(st.integers(min_value=0, max_value=2**32 - 1) if shape else values)
    return draw(
        st.sampled_from(
            [
                [0, msgid, method, [params]],
                [0, msgid, method, [params]],
                [0, msgid, method, [params]],
                [0, msgid, method, [params]],
                [0, msgid, method, []],
                [0, msgid, method, params],
                [0, msgid, method, [params, params]],
                [0, msgid, method],
                [2, method, [params]],
                [1, msgid, None, params],
                [3, msgid, method, [params]],
                params,
            ]
        )
    )


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


REQUEST_HEAD = b"\x94\x00\x01"  # [0, 1, ...: what follows is the method
HUGE_HEADERS = [
    b"\xdb\xff\xff\xff\xff",  # str 32, 2**32 - 1 bytes
    b"\xc6\xff\xff\xff\xff",  # bin 32
    b"\xdd\xff\xff\xff\xff",  # array 32, 2**32 - 1 items
    b"\xdf\xff\xff\xff\xff",  # map 32
    b"\xc9\xff\xff\xff\xff\x01",  # ext 32
    b"\xdc\xff\xff",  # array 16, 65535 items
    b"\xde\xff\xff",  # map 16
    b"\xda\xff\xff",  # str 16
]


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    """(kind, bytes to send)."""
    kind = draw(
        st.sampled_from(
            [
                "garbage",
                "frame",
                "frame",
                "frame",
                "truncated",
                "huge length",
                "deep",
                "huge array",
                "bad utf-8",
                "oversize",
                "pipeline",
            ]
        )
    )
    if kind == "garbage":
        return kind, draw(st.binary(min_size=1, max_size=2048))
    if kind == "frame":
        return kind, pack(draw(frames()))
    if kind == "truncated":
        data = pack(draw(frames()))
        return kind, data[: draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))]
    if kind == "huge length":
        header = draw(st.sampled_from(HUGE_HEADERS))
        inside = draw(st.sampled_from([b"", REQUEST_HEAD, REQUEST_HEAD + b"\xa4ping"]))
        return kind, inside + header + draw(st.binary(max_size=64))
    if kind == "deep":
        depth = draw(st.integers(min_value=30, max_value=3000))
        level = draw(st.sampled_from([b"\x91", b"\x81\xa1a", b"\x92\xc0"]))
        inside = draw(st.sampled_from([b"", REQUEST_HEAD + b"\xa4ping\x91"]))
        return kind, inside + level * depth + b"\xc0"
    if kind == "huge array":
        count = draw(st.sampled_from([4097, 10000, 65535, 2**20, 2**32 - 1]))
        present = draw(st.integers(min_value=0, max_value=min(count, 5000)))
        header = (
            b"\xdc" + count.to_bytes(2, "big")
            if count < 2**16
            else b"\xdd" + count.to_bytes(4, "big")
        )
        inside = draw(st.sampled_from([b"", REQUEST_HEAD + b"\xa4ping\x91\x81\xa4name"]))
        return kind, inside + header + b"\xc0" * present
    if kind == "bad utf-8":
        bad = draw(
            st.sampled_from(
                [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]
            )
        )
        where = draw(st.sampled_from(["method", "key", "value"]))
        head = bytes([0xA0 | len(bad)]) + bad
        if where == "method":
            return kind, REQUEST_HEAD + head + b"\x90"
        if where == "key":
            return kind, REQUEST_HEAD + b"\xa4ping\x91\x81" + head + b"\xc0"
        return kind, REQUEST_HEAD + b"\xa3get\x91\x81\xacontainer_id" + head
    if kind == "oversize":
        size = draw(st.sampled_from([70_000, 1_100_000]))
        shape = draw(st.sampled_from(["one string", "many strings"]))
        if shape == "one string":
            return kind, pack([0, 1, "ping", [{"name": "x" * size}]])
        return kind, pack([0, 1, "lease.list", [{"network": ["y" * 300] * (size // 300)}]])
    parts = draw(
        st.lists(st.sampled_from(["frame", "truncated", "garbage"]), min_size=2, max_size=4)
    )
    data = b""
    for part in parts:
        if part == "garbage":
            data += draw(st.binary(min_size=1, max_size=64))
        elif part == "frame":
            data += pack(draw(frames()))
        else:
            packed = pack(draw(frames()))
            data += packed[: max(1, len(packed) // 2)]
    return kind, data


def exchange(path: Path, data: bytes, half_close: bool) -> list[Any]:
    """Send `data`; if half_close, read every answer until the daemon closes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLOSE_TIMEOUT_S)
    sock.connect(str(path))
    answers: list[Any] = []
    try:
        try:
            sock.sendall(data)
            if not half_close:
                return answers
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon gave up on the stream before reading it all
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while True:
            assert time.monotonic() < deadline, "the daemon did not close the connection"
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"no answer and no close within {CLOSE_TIMEOUT_S}s") from None
            if not chunk:
                break
            unpacker.feed(chunk)
            answers += list(unpacker)
        return answers
    finally:
        sock.close()


def check_answer(answer: Any) -> str:
    """The error name of a well-formed response ("ok" for none); fails on anything else."""
    assert isinstance(answer, list) and len(answer) == 4 and answer[0] == 1, answer
    assert isinstance(answer[1], int), answer
    error = answer[2]
    if error is None:
        return "ok"
    assert answer[3] is None, answer
    assert isinstance(error, dict) and isinstance(error.get("code"), int), answer
    assert isinstance(error.get("name"), str) and isinstance(error.get("message"), str), answer
    return str(error["name"])


@pytest.mark.slow
def test_hostile_input_does_not_hurt(tmp_path: Path, budget: Budget) -> None:
    examples = budget.fuzz_examples
    print(f"\nfuzzing the daemon: {examples} examples, seed {budget.seed}")
    config = write_config(tmp_path / "ipamd.toml", networks=[STEADY], log_level="error")
    daemon = TestDaemon(state_dir=tmp_path / "state", socket=tmp_path / "fuzz.sock", config=config)
    kinds: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    steady_calls = 0
    rss: dict[str, int] = {}
    try:
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        rss["at start"] = vmrss_kib(pid)
        steady = daemon.client(timeout=10)
        # Warm up: the first frames of each size class grow the allocator's pools.
        for warm in (
            pack([0, 1, "ping", []]),
            b"\x91" * 1000 + b"\xc0",
            b"\xdc\x10\x00" + b"\xc0" * 4096,
        ):
            exchange(daemon.socket, warm, half_close=True)
        rss["warmed up"] = vmrss_kib(pid)
        rss["highest"] = rss["warmed up"]

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        )
        @seed(budget.seed)
        @given(payload=payloads(), half_close=st.sampled_from([True, True, True, False]))
        def one(payload: tuple[str, bytes], half_close: bool) -> None:
            nonlocal steady_calls
            kind, data = payload
            kinds[kind] += 1
            for answer in exchange(daemon.socket, data, half_close):
                answers[check_answer(answer)] += 1
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
            assert steady.call("ping")["version"]
            steady_calls += 1
            if sum(kinds.values()) % STEADY_EVERY == 0:
                cid = f"steady-{sum(kinds.values())}"
                got = steady.call("alloc", {"container_id": cid, "networks": {"steady-net": {}}})
                assert steady.call("get", {"container_id": cid})["networks"] == got["networks"]
                assert steady.call("release", {"container_id": cid})["released"]["steady-net"]
                steady_calls += 3
            rss["highest"] = max(rss["highest"], vmrss_kib(pid))

        one()
        rss["at the end"] = vmrss_kib(pid)
        status = steady.call("status")
        steady.close()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.ensure_dead()
    print(f"payloads: {dict(sorted(kinds.items()))}")
    print(f"answers read: {dict(sorted(answers.items()))}")
    print(
        f"well-behaved client: {steady_calls} calls, no error; daemon: {status['networks']}"
        f" networks, {status['leases']} leases, {status['mutations']} mutations after the fuzzing"
    )
    print("VmRSS (KiB): " + ", ".join(f"{k} {v}" for k, v in rss.items()))
    assert rss["at the end"] - rss["warmed up"] < RSS_GROWTH_LIMIT_KIB, rss
    assert rss["highest"] - rss["warmed up"] < RSS_GROWTH_LIMIT_KIB, rss
