"""One client connection of the server, as a pure state machine: bytes and `now` in,
events and bytes to send out.

Everything that decides what a connection does next lives in this file: when it
may read, when it serves what it read, when it stops for back-pressure, when a
deadline closes it, when it is finished. There is no socket, task or clock in
here (the driver, ipamd/daemon/server.py, passes `now`), so its tests are bytes
in, bytes out, with a clock they set.

The driver's part, per connection:

    receive_data(data, now)    bytes read from the socket (b"" at EOF), only in READING
    next_event()               until it returns None (the turn is over), acting on each
                               Request (a ProtocolViolation is already answered here)
    end_turn()                 after answering a read inline: a read may be costly
    send_response(...)         one per Request, whenever its answer is ready
    data_to_send() / sent(n, now)   write what is queued, say how much the socket took
    timed_out(now)             now and then: a deadline passed means CLOSED
    state                      what to do next (the table below)

States (`State`) and what moves a connection between them:

    READING   everything complete it has read is served; read when bytes come
              -> BACKLOG   the turn's budget is spent, or end_turn(): frames may wait
              -> BLOCKED   max_in_flight answers owed, or over OUTBOX_HIGH_WATER unsent
              -> DRAINING  EOF, or a frame the stream cannot recover from
    BACKLOG   complete frames may wait unserved: serve them next round (no read meanwhile)
              -> READING, BLOCKED, DRAINING as above, on the next turn
    BLOCKED   neither reads nor serves until answers leave
              -> BACKLOG   once under both bounds again (send_response, sent)
    DRAINING  the client will send nothing more that we read; answers what it owes
              -> CLOSED    once nothing is owed or unsent
    CLOSED    finished: the driver closes the socket; late answers are dropped
              (any state -> CLOSED: a deadline passed, or the driver's close())

Deadlines (`timed_out`): answers unsent and no progress for SEND_TIMEOUT_S; a
frame half-sent for longer than the idle timeout (bytes trickling in do not
reset it); nothing owed, nothing unsent and nothing received for the idle
timeout. Waiting on our own answers is not idling.
"""

from __future__ import annotations

import enum
from typing import Any, Final

from ipamd.errors import IpamError
from ipamd.wire.limits import Limits
from ipamd.wire.protocol import NEED_DATA, Notification, ProtocolViolation, Request, RpcConnection

# Events served from one connection per turn: enough to drain a typical pipelined
# burst in one read, few enough that a round over every connection stays short.
EVENTS_PER_TURN: Final = 32
# Answers queued for a client beyond this stop the connection reading more.
OUTBOX_HIGH_WATER: Final = 1 << 20
# A client that has not taken any of its answers for this long is stuck or hostile.
SEND_TIMEOUT_S: Final = 10.0


class State(enum.Enum):
    READING = "reading"
    BACKLOG = "backlog"
    BLOCKED = "blocked"
    DRAINING = "draining"
    CLOSED = "closed"


class Timeout(enum.Enum):
    """Why `timed_out` closed a connection (for the driver's log)."""

    UNREAD = "stopped reading its responses"
    HALF_FRAME = "a frame stalled half-sent"
    IDLE = "idle"


READING: Final = State.READING
BACKLOG: Final = State.BACKLOG
BLOCKED: Final = State.BLOCKED
DRAINING: Final = State.DRAINING
CLOSED: Final = State.CLOSED


class ServerConnection:
    """The server's side of one client connection; see the module docstring."""

    def __init__(self, limits: Limits, now: float) -> None:
        self.state: State = READING
        self.in_flight = 0  # requests handed out by next_event and not answered yet
        self.unsent = 0  # bytes queued in the outbox
        # When the last bytes arrived: no read happens while frames wait unserved,
        # so it is when every request now served arrived (for alloc latency).
        self.received_at = now
        self._rpc = RpcConnection("server", limits)
        self._max_in_flight = limits.max_in_flight
        self._idle_timeout = limits.idle_timeout_s
        self._budget = EVENTS_PER_TURN  # events left in this turn
        self._outbox: list[bytes] = []
        self._active_at = now  # bytes received or sent: the idle clock
        self._frame_started_at: float | None = None  # an unfinished frame's first bytes
        self._stuck_since: float | None = None  # unsent bytes last made no progress

    # -- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the client; b"" when it closed its side. REQUIRES: state READING."""
        self._rpc.receive_data(data)
        self._active_at = self.received_at = now

    def next_event(self) -> Request | Notification | ProtocolViolation | None:
        """The next thing for the driver to act on, or None: this turn is over, and
        `state` says what comes next. Every Request returned is owed an answer."""
        state = self.state
        if state is not READING and state is not BACKLOG:
            return None
        if not self._budget:
            self._turn_over(BACKLOG)
            return None
        if self.in_flight >= self._max_in_flight or self.unsent > OUTBOX_HIGH_WATER:
            self._turn_over(BLOCKED)
            return None
        event = self._rpc.next_event()
        if event is NEED_DATA:  # the turn is over: everything complete was served
            self._budget = EVENTS_PER_TURN
            if self._rpc.at_eof:
                self.state = DRAINING
                self._finish_if_drained()
                return None
            self.state = READING
            if not self._rpc.in_frame:
                self._frame_started_at = None
            elif self._frame_started_at is None:
                self._frame_started_at = self.received_at
            return None
        self._budget -= 1
        self._frame_started_at = None  # a frame completed: any partial one is newer
        if type(event) is Request:
            self.in_flight += 1
            return event
        if type(event) is ProtocolViolation:
            if event.msgid is not None or event.fatal:
                self._queue(self._rpc.send_response(event.msgid or 0, event.error, None))
            if event.fatal:
                # Nothing more is read; what is in flight is still answered.
                self._turn_over(DRAINING)
                self._finish_if_drained()
            return event
        assert type(event) is Notification  # a client's events are never responses
        return event

    def end_turn(self) -> None:
        """End this connection's turn early; the rest waits for the next round."""
        if self.state is READING:
            self.state = BACKLOG
        self._budget = EVENTS_PER_TURN

    def _turn_over(self, state: State) -> None:
        self.state = state
        self._budget = EVENTS_PER_TURN

    # -- sending ---------------------------------------------------------------------------

    def send_response(self, msgid: int, error: IpamError | None, result: Any) -> None:
        """Queue the answer to a Request that next_event returned. REQUIRES: one per Request."""
        self.in_flight -= 1
        if self.state is CLOSED:
            return  # the client is gone: nobody to tell
        self._queue(self._rpc.send_response(msgid, error, result))
        if self.state is BLOCKED:
            self._unblock_if_room()

    def _queue(self, data: bytes) -> None:
        self._outbox.append(data)
        self.unsent += len(data)
        if self.unsent > OUTBOX_HIGH_WATER and (self.state is READING or self.state is BACKLOG):
            self.state = BLOCKED

    def data_to_send(self) -> bytes:
        """Everything queued for the client (b"" when nothing is)."""
        outbox = self._outbox
        if len(outbox) > 1:
            outbox[:] = [b"".join(outbox)]
        return outbox[0] if outbox else b""

    def sent(self, count: int, now: float) -> None:
        """The socket took the first `count` bytes of `data_to_send()`."""
        if self.state is CLOSED:
            return
        if count:
            self._active_at = now
            self.unsent -= count
            data = self._outbox[0]
            self._outbox = [data[count:]] if count < len(data) else []
        if not self._outbox:
            self._stuck_since = None
        elif count or self._stuck_since is None:
            self._stuck_since = now
        if self.state is BLOCKED:
            self._unblock_if_room()
        elif self.state is DRAINING:
            self._finish_if_drained()

    def _unblock_if_room(self) -> None:
        if self.in_flight < self._max_in_flight and self.unsent <= OUTBOX_HIGH_WATER:
            self.state = BACKLOG

    def _finish_if_drained(self) -> None:
        if not self.in_flight and not self.unsent:
            self.close()

    # -- ending ----------------------------------------------------------------------------

    def timed_out(self, now: float) -> Timeout | None:
        """The deadline that has passed, if one has: the connection is then CLOSED."""
        if self.state is CLOSED:
            return None
        timeout = None
        if self._stuck_since is not None and now - self._stuck_since > SEND_TIMEOUT_S:
            timeout = Timeout.UNREAD
        elif (
            self.state is READING
            and self._frame_started_at is not None
            and now - self._frame_started_at > self._idle_timeout
        ):
            timeout = Timeout.HALF_FRAME
        elif not self.in_flight and not self.unsent and now - self._active_at > self._idle_timeout:
            timeout = Timeout.IDLE
        if timeout is not None:
            self.close()
        return timeout

    def close(self) -> None:
        """Finished, for whatever reason (the driver calls it when the socket fails)."""
        self.state = CLOSED
        self._outbox = []
        self.unsent = 0
