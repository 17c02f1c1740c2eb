"""The blocking client: one Unix socket, one call at a time, around the sans-IO `ClientCore`.

Used by `ipamd-client` and by the CNI plugin, which is exec'd once per container
start, so this module imports nothing heavy and never trio (a test checks).

Rules it keeps:

* It connects on the first call (or on `connect()`); after a connection
  failure it drops the socket, and the next call connects afresh. It never
  retries a call by itself: alloc and release are idempotent, so the caller may.
* Each call has one deadline, `timeout` seconds from its start, over sending
  and receiving; connecting has its own `connect_timeout`.
* OSError and socket timeouts are translated into `ConnectionFailed` (and its
  `RequestTimeout`) here, where they enter; the daemon's error replies are
  raised as their `ipamd.errors` class.
* Not thread-safe: use one `Client` per thread (they are cheap).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from ipamd.client import methods
from ipamd.client.core import ClientCore, ConnectionFailed, Reply, RequestTimeout
from ipamd.client.discovery import discover_socket
from ipamd.wire.protocol import NEED_DATA

# Big enough that a page of 1000 leases arrives in a few reads.
RECEIVE_BYTES: Final = 256 << 10
# After a failed send, how long to wait for the daemon's last word (why it hung up).
LAST_WORD_S: Final = 1.0


class Client:
    """A blocking ipamd client; see the module docstring for its rules.

    >>> with Client("/run/ipamd/ipamd.sock") as ipam:            # doctest: +SKIP
    ...     lease = ipam.alloc("3f2a9c", {"podman": {"ifname": "eth0"}})
    """

    def __init__(
        self,
        socket_path: str | Path | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.socket_path = discover_socket(socket_path)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._core: ClientCore | None = None

    # -- connection --------------------------------------------------------------------------

    def connect(self) -> Client:
        """Connect now rather than on the first call; a no-op when connected."""
        if self._sock is None:
            self._sock = self._open()
            self._core = ClientCore(self.socket_path)
        return self

    def close(self) -> None:
        sock, self._sock, self._core = self._sock, None, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> socket.socket:
        path = self.socket_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(str(path))
        except TimeoutError:
            sock.close()
            raise RequestTimeout(
                path, f"timed out after {self.connect_timeout:g}s connecting to ipamd at {path}"
            ) from None
        except OSError as e:
            sock.close()
            raise ConnectionFailed(
                path, f"cannot connect to ipamd at {path}: {e.strerror or e}"
            ) from None
        return sock

    # -- calls -------------------------------------------------------------------------------

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call `method` with named `params`; its result.

        Raises the daemon's error as its `ipamd.errors` class, and `ConnectionFailed`
        (`RequestTimeout` past `timeout`) when the daemon could not be asked or
        did not answer.
        """
        deadline = time.monotonic() + self.timeout
        self.connect()
        sock, core = self._sock, self._core
        assert sock is not None and core is not None
        msgid, data = core.start(method, dict(params) if params else None)
        try:
            reply = self._exchange(sock, core, msgid, data, deadline)
        except BaseException:
            self.close()  # the stream is in an unknown state: never reuse it
            raise
        return reply.value()

    def _exchange(
        self, sock: socket.socket, core: ClientCore, msgid: int, data: bytes, deadline: float
    ) -> Reply:
        path = self.socket_path
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(data, socket.MSG_NOSIGNAL)  # EPIPE as an error, whatever SIGPIPE does
        except TimeoutError:
            raise self._timed_out() from None
        except OSError as e:
            # The daemon may have hung up with a reason (a frame over its limit): read it.
            try:
                return self._receive(
                    sock, core, msgid, min(deadline, time.monotonic() + LAST_WORD_S)
                )
            except (ConnectionFailed, OSError):
                pass  # nothing (more) to read: report the send failure
            raise ConnectionFailed(
                path, f"lost connection to ipamd at {path} while sending: {e.strerror or e}"
            ) from None
        try:
            return self._receive(sock, core, msgid, deadline)
        except TimeoutError:
            raise self._timed_out() from None
        except OSError as e:
            raise ConnectionFailed(
                path, f"lost connection to ipamd at {path}: {e.strerror or e}"
            ) from None

    def _receive(self, sock: socket.socket, core: ClientCore, msgid: int, deadline: float) -> Reply:
        while True:
            reply = core.next_reply()
            if reply is NEED_DATA:
                sock.settimeout(_remaining(deadline))
                core.receive_data(sock.recv(RECEIVE_BYTES))
            elif reply.msgid == msgid:
                return reply

    def _timed_out(self) -> RequestTimeout:
        return RequestTimeout(
            self.socket_path,
            f"ipamd at {self.socket_path} did not answer within {self.timeout:g}s",
        )

    # -- methods (DESIGN.md section 4) -------------------------------------------------------

    def _map(self, call: methods.Call) -> dict[str, Any]:
        return methods.expect_map(self.socket_path, call[0], self.call(*call))

    def ping(self) -> dict[str, Any]:
        """`{"version", "uptime_s"}`."""
        return self._map(methods.ping())

    def status(self) -> dict[str, Any]:
        return self._map(methods.status())

    def stats(self) -> dict[str, Any]:
        """`{"networks": [{"name", "leases", "subnets": [...with size, used, free...]}]}`."""
        return self._map(methods.stats())

    def metrics(self) -> str:
        """The Prometheus text exposition of the daemon's metrics."""
        return methods.metrics_text(self.socket_path, self._map(methods.metrics()))

    def network_create(
        self,
        name: str,
        subnets: Sequence[Mapping[str, Any]],
        driver: str | None = None,
        *,
        scope: str | None = None,
    ) -> dict[str, Any]:
        return self._map(methods.network_create(name, subnets, driver, scope))

    def network_get(self, name: str) -> dict[str, Any]:
        return self._map(methods.network_get(name))

    def network_list(self) -> list[dict[str, Any]]:
        call = methods.network_list()
        return methods.expect_list(self.socket_path, call[0], self.call(*call))

    def network_delete(self, name: str, force: bool = False) -> dict[str, Any]:
        return self._map(methods.network_delete(name, force))

    def alloc(self, container_id: str, networks: methods.Attachments) -> dict[str, Any]:
        """`networks`: {NAME: {"ifname"?, "static_ips"?, "attributes"?}}; all or nothing."""
        return self._map(methods.alloc(container_id, networks))

    def release(
        self, container_id: str, networks: methods.Attachments | None = None
    ) -> dict[str, Any]:
        """`networks`: {NAME: {"ifname"?}}; None releases on every network."""
        return self._map(methods.release(container_id, networks))

    def get(
        self, container_id: str, networks: methods.Attachments | Sequence[str] | None = None
    ) -> dict[str, Any]:
        return self._map(methods.get(container_id, networks))

    def lease_list(
        self, network: str, after: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """One page: `{"leases": [...], "next"?}`; see `iter_leases` for all of them."""
        return self._map(methods.lease_list(network, after, limit))

    def iter_leases(self, network: str, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every lease on `network`, in address order, one `lease.list` page at a time."""
        after: str | None = None
        while True:
            page = self.lease_list(network, after=after, limit=page_size)
            leases, after = methods.lease_page(self.socket_path, page)
            yield from leases
            if after is None:
                return

    def lease_owner(self, ip: str, network: str | None = None) -> dict[str, Any]:
        return self._map(methods.lease_owner(ip, network))

    def gc(
        self,
        network: str,
        valid: Sequence[Mapping[str, Any]],
        dry_run: bool = False,
        suspect_only: bool = False,
    ) -> dict[str, Any]:
        """Release every lease on `network` whose key is not in `valid`: {container_id, ifname?}
        (with `suspect_only`, only those from an earlier boot)."""
        return self._map(methods.gc(network, valid, dry_run, suspect_only))


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining
