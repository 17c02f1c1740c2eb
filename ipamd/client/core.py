"""The sans-IO client core both drivers share: request ids, framing, replies, errors.

`ClientCore` wraps an `RpcConnection(role="client")` the way httpcore wraps h11:
a driver asks it for the bytes of a request (`start`), hands it whatever bytes
arrive (`receive_data`, b"" for EOF) and takes replies out (`next_reply`) until
`NEED_DATA`. There is no socket, task or clock in here; the blocking `Client`
and the `TrioClient` are thin drivers around it.

Rules it keeps:

* msgids count up from 1 and wrap before 2**32, skipping any still in flight.
  msgid 0 is never used for a request: the daemon answers a frame it cannot
  read (too large, undecodable) on msgid 0 and then closes the connection, so a
  reply on msgid 0 means "this connection is finished, and here is why".
* Whose fault: the daemon's error replies become `ipamd.errors` classes
  (`error_from_wire`) inside `Reply`; a connection that is finished (EOF, a
  frame the core cannot trust, a reply to a msgid nobody asked for) raises
  `ConnectionFailed` or, for the daemon's msgid-0 verdict, that `IpamError`.
  After `next_reply` raises, the connection is dead: the driver drops it.
* A driver that gives up on a call (timeout, cancellation) calls `abandon`; the
  late reply, if it ever comes, is dropped quietly.
* Client-side `Limits` are generous: the daemon is trusted more than its
  clients, and a `gc` result or a `stats` answer can be large.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

from ipamd.errors import IpamError, error_from_wire
from ipamd.wire.limits import Limits
from ipamd.wire.protocol import (
    MSGID_MAX,
    NEED_DATA,
    NeedData,
    ProtocolViolation,
    Response,
    RpcConnection,
)

CLIENT_LIMITS: Final = Limits(
    # A gc result lists every lease it released; 64 MiB is about 300,000 leases.
    max_frame_bytes=64 << 20,
    # Lists of leases (gc) and networks (stats) are the long arrays.
    max_array_len=1 << 20,
    max_map_len=1 << 20,
    # Error messages and attribute values are short; this only refuses nonsense.
    max_str_len=1 << 20,
    max_bin_len=1 << 20,
)


class ConnectionFailed(Exception):
    """No answer could be had from the daemon: no socket, refused, gone mid-request, timeout.

    Not an `IpamError`: the daemon did not say no, it could not be asked (for a
    mutation cut off mid-request, the outcome is unknown; alloc and release are
    idempotent, so a retry is safe). The message names the socket path.
    """

    def __init__(self, socket_path: Path, message: str) -> None:
        super().__init__(message)
        self.socket_path = socket_path
        self.message = message

    def __str__(self) -> str:
        return self.message


class RequestTimeout(ConnectionFailed):
    """A call (or connecting) took longer than its timeout; its outcome is unknown."""


class ProtocolError(ConnectionFailed):
    """The peer broke msgpack-RPC (undecodable frame, reply to an unknown msgid, odd result).

    Usually the socket is not an ipamd's, or it is a daemon with a bug.
    """


class Reply(NamedTuple):
    """One answer from the daemon: `error` is None on success."""

    msgid: int
    error: IpamError | None
    result: Any

    def value(self) -> Any:
        """The result, or raise the daemon's error."""
        if self.error is not None:
            raise self.error
        return self.result


class ClientCore:
    """The client side of one connection; see the module docstring for its rules."""

    def __init__(self, socket_path: Path, limits: Limits = CLIENT_LIMITS) -> None:
        self.socket_path = socket_path
        self._rpc = RpcConnection("client", limits)
        self._next_msgid = 1
        self._in_flight: set[int] = set()
        self._abandoned: set[int] = set()
        self._eof = False

    @property
    def in_flight(self) -> int:
        """How many requests await a reply (abandoned ones excluded)."""
        return len(self._in_flight)

    def start(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """A fresh msgid and the bytes of request `[0, msgid, method, [params]]`."""
        msgid = self._allocate_msgid()
        data = self._rpc.send_request(msgid, method, params or {})
        self._in_flight.add(msgid)
        return msgid, data

    def abandon(self, msgid: int) -> None:
        """The caller gave up on `msgid`: drop its reply if it ever comes."""
        if msgid in self._in_flight:
            self._in_flight.discard(msgid)
            self._abandoned.add(msgid)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the daemon; b"" when it closed its side."""
        if self._eof:
            return  # nothing after EOF counts
        self._eof = not data
        self._rpc.receive_data(data)

    def next_reply(self) -> Reply | Literal[NeedData.NEED_DATA]:
        """The next reply to a call in flight, or `NEED_DATA`.

        Raises `ConnectionFailed` (or the daemon's msgid-0 `IpamError`) when the
        connection is finished; every call still in flight is lost with it.
        """
        while True:
            event = self._rpc.next_event()
            if event is NEED_DATA:
                if self._eof:
                    raise self._closed()
                return NEED_DATA
            if not isinstance(event, Response):  # a violation: a client sees nothing else
                raise self._violation(event)
            reply = self._reply(event)
            if reply is not None:
                return reply

    def _reply(self, response: Response) -> Reply | None:
        msgid = response.msgid
        error = None if response.error is None else error_from_wire(response.error)
        if msgid in self._in_flight:
            self._in_flight.discard(msgid)
            return Reply(msgid, error, None if error is not None else response.result)
        if msgid in self._abandoned:
            self._abandoned.discard(msgid)
            return None
        if msgid == 0 and error is not None:
            # The daemon's verdict on the connection (a frame it could not read); it closes next.
            raise error
        raise ProtocolError(
            self.socket_path,
            f"ipamd at {self.socket_path} answered msgid {msgid}, which no call is waiting for",
        )

    def _violation(self, event: Any) -> ConnectionFailed:
        path = self.socket_path
        detail = event.error if isinstance(event, ProtocolViolation) else event
        if self._eof:  # cut off mid-frame: the daemon went away, it did not speak nonsense
            return ConnectionFailed(
                path, f"ipamd at {path} closed the connection in the middle of a reply ({detail})"
            )
        return ProtocolError(path, f"ipamd at {path} sent a bad frame: {detail}")

    def _closed(self) -> ConnectionFailed:
        waiting = len(self._in_flight)
        detail = f" with {waiting} call(s) unanswered" if waiting else ""
        return ConnectionFailed(
            self.socket_path, f"ipamd at {self.socket_path} closed the connection{detail}"
        )

    def _allocate_msgid(self) -> int:
        if len(self._in_flight) + len(self._abandoned) >= MSGID_MAX:
            raise ConnectionFailed(
                self.socket_path, f"every msgid is in flight to ipamd at {self.socket_path}"
            )
        msgid = self._next_msgid
        while msgid in self._in_flight or msgid in self._abandoned:
            msgid = msgid + 1 if msgid < MSGID_MAX else 1
        self._next_msgid = msgid + 1 if msgid < MSGID_MAX else 1
        return msgid
