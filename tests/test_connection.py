"""The server connection's state machine (ipamd/wire/connection.py): bytes in,
events and bytes out, on a clock the test sets.

The timing facts of DESIGN.md section 6 live here (idle timeout, a frame
stalled half-sent, a client that does not read its answers), with the
back-pressure rules (the per-turn budget, the in-flight cap, the outbox's high
water mark); tests/daemon/test_hostile.py checks what a user sees of them
through the real daemon.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from ipamd.errors import NetworkNotFound
from ipamd.wire.connection import (
    BACKLOG,
    BLOCKED,
    CLOSED,
    DRAINING,
    EVENTS_PER_TURN,
    OUTBOX_HIGH_WATER,
    READING,
    SEND_TIMEOUT_S,
    ServerConnection,
    Timeout,
)
from ipamd.wire.limits import Limits
from ipamd.wire.protocol import Notification, ProtocolViolation, Request

IDLE_S = 30.0
LIMITS = Limits(max_in_flight=4, idle_timeout_s=IDLE_S)
T0 = 1000.0  # the clock at the start of every test


def request(msgid: int, method: str = "alloc", **params: Any) -> bytes:
    return msgpack.packb([0, msgid, method, [params] if params else []])


def connection(limits: Limits = LIMITS) -> ServerConnection:
    return ServerConnection(limits, T0)


def turn(conn: ServerConnection) -> list[Any]:
    """One turn: every event next_event gives before it says the turn is over."""
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events


def answer_all(conn: ServerConnection, events: list[Any]) -> None:
    for event in events:
        conn.send_response(event.msgid, None, {"ok": event.msgid})


def written(conn: ServerConnection, now: float = T0, room: int | None = None) -> list[Any]:
    """What the client receives, the socket taking at most `room` bytes."""
    data = conn.data_to_send()
    taken = data if room is None else data[:room]
    conn.sent(len(taken), now)
    return _frames(taken)


def _frames(data: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    return list(unpacker)


# -- requests and answers ----------------------------------------------------------------


def test_a_request_in_its_answer_out() -> None:
    conn = connection()
    conn.receive_data(request(7, "network.get", name="podman"), T0)
    assert turn(conn) == [Request(7, "network.get", {"name": "podman"})]
    assert conn.state is READING and conn.in_flight == 1
    conn.send_response(7, NetworkNotFound("no network podman"), None)
    assert written(conn) == [
        [1, 7, {"code": 3, "name": "network_not_found", "message": "no network podman"}, None]
    ]
    assert conn.in_flight == 0 and conn.data_to_send() == b""


def test_answers_may_come_out_of_order_and_leave_in_one_write() -> None:
    conn = connection()
    conn.receive_data(request(1) + request(2) + request(3), T0)
    events = turn(conn)
    answer_all(conn, events[::-1])
    assert [frame[1] for frame in written(conn)] == [3, 2, 1]


def test_a_notification_is_handed_over_and_owes_nothing() -> None:
    conn = connection()
    conn.receive_data(msgpack.packb([2, "log", [{"level": "debug"}]]), T0)
    assert turn(conn) == [Notification("log", {"level": "debug"})]
    assert conn.in_flight == 0 and conn.data_to_send() == b""


def test_received_at_is_when_the_bytes_of_a_request_arrived() -> None:
    conn = ServerConnection(Limits(), T0)
    conn.receive_data(request(1) * EVENTS_PER_TURN + request(2), T0 + 1)
    turn(conn)
    assert conn.state is BACKLOG
    turn(conn)  # served a round later, but it arrived at T0 + 1
    assert conn.received_at == T0 + 1


# -- the per-turn budget -------------------------------------------------------------------


def test_a_turn_serves_at_most_its_budget_and_the_rest_waits_its_turn() -> None:
    conn = ServerConnection(Limits(max_in_flight=1000), T0)
    conn.receive_data(b"".join(request(i) for i in range(EVENTS_PER_TURN + 8)), T0)
    first = turn(conn)
    assert [e.msgid for e in first] == list(range(EVENTS_PER_TURN))
    assert conn.state is BACKLOG  # served next round, without reading meanwhile
    second = turn(conn)
    assert [e.msgid for e in second] == list(range(EVENTS_PER_TURN, EVENTS_PER_TURN + 8))
    assert conn.state is READING


def test_end_turn_leaves_the_rest_for_the_next_round() -> None:
    conn = connection()
    conn.receive_data(request(1, "ping") + request(2, "ping"), T0)
    assert conn.next_event() == Request(1, "ping", {})
    conn.send_response(1, None, {"version": "x"})  # answered inline, as the server's reads are
    conn.end_turn()
    assert conn.state is BACKLOG
    assert turn(conn) == [Request(2, "ping", {})]  # the next round
    assert conn.state is READING


# -- back-pressure -------------------------------------------------------------------------


def test_at_the_in_flight_cap_nothing_is_served_until_an_answer_leaves() -> None:
    conn = connection()  # max_in_flight 4
    conn.receive_data(b"".join(request(i) for i in range(10)), T0)
    events = turn(conn)
    assert [e.msgid for e in events] == [0, 1, 2, 3]
    assert conn.state is BLOCKED and conn.next_event() is None
    conn.send_response(0, None, "done")
    assert conn.state is BACKLOG  # the driver serves it next round
    assert [e.msgid for e in turn(conn)] == [4]
    assert conn.state is BLOCKED


def test_the_cap_counts_unanswered_requests_only() -> None:
    conn = connection()
    conn.receive_data(b"".join(request(i, "ping") for i in range(6)), T0)
    for msgid in range(6):  # each answered before the next is taken, as the server's reads are
        event = conn.next_event()
        assert isinstance(event, Request) and event.msgid == msgid
        conn.send_response(msgid, None, "pong")
    assert conn.next_event() is None and conn.state is READING


def test_over_the_high_water_mark_nothing_is_read_or_served_until_it_drains() -> None:
    conn = ServerConnection(Limits(max_in_flight=100), T0)
    conn.receive_data(request(1) + request(2) + request(3), T0)
    first = conn.next_event()
    assert isinstance(first, Request)
    conn.send_response(first.msgid, None, "x" * (OUTBOX_HIGH_WATER + 1))
    assert conn.state is BLOCKED and conn.next_event() is None
    written(conn, room=OUTBOX_HIGH_WATER // 2)  # the client reads half: under the mark
    assert conn.state is BACKLOG  # under the mark again
    assert [e.msgid for e in turn(conn)] == [2, 3]


def test_answers_over_the_high_water_mark_stop_a_reading_connection() -> None:
    conn = ServerConnection(Limits(max_in_flight=100), T0)
    conn.receive_data(request(1), T0)
    (event,) = turn(conn)
    assert conn.state is READING
    conn.send_response(event.msgid, None, "x" * (OUTBOX_HIGH_WATER + 1))
    assert conn.state is BLOCKED
    written(conn)
    assert conn.state is BACKLOG
    assert turn(conn) == [] and conn.state is READING


# -- malformed input -----------------------------------------------------------------------


def test_a_well_formed_frame_of_the_wrong_shape_is_answered_and_the_stream_goes_on() -> None:
    conn = connection()
    conn.receive_data(msgpack.packb([0, 5, "alloc", "not params"]) + request(6), T0)
    violation, good = turn(conn)
    assert isinstance(violation, ProtocolViolation) and not violation.fatal
    assert good == Request(6, "alloc", {})
    ((kind, msgid, error, result),) = written(conn)
    assert (kind, msgid, error["name"], result) == (1, 5, "invalid_request", None)
    assert conn.state is READING and conn.in_flight == 1


def test_bytes_that_are_not_msgpack_are_answered_then_the_connection_ends() -> None:
    conn = connection()
    conn.receive_data(request(1) + b"\xc1" + request(2), T0)
    events = turn(conn)
    assert events[0] == Request(1, "alloc", {})
    assert isinstance(events[1], ProtocolViolation) and events[1].fatal
    assert len(events) == 2 and conn.state is DRAINING  # nothing after is trusted
    ((_, msgid, error, _),) = written(conn)
    assert (msgid, error["name"]) == (0, "invalid_request")
    assert conn.state is DRAINING  # request 1 is still owed its answer
    conn.send_response(1, None, "late but answered")
    assert [frame[1] for frame in written(conn)] == [1]
    assert conn.state is CLOSED


def test_a_frame_over_the_limit_is_refused_and_the_connection_ends() -> None:
    conn = connection(Limits(max_frame_bytes=64))
    conn.receive_data(request(1, "alloc", container_id="x" * 100), T0)
    (violation,) = turn(conn)
    assert isinstance(violation, ProtocolViolation) and violation.fatal
    ((_, msgid, error, _),) = written(conn)
    assert (msgid, error["name"]) == (0, "request_too_large")
    assert conn.state is CLOSED


# -- half-close ----------------------------------------------------------------------------


def test_a_client_that_closes_its_side_still_gets_every_answer() -> None:
    conn = connection()  # max_in_flight 4: reading pauses and resumes
    conn.receive_data(b"".join(request(i) for i in range(10)), T0)
    answered = []
    for _ in range(10):  # rounds of the driver
        events = turn(conn)
        answer_all(conn, events)
        answered += [frame[1] for frame in written(conn)]
        if conn.state is READING:
            conn.receive_data(b"", T0)  # EOF: the client shut down its writing side
        if conn.state is CLOSED:
            break
    assert answered == list(range(10))
    assert conn.state is CLOSED


def test_eof_with_answers_owed_drains_then_closes() -> None:
    conn = connection()
    conn.receive_data(request(1), T0)
    (event,) = turn(conn)
    conn.receive_data(b"", T0)
    assert turn(conn) == [] and conn.state is DRAINING
    conn.send_response(event.msgid, None, "ok")
    assert conn.state is DRAINING  # until the answer has left
    assert [frame[1] for frame in written(conn)] == [1]
    assert conn.state is CLOSED


def test_eof_in_the_middle_of_a_frame_is_answered_then_closes() -> None:
    conn = connection()
    frame = request(1)
    conn.receive_data(frame[:3], T0)
    assert turn(conn) == []
    conn.receive_data(b"", T0)
    (violation,) = turn(conn)
    assert isinstance(violation, ProtocolViolation) and violation.fatal
    assert "in the middle of a frame" in str(violation.error)
    assert len(written(conn)) == 1 and conn.state is CLOSED


def test_an_answer_for_a_closed_connection_is_dropped() -> None:
    conn = connection()
    conn.receive_data(request(1), T0)
    turn(conn)
    conn.close()
    conn.send_response(1, None, "nobody listens")
    assert conn.state is CLOSED and conn.data_to_send() == b"" and conn.in_flight == 0


# -- deadlines -----------------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    conn = connection()
    assert conn.timed_out(T0 + IDLE_S) is None
    assert conn.timed_out(T0 + IDLE_S + 0.01) is Timeout.IDLE
    assert conn.state is CLOSED


def test_bytes_received_or_sent_reset_the_idle_clock() -> None:
    conn = connection()
    conn.receive_data(request(1), T0 + 20)
    (event,) = turn(conn)
    conn.send_response(event.msgid, None, "ok")
    written(conn, now=T0 + 40)
    assert conn.timed_out(T0 + 40 + IDLE_S) is None
    assert conn.timed_out(T0 + 40 + IDLE_S + 0.01) is Timeout.IDLE


def test_waiting_on_our_own_answers_is_not_idling() -> None:
    conn = connection()
    conn.receive_data(request(1), T0)
    (event,) = turn(conn)
    assert conn.timed_out(T0 + 10 * IDLE_S) is None  # the writer is slow, not the client
    conn.send_response(event.msgid, None, "ok")
    written(conn, now=T0 + 10 * IDLE_S)
    assert conn.timed_out(T0 + 11 * IDLE_S + 0.01) is Timeout.IDLE


def test_a_half_sent_frame_is_closed_after_the_idle_timeout_even_if_it_trickles() -> None:
    conn = connection()
    frame = request(1, "ping", pad="x" * 200)
    for i, byte in enumerate(frame[:-1]):
        now = T0 + i * 0.2  # a byte well within the idle timeout of the last
        conn.receive_data(bytes([byte]), now)
        assert turn(conn) == []
        if now - T0 > IDLE_S:
            break
        assert conn.timed_out(now) is None
    assert conn.timed_out(T0 + IDLE_S + 0.01) is Timeout.HALF_FRAME


def test_a_frame_that_completes_restarts_the_half_frame_clock() -> None:
    conn = connection()
    first, second = request(1), request(2)
    conn.receive_data(first[:2], T0)
    turn(conn)
    conn.receive_data(first[2:] + second[:2], T0 + 20)  # one frame done, the next begun
    turn(conn)
    assert conn.timed_out(T0 + IDLE_S + 1) is None
    assert conn.timed_out(T0 + 20 + IDLE_S + 0.01) is Timeout.HALF_FRAME


def test_a_client_that_does_not_read_its_answers_is_closed_after_the_send_timeout() -> None:
    conn = ServerConnection(Limits(idle_timeout_s=1000.0), T0)
    conn.receive_data(request(1), T0)
    (event,) = turn(conn)
    conn.send_response(event.msgid, None, "x" * 1000)
    written(conn, now=T0, room=100)  # the socket took some: the rest waits
    written(conn, now=T0 + 5, room=100)  # progress resets the clock
    written(conn, now=T0 + 12, room=0)  # no room: no progress
    assert conn.timed_out(T0 + 5 + SEND_TIMEOUT_S) is None
    assert conn.timed_out(T0 + 5 + SEND_TIMEOUT_S + 0.01) is Timeout.UNREAD
    assert conn.state is CLOSED


def test_a_client_reading_slowly_but_steadily_is_not_cut_off() -> None:
    conn = ServerConnection(Limits(idle_timeout_s=1000.0), T0)
    conn.receive_data(request(1), T0)
    (event,) = turn(conn)
    conn.send_response(event.msgid, None, "x" * 1000)
    for step in range(11):
        now = T0 + step * (SEND_TIMEOUT_S - 1)
        written(conn, now=now, room=100)
        assert conn.timed_out(now + SEND_TIMEOUT_S - 0.5) is None
    assert conn.data_to_send() == b"" and conn.state is READING


@pytest.mark.parametrize("state", [BACKLOG, BLOCKED])
def test_no_half_frame_deadline_while_complete_frames_wait(state: Any) -> None:
    conn = connection()
    # Four alloc requests fill the cap; the fifth and a partial sixth wait behind them.
    conn.receive_data(b"".join(request(i) for i in range(5)) + request(5)[:3], T0)
    events = turn(conn)
    assert conn.state is BLOCKED
    if state is BACKLOG:
        answer_all(conn, events[:1])
        written(conn, now=T0)
        assert conn.state is BACKLOG
    assert conn.timed_out(T0 + IDLE_S + 1) is None
