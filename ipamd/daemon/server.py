"""The msgpack-RPC server: one epoll loop serves every connection on the Unix socket.

Why one loop and not one trio task per connection: a closed-loop client's next
request is rarely there when its task asks, so every request cost a trio wait
(an epoll registration and an unregistration, two syscalls), a task switch and
a cancel-scope deadline. benchmarks/bench_daemon.py measures a bare trio echo
server built that way at about 23 µs of CPU per request, and the same echo
built this way at about 7. Here every connection is registered once in a
private, level-triggered epoll set; one trio task (the poller) waits for that
set to become readable and then serves every ready connection in one round.

Rules it keeps:
- A connection is a thin driver around a sans-IO `RpcConnection`: bytes in,
  events out. Every round reads at most once from each ready connection and
  serves at most EVENTS_PER_TURN of its mutations or one read, so one client's
  pipelined burst cannot stall the others; the rest waits for later rounds.
  The poller yields to trio after every round, so the writer, the acceptor and
  the sweeper always get their turn.
- Reads are answered inline, in order; mutations are queued to the writer (at
  most `max_in_flight` per connection: beyond that the connection stops
  reading, which pushes back on the client) and are answered by msgid from the
  writer's callback when their batch is synced, possibly out of order.
- Answers are written at once, without blocking; what the socket has no room
  for waits in the connection's outbox and leaves when epoll says the socket is
  writable. A connection whose outbox is over OUTBOX_HIGH_WATER stops reading.
  The writer never waits on a client.
- A client that misbehaves loses its own connection and nothing else: the
  sweeper closes connections idle past `idle_timeout_s`, with a frame
  half-sent for longer than that (trickling bytes does not reset it), or with
  answers unread for SEND_TIMEOUT_S. A frame the stream cannot recover from
  is answered and the connection closed.
- A client that closes its side still gets the answers to what it sent.
- Running out of file descriptors pauses accepting briefly; it never stops the
  server.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import socket
import time
from typing import Any

import trio

from ipamd.daemon.peercred import peer_credentials
from ipamd.daemon.service import PendingRead, Service
from ipamd.errors import IpamError, Unavailable
from ipamd.metrics.instruments import LATENCY_BUCKETS_S, Histogram
from ipamd.wire.limits import Limits
from ipamd.wire.protocol import (
    NEED_DATA,
    Notification,
    ProtocolViolation,
    Request,
    RpcConnection,
)

log = logging.getLogger("ipamd.server")

RECEIVE_BYTES = 64 << 10
# Mutations taken from one connection per round: enough to drain a typical
# pipelined burst in one read, few enough that a round stays short. (Queuing a
# mutation is cheap; an inline read ends the connection's turn.)
EVENTS_PER_TURN = 32
# Ready connections taken from epoll per round (the rest wait for the next round).
EVENTS_PER_POLL = 1024
# A client that has not read its responses for this long is stuck or hostile.
SEND_TIMEOUT_S = 10.0
# Responses queued for a client beyond this stop the connection reading more.
OUTBOX_HIGH_WATER = 1 << 20
# The sweeper's period, at most: timeouts fire up to this late.
SWEEP_INTERVAL_S = 1.0
# accept() failing for lack of descriptors or memory: wait for some to free up.
ACCEPT_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF_S = 0.1

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
HANGUP = select.EPOLLHUP | select.EPOLLERR


class Server:
    def __init__(self, service: Service, limits: Limits) -> None:
        self.service = service
        self.limits = limits
        self.in_flight = 0
        self._epoll = select.epoll()
        self._by_fd: dict[int, Connection] = {}
        # Connections with complete requests still buffered: served next round
        # whether or not their socket is readable.
        self._backlog: set[Connection] = set()
        self._idle_wait: trio.CancelScope | None = None  # the poller, waiting
        self._accept_scope = trio.CancelScope()
        self._quiet = trio.Event()  # set whenever no mutation is in flight
        self._quiet.set()
        # For the metrics (metrics.py reads them when scraped).
        self.accepted = 0
        self.refused = 0
        self.alloc_seconds = Histogram(LATENCY_BUCKETS_S)  # request read -> answer written

    @property
    def connections(self) -> int:
        return len(self._by_fd)

    def stop_accepting(self) -> None:
        self._accept_scope.cancel()

    async def wait_quiet(self) -> None:
        """Until no mutation is in flight on any connection."""
        while self.in_flight:
            await self._quiet.wait()

    async def serve(
        self,
        sock: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._poll_loop)
                nursery.start_soon(self._sweep_loop)
                task_status.started()
                with self._accept_scope:
                    await self._accept_loop(sock)
                sock.close()  # stop accepting; open connections carry on
        finally:
            for connection in list(self._by_fd.values()):
                connection.close()
            self._epoll.close()

    # -- accepting -------------------------------------------------------------------

    async def _accept_loop(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                accepted, _ = await sock.accept()
            except OSError as e:
                if e.errno not in ACCEPT_RESOURCE_ERRNOS:
                    raise
                log.warning("accept failed (%s); pausing %.1fs", e.strerror, ACCEPT_BACKOFF_S)
                await trio.sleep(ACCEPT_BACKOFF_S)
                continue
            # Ours from here on: a plain non-blocking socket that only our epoll set watches.
            client = socket.socket(fileno=accepted.detach())
            client.setblocking(False)
            if self.connections >= self.limits.max_connections:
                log.warning("connection cap (%d) reached; refusing one", self.connections)
                self.refused += 1
                client.close()
                continue
            try:
                connection = Connection(self, client)
            except OSError as e:  # gone before we could ask who it is
                log.debug("dropping a connection at once: %s", e.strerror)
                client.close()
                continue
            self._by_fd[connection.fd] = connection
            self.accepted += 1
            connection.update_interest()

    # -- the poller ------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        epoll = self._epoll
        while True:
            ready = epoll.poll(0, EVENTS_PER_POLL)
            if not ready and not self._backlog:
                await self._wait_for_events()
                continue
            now = time.monotonic()
            by_fd = self._by_fd
            for fd, events in ready:
                connection = by_fd.get(fd)
                if connection is None:
                    continue  # closed earlier in this round
                if events & WRITABLE or (events & HANGUP and connection.outbox):
                    connection.flush()
                if connection.closed:
                    continue
                if connection.mask & READABLE:
                    if events & (READABLE | HANGUP) and not connection.buffered:
                        connection.on_readable(now)
                elif events & HANGUP:
                    # Reported whatever the mask says: stop watching until we want
                    # to read again (or the next write fails), or it spins.
                    connection.unwatch()
            if self._backlog:
                backlog, self._backlog = self._backlog, set()
                for connection in backlog:
                    connection.serve_buffered()
            await trio.lowlevel.checkpoint()

    async def _wait_for_events(self) -> None:
        # Cancelled by `wake` when a connection gains buffered work (an answer
        # freed its last slot) while the epoll set itself may stay quiet.
        with trio.CancelScope() as self._idle_wait:
            await trio.lowlevel.wait_readable(self._epoll.fileno())
        self._idle_wait = None

    def wake(self, connection: Connection) -> None:
        """Serve `connection`'s buffered requests in the next round."""
        self._backlog.add(connection)
        if self._idle_wait is not None:
            self._idle_wait.cancel()

    # -- timeouts --------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        idle = self.limits.idle_timeout_s
        interval = min(SWEEP_INTERVAL_S, idle / 4, SEND_TIMEOUT_S / 4)
        while True:
            await trio.sleep(interval)
            now = time.monotonic()
            for connection in list(self._by_fd.values()):
                connection.check_timeouts(now, idle)

    # -- bookkeeping for graceful shutdown ---------------------------------------------

    def mutation_started(self) -> None:
        # A fresh event only when leaving quiet: `wait_quiet` may be waiting on the
        # current one, which must be the one set when in_flight drops back to 0.
        if self._quiet.is_set():
            self._quiet = trio.Event()
        self.in_flight += 1

    def mutation_done(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._quiet.set()

    def register(self, fd: int, mask: int, registered: bool) -> None:
        if not mask:
            self._epoll.unregister(fd)
        elif registered:
            self._epoll.modify(fd, mask)
        else:
            self._epoll.register(fd, mask)

    def forget(self, connection: Connection) -> None:
        self._by_fd.pop(connection.fd, None)
        self._backlog.discard(connection)


class Connection:
    """One client: its protocol state, answers not yet written, and timers."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.service = server.service
        self.sock = sock
        self.fd = sock.fileno()
        # Groups cost a second getsockopt: only when allow_gids can use them.
        self.peer = peer_credentials(sock, with_groups=bool(self.service.config.allow_gids))
        self.rpc = RpcConnection("server", server.limits)
        self.max_in_flight = server.limits.max_in_flight
        self.in_flight = 0
        self.outbox: list[bytes] = []
        self.outbox_bytes = 0
        self.mask = 0  # what epoll watches for us now; 0: not registered
        self.buffered = False  # complete requests may wait in `rpc`, unserved
        self.eof = False  # the client closed its side (or we stopped reading for good)
        self.closed = False
        now = time.monotonic()
        self.active_at = now  # last bytes received or answer sent: the idle clock
        # When the bytes of the requests now buffered were read: no read happens while
        # any are buffered, so it is every one's arrival time (for alloc latency).
        self.read_at = now
        self.frame_started_at: float | None = None  # first byte of an unfinished frame
        self.stuck_since: float | None = None  # the outbox last made no progress

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} {self.peer}>"

    # -- interest ------------------------------------------------------------------------

    def update_interest(self) -> None:
        """Tell epoll what we wait for: bytes while we may read, room while answers wait."""
        if self.closed:
            return
        mask = 0
        # Buffered requests do not stop us watching: the poller does not read a
        # connection whose backlog it is still serving, and watching on spares a
        # pair of epoll_ctl calls per inline read.
        if (
            not self.eof
            and self.in_flight < self.max_in_flight
            and self.outbox_bytes <= OUTBOX_HIGH_WATER
        ):
            mask = READABLE
        if self.outbox:
            mask |= WRITABLE
        if mask != self.mask:
            self.server.register(self.fd, mask, registered=bool(self.mask))
            self.mask = mask

    def unwatch(self) -> None:
        """Stop epoll reporting a hang-up we cannot act on yet; `update_interest`
        watches again once we want to read or write."""
        if self.mask:
            self.server.register(self.fd, 0, registered=True)
            self.mask = 0

    # -- reading -------------------------------------------------------------------------

    def on_readable(self, now: float) -> None:
        try:
            data = os.read(self.fd, RECEIVE_BYTES)
        except BlockingIOError:
            return  # a spurious wake-up
        except OSError as e:
            log.debug("receive from %s failed: %s", self.peer, e.strerror)
            self.close()
            return
        self.active_at = self.read_at = now
        self.rpc.receive_data(data)
        if not data:
            self.eof = True
        self.serve_buffered()

    def serve_buffered(self) -> None:
        """Act on up to EVENTS_PER_TURN complete requests, then settle what epoll watches."""
        if self.closed:
            return
        self.buffered = False
        for _ in range(EVENTS_PER_TURN):
            if self.in_flight >= self.max_in_flight or self.outbox_bytes > OUTBOX_HIGH_WATER:
                self.buffered = True  # resumed when answers are sent or read
                break
            event = self.rpc.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Request):
                if self.service.is_mutation(event.method):
                    self._start_mutation(event)
                else:
                    error, result = self._read(event)
                    if isinstance(result, PendingRead):  # a get that confirms first
                        self._start_pending_read(event.msgid, result)
                    else:
                        self._reply(event.msgid, error, result)
                    # A read is answered inline and may be costly (a page of leases):
                    # it ends this connection's turn, so a burst of them from one
                    # client interleaves with everyone else's requests.
                    if not self.closed:
                        self.buffered = True
                        self.server.wake(self)
                    break
            elif isinstance(event, Notification):
                log.debug("ignoring notification %r from %s", event.method, self.peer)
            elif isinstance(event, ProtocolViolation):
                log.info("bad frame from %s: %s", self.peer, event.error)
                self.service.counters.errors["frame", event.error.name] += 1
                if event.msgid is not None or event.fatal:
                    self._reply(event.msgid or 0, event.error, None)
                if event.fatal:
                    self.eof = True  # nothing more is read; what is in flight is answered
                    break
            if self.closed:
                return
        else:
            self.buffered = True  # the turn is over; more may wait
            self.server.wake(self)
        if not self.buffered:  # every complete frame served: only a partial one may wait
            if not self.rpc.in_frame:
                self.frame_started_at = None
            elif self.frame_started_at is None:
                self.frame_started_at = self.active_at
        self._settle()

    def _read(self, request: Request) -> tuple[IpamError | None, Any]:
        try:
            return None, self.service.read(request.method, request.params)
        except IpamError as e:
            return e, None
        except Exception:
            log.exception("%s failed", request.method)
            error = Unavailable(f"internal error in {request.method}; see the daemon's log")
            self.service.counters.answered(request.method, None, error)
            return error, None

    # -- mutations -----------------------------------------------------------------------

    def _start_mutation(self, request: Request) -> None:
        self.in_flight += 1
        self.server.mutation_started()
        received = self.read_at if request.method == "alloc" else None
        answered = functools.partial(self._mutation_answered, request.msgid, received)
        try:
            self.service.start_mutation(request.method, request.params, self.peer, answered)
        except IpamError as e:
            answered(None, e)
        except Exception:
            log.exception("%s failed", request.method)
            answered(None, Unavailable("internal error; see the daemon's log"))

    def _start_pending_read(self, msgid: int, read: PendingRead) -> None:
        """Answered from the writer's callback, as a mutation is."""
        self.in_flight += 1
        self.server.mutation_started()
        answered = functools.partial(self._mutation_answered, msgid, None)
        try:
            read.start(self.peer, answered)
        except Exception:
            log.exception("a read that writes failed")
            answered(None, Unavailable("internal error; see the daemon's log"))

    def _mutation_answered(
        self, msgid: int, received: float | None, result: Any, error: IpamError | None
    ) -> None:
        """The writer's callback (or the refusal above); `received`: when an alloc was read."""
        self.in_flight -= 1
        self.server.mutation_done()
        if self.closed:
            return  # the client is gone: nobody to tell
        self.active_at = now = time.monotonic()
        if received is not None:
            self.server.alloc_seconds.observe(now - received)
        self._reply(msgid, error, result)
        if self.buffered:
            self.server.wake(self)  # requests held back by the in-flight cap
        self._settle()

    # -- writing -------------------------------------------------------------------------

    def _reply(self, msgid: int, error: IpamError | None, result: Any) -> None:
        data = self.rpc.send_response(msgid, error, result)
        if not self.outbox:
            sent = self._write(data)
            if sent is None or sent == len(data):
                return
            data = data[sent:]
            self.stuck_since = time.monotonic()
        self.outbox.append(data)
        self.outbox_bytes += len(data)

    def flush(self) -> None:
        """Write what the socket has room for from the outbox."""
        if not self.outbox:
            self._settle()
            return
        data = b"".join(self.outbox)
        sent = self._write(data)
        if sent is None:
            return
        if sent:
            self.stuck_since = time.monotonic()
        self.outbox = [data[sent:]] if sent < len(data) else []
        self.outbox_bytes -= sent
        if not self.outbox:
            self.stuck_since = None
            if self.buffered:
                self.server.wake(self)  # requests held back by the high water mark
        self._settle()

    def _write(self, data: bytes) -> int | None:
        """Bytes of `data` the socket took, without blocking; None once the
        connection is closed because the client is gone."""
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError as e:
            log.debug("send to %s failed: %s", self.peer, e.strerror)
            self.close()
            return None

    # -- ending --------------------------------------------------------------------------

    def _settle(self) -> None:
        """After any change: close once the client is done and answered, else update epoll."""
        if self.closed:
            return
        if self.eof and not self.in_flight and not self.outbox and not self.buffered:
            self.close()
        else:
            self.update_interest()

    def check_timeouts(self, now: float, idle: float) -> None:
        if self.closed:
            return
        if self.stuck_since is not None and now - self.stuck_since > SEND_TIMEOUT_S:
            log.info("%s stopped reading its responses; closing", self.peer)
            self.close()
        elif (
            self.frame_started_at is not None
            and not self.buffered
            and now - self.frame_started_at > idle
        ):
            log.info("closing connection of %s: a frame stalled half-sent", self.peer)
            self.close()
        elif (
            not self.in_flight  # waiting on our own answers is not idling
            and not self.outbox
            and now - self.active_at > idle
        ):
            log.debug("closing idle connection of %s", self.peer)
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.unwatch()
        self.server.forget(self)
        self.outbox = []
        self.outbox_bytes = 0
        self.sock.close()
