"""The method table of DESIGN.md section 4, from the client's side: arguments in, params out.

Each function turns a driver method's Python arguments into the `(method, params)`
pair it sends, leaving out optional keys that were not given, so the blocking
and the trio driver build identical requests. `expect_map` and `expect_list`
check the shape of a result before a typed method hands it on. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from ipamd.client.core import ProtocolError

Call: TypeAlias = tuple[str, dict[str, Any]]
# What a CNI runtime passes per network: {"ifname"?, "static_ips"?, "attributes"?}.
Attachments: TypeAlias = Mapping[str, Mapping[str, Any]]


def ping() -> Call:
    return "ping", {}


def status() -> Call:
    return "status", {}


def stats() -> Call:
    return "stats", {}


def metrics() -> Call:
    return "metrics", {}


def network_create(
    name: str,
    subnets: Sequence[Mapping[str, Any]],
    driver: str | None = None,
    scope: str | None = None,
) -> Call:
    params: dict[str, Any] = {"name": name, "subnets": [dict(s) for s in subnets]}
    if driver is not None:
        params["driver"] = driver
    if scope is not None:
        params["scope"] = scope
    return "network.create", params


def network_get(name: str) -> Call:
    return "network.get", {"name": name}


def network_list() -> Call:
    return "network.list", {}


def network_delete(name: str, force: bool = False) -> Call:
    params: dict[str, Any] = {"name": name}
    if force:
        params["force"] = True
    return "network.delete", params


def alloc(container_id: str, networks: Attachments) -> Call:
    return "alloc", {"container_id": container_id, "networks": _attachments(networks)}


def release(container_id: str, networks: Attachments | None = None) -> Call:
    params: dict[str, Any] = {"container_id": container_id}
    if networks is not None:
        params["networks"] = _attachments(networks)
    return "release", params


def get(container_id: str, networks: Attachments | Sequence[str] | None = None) -> Call:
    """`networks` filters: a list of names, or NAME -> {"ifname"?} as for release."""
    params: dict[str, Any] = {"container_id": container_id}
    if isinstance(networks, Mapping):
        params["networks"] = _attachments(networks)
    elif networks is not None:
        params["networks"] = list(networks)
    return "get", params


def lease_list(network: str, after: str | None = None, limit: int | None = None) -> Call:
    params: dict[str, Any] = {"network": network}
    if after is not None:
        params["after"] = after
    if limit is not None:
        params["limit"] = limit
    return "lease.list", params


def lease_owner(ip: str, network: str | None = None) -> Call:
    params: dict[str, Any] = {"ip": ip}
    if network is not None:
        params["network"] = network
    return "lease.owner", params


def gc(
    network: str,
    valid: Sequence[Mapping[str, Any]],
    dry_run: bool = False,
    suspect_only: bool = False,
) -> Call:
    params: dict[str, Any] = {"network": network, "valid": [dict(v) for v in valid]}
    if dry_run:
        params["dry_run"] = True
    if suspect_only:
        params["suspect_only"] = True
    return "gc", params


def _attachments(networks: Attachments) -> dict[str, dict[str, Any]]:
    return {name: dict(options) for name, options in networks.items()}


# -- results -----------------------------------------------------------------------------------


def expect_map(socket_path: Path, method: str, result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise ProtocolError(
            socket_path,
            f"ipamd at {socket_path} answered {method} with {type(result).__name__}, not a map",
        )
    return result


def expect_list(socket_path: Path, method: str, result: Any) -> list[Any]:
    if not isinstance(result, list):
        raise ProtocolError(
            socket_path,
            f"ipamd at {socket_path} answered {method} with {type(result).__name__}, not an array",
        )
    return result


def metrics_text(socket_path: Path, result: dict[str, Any]) -> str:
    """The Prometheus text of a `metrics` result `{"text": str}`."""
    text = result.get("text")
    if not isinstance(text, str):
        raise ProtocolError(
            socket_path, f"ipamd at {socket_path} answered metrics without a text: {text!r:.80}"
        )
    return text


def lease_page(socket_path: Path, page: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The leases of one lease.list page and the `after` of the next (None: last page)."""
    leases = expect_list(socket_path, "lease.list", page.get("leases"))
    after = page.get("next")
    if after is not None and not isinstance(after, str):
        raise ProtocolError(
            socket_path, f"ipamd at {socket_path} answered lease.list with a next of {after!r}"
        )
    if after is not None and not leases:
        # A next after an empty page would loop for ever.
        raise ProtocolError(
            socket_path, f"ipamd at {socket_path} answered lease.list with an empty page and a next"
        )
    return leases, after
