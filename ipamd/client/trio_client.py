"""The trio client: many calls in flight on one connection, around the sans-IO `ClientCore`.

    async with TrioClient.connect("/run/ipamd/ipamd.sock") as ipam:
        async with trio.open_nursery() as nursery:
            for cid in container_ids:
                nursery.start_soon(ipam.alloc, cid, {"podman": {}})

Rules it keeps:

* One connection, two tasks in a nursery owned by `connect()`: a reader that
  matches every reply to its waiting call by msgid, and a sender that writes
  whatever requests have queued up in one `send_all`. A call only queues its
  bytes and waits, so cancelling a call never cuts a frame in half.
* Each call waits at most `timeout` seconds; a call that gives up (timeout or
  cancellation) is abandoned in the core and its late reply dropped. The
  connection stays usable.
* When the connection ends (EOF, a broken stream, the daemon's msgid-0
  verdict), every waiting call and every later one fails: `ConnectionFailed`,
  or the daemon's `IpamError` for the calls the verdict was about. Open a new
  client to carry on; nothing is retried.
* trio's and the OS's exceptions are translated into `ConnectionFailed` here.
  Exceptions from the body of `async with` come out as they went in, never
  wrapped in an ExceptionGroup.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

from ipamd.client import methods
from ipamd.client.core import ClientCore, ConnectionFailed, Reply, RequestTimeout
from ipamd.client.discovery import discover_socket
from ipamd.errors import IpamError, error_from_wire
from ipamd.wire.protocol import NEED_DATA

RECEIVE_BYTES: Final = 256 << 10


class _Waiter:
    __slots__ = ("done", "failure", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Reply | None = None
        self.failure: ConnectionFailed | IpamError | None = None


class TrioClient:
    """An async ipamd client with pipelining; open it with `TrioClient.connect()`.

    Same methods as the blocking `Client`, as coroutines.
    """

    def __init__(self, stream: trio.abc.Stream, socket_path: Path, *, timeout: float) -> None:
        """Use `connect()`; this wraps an open stream whose two tasks the caller must run."""
        self.socket_path = socket_path
        self.timeout = timeout
        self._stream = stream
        self._core = ClientCore(socket_path)
        self._waiters: dict[int, _Waiter] = {}
        self._outbox: list[bytes] = []
        self._outbox_ready = trio.Event()
        self._failure: ConnectionFailed | IpamError | None = None

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        socket_path: str | Path | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> AsyncIterator[TrioClient]:
        """`async with TrioClient.connect(path) as client:`; the connection closes at the end.

        Raises `ConnectionFailed` (`RequestTimeout` past `connect_timeout`) when
        the daemon cannot be reached.
        """
        path = discover_socket(socket_path)
        stream = await _open_stream(path, connect_timeout)
        client = cls(stream, path, timeout=timeout)
        body_error: BaseException | None = None
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(client._receive_loop)
            nursery.start_soon(client._send_loop)
            try:
                yield client
            except BaseException as exc:
                # Re-raised outside the nursery, so that it is not wrapped in an ExceptionGroup.
                body_error = exc
            finally:
                client._fail(ConnectionFailed(path, f"the client of ipamd at {path} was closed"))
                nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error

    # -- calls -------------------------------------------------------------------------------

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call `method` with named `params`; its result (see `Client.call`)."""
        if self._failure is not None:
            raise _fresh(self._failure)
        msgid, data = self._core.start(method, dict(params) if params else None)
        waiter = _Waiter()
        self._waiters[msgid] = waiter
        self._outbox.append(data)
        self._outbox_ready.set()
        try:
            with trio.move_on_after(self.timeout):
                await waiter.done.wait()
        finally:
            if not waiter.done.is_set():  # timed out, or cancelled from outside
                self._waiters.pop(msgid, None)
                self._core.abandon(msgid)
        if waiter.failure is not None:
            raise waiter.failure
        if waiter.reply is None:
            raise RequestTimeout(
                self.socket_path,
                f"ipamd at {self.socket_path} did not answer within {self.timeout:g}s",
            )
        return waiter.reply.value()

    async def _receive_loop(self) -> None:
        core, path = self._core, self.socket_path
        try:
            while True:
                reply = core.next_reply()
                if reply is NEED_DATA:
                    core.receive_data(bytes(await self._stream.receive_some(RECEIVE_BYTES)))
                    continue
                waiter = self._waiters.pop(reply.msgid, None)
                if waiter is not None:
                    waiter.reply = reply
                    waiter.done.set()
        except (ConnectionFailed, IpamError) as exc:
            self._fail(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(ConnectionFailed(path, f"lost connection to ipamd at {path}: {exc}"))

    async def _send_loop(self) -> None:
        path = self.socket_path
        try:
            while True:
                await self._outbox_ready.wait()
                self._outbox_ready = trio.Event()
                data = b"".join(self._outbox)
                self._outbox.clear()
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # Later calls fail at once; calls in flight wait for the reader, which may yet read
            # why the daemon hung up (a frame over its limit), or for their timeout.
            if self._failure is None:
                self._failure = ConnectionFailed(
                    path, f"lost connection to ipamd at {path} while sending: {exc}"
                )

    def _fail(self, failure: ConnectionFailed | IpamError) -> None:
        """End the connection for every waiting call and every later one."""
        if self._failure is None:
            self._failure = failure
            if isinstance(failure, IpamError):  # the daemon's verdict is news for calls in flight
                path = self.socket_path
                self._failure = ConnectionFailed(
                    path, f"ipamd at {path} closed the connection: {failure.name}: {failure}"
                )
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.failure = _fresh(failure)
            waiter.done.set()

    # -- methods (DESIGN.md section 4) -------------------------------------------------------

    async def _map(self, call: methods.Call) -> dict[str, Any]:
        return methods.expect_map(self.socket_path, call[0], await self.call(*call))

    async def ping(self) -> dict[str, Any]:
        return await self._map(methods.ping())

    async def status(self) -> dict[str, Any]:
        return await self._map(methods.status())

    async def stats(self) -> dict[str, Any]:
        return await self._map(methods.stats())

    async def metrics(self) -> str:
        """The Prometheus text exposition of the daemon's metrics."""
        return methods.metrics_text(self.socket_path, await self._map(methods.metrics()))

    async def network_create(
        self,
        name: str,
        subnets: Sequence[Mapping[str, Any]],
        driver: str | None = None,
        *,
        scope: str | None = None,
    ) -> dict[str, Any]:
        return await self._map(methods.network_create(name, subnets, driver, scope))

    async def network_get(self, name: str) -> dict[str, Any]:
        return await self._map(methods.network_get(name))

    async def network_list(self) -> list[dict[str, Any]]:
        call = methods.network_list()
        return methods.expect_list(self.socket_path, call[0], await self.call(*call))

    async def network_delete(self, name: str, force: bool = False) -> dict[str, Any]:
        return await self._map(methods.network_delete(name, force))

    async def alloc(self, container_id: str, networks: methods.Attachments) -> dict[str, Any]:
        return await self._map(methods.alloc(container_id, networks))

    async def release(
        self, container_id: str, networks: methods.Attachments | None = None
    ) -> dict[str, Any]:
        return await self._map(methods.release(container_id, networks))

    async def get(
        self, container_id: str, networks: methods.Attachments | Sequence[str] | None = None
    ) -> dict[str, Any]:
        return await self._map(methods.get(container_id, networks))

    async def lease_list(
        self, network: str, after: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        return await self._map(methods.lease_list(network, after, limit))

    async def iter_leases(
        self, network: str, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every lease on `network`, in address order, one `lease.list` page at a time."""
        after: str | None = None
        while True:
            page = await self.lease_list(network, after=after, limit=page_size)
            leases, after = methods.lease_page(self.socket_path, page)
            for lease in leases:
                yield lease
            if after is None:
                return

    async def lease_owner(self, ip: str, network: str | None = None) -> dict[str, Any]:
        return await self._map(methods.lease_owner(ip, network))

    async def gc(
        self,
        network: str,
        valid: Sequence[Mapping[str, Any]],
        dry_run: bool = False,
        suspect_only: bool = False,
    ) -> dict[str, Any]:
        return await self._map(methods.gc(network, valid, dry_run, suspect_only))


async def _open_stream(path: Path, connect_timeout: float) -> trio.SocketStream:
    try:
        with trio.fail_after(connect_timeout):
            return await trio.open_unix_socket(str(path))
    except trio.TooSlowError:
        raise RequestTimeout(
            path, f"timed out after {connect_timeout:g}s connecting to ipamd at {path}"
        ) from None
    except OSError as e:
        raise ConnectionFailed(
            path, f"cannot connect to ipamd at {path}: {e.strerror or e}"
        ) from None


def _fresh(failure: ConnectionFailed | IpamError) -> ConnectionFailed | IpamError:
    """A new exception like `failure`: one instance raised in many tasks would share a traceback."""
    if isinstance(failure, IpamError):
        return error_from_wire(failure.to_wire())
    return type(failure)(failure.socket_path, failure.message)
