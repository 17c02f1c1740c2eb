"""The msgpack-RPC server: one epoll loop drives every connection on the Unix socket.

Why one loop and not one trio task per connection: a closed-loop client's next
request is rarely there when its task asks, so every request cost a trio wait
(an epoll registration and an unregistration, two syscalls), a task switch and
a cancel-scope deadline. benchmarks/bench_daemon.py measures a bare trio echo
server built that way at about 23 µs of CPU per request, and the same echo
built this way at about 7. Here every connection is registered once in a
private, level-triggered epoll set; one trio task (the poller) waits for that
set to become readable and then serves every ready connection in one round.

This module is only the driver. What a connection does next (read, serve,
hold back, drain, close, time out) is decided by its sans-IO
`ServerConnection` (ipamd/wire/connection.py); here are the socket, epoll, the
clock and the service. Rules the driver keeps:
- One round: write the answers the writer queued; read at most once from
  each ready connection, serve one turn of it and write its answers; serve
  one turn of every connection with a backlog; then yield to trio, so the
  writer, the acceptor and the sweeper always get their turn.
- Reads are answered inline, in order; a read ends the connection's turn.
  Mutations are queued to the writer and answered by msgid when their batch
  is synced, possibly out of order.
- The writer's task never writes a socket: it hands an answer to `_answered`,
  which only queues it and wakes the poller; the poller gives it to its
  connection and writes it, first thing in its next round. Writes never block;
  what the socket has no room for waits until epoll says it is writable.
- A client that misbehaves loses its own connection and nothing else; the
  sweeper applies the connections' deadlines.
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
from typing import Any, TypeAlias

import trio

from ipamd.daemon.peercred import peer_credentials
from ipamd.daemon.service import MUTATING_METHODS, PendingRead, Render, Service, ready
from ipamd.errors import IpamError, Unavailable
from ipamd.metrics.instruments import ConnectionCounters
from ipamd.wire.connection import (
    BACKLOG,
    CLOSED,
    READING,
    SEND_TIMEOUT_S,
    ServerConnection,
    Timeout,
)
from ipamd.wire.limits import Limits
from ipamd.wire.protocol import ProtocolViolation, Request

log = logging.getLogger("ipamd.server")

RECEIVE_BYTES = 64 << 10
# Ready connections taken from epoll per round (the rest wait for the next round).
EVENTS_PER_POLL = 1024
# The sweeper's period, at most: timeouts fire up to this late.
SWEEP_INTERVAL_S = 1.0
# accept() failing for lack of descriptors or memory: wait for some to free up.
ACCEPT_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF_S = 0.1
INTERNAL_ERROR = "internal error; see the daemon's log"

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
HANGUP = select.EPOLLHUP | select.EPOLLERR


class Client:
    """One accepted socket and the sans-IO connection it drives."""

    __slots__ = ("conn", "fd", "mask", "peer", "sock")

    def __init__(self, sock: socket.socket, limits: Limits, with_groups: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        # Groups cost a second getsockopt: only when allow_gids can use them.
        self.peer = peer_credentials(sock, with_groups=with_groups)
        self.conn = ServerConnection(limits, time.monotonic())
        self.mask = 0  # what epoll watches for us now; 0: not registered

    def __repr__(self) -> str:
        return f"<Client fd={self.fd} {self.peer}>"


# An answer to a mutation on its way to the client: who, msgid, when an alloc was
# read (for its latency), and the service's `render` giving its (result, error).
Answer: TypeAlias = tuple[Client, int, float | None, Render, Any, IpamError | None]


class Server:
    def __init__(
        self, service: Service, limits: Limits, counters: ConnectionCounters | None = None
    ) -> None:
        self.service = service
        self.limits = limits
        self.in_flight = 0  # mutations (and reads that write) whose answer is not written yet
        self._epoll = select.epoll()
        self._by_fd: dict[int, Client] = {}
        self._backlog: set[Client] = set()  # to serve next round, readable or not
        self._answers: list[Answer] = []  # queued by the writer's task, for the poller
        # Wakes the poller when it waits and there is work its epoll set cannot show
        # (answers the writer queued, requests a write unblocked): an eventfd in that
        # set, not a cancelled wait, whose Cancelled exception cost about 25 µs of the
        # loop per wake-up, once per group (benchmarks: the README's Performance).
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, READABLE)
        self._idle = False  # the poller is waiting for its epoll set
        self._woken = False  # and `_wake_fd` has been written since
        self._accept_scope = trio.CancelScope()
        self._quiet = trio.Event()  # set whenever no mutation is in flight
        self._quiet.set()
        # For `status` and the metrics (the service reads them).
        self.counters = counters if counters is not None else ConnectionCounters()

    @property
    def connections(self) -> int:
        return len(self._by_fd)

    def stop_accepting(self) -> None:
        self._accept_scope.cancel()

    async def wait_quiet(self) -> None:
        """Until every mutation in flight is answered and its answer handed to its socket."""
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
            for client in list(self._by_fd.values()):
                self._close(client)
            self._epoll.close()
            os.close(self._wake_fd)

    # -- accepting -------------------------------------------------------------------

    async def _accept_loop(self, sock: trio.socket.SocketType) -> None:
        with_groups = bool(self.service.config.allow_gids)
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
            sock_ = socket.socket(fileno=accepted.detach())
            sock_.setblocking(False)
            if self.connections >= self.limits.max_connections:
                log.warning("connection cap (%d) reached; refusing one", self.connections)
                self.counters.refused += 1
                sock_.close()
                continue
            try:
                client = Client(sock_, self.limits, with_groups)
            except OSError as e:  # gone before we could ask who it is
                log.debug("dropping a connection at once: %s", e.strerror)
                sock_.close()
                continue
            self._by_fd[client.fd] = client
            self.counters.accepted += 1
            self.counters.open += 1
            self._watch(client)

    # -- the poller ------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        epoll = self._epoll
        while True:
            ready = epoll.poll(0, EVENTS_PER_POLL)
            if not ready and not self._backlog and not self._answers:
                await self._wait_for_events()
                continue
            now = time.monotonic()
            by_fd = self._by_fd
            if self._answers:  # first: their clients have waited for the writer already
                answers, self._answers = self._answers, []
                for answer in answers:
                    self._deliver(answer, now)
            for fd, events in ready:
                client = by_fd.get(fd)
                if client is None:
                    continue  # closed earlier in this round
                if events & WRITABLE or (events & HANGUP and client.conn.unsent):
                    self._flush(client, now)
                if client.mask & READABLE:
                    if events & (READABLE | HANGUP) and client.conn.state is READING:
                        self._read(client, now)
                elif events & HANGUP and client.mask:
                    # Reported whatever the mask says: stop watching until we want
                    # to read again (or the next write fails), or it spins.
                    self._register(client, 0)
            if self._backlog:
                backlog, self._backlog = self._backlog, set()
                for client in backlog:
                    self._serve(client, now)
            await trio.lowlevel.checkpoint()

    async def _wait_for_events(self) -> None:
        self._idle = True
        try:
            await trio.lowlevel.wait_readable(self._epoll.fileno())
        finally:
            self._idle = False
            if self._woken:  # drained before the round's poll, so it never shows there
                self._woken = False
                os.eventfd_read(self._wake_fd)

    def _wake(self) -> None:
        if self._idle and not self._woken:  # once is enough: a group's answers each wake us
            self._woken = True
            os.eventfd_write(self._wake_fd, 1)

    # -- one connection's turn ---------------------------------------------------------

    def _read(self, client: Client, now: float) -> None:
        try:
            data = os.read(client.fd, RECEIVE_BYTES)
        except BlockingIOError:
            return  # a spurious wake-up
        except OSError as e:
            log.debug("receive from %s failed: %s", client.peer, e.strerror)
            self._close(client)
            return
        client.conn.receive_data(data, now)
        self._serve(client, now)

    def _serve(self, client: Client, now: float) -> None:
        """Act on one turn of `client`'s events, then write its answers."""
        conn = client.conn
        while (event := conn.next_event()) is not None:
            if type(event) is Request:
                if event.method in MUTATING_METHODS:
                    self._start_mutation(client, event)
                else:
                    self._answer_read(client, event)
                    # A read is answered inline and may be costly (a page of leases):
                    # it ends this connection's turn, so a burst of them from one
                    # client interleaves with everyone else's requests.
                    conn.end_turn()
                    break
            elif isinstance(event, ProtocolViolation):  # already answered by `conn`
                log.info("bad frame from %s: %s", client.peer, event.error)
                self.service.counters.errors["frame", event.error.name] += 1
            else:
                log.debug("ignoring notification %r from %s", event.method, client.peer)
        if conn.unsent or conn.state is not READING:
            self._flush(client, now)
        # Else a turn of mutations only, the usual one: their answers come later,
        # and epoll already watches for the next request (`_watch` did, when the
        # connection last had nothing unsent and was reading).

    def _answer_read(self, client: Client, request: Request) -> None:
        try:
            result = self.service.read(request.method, request.params)
        except IpamError as e:
            client.conn.send_response(request.msgid, e, None)
            return
        except Exception:
            log.exception("%s failed", request.method)
            error = Unavailable(f"internal error in {request.method}; see the daemon's log")
            self.service.counters.answered(request.method, None, error)
            client.conn.send_response(request.msgid, error, None)
            return
        if isinstance(result, PendingRead):  # a get that confirms first
            self._start_pending_read(client, request.msgid, result)
        else:
            client.conn.send_response(request.msgid, None, result)

    # -- mutations -----------------------------------------------------------------------

    def _start_mutation(self, client: Client, request: Request) -> None:
        self._mutation_started()
        received = client.conn.received_at if request.method == "alloc" else None
        answered = functools.partial(self._answered, client, request.msgid, received)
        try:
            self.service.start_mutation(request.method, request.params, client.peer, answered)
        except IpamError as e:
            answered(ready, None, e)
        except Exception:
            log.exception("%s failed", request.method)
            answered(ready, None, Unavailable(INTERNAL_ERROR))

    def _start_pending_read(self, client: Client, msgid: int, read: PendingRead) -> None:
        """Answered through `_answered`, as a mutation is."""
        self._mutation_started()
        answered = functools.partial(self._answered, client, msgid, None)
        try:
            read.start(client.peer, answered)
        except Exception:
            log.exception("a read that writes failed")
            answered(ready, None, Unavailable(INTERNAL_ERROR))

    def _answered(
        self,
        client: Client,
        msgid: int,
        received: float | None,
        render: Render,
        outcome: Any,
        error: IpamError | None,
    ) -> None:
        """The answer to a mutation, from the writer's task (or a refusal, from ours):
        queued for the poller, which renders it, hands it to the connection and writes it."""
        self._answers.append((client, msgid, received, render, outcome, error))
        self._wake()

    def _deliver(self, answer: Answer, now: float) -> None:
        """Render an answer, give it to its connection and write it."""
        client, msgid, received, render, outcome, error = answer
        result, error = render(outcome, error)
        client.conn.send_response(msgid, error, result)
        if client.conn.state is not CLOSED:  # else nobody is left to tell
            if received is not None:  # when the alloc was read
                self.counters.alloc_seconds.observe(time.monotonic() - received)
            self._flush(client, now)
        self.in_flight -= 1
        if not self.in_flight:
            self._quiet.set()

    def _mutation_started(self) -> None:
        # A fresh event only when leaving quiet: `wait_quiet` may be waiting on the
        # current one, which must be the one set when everything is answered.
        if not self.in_flight:  # (`_quiet` is set exactly when nothing is in flight)
            self._quiet = trio.Event()
        self.in_flight += 1

    # -- writing ---------------------------------------------------------------------------

    def _flush(self, client: Client, now: float) -> None:
        """Write what the socket has room for, then follow the connection's state."""
        conn = client.conn
        if conn.unsent:  # (after a turn of mutations only, nothing is: their answers come later)
            data = conn.data_to_send()
            try:
                sent = os.write(client.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                log.debug("send to %s failed: %s", client.peer, e.strerror)
                self._close(client)
                return
            conn.sent(sent, now)
        state = conn.state
        if state is READING and client.mask == READABLE and not conn.unsent:
            return  # the usual case: all written, and epoll watches what `_watch` would
        if state is CLOSED:
            self._close(client)
            return
        if state is BACKLOG:
            self._backlog.add(client)
            self._wake()
        self._watch(client)

    # -- epoll -----------------------------------------------------------------------------

    def _watch(self, client: Client) -> None:
        """Tell epoll what we wait for: bytes while the connection may read (its
        backlog does not stop us watching: the poller does not read a connection
        in BACKLOG, and watching on spares a pair of epoll_ctl calls per inline
        read), room while answers wait."""
        state = client.conn.state
        mask = READABLE if state is READING or state is BACKLOG else 0
        if client.conn.unsent:
            mask |= WRITABLE
        if mask != client.mask:
            self._register(client, mask)

    def _register(self, client: Client, mask: int) -> None:
        if not mask:
            self._epoll.unregister(client.fd)
        elif client.mask:
            self._epoll.modify(client.fd, mask)
        else:
            self._epoll.register(client.fd, mask)
        client.mask = mask

    # -- timeouts and ending ---------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        interval = min(SWEEP_INTERVAL_S, self.limits.idle_timeout_s / 4, SEND_TIMEOUT_S / 4)
        while True:
            await trio.sleep(interval)
            now = time.monotonic()
            for client in list(self._by_fd.values()):
                timeout = client.conn.timed_out(now)
                if timeout is None:
                    continue
                level = logging.DEBUG if timeout is Timeout.IDLE else logging.INFO
                log.log(level, "closing connection of %s: %s", client.peer, timeout.value)
                self._close(client)

    def _close(self, client: Client) -> None:
        if self._by_fd.get(client.fd) is not client:
            return  # closed already (and its descriptor number may be another's now)
        del self._by_fd[client.fd]
        self.counters.open -= 1
        client.conn.close()
        if client.mask:
            self._register(client, 0)
        self._backlog.discard(client)
        client.sock.close()
