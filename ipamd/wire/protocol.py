"""msgpack-RPC framing for ipamd (DESIGN.md section 4): bytes in, events out.

`RpcConnection` is a pure protocol object in the manner of h11. A driver hands it
whatever bytes arrived (`receive_data`, with b"" for EOF), takes events out
(`next_event`) until `NEED_DATA`, and writes out whatever bytes the `send_*`
encoders return. There is no socket, task or clock in here, so the trio server
(role "server") and both client drivers (role "client") share it, and its tests
are bytes in, events out.

Rules it keeps:

* Frames: request `[0, msgid, method, params]`, response `[1, msgid, error, result]`,
  notification `[2, method, params]`. A msgid is an int in 0..2**32-1, a method a
  str, params an array holding exactly one map of named arguments (str keys, at
  every level) or an empty array (no arguments). Wherever a map is expected an
  empty array counts as an empty map: Lua's encoder cannot tell the two apart.
* Whose fault: the peer's mistakes come out as `ProtocolViolation` events, never as
  exceptions; misuse of this API by the local driver raises `LocalProtocolError`.
* A well-formed msgpack value of the wrong shape is a non-fatal violation: the
  stream is still aligned, and it carries the msgid when one could be read so the
  server can answer it. Bytes that cannot be trusted (not msgpack, bad UTF-8, over
  a length or depth limit, a frame over `max_frame_bytes`, EOF inside a frame) are
  fatal: nothing more is read, every later `next_event` returns the same violation,
  and it carries no msgid, since nothing read from such a stream is trusted either.
* Memory is bounded per connection: msgpack is never handed more than
  `max_frame_bytes + 1` bytes of one frame, so a length prefix that lies (a str
  "of 4 GiB") costs at most that much before it is refused.
* msgpack's exceptions are translated here, where they enter, and nowhere else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, TypeGuard

import msgpack

from ipamd.errors import InvalidRequest, IpamError, RequestTooLarge
from ipamd.wire.limits import DEFAULT_LIMITS, Limits
from ipamd.wire.values import as_map, describe

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2
MSGID_MAX: Final = 2**32 - 1

# msgpack's C unpacker has a fixed container stack this deep; deeper input fails there (fatal),
# so a max_depth above it changes nothing.
MSGPACK_STACK_DEPTH: Final = 1024

# The Unpacker's first buffer; it grows on demand up to max_frame_bytes + 1.
# Small: every connection holds one, and most frames are a few hundred bytes.
_INITIAL_BUFFER: Final = 4 * 1024

# A connection's Packer keeps its buffer at the size of the largest frame it has encoded;
# after one bigger than this (a long page of leases) it starts afresh, so an idle
# connection holds little. Packing that much costs far more than a new Packer does.
_PACKER_KEEPS: Final = 64 * 1024


def _is_int(value: Any) -> TypeGuard[int]:
    # bool is an int subclass in Python, but msgpack true/false are not integers.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_msgid(value: Any) -> TypeGuard[int]:
    return _is_int(value) and 0 <= value <= MSGID_MAX


class LocalProtocolError(Exception):
    """The local driver misused this API (a bad msgid, a role that cannot send this).

    Never crosses the wire, so it is not an `IpamError`: it is a bug on our side.
    """


@dataclass(slots=True)
class Request:
    msgid: int
    method: str
    params: dict[str, Any]


@dataclass(slots=True)
class Notification:
    method: str
    params: dict[str, Any]


@dataclass(slots=True)
class Response:
    msgid: int
    error: dict[str, Any] | None
    result: Any


@dataclass(slots=True)
class ProtocolViolation:
    """A frame the peer got wrong.

    The server answers `error` to `msgid` when msgid is not None, and closes the
    connection when `fatal` (the byte stream can no longer be trusted).
    """

    msgid: int | None
    error: IpamError
    fatal: bool


class NeedData(enum.Enum):
    """The type of `NEED_DATA`; an enum so that `event is NEED_DATA` narrows for mypy."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA

Event: TypeAlias = Request | Notification | Response | ProtocolViolation
Role: TypeAlias = Literal["server", "client"]


class RpcConnection:
    """One side of one msgpack-RPC connection; see the module docstring for its rules.

    Not thread-safe, senders included: it keeps decoding state, and a Packer whose buffer
    every `send_*` reuses. One driver owns it.
    """

    def __init__(self, role: Role, limits: Limits = DEFAULT_LIMITS) -> None:
        if role not in ("server", "client"):
            raise LocalProtocolError(f"role must be 'server' or 'client', got {role!r}")
        self.role: Final[Role] = role
        self.limits: Final[Limits] = limits
        self._server: Final = role == "server"
        buffer_size = limits.max_frame_bytes + 1
        self._max_buffered: Final = buffer_size  # of one frame; see `_room`
        self._unpacker: Any = msgpack.Unpacker(
            raw=False,
            use_list=True,
            # Non-str keys must decode so they can be reported with the msgid; msgpack's ints and
            # floats cannot be made to collide in bulk, and str/bytes hashes are randomised.
            strict_map_key=False,
            unicode_errors="strict",
            max_buffer_size=buffer_size,
            read_size=min(buffer_size, _INITIAL_BUFFER),
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_ext_len=limits.max_bin_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
        )
        # A Packer per connection, not `msgpack.packb` per frame: packb builds a Packer from
        # keyword arguments and allocates its 256 KiB buffer every time, a third of the cost
        # of encoding a typical response.
        self._packer: Any = _new_packer()
        self._pending = bytearray()  # received, not yet handed to the unpacker
        self._fed = 0  # bytes handed to the unpacker so far
        self._frame_start = 0  # stream offset where the frame being decoded begins
        self.at_eof = False  # the peer has closed its side (`receive_data(b"")`); read-only
        self._fatal: ProtocolViolation | None = None

    # -- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; b"" means the peer closed its side (EOF).

        After a fatal violation incoming bytes are dropped unread.
        """
        if not data:
            self.at_eof = True
            return
        if self.at_eof:
            raise LocalProtocolError("receive_data() after EOF")
        if self._fatal is not None:
            return
        fed = self._fed
        if not self._pending and len(data) <= self._max_buffered - (fed - self._frame_start):
            # Nothing waits ahead of these bytes and they fit the frame bound (`_room`): feed
            # them now, as `_feed_more` would on the next `next_event`, without the copies.
            self._unpacker.feed(data)
            self._fed = fed + len(data)
            return
        self._pending += data

    @property
    def in_frame(self) -> bool:
        """Whether bytes of an unfinished frame are buffered (once `next_event`
        has returned NEED_DATA)."""
        return self._fed > self._frame_start or bool(self._pending)

    def next_event(self) -> Event | Literal[NeedData.NEED_DATA]:
        """The next event from the bytes received so far, or `NEED_DATA`.

        Never raises: a peer's mistake is a `ProtocolViolation`. After a fatal one,
        every call returns that same violation. After a clean EOF it is `NEED_DATA`.
        """
        if self._fatal is not None:
            return self._fatal
        max_frame = self.limits.max_frame_bytes
        while True:
            if self._frame_start == self._fed and not self._pending:
                # Every byte received has been decoded. Asking msgpack anyway would raise
                # OutOfData, which costs about as much as decoding a small frame. No bytes in
                # a frame means nothing over the limit and a clean EOF, if EOF it is.
                return NEED_DATA
            try:
                frame = self._unpacker.unpack()
            except msgpack.OutOfData:
                in_frame = self._fed - self._frame_start
                if in_frame > max_frame:
                    return self._fail(
                        RequestTooLarge(f"frame is over the limit of {max_frame} bytes")
                    )
                if self._pending:
                    self._feed_more()
                    continue
                if self.at_eof and in_frame:
                    return self._fail(
                        InvalidRequest(
                            f"connection closed in the middle of a frame ({in_frame} bytes in)"
                        )
                    )
                return NEED_DATA
            except Exception as exc:  # msgpack's own, or TypeError/ValueError from decoding
                return self._fail(InvalidRequest(f"undecodable frame: {_explain(exc)}"))
            frame_end: int = self._unpacker.tell()
            size = frame_end - self._frame_start
            self._frame_start = frame_end
            if size > max_frame:
                return self._fail(
                    RequestTooLarge(f"frame of {size} bytes is over the limit of {max_frame}")
                )
            max_depth = self.limits.max_depth
            if self._server:
                request = _plain_request(frame, max_depth)
                if request is not None:
                    return request
            # Anything else takes the long way, which finds out which rule broke and says so.
            if _nested_deeper_than(frame, max_depth):
                return self._fail(
                    InvalidRequest(f"undecodable frame: nested deeper than {max_depth} levels")
                )
            if self._server:
                return _server_event(frame)
            return _client_event(frame)

    def _feed_more(self) -> None:
        # REQUIRES: the unpacker is out of data and fewer than max_frame_bytes + 1 bytes of the
        # current frame have been fed. Feeding at most up to that bound keeps the unpacker's
        # buffer (which holds only unconsumed bytes, all at or after _frame_start) within
        # max_buffer_size, and lets an oversized frame be seen as such.
        room = self._room()
        chunk = bytes(self._pending[:room])
        del self._pending[:room]
        self._unpacker.feed(chunk)
        self._fed += len(chunk)

    def _room(self) -> int:
        """Bytes the unpacker may take now: what keeps its unconsumed bytes, which all
        lie at or after `_frame_start`, within max_frame_bytes + 1."""
        return self._max_buffered - (self._fed - self._frame_start)

    def _fail(self, error: IpamError) -> ProtocolViolation:
        self._fatal = ProtocolViolation(None, error, fatal=True)
        self._pending = bytearray()
        self._unpacker = None  # frees its buffer; never consulted again
        return self._fatal

    # -- sending ---------------------------------------------------------------------------

    def send_request(self, msgid: int, method: str, params: dict[str, Any]) -> bytes:
        """Encode a request `[0, msgid, method, params]` (client role only)."""
        self._require_role("client", "send a request")
        _check_msgid(msgid)
        _check_method(method)
        return self._encode([REQUEST, msgid, method, _wire_params(params)])

    def send_notification(self, method: str, params: dict[str, Any]) -> bytes:
        """Encode a notification `[2, method, params]` (client role only)."""
        self._require_role("client", "send a notification")
        _check_method(method)
        return self._encode([NOTIFICATION, method, _wire_params(params)])

    def send_response(self, msgid: int, error: IpamError | None, result: Any) -> bytes:
        """Encode a response `[1, msgid, error, result]` (server role only).

        A failed response carries `error.to_wire()` and a nil result.
        """
        if not self._server:
            self._require_role("server", "send a response")
        if type(msgid) is not int or not 0 <= msgid <= MSGID_MAX:
            _check_msgid(msgid)  # raises, unless msgid is an int subclass in range
        if error is None:
            return self._encode([RESPONSE, msgid, None, result])
        if result is not None:
            raise LocalProtocolError("a failed response carries no result")
        return self._encode([RESPONSE, msgid, error.to_wire(), None])

    def _encode(self, obj: Any) -> bytes:
        data = _encode_with(self._packer, obj)
        if len(data) > _PACKER_KEEPS:
            self._packer = _new_packer()
        return data

    def _require_role(self, role: Role, action: str) -> None:
        if self.role != role:
            raise LocalProtocolError(f"a {self.role} connection cannot {action}")


# -- helpers other modules use -----------------------------------------------------------------


def encode(obj: Any) -> bytes:
    """Pack one msgpack value the way this wire wants it: str as str, bytes as bin."""
    return _encode_with(_new_packer(), obj)


def _new_packer() -> Any:
    return msgpack.Packer(use_bin_type=True, datetime=False, buf_size=_INITIAL_BUFFER)


def _encode_with(packer: Any, obj: Any) -> bytes:
    # On an error msgpack empties the Packer's buffer, so the packer stays usable.
    try:
        data: bytes = packer.pack(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {describe(obj)}: {exc}") from exc
    return data


# -- reading frames ----------------------------------------------------------------------------


def _server_event(frame: Any) -> Request | Notification | ProtocolViolation:
    msgid: int | None = None
    try:
        kind = _frame_kind(frame)
        if kind == NOTIFICATION:
            if len(frame) != 3:
                raise InvalidRequest(
                    f"a notification is [2, method, params], got an array of {len(frame)} items"
                )
            return Notification(_read_method(frame[1]), _read_params(frame[2]))
        if kind == RESPONSE:
            # Its msgid is in the client's numbering, so answering it could fail a real call.
            raise InvalidRequest("a server accepts requests and notifications, not responses")
        msgid = _read_msgid(frame, "request")
        if len(frame) != 4:
            raise InvalidRequest(
                f"a request is [0, msgid, method, params], got an array of {len(frame)} items"
            )
        return Request(msgid, _read_method(frame[2]), _read_params(frame[3]))
    except InvalidRequest as exc:
        return ProtocolViolation(msgid, exc, fatal=False)


def _client_event(frame: Any) -> Response | ProtocolViolation:
    msgid: int | None = None
    try:
        if _frame_kind(frame) != RESPONSE:
            raise InvalidRequest("a client accepts responses, not requests or notifications")
        msgid = _read_msgid(frame, "response")
        if len(frame) != 4:
            raise InvalidRequest(
                f"a response is [1, msgid, error, result], got an array of {len(frame)} items"
            )
        error = frame[2]
        if error is not None:
            error = as_map(error, "response error")
        return Response(msgid, error, frame[3])
    except InvalidRequest as exc:
        return ProtocolViolation(msgid, exc, fatal=False)


def _plain_request(frame: Any, max_depth: int) -> Request | None:
    """`frame` as a `Request` when it is a well-formed one, None for anything else.

    The fast path for the frame a server sees almost always: a few type checks, then one walk
    over params (`_plain_params`) in place of the two that `_nested_deeper_than` and
    `_non_str_key` make. It decides nothing else: for None, `next_event` runs the full checks,
    which find out what is wrong and word it. msgpack gives exactly list, dict, str, int (bool
    for true/false), so `type(x) is` here means what `isinstance` and `_is_int` mean there.
    """
    # The frame and its params array are two levels, the params map a third.
    if max_depth < 3 or type(frame) is not list or len(frame) != 4:
        return None
    kind, msgid, method, params = frame
    if type(kind) is not int or kind != REQUEST:
        return None
    if type(msgid) is not int or not 0 <= msgid <= MSGID_MAX or type(method) is not str:
        return None
    if type(params) is not list or len(params) > 1:
        return None
    if not params:
        return Request(msgid, method, {})
    named = params[0]
    if type(named) is list and not named:  # an empty array counts as an empty map
        return Request(msgid, method, {})
    if type(named) is not dict or not _plain_params(named, max_depth - 2):
        return None
    return Request(msgid, method, named)


def _plain_params(named: dict[str, Any], levels: int) -> bool:
    """Whether containers in `named` nest at most `levels` deep (itself 1) and every map in it
    has only str keys.

    Breadth first, so depth is counted once per level rather than carried per container, and
    without the paths `_non_str_key` builds for its message.
    """
    level: list[Any] = [named]
    while level:
        if levels <= 0:
            return False
        levels -= 1
        below: list[Any] = []
        for container in level:
            if type(container) is dict:
                for key, child in container.items():
                    if type(key) is not str:
                        return False
                    if type(child) is dict or type(child) is list:
                        below.append(child)
            else:
                for child in container:
                    if type(child) is dict or type(child) is list:
                        below.append(child)
        level = below
    return True


def _frame_kind(frame: Any) -> int:
    if not isinstance(frame, list) or not frame:
        raise InvalidRequest(f"a frame must be a non-empty array, got {describe(frame)}")
    kind = frame[0]
    if not _is_int(kind) or kind not in (REQUEST, RESPONSE, NOTIFICATION):
        raise InvalidRequest(
            "a frame must start with its type, 0 (request), 1 (response) or 2 (notification), "
            f"got {describe(kind)}"
        )
    return kind


def _read_msgid(frame: list[Any], what: str) -> int:
    if len(frame) < 2:
        raise InvalidRequest(f"a {what} has a msgid after its type, got an array of 1 item")
    msgid = frame[1]
    if not _is_msgid(msgid):
        raise InvalidRequest(
            f"a {what} msgid must be an integer in 0..{MSGID_MAX}, got {describe(msgid)}"
        )
    return msgid


def _read_method(method: Any) -> str:
    if not isinstance(method, str):
        raise InvalidRequest(f"method must be a string, got {describe(method)}")
    return method


def _read_params(params: Any) -> dict[str, Any]:
    if not isinstance(params, list):
        raise InvalidRequest(
            f"params must be an array holding one map of named arguments, got {describe(params)}"
        )
    if not params:
        return {}
    if len(params) != 1:
        raise InvalidRequest(
            "params must be an array holding exactly one map of named arguments, "
            f"got {len(params)} items"
        )
    named = as_map(params[0], "params")
    bad = _non_str_key(named)
    if bad is not None:
        path, key = bad
        raise InvalidRequest(f"params{path} keys must be strings, got {describe(key)}")
    return named


def _non_str_key(named: dict[str, Any]) -> tuple[str, Any] | None:
    """The path of the first map below `named` with a non-str key, and that key."""
    stack: list[tuple[str, Any]] = [("", named)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    return path, key
                if isinstance(child, list | dict):
                    stack.append((f"{path}.{key}", child))
        else:
            for index, child in enumerate(value):
                if isinstance(child, list | dict):
                    stack.append((f"{path}[{index}]", child))
    return None


def _nested_deeper_than(frame: Any, max_depth: int) -> bool:
    """Whether containers nest more than `max_depth` deep (the frame itself is 1); iterative."""
    stack: list[tuple[Any, int]] = [(frame, 1)] if isinstance(frame, list | dict) else []
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return True
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, list | dict):  # map keys cannot be: they would be unhashable
                stack.append((child, depth + 1))
    return False


# -- checking our own side ---------------------------------------------------------------------


def _check_msgid(msgid: Any) -> None:
    if not _is_msgid(msgid):
        raise LocalProtocolError(f"msgid must be an int in 0..{MSGID_MAX}, got {msgid!r}")


def _check_method(method: Any) -> None:
    if not isinstance(method, str):
        raise LocalProtocolError(f"method must be a str, got {method!r}")


def _wire_params(params: Any) -> list[dict[str, Any]]:
    if not isinstance(params, dict):
        raise LocalProtocolError(f"params must be a dict, got {describe(params)}")
    bad = _non_str_key(params)
    if bad is not None:
        raise LocalProtocolError(f"params{bad[0]} keys must be str, got {describe(bad[1])}")
    return [params] if params else []


# -- small pieces ------------------------------------------------------------------------------


def _explain(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "a string is not valid UTF-8"
    if isinstance(exc, msgpack.StackError):
        return f"nested deeper than {MSGPACK_STACK_DEPTH} levels"
    if isinstance(exc, msgpack.FormatError):
        return "not msgpack"
    if isinstance(exc, TypeError):  # a list or dict used as a map key
        return f"unusable map key ({exc})"
    return str(exc) or type(exc).__name__
