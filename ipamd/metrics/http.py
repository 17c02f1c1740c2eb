"""The metrics endpoint: `GET /metrics` over HTTP/1.1 on a TCP socket (h11, driven by trio).

The socket is either passed in by systemd (ipamd-metrics.socket: bound in the
host's network namespace, so the service keeps PrivateNetwork=yes) or bound
by the daemon from `[metrics] listen`. h11 parses and frames HTTP (sans-IO:
bytes in, events out); this file only drives it and decides the answers.

Rules it keeps, so that no scraper can hurt the daemon:
- Only `/metrics` exists (404 elsewhere), and only GET and HEAD on it (405
  with `Allow` otherwise). h11 refuses a request head still incomplete past
  MAX_HEAD_BYTES (431), so a connection buffers little more than that; a body
  over MAX_BODY_BYTES gets 413. Both then close the connection.
- At most MAX_CONNECTIONS at once: more are closed as soon as accepted. A
  whole request must arrive within REQUEST_TIMEOUT_S of waiting for it, and
  an answer must leave within SEND_TIMEOUT_S; either failing closes the
  connection. Keep-alive is allowed within those bounds.
- Rendering runs on the trio thread (it reads the daemon's state) and is paced,
  whatever the scrapers do: renders start MIN_RENDER_INTERVAL_S apart at
  least, and further apart when they are slow (many networks), so that they
  take at most MAX_LOOP_SHARE of the event loop. A faster scraper waits for
  its turn; its answer is never stale.
- Nothing raised while serving one connection leaves its task: a bug is logged
  and that connection closed, the daemon carries on.
"""

from __future__ import annotations

import http
import ipaddress
import logging
import socket
from collections.abc import Callable

import h11
import trio

log = logging.getLogger("ipamd.metrics")

PATH = b"/metrics"
# One scraper, a dashboard and a curl are the usual crowd; anything more is a leak or an attack.
MAX_CONNECTIONS = 16
# Prometheus sends a head of some 300 bytes.
MAX_HEAD_BYTES = 8192
# GET has no body; a little is read and dropped, rather than failing a lax client.
MAX_BODY_BYTES = 1024
# Covers a keep-alive wait for the next request plus its arrival: a trickling
# client cannot hold a slot longer than this per request.
REQUEST_TIMEOUT_S = 30.0
SEND_TIMEOUT_S = 10.0
# Bound what scrapes cost the event loop: at most 20 renders a second, and
# at most 5% of the loop's time (a render takes about 0.3 ms with one network,
# 5 ms with a hundred: benchmarks/bench_metrics.py).
MIN_RENDER_INTERVAL_S = 0.05
MAX_LOOP_SHARE = 0.05
RECEIVE_BYTES = 4096
# A connection flood is logged once a minute at most.
REFUSAL_LOG_INTERVAL_S = 60.0
# Lingering close: how long and how much of what a client still sends is dropped.
LINGER_S = 1.0
LINGER_BYTES = 64 << 10
LISTEN_BACKLOG = 64
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def bind_metrics(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host` (an IP address) and `port`; OSError if it cannot be."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class MetricsEndpoint:
    def __init__(self, render: Callable[[], bytes]) -> None:
        """`render()` returns the metrics text (UTF-8); it runs on the trio thread."""
        self.render = render
        self.open = 0
        self.refused = 0
        self._next_render = float("-inf")  # trio's clock: the next render may start then
        self._refusals_logged_at = float("-inf")

    async def serve(
        self,
        sock: socket.socket,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled. A listening socket that fails for good (trio
        already waits out EMFILE and the like) stops the endpoint, not the daemon."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        try:
            await trio.serve_listeners(self._handle, [listener], task_status=task_status)
        except* OSError as group:
            log.error("metrics: the endpoint stopped: %s", group.exceptions[0])

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self.open >= MAX_CONNECTIONS:
            self.refused += 1
            now = trio.current_time()
            if now - self._refusals_logged_at >= REFUSAL_LOG_INTERVAL_S:  # a flood logs little
                self._refusals_logged_at = now
                log.warning(
                    "metrics: %d connections open; refusing more (%d so far)",
                    self.open,
                    self.refused,
                )
            await trio.aclose_forcefully(stream)
            return
        self.open += 1
        try:
            await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the scraper went away
        except Exception:
            log.exception("metrics: serving a connection failed")
        finally:
            self.open -= 1
            await _close_lingering(stream)

    async def _converse(self, stream: trio.SocketStream) -> None:
        """Answer requests on one connection until it closes, misbehaves or times out."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            answer: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
            request: h11.Request | None = None
            with trio.move_on_after(REQUEST_TIMEOUT_S) as receiving:
                try:
                    request = await self._receive_request(conn, stream)
                except h11.RemoteProtocolError as e:
                    answer = _plain(e.error_status_hint, f"bad request: {e}\n")
                except _BodyTooLarge:
                    answer = _plain(413, f"a request body is {MAX_BODY_BYTES} bytes at most\n")
            if receiving.cancelled_caught:
                return  # too slow: close without a word
            if answer is None:
                if request is None:
                    return  # the client closed between requests
                answer = await self._answer(request)
            status, headers, body = answer
            closing = request is None  # after a broken request the stream cannot be trusted
            if closing:
                headers.append((b"connection", b"close"))
            head = request is not None and request.method == b"HEAD"
            with trio.move_on_after(SEND_TIMEOUT_S) as sending:
                await self._send(conn, stream, status, headers, body, head)
            if sending.cancelled_caught or closing or conn.our_state is not h11.DONE:
                return
            if conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _receive_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> h11.Request | None:
        """The next request, once all of it (body included) has arrived; None at a clean EOF."""
        request: h11.Request | None = None
        body_bytes = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECEIVE_BYTES))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body_bytes += len(event.data)
                if body_bytes > MAX_BODY_BYTES:
                    raise _BodyTooLarge
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # PAUSED cannot happen before EndOfMessage
                raise RuntimeError(f"unexpected h11 event {event!r}")

    async def _answer(self, request: h11.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        path = request.target.split(b"?", 1)[0]
        if path != PATH:
            return _plain(404, "not found: the metrics are at /metrics\n")
        if request.method not in (b"GET", b"HEAD"):
            answer = _plain(405, "only GET and HEAD are allowed on /metrics\n")
            answer[1].append((b"allow", b"GET, HEAD"))
            return answer
        return 200, [(b"content-type", CONTENT_TYPE)], await self._render_in_turn()

    async def _render_in_turn(self) -> bytes:
        """Render once this request's slot comes; slots go in order of asking."""
        now = trio.current_time()
        slot = max(now, self._next_render)
        self._next_render = slot + MIN_RENDER_INTERVAL_S
        if slot > now:
            await trio.sleep_until(slot)
        started = trio.current_time()
        body = self.render()
        ended = trio.current_time()
        # A slow render pushes the next one out: renders stay under MAX_LOOP_SHARE.
        rest = (ended - started) * (1 / MAX_LOOP_SHARE - 1)
        self._next_render = max(self._next_render, ended + rest)
        return body

    @staticmethod
    async def _send(
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        head: bool,
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # h11 knows no answer is possible now (the request was too broken)
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        reason = http.HTTPStatus(status).phrase.encode()
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
        # HEAD: no body (h11 refuses one); Content-Length still tells its size.
        if body and not head:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)


class _BodyTooLarge(Exception):
    pass


async def _close_lingering(stream: trio.SocketStream) -> None:
    """Close after the client has read our answer: send EOF and drop what it still
    sends for a moment. Closing with its bytes unread would reset the
    connection, and a reset can destroy the answer before the client reads it."""
    with trio.move_on_after(LINGER_S):
        try:
            await stream.send_eof()
            drained = 0
            while drained < LINGER_BYTES and (data := await stream.receive_some(RECEIVE_BYTES)):
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


def _plain(status: int, text: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, [(b"content-type", b"text/plain; charset=utf-8")], text.encode()
