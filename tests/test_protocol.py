"""ipamd.wire.protocol: bytes in, events out; no sockets."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Lets a venv without the package installed import it (as tests/core/conftest.py does); CI
# installs the project, where this is a no-op. Drop it once tests/ has a conftest of its own.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from ipamd.errors import (  # noqa: E402
    InvalidRequest,
    IpamError,
    NetworkNotFound,
    RequestTooLarge,
    error_from_wire,
)
from ipamd.wire.limits import Limits  # noqa: E402
from ipamd.wire.protocol import (  # noqa: E402
    MSGID_MAX,
    NEED_DATA,
    LocalProtocolError,
    Notification,
    ProtocolViolation,
    Request,
    Response,
    RpcConnection,
    encode,
)

FUZZ = settings(
    derandomize=True,
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def drain(conn: RpcConnection) -> list[Any]:
    """Every event up to NEED_DATA, or up to and including a fatal violation."""
    out: list[Any] = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, ProtocolViolation) and event.fatal:
            break
    return out


def feed(conn: RpcConnection, *chunks: bytes) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        out += drain(conn)
    return out


def server_events(data: bytes, limits: Limits | None = None) -> list[Any]:
    conn = RpcConnection("server", limits) if limits else RpcConnection("server")
    return feed(conn, data)


def only_violation(events: list[Any]) -> ProtocolViolation:
    assert len(events) == 1, events
    [event] = events
    assert isinstance(event, ProtocolViolation), event
    return event


def assert_fatal(events: list[Any], error: type[IpamError], words: str) -> ProtocolViolation:
    violation = only_violation(events)
    assert violation.fatal
    assert violation.msgid is None
    assert type(violation.error) is error
    assert words in violation.error.message, violation.error.message
    return violation


# -- every event kind -----------------------------------------------------------------------------


def test_request() -> None:
    frame = pack([0, 7, "network.get", [{"name": "podman"}]])
    assert server_events(frame) == [Request(7, "network.get", {"name": "podman"})]


def test_notification() -> None:
    frame = pack([2, "log", [{"level": "debug"}]])
    assert server_events(frame) == [Notification("log", {"level": "debug"})]


def test_response_success_and_error() -> None:
    conn = RpcConnection("client")
    ok = pack([1, 3, None, {"version": "0.1.0"}])
    failed = pack([1, 4, NetworkNotFound("no network podman").to_wire(), None])
    events = feed(conn, ok + failed)
    assert events[0] == Response(3, None, {"version": "0.1.0"})
    assert isinstance(events[1], Response) and events[1].msgid == 4
    error = error_from_wire(events[1].error)
    assert isinstance(error, NetworkNotFound) and error.message == "no network podman"


def test_need_data_when_idle() -> None:
    conn = RpcConnection("server")
    assert conn.next_event() is NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA"


@pytest.mark.parametrize("params", [[], [[]], [{}]], ids=["empty", "lua-empty-map", "empty-map"])
def test_empty_params_mean_no_arguments(params: list[Any]) -> None:
    assert server_events(pack([0, 1, "ping", params])) == [Request(1, "ping", {})]
    assert server_events(pack([2, "ping", params])) == [Notification("ping", {})]


def test_nested_values_pass_through() -> None:
    params = {"container_id": "c1", "networks": {"podman": {"static_ips": ["10.88.0.5"]}}}
    assert server_events(pack([0, 2, "alloc", [params]])) == [Request(2, "alloc", params)]


def test_msgid_bounds_accepted() -> None:
    frames = pack([0, 0, "ping", []]) + pack([0, MSGID_MAX, "ping", []])
    assert server_events(frames) == [Request(0, "ping", {}), Request(MSGID_MAX, "ping", {})]


# -- encoders -------------------------------------------------------------------------------------


def test_round_trip_through_both_roles() -> None:
    client, server = RpcConnection("client"), RpcConnection("server")
    wire = client.send_request(9, "alloc", {"container_id": "c1"})
    wire += client.send_notification("hello", {})
    wire += client.send_request(10, "ping", {})
    assert feed(server, wire) == [
        Request(9, "alloc", {"container_id": "c1"}),
        Notification("hello", {}),
        Request(10, "ping", {}),
    ]
    back = server.send_response(9, None, {"ips": ["10.88.0.5/16"]})
    back += server.send_response(10, NetworkNotFound("no network x"), None)
    events = feed(client, back)
    assert events[0] == Response(9, None, {"ips": ["10.88.0.5/16"]})
    assert events[1] == Response(10, NetworkNotFound("no network x").to_wire(), None)


def test_encoders_follow_the_wire_rules() -> None:
    client, server = RpcConnection("client"), RpcConnection("server")
    assert msgpack.unpackb(client.send_request(1, "ping", {})) == [0, 1, "ping", []]
    assert msgpack.unpackb(client.send_notification("n", {"a": 1})) == [2, "n", [{"a": 1}]]
    assert msgpack.unpackb(server.send_response(1, None, "ok")) == [1, 1, None, "ok"]
    # str stays str and bytes become bin, so the peer can tell them apart.
    assert encode(["a", b"a"]) == b"\x92\xa1a\xc4\x01a"


@pytest.mark.parametrize(
    "call",
    [
        lambda c, s: s.send_request(1, "ping", {}),
        lambda c, s: s.send_notification("ping", {}),
        lambda c, s: c.send_response(1, None, None),
        lambda c, s: c.send_request(-1, "ping", {}),
        lambda c, s: c.send_request(MSGID_MAX + 1, "ping", {}),
        lambda c, s: c.send_request(True, "ping", {}),
        lambda c, s: c.send_request(1, b"ping", {}),
        lambda c, s: c.send_request(1, "ping", {1: 2}),
        lambda c, s: c.send_request(1, "ping", [{}]),
        lambda c, s: s.send_response(1, InvalidRequest("x"), "also a result"),
        lambda c, s: s.send_response(1, None, object()),
    ],
    ids=[
        "server-sends-request",
        "server-sends-notification",
        "client-sends-response",
        "negative-msgid",
        "msgid-too-big",
        "bool-msgid",
        "bytes-method",
        "non-str-key",
        "params-not-dict",
        "error-and-result",
        "unencodable",
    ],
)
def test_local_misuse_raises_local_protocol_error(call: Any) -> None:
    with pytest.raises(LocalProtocolError):
        call(RpcConnection("client"), RpcConnection("server"))


def test_bad_role_and_limits_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        RpcConnection("peer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_depth"):
        Limits(max_depth=0)
    with pytest.raises(ValueError, match="max_str_len"):
        Limits(max_str_len=-1)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        Limits(idle_timeout_s=0)


def test_events_of_different_kinds_never_compare_equal() -> None:
    assert Request(1, "ping", {}) == Request(1, "ping", {})
    assert Request(1, "ping", {}) != Response(1, "ping", {})  # type: ignore[arg-type]


# -- chunking -------------------------------------------------------------------------------------

PIPELINE = [Request(i, "lease.owner", {"ip": f"10.88.0.{i}"}) for i in range(20)] + [
    Notification("bye", {})
]


def pipeline_bytes() -> bytes:
    client = RpcConnection("client")
    wire = b"".join(client.send_request(r.msgid, r.method, r.params) for r in PIPELINE[:-1])
    return wire + client.send_notification("bye", {})


def test_pipelined_frames_in_one_chunk() -> None:
    assert server_events(pipeline_bytes()) == PIPELINE


def test_frames_split_byte_by_byte() -> None:
    wire = pipeline_bytes()
    conn = RpcConnection("server")
    assert feed(conn, *(wire[i : i + 1] for i in range(len(wire)))) == PIPELINE
    conn.receive_data(b"")
    assert conn.next_event() is NEED_DATA


def test_pipeline_longer_than_one_frame_limit() -> None:
    # Many small frames in one chunk are fine even when together they exceed max_frame_bytes.
    wire = pipeline_bytes()
    assert len(wire) > 200
    assert server_events(wire, Limits(max_frame_bytes=40)) == PIPELINE


# -- wrong shapes: non-fatal, msgid recovered where it can be read ---------------------------------

WRONG_SHAPES = [
    ("map-not-array", {"method": "ping"}, None, "must be a non-empty array, got a map"),
    ("int-not-array", 5, None, "got integer 5"),
    ("empty-array", [], None, "got an array of 0 items"),
    ("unknown-type", [3, 1, "ping", []], None, "got integer 3"),
    ("str-type", ["0", 1, "ping", []], None, "got string '0'"),
    ("bool-type", [False, 1, "ping", []], None, "got false"),
    ("response-to-server", [1, 1, None, None], None, "not responses"),
    ("only-type", [0], None, "array of 1 item"),
    ("negative-msgid", [0, -1, "ping", []], None, "msgid must be an integer in 0..4294967295"),
    ("msgid-too-big", [0, 2**32, "ping", []], None, "got integer 4294967296"),
    ("float-msgid", [0, 1.0, "ping", []], None, "got float 1.0"),
    ("str-msgid", [0, "1", "ping", []], None, "got string '1'"),
    ("bool-msgid", [0, True, "ping", []], None, "got true"),
    ("nil-msgid", [0, None, "ping", []], None, "got nil"),
    ("too-short", [0, 5, "ping"], 5, "got an array of 3 items"),
    ("too-long", [0, 5, "ping", [], None], 5, "got an array of 5 items"),
    ("int-method", [0, 5, 42, []], 5, "method must be a string, got integer 42"),
    ("bin-method", [0, 5, b"ping", []], 5, "got bin of 4 bytes"),
    ("bare-map-params", [0, 5, "get", {"container_id": "c1"}], 5, "params must be an array"),
    ("nil-params", [0, 5, "ping", None], 5, "params must be an array holding one map"),
    ("two-maps", [0, 5, "alloc", [{}, {}]], 5, "exactly one map of named arguments, got 2"),
    ("int-in-params", [0, 5, "alloc", [7]], 5, "params must be a map, got integer 7"),
    ("int-key", [0, 5, "alloc", [{1: "c1"}]], 5, "params keys must be strings, got integer 1"),
    ("bin-key", [0, 5, "alloc", [{b"id": "c1"}]], 5, "got bin of 2 bytes"),
    (
        "nested-int-key",
        [0, 5, "alloc", [{"networks": {"podman": {2: "eth0"}}}]],
        5,
        "params.networks.podman keys must be strings",
    ),
    ("key-in-list", [0, 5, "gc", [{"valid": [{None: 1}]}]], 5, "params.valid[0] keys"),
    ("short-notification", [2, "ping"], None, "a notification is [2, method, params]"),
    ("notification-int-method", [2, 1, []], None, "method must be a string"),
    ("notification-bad-params", [2, "n", [1, 2]], None, "exactly one map"),
]


@pytest.mark.parametrize(
    ("frame", "msgid", "words"),
    [case[1:] for case in WRONG_SHAPES],
    ids=[case[0] for case in WRONG_SHAPES],
)
def test_wrong_shape_is_a_recoverable_violation(frame: Any, msgid: int | None, words: str) -> None:
    conn = RpcConnection("server")
    events = feed(conn, pack(frame) + pack([0, 99, "ping", []]))
    violation, after = events
    assert isinstance(violation, ProtocolViolation)
    assert not violation.fatal
    assert violation.msgid == msgid
    assert isinstance(violation.error, InvalidRequest)
    assert words in violation.error.message, violation.error.message
    # The stream is still aligned: the next frame decodes normally.
    assert after == Request(99, "ping", {})


def test_client_role_wrong_shapes() -> None:
    conn = RpcConnection("client")
    events = feed(
        conn,
        pack([0, 1, "ping", []])
        + pack([2, "ping", []])
        + pack([1, -3, None, None])
        + pack([1, 4, None])
        + pack([1, 5, "boom", None])
        + pack([1, 6, [], None])
        + pack([1, 7, None, [1, 2]]),
    )
    assert [(e.msgid, e.fatal) for e in events[:5]] == [
        (None, False),
        (None, False),
        (None, False),
        (4, False),
        (5, False),
    ]
    assert "not requests or notifications" in events[0].error.message
    assert "response error must be a map, got string 'boom'" in events[4].error.message
    # An empty array where the error map goes is an empty map, as anywhere else.
    assert events[5:] == [Response(6, {}, None), Response(7, None, [1, 2])]


# -- undecodable bytes and limits: fatal ----------------------------------------------------------


def test_oversized_frame() -> None:
    limits = Limits(max_frame_bytes=100)
    big = pack([0, 1, "alloc", [{"container_id": "x" * 200}]])
    assert_fatal(server_events(big, limits), RequestTooLarge, "over the limit of 100 bytes")


def test_frame_size_boundary() -> None:
    frame = pack([0, 1, "alloc", [{"container_id": "x" * 80}]])
    exact = Limits(max_frame_bytes=len(frame))
    assert server_events(frame, exact) == [Request(1, "alloc", {"container_id": "x" * 80})]
    one_less = Limits(max_frame_bytes=len(frame) - 1)
    assert_fatal(server_events(frame, one_less), RequestTooLarge, f"frame of {len(frame)} bytes")


def test_oversized_frame_at_default_limit_split_in_chunks() -> None:
    conn = RpcConnection("server")
    wire = pack([0, 1, "alloc", [{"container_id": "x" * 2**20}]])
    assert len(wire) > 2**20
    events = feed(conn, *(wire[i : i + 65536] for i in range(0, len(wire), 65536)))
    assert_fatal(events, RequestTooLarge, f"over the limit of {2**20} bytes")


def test_lying_str_length_prefix_is_refused_at_the_frame_limit() -> None:
    # A str header claiming 2**32 - 1 bytes: msgpack only checks max_str_len once the whole
    # body has arrived, so it is the frame limit that stops the buffering.
    conn = RpcConnection("server")
    header = b"\x94\x00\x01\xa4ping\x91\x81\xa1a\xdb\xff\xff\xff\xff"
    assert feed(conn, header + b"y" * 1000) == []
    assert conn.next_event() is NEED_DATA
    events = feed(conn, *[b"y" * 65536] * 16)
    assert_fatal(events, RequestTooLarge, "over the limit")


def test_str_over_max_str_len() -> None:
    limits = Limits(max_str_len=10)
    events = server_events(pack([0, 1, "alloc", [{"container_id": "x" * 11}]]), limits)
    assert_fatal(events, InvalidRequest, "exceeds max_str_len(10)")


def test_invalid_utf8() -> None:
    events = server_events(b"\x94\x00\x01\xa2\xff\xfe\x90")
    assert_fatal(events, InvalidRequest, "not valid UTF-8")


def test_not_msgpack() -> None:
    assert_fatal(server_events(b"\xc1"), InvalidRequest, "not msgpack")


def test_array_as_map_key() -> None:
    events = server_events(b"\x94\x00\x01\xa1m\x91\x81\x90\x01")
    assert_fatal(events, InvalidRequest, "unusable map key")


def test_deep_nesting_100k_is_fast_and_fatal() -> None:
    started = time.perf_counter()
    events = server_events(b"\x91" * 100_000 + b"\xc0")
    assert time.perf_counter() - started < 0.5
    assert_fatal(events, InvalidRequest, "nested deeper than 1024")


def test_nesting_over_max_depth() -> None:
    def nest(levels: int) -> Any:
        value: Any = "leaf"
        for _ in range(levels):
            value = [value]
        return value

    # frame, params array and params map are three levels; attributes holds the rest.
    fits = pack([0, 1, "alloc", [{"attributes": nest(29)}]])
    assert server_events(fits) == [Request(1, "alloc", {"attributes": nest(29)})]
    too_deep = pack([0, 1, "alloc", [{"attributes": nest(30)}]])
    assert_fatal(server_events(too_deep), InvalidRequest, "nested deeper than 32 levels")
    assert_fatal(server_events(pack(nest(500))), InvalidRequest, "deeper than 32")


def test_huge_array_and_map_headers() -> None:
    assert_fatal(server_events(b"\xdd\xff\xff\xff\xff"), InvalidRequest, "max_array_len(4096)")
    assert_fatal(server_events(b"\xdf\xff\xff\xff\xff"), InvalidRequest, "max_map_len(65536)")
    too_long = pack([0, 1, "gc", [{"valid": [None] * 4097}]])
    assert_fatal(server_events(too_long), InvalidRequest, "4097 exceeds max_array_len")
    longest = pack([1, 1, None, [None] * 4096])
    assert feed(RpcConnection("client"), longest) == [Response(1, None, [None] * 4096)]


def test_truncated_frame_then_eof() -> None:
    conn = RpcConnection("server")
    wire = pack([0, 1, "ping", []])
    assert feed(conn, pack([0, 0, "ping", []]) + wire[:-1]) == [Request(0, "ping", {})]
    conn.receive_data(b"")
    assert_fatal(drain(conn), InvalidRequest, f"middle of a frame ({len(wire) - 1} bytes in)")


def test_clean_eof() -> None:
    conn = RpcConnection("server")
    assert feed(conn, pack([0, 0, "ping", []]), b"") == [Request(0, "ping", {})]
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")  # repeating EOF is harmless
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_fatal_violation_is_sticky() -> None:
    conn = RpcConnection("server")
    violation = only_violation(feed(conn, b"\xc1"))
    conn.receive_data(pack([0, 1, "ping", []]))
    assert conn.next_event() is violation
    conn.receive_data(b"")
    assert conn.next_event() is violation


# -- the protocol stays pure ----------------------------------------------------------------------


# -- property tests -------------------------------------------------------------------------------

SMALL = Limits(max_frame_bytes=64, max_str_len=16, max_bin_len=8, max_array_len=6, max_depth=4)


def chunked(data: st.DataObject, blob: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=8), label="cuts"))
    bounds = [0, *cuts, len(blob)]
    return [blob[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def run_checked(conn: RpcConnection, chunks: list[bytes]) -> list[str]:
    """Feed chunks then EOF; check every event is well-formed; return them as reprs."""
    allowed = (Request, Notification) if conn.role == "server" else (Response,)
    seen: list[str] = []
    fatal: ProtocolViolation | None = None
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            if fatal is not None:
                assert event is fatal  # reported the same way every time
                break
            assert isinstance(event, (*allowed, ProtocolViolation))
            if isinstance(event, ProtocolViolation):
                assert isinstance(event.error, IpamError) and event.error.message
                if event.fatal:
                    assert event.msgid is None
                    fatal = event
            seen.append(repr(event))
    return seen


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=6) | st.integers(-3, 3) | st.none(), inner, max_size=4)
    ),
    max_leaves=10,
)
frame_like = st.one_of(
    values,
    st.tuples(st.sampled_from([0, 1, 2, 3]), values, values, values).map(list),
    st.tuples(
        st.just(0),
        st.integers(-1, 2**32) | values,
        st.text(max_size=8) | values,
        st.lists(st.dictionaries(st.text(max_size=6), values, max_size=3), max_size=2) | values,
    ).map(list),
    st.tuples(st.just(2), st.text(max_size=8), st.lists(values, max_size=2)).map(list),
    st.tuples(st.just(1), st.integers(0, 2**32 - 1), values, values).map(list),
)


@FUZZ
@given(st.data(), st.binary(max_size=300), st.sampled_from(["server", "client"]), st.booleans())
def test_random_bytes_never_raise(data: st.DataObject, blob: bytes, role: Any, small: bool) -> None:
    limits = SMALL if small else Limits()
    seen = run_checked(RpcConnection(role, limits), chunked(data, blob))
    # Chunking never changes what the bytes mean.
    assert seen == run_checked(RpcConnection(role, limits), [blob])


@FUZZ
@given(
    st.data(),
    st.lists(frame_like, min_size=1, max_size=6),
    st.sampled_from(["server", "client"]),
    st.booleans(),
)
def test_random_msgpack_values_never_raise(
    data: st.DataObject, frames: list[Any], role: Any, small: bool
) -> None:
    limits = SMALL if small else Limits()
    blob = b"".join(pack(frame) for frame in frames)
    seen = run_checked(RpcConnection(role, limits), chunked(data, blob))
    assert seen == run_checked(RpcConnection(role, limits), [blob])
    if not small:
        # Every well-formed msgpack value is one event; none is fatal under default limits.
        assert len(seen) == len(frames)
        assert not any("fatal=True" in event for event in seen)


named_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
requests = st.builds(
    Request,
    st.integers(0, MSGID_MAX),
    st.text(max_size=12),
    st.dictionaries(st.text(max_size=8), named_values, max_size=3),
)


@FUZZ
@given(st.data(), st.lists(requests, max_size=4))
def test_encoded_requests_decode_to_themselves(data: st.DataObject, sent: list[Request]) -> None:
    client = RpcConnection("client")
    blob = b"".join(client.send_request(r.msgid, r.method, r.params) for r in sent)
    assert run_checked(RpcConnection("server"), chunked(data, blob)) == [repr(r) for r in sent]


# -- the fast path for plain requests -------------------------------------------------------------
# `_plain_request` may only ever say what the full checks would say; these hold it to that.

odd_keys = st.integers(-3, 3) | st.none() | st.binary(max_size=2) | st.booleans() | st.floats()
params_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        # now and then a non-str key, at any level
        | st.dictionaries(st.text(max_size=4) | odd_keys, inner, max_size=3)
    ),
    max_leaves=12,
)
request_like = st.tuples(
    st.sampled_from([0, 0, 0, False, 0.0, 1, 2]),
    st.sampled_from([0, 7, MSGID_MAX, MSGID_MAX + 1, -1, True, 1.0, None]),
    st.text(max_size=6) | st.binary(max_size=3) | st.integers(0, 3),
    st.lists(st.dictionaries(st.text(max_size=6), params_values, max_size=3), max_size=2)
    | st.just([[]])
    | params_values,
).map(list)


@FUZZ
@given(request_like | frame_like, st.integers(1, 8))
def test_fast_path_agrees_with_the_full_checks(frame: Any, max_depth: int) -> None:
    from ipamd.wire.protocol import _nested_deeper_than, _plain_request, _server_event

    frame = msgpack.unpackb(pack(frame), strict_map_key=False)  # exactly what msgpack gives
    fast = _plain_request(frame, max_depth)
    if fast is not None:
        assert not _nested_deeper_than(frame, max_depth)
        assert _server_event(frame) == fast
    elif not _nested_deeper_than(frame, max_depth):
        assert not isinstance(_server_event(frame), Request)


@FUZZ
@given(requests)
def test_plain_requests_take_the_fast_path(request: Request) -> None:
    from ipamd.wire.protocol import _plain_request

    client = RpcConnection("client")
    frame = msgpack.unpackb(client.send_request(request.msgid, request.method, request.params))
    # Compared as reprs, as above: a NaN in params is not equal to itself.
    assert repr(_plain_request(frame, Limits().max_depth)) == repr(request)


def test_depth_limits_below_the_params_map() -> None:
    # The frame and params array are two levels: a limit of 1 refuses even a bare ping.
    ping, lua_ping = pack([0, 1, "ping", []]), pack([0, 1, "ping", [[]]])
    assert_fatal(server_events(ping, Limits(max_depth=1)), InvalidRequest, "deeper than 1")
    assert server_events(ping, Limits(max_depth=2)) == [Request(1, "ping", {})]
    assert_fatal(server_events(lua_ping, Limits(max_depth=2)), InvalidRequest, "deeper than 2")
    assert server_events(lua_ping, Limits(max_depth=3)) == [Request(1, "ping", {})]
    with_map = pack([0, 1, "get", [{"container_id": "c1"}]])
    assert_fatal(server_events(with_map, Limits(max_depth=2)), InvalidRequest, "deeper than 2")
    assert server_events(with_map, Limits(max_depth=3)) == [
        Request(1, "get", {"container_id": "c1"})
    ]


def test_non_str_key_at_the_depth_limit() -> None:
    # The bad key sits in a map at exactly the deepest allowed level: reported, not fatal.
    value: Any = {3: "x"}
    for _ in range(28):
        value = [value]
    events = server_events(
        pack([0, 5, "alloc", [{"attributes": value}]]) + pack([0, 6, "ping", []])
    )
    violation, after = events
    assert isinstance(violation, ProtocolViolation) and not violation.fatal
    assert violation.msgid == 5
    path = "params.attributes" + "[0]" * 28
    assert violation.error.message == f"{path} keys must be strings, got integer 3"
    assert after == Request(6, "ping", {})
    # One level deeper, the depth limit wins: fatal, whatever the keys.
    assert_fatal(
        server_events(pack([0, 5, "alloc", [{"attributes": [value]}]])),
        InvalidRequest,
        "nested deeper than 32 levels",
    )


def test_non_str_keys_deep_in_params_name_the_first_path() -> None:
    params = {"networks": {"a": {"ifname": "eth0"}, "b": [{"ok": 1}, {"ok": 2, None: 3}]}}
    violation = only_violation(server_events(pack([0, 9, "alloc", [params]])))
    assert (violation.msgid, violation.fatal) == (9, False)
    assert violation.error.message == "params.networks.b[1] keys must be strings, got nil"


def test_pipelined_frames_split_at_every_byte() -> None:
    wire = pipeline_bytes()
    for cut in range(1, len(wire)):
        conn = RpcConnection("server")
        assert feed(conn, wire[:cut], wire[cut:]) == PIPELINE
        assert not conn.in_frame


# -- encoders reuse one Packer per connection -----------------------------------------------------


def test_a_failed_encode_leaves_the_connection_usable() -> None:
    server = RpcConnection("server")
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        server.send_response(1, None, {"ips": ["10.88.0.5", object()]})
    assert server.send_response(2, None, "ok") == pack([1, 2, None, "ok"])


def test_responses_of_every_size_encode_alike() -> None:
    server = RpcConnection("server")
    for result in ["small", "x" * 200_000, ["y"] * 4096, None, {"a": "b" * 70_000}, "small"]:
        assert server.send_response(3, None, result) == pack([1, 3, None, result])
        assert server.send_response(4, NetworkNotFound("no network x"), None) == pack(
            [1, 4, NetworkNotFound("no network x").to_wire(), None]
        )


def test_msgid_of_an_int_subclass_is_accepted() -> None:
    import enum

    class Msgid(enum.IntEnum):
        FIRST = 1

    assert RpcConnection("server").send_response(Msgid.FIRST, None, None) == pack(
        [1, 1, None, None]
    )
    assert RpcConnection("client").send_request(Msgid.FIRST, "ping", {}) == pack([0, 1, "ping", []])
