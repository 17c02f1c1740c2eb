"""Clients of ipamd (DESIGN.md section 4): a blocking `Client` and a pipelining `TrioClient`.

    from ipamd.client import Client, ConnectionFailed

    with Client() as ipam:          # the socket: argument, else $IPAMD_SOCKET, else the default
        ipam.network_create("podman", [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}])
        lease = ipam.alloc("3f2a9c", {"podman": {"ifname": "eth0"}})

    async with TrioClient.connect() as ipam:    # many calls in flight on one connection
        lease = await ipam.alloc("3f2a9c", {"podman": {}})

Both drivers share one sans-IO core (`ipamd.client.core`). The daemon's errors
are raised as their `ipamd.errors` class (`IpamError` subclasses with `code` and
`name`); not reaching the daemon raises `ConnectionFailed` (not an `IpamError`).

`TrioClient` is imported on first use: `Client` (used by the CNI plugin, exec'd
per container start) must not pay for importing trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipamd.client.core import ConnectionFailed, ProtocolError, RequestTimeout
from ipamd.client.discovery import discover_socket
from ipamd.client.sync import Client

if TYPE_CHECKING:
    from ipamd.client.trio_client import TrioClient

__all__ = [
    "Client",
    "ConnectionFailed",
    "ProtocolError",
    "RequestTimeout",
    "TrioClient",
    "discover_socket",
]


def __getattr__(name: str) -> Any:
    if name == "TrioClient":
        from ipamd.client.trio_client import TrioClient

        return TrioClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
