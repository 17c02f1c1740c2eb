"""The msgpack-RPC server: one trio task per connection on a Unix stream socket.

Rules it keeps:
- A connection is a thin driver around a sans-IO `RpcConnection`: bytes in,
  events out. An answer is written to the socket at once when nothing is queued
  ahead of it and the socket has room (the common case: no task switch per
  answer); otherwise it goes to an outbox that one sender task flushes (many
  pipelined answers leave in one `send`), with the send timeout below.
- Reads are answered inline, in order; mutations are queued to the writer (at
  most `max_in_flight` per connection: beyond that the connection stops
  reading, which pushes back on the client) and are answered by msgid from the
  writer's callback when their batch is synced, possibly out of order.
- A client that misbehaves loses its own connection and nothing else: idle or
  half-sent frames past `idle_timeout_s`, responses it does not read within
  SEND_TIMEOUT_S, a frame the stream cannot recover from. The writer never
  waits on a client: its callback only tries a non-blocking write, else queues
  the answer for the connection's sender task.
- Running out of file descriptors pauses accepting briefly; it never stops the
  server.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import socket
import struct
from typing import Any

import trio

from ipamd.config import Limits
from ipamd.errors import IpamError, Unavailable
from ipamd.protocol import (
    NEED_DATA,
    Notification,
    ProtocolViolation,
    Request,
    RpcConnection,
)
from ipamd.protocol import (
    Limits as ProtocolLimits,
)
from ipamd.service import Peer, Service

log = logging.getLogger("ipamd.server")

RECEIVE_BYTES = 64 << 10
# A client that has not read its responses for this long is stuck or hostile.
SEND_TIMEOUT_S = 10.0
# Responses queued for a client beyond this stop the connection reading more.
OUTBOX_HIGH_WATER = 1 << 20
# accept() failing for lack of descriptors or memory: wait for some to free up.
ACCEPT_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF_S = 0.1


def peer_credentials(sock: Any) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


class Server:
    def __init__(self, service: Service, limits: Limits) -> None:
        self.service = service
        self.limits = limits
        self.protocol_limits = ProtocolLimits(
            max_frame_bytes=limits.max_frame_bytes, max_array_len=limits.max_array_len
        )
        self.connections = 0
        self.in_flight = 0
        self._accept_scope = trio.CancelScope()
        self._quiet = trio.Event()  # set whenever no mutation is in flight
        self._quiet.set()

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
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            task_status.started()
            with self._accept_scope:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as e:
                        if e.errno not in ACCEPT_RESOURCE_ERRNOS:
                            raise
                        log.warning(
                            "accept failed (%s); pausing %.1fs", e.strerror, ACCEPT_BACKOFF_S
                        )
                        await trio.sleep(ACCEPT_BACKOFF_S)
                        continue
                    if self.connections >= self.limits.max_connections:
                        log.warning("connection cap (%d) reached; refusing one", self.connections)
                        await stream.aclose()
                        continue
                    nursery.start_soon(self._serve_connection, stream)
            await listener.aclose()  # stop accepting; open connections carry on

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await Connection(self, stream).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            log.exception("connection failed; closing it")
        finally:
            self.connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _mutation_started(self) -> None:
        # A fresh event only when leaving quiet: `wait_quiet` may be waiting on the
        # current one, which must be the one set when in_flight drops back to 0.
        if self._quiet.is_set():
            self._quiet = trio.Event()
        self.in_flight += 1

    def _mutation_done(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._quiet.set()


class Connection:
    def __init__(self, server: Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.service = server.service
        self.stream = stream
        self.peer = peer_credentials(stream.socket)
        self.rpc = RpcConnection("server", server.protocol_limits)
        self.slots = trio.Semaphore(server.limits.max_in_flight)
        self.outbox: list[bytes] = []
        self.outbox_bytes = 0
        self.outbox_ready = trio.Event()
        self.outbox_drained = trio.Event()
        self.sending = False  # the sender task is in send_all: nothing may overtake it
        self.closing = False
        self._cancel_scope: trio.CancelScope | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._cancel_scope = nursery.cancel_scope
            nursery.start_soon(self._send_loop, nursery.cancel_scope)
            await self._receive_loop(nursery)
            # Answer what is in flight, flush, then close.
            for _ in range(self.server.limits.max_in_flight):
                await self.slots.acquire()
            self.closing = True
            self.outbox_ready.set()

    async def _receive_loop(self, nursery: trio.Nursery) -> None:
        idle = self.server.limits.idle_timeout_s
        data: bytes | None = None
        # A frame must arrive whole within `idle` of its first byte: a client that
        # trickles a byte at a time would otherwise hold its connection forever.
        frame_deadline: float | None = None
        while True:
            # The idle timeout covers each wait for bytes, from its start. One cancel
            # scope serves every wait until it fires (a new scope per receive costs
            # about what the receive does); its deadline is lifted while the events
            # are handled, so nothing else can run into it.
            with trio.CancelScope() as waiting:
                while True:
                    if data is not None:
                        self.rpc.receive_data(data)
                        if not await self._handle_events(nursery) or not data:
                            return
                        data = None
                    if self.rpc.in_frame:
                        if frame_deadline is None:
                            frame_deadline = trio.current_time() + idle
                        waiting.deadline = frame_deadline
                    else:
                        frame_deadline = None
                        waiting.deadline = trio.current_time() + idle
                    data = await self._receive()
                    waiting.deadline = math.inf
                    if waiting.cancel_called:
                        break  # the deadline passed as the bytes came: handle them anew
            if data is not None:
                continue
            if self.rpc.in_frame:
                log.info("closing connection of %s: a frame stalled half-sent", self.peer)
                return
            if self.slots.value < self.server.limits.max_in_flight:
                continue  # waiting on our own answers is not idling
            log.debug("closing idle connection of %s", self.peer)
            return

    async def _receive(self) -> bytes:
        """The next bytes from the client; b"" once it has closed its side.

        Waits until the socket is readable, then reads. A closed-loop client's
        next request is rarely there yet when we ask, and trio's receive_some
        would first try the read, raise and catch EAGAIN, wait, read again and
        yield once more: a fifth of the daemon's time under load.
        """
        fd = self.stream.socket.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:
                continue  # a spurious wake-up: wait again
            except OSError as e:
                raise trio.BrokenResourceError(f"receive failed: {e.strerror}") from e

    async def _handle_events(self, nursery: trio.Nursery) -> bool:
        """Act on every complete frame; False when the connection must close."""
        while True:
            event = self.rpc.next_event()
            if event is NEED_DATA:
                return True
            if isinstance(event, Request):
                if self.service.is_mutation(event.method):
                    await self._start_mutation(event)
                else:
                    self._reply(event.msgid, *self._read(event))
                    # Reads are answered inline: yield between them, or one client's
                    # pipelined burst of them would stall every other connection.
                    await trio.lowlevel.checkpoint()
            elif isinstance(event, Notification):
                log.debug("ignoring notification %r from %s", event.method, self.peer)
            elif isinstance(event, ProtocolViolation):
                log.info("bad frame from %s: %s", self.peer, event.error)
                if event.msgid is not None or event.fatal:
                    self._reply(event.msgid or 0, event.error, None)
                if event.fatal:
                    return False
            else:
                return True  # the peer closed its side
            if self.outbox_bytes > OUTBOX_HIGH_WATER:
                await self._wait_for_client_to_read()

    def _read(self, request: Request) -> tuple[IpamError | None, Any]:
        try:
            return None, self.service.read(request.method, request.params)
        except IpamError as e:
            return e, None
        except Exception:
            log.exception("%s failed", request.method)
            return Unavailable(f"internal error in {request.method}; see the daemon's log"), None

    async def _start_mutation(self, request: Request) -> None:
        try:  # a free slot, without a trip through the scheduler
            self.slots.acquire_nowait()
        except trio.WouldBlock:
            await self.slots.acquire()
        self.server._mutation_started()
        answered = functools.partial(self._mutation_answered, request.msgid)
        try:
            self.service.start_mutation(request.method, request.params, self.peer, answered)
        except IpamError as e:
            answered(None, e)
        except Exception:
            log.exception("%s failed", request.method)
            answered(None, Unavailable("internal error; see the daemon's log"))

    def _mutation_answered(self, msgid: int, result: Any, error: IpamError | None) -> None:
        """The writer's callback (or the refusal above). REQUIRES: holds a slot."""
        try:
            self._reply(msgid, error, result)
        except Exception:
            log.exception("connection failed; closing it")
            if self._cancel_scope is not None:
                self._cancel_scope.cancel()
        finally:
            self.server._mutation_done()
            self.slots.release()

    def _reply(self, msgid: int, error: IpamError | None, result: Any) -> None:
        data = self.rpc.send_response(msgid, error, result)
        if not self.outbox and not self.sending:
            # Nothing queued ahead: write now if the socket has room. Any error
            # is left for the sender task to meet and report, as it always did.
            try:
                sent = os.write(self.stream.socket.fileno(), data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self.outbox.append(data)
        self.outbox_bytes += len(data)
        self.outbox_ready.set()

    async def _wait_for_client_to_read(self) -> None:
        with trio.move_on_after(SEND_TIMEOUT_S):
            while self.outbox_bytes > OUTBOX_HIGH_WATER:
                await self.outbox_drained.wait()
            return
        raise trio.BrokenResourceError("client is not reading its responses")

    async def _send_loop(self, scope: trio.CancelScope) -> None:
        while True:
            await self.outbox_ready.wait()
            self.outbox_ready = trio.Event()
            if self.outbox:
                data = b"".join(self.outbox)
                self.outbox.clear()
                self.sending = True
                try:
                    with trio.move_on_after(SEND_TIMEOUT_S) as timeout:
                        await self.stream.send_all(data)
                finally:
                    self.sending = False
                if timeout.cancelled_caught:
                    log.info("%s stopped reading its responses; closing", self.peer)
                    scope.cancel()
                    return
                self.outbox_bytes -= len(data)
                self.outbox_drained.set()
                self.outbox_drained = trio.Event()
            if self.closing and not self.outbox:
                scope.cancel()
                return
