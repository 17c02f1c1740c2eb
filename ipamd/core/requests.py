"""Mutation requests, parsed from their wire params once and trusted after.

The server turns `params` maps into these frozen objects (raising
`InvalidRequest` naming the bad value); the writer and the allocator only ever
see them. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Any

from ipamd.core.lease import (
    LeaseKey,
    validate_attributes,
    validate_container_id,
    validate_ifname,
)
from ipamd.core.network import (
    IPAddress,
    Network,
    check_creatable,
    parse_address,
    validate_name,
)
from ipamd.errors import InvalidRequest
from ipamd.wire.values import as_map, as_optional_map

# One request may name this many networks; more is a mistake, not a plan.
MAX_NETWORKS_PER_REQUEST = 64
MAX_STATIC_IPS = 16
MAX_GC_VALID = 1_000_000

# The keys each map may hold, built once: checking them is on every request's path.
ALLOC_KEYS = frozenset({"container_id", "networks"})
ALLOC_OPTION_KEYS = frozenset({"ifname", "static_ips", "attributes"})
RELEASE_KEYS = frozenset({"container_id", "networks"})
RELEASE_OPTION_KEYS = frozenset({"ifname"})
GC_KEYS = frozenset({"network", "valid", "dry_run", "suspect_only"})
GC_VALID_KEYS = frozenset({"container_id", "ifname"})
DELETE_NETWORK_KEYS = frozenset({"name", "force"})


def network_options(raw: Any, network: str) -> dict[str, Any]:
    """The options map of one network in a request; nil options mean the defaults."""
    if isinstance(raw, dict):  # the usual case: no message to build
        return raw
    return as_optional_map(raw, f"options of network {network}")


def check_keys(params: dict[str, Any], allowed: Set[str], what: str) -> None:
    if params.keys() <= allowed:  # the usual case: no set to build
        return
    unknown = set(params) - allowed
    raise InvalidRequest(f"unknown {what} key(s) {sorted(map(str, unknown))}")


def optional_bool(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Attachment:
    ifname: str = ""
    static_ips: tuple[IPAddress, ...] = ()
    attributes: dict[str, str] | None = None


# What a network named with no options (podman's usual request) attaches with:
# one shared instance, since it is frozen and most requests need nothing else.
DEFAULT_ATTACHMENT = Attachment()


def _attachment_from_wire(name: str, raw: Any) -> Attachment:
    """The options of one network of an alloc request."""
    options = network_options(raw, name)
    if not options:
        return DEFAULT_ATTACHMENT
    check_keys(options, ALLOC_OPTION_KEYS, "network option")
    static = options.get("static_ips") or []
    if not isinstance(static, list) or len(static) > MAX_STATIC_IPS:
        raise InvalidRequest(f"static_ips must be a list of at most {MAX_STATIC_IPS} addresses")
    return Attachment(
        ifname=validate_ifname(options.get("ifname")),
        static_ips=tuple(parse_address(ip, "static ip") for ip in static),
        attributes=validate_attributes(options.get("attributes")),
    )


@dataclass(slots=True)
class AllocRequest:
    container_id: str
    networks: dict[str, Attachment]

    @classmethod
    def from_wire(cls, params: dict[str, Any]) -> AllocRequest:
        check_keys(params, ALLOC_KEYS, "alloc")
        container_id = validate_container_id(params.get("container_id"))
        raw_networks = as_optional_map(params.get("networks"), "networks")
        if not raw_networks:
            raise InvalidRequest("alloc needs at least one network in networks")
        if len(raw_networks) > MAX_NETWORKS_PER_REQUEST:
            raise InvalidRequest(
                f"too many networks in one request (max {MAX_NETWORKS_PER_REQUEST})"
            )
        networks: dict[str, Attachment] = {}
        for name, raw in raw_networks.items():
            validate_name(name)
            networks[name] = _attachment_from_wire(name, raw)
        return cls(container_id, networks)


@dataclass(slots=True)
class ReleaseRequest:
    container_id: str
    # None: every network. Per network, None: every ifname of the container there.
    networks: dict[str, str | None] | None

    @classmethod
    def from_wire(cls, params: dict[str, Any]) -> ReleaseRequest:
        check_keys(params, RELEASE_KEYS, "release")
        container_id = validate_container_id(params.get("container_id"))
        if params.get("networks") is None:
            return cls(container_id, None)
        networks: dict[str, str | None] = {}
        for name, raw in as_map(params["networks"], "networks").items():
            validate_name(name)
            options = network_options(raw, name)
            check_keys(options, RELEASE_OPTION_KEYS, "network option")
            ifname = options.get("ifname")
            networks[name] = None if ifname is None else validate_ifname(ifname)
        return cls(container_id, networks)


@dataclass(slots=True)
class GcRequest:
    network: str
    # (container_id, ifname); ifname None keeps every attachment of the container.
    valid: frozenset[tuple[str, str | None]]
    dry_run: bool = False
    # Release only leases from an earlier boot: a gc at boot, racing the
    # runtime's first ADDs, must never take a lease made in this boot.
    suspect_only: bool = False

    def keeps(self, container_id: str, ifname: str) -> bool:
        return (container_id, ifname) in self.valid or (container_id, None) in self.valid

    @classmethod
    def from_wire(cls, params: dict[str, Any]) -> GcRequest:
        check_keys(params, GC_KEYS, "gc")
        network = validate_name(params.get("network"))
        raw_valid = params.get("valid")
        if not isinstance(raw_valid, list) or len(raw_valid) > MAX_GC_VALID:
            raise InvalidRequest(
                f"valid must be a list of {{container_id, ifname?}}, got {raw_valid!r}"
            )
        valid: set[tuple[str, str | None]] = set()
        for entry in raw_valid:
            entry = as_map(entry, "valid entry")
            check_keys(entry, GC_VALID_KEYS, "valid entry")
            ifname = entry.get("ifname")
            valid.add(
                (
                    validate_container_id(entry.get("container_id")),
                    None if ifname is None else validate_ifname(ifname),
                )
            )
        return cls(
            network,
            frozenset(valid),
            optional_bool(params, "dry_run"),
            optional_bool(params, "suspect_only"),
        )


@dataclass(slots=True)
class ConfirmRequest:
    """Make these leases current if they are suspect: a `get` (a CNI CHECK) by
    a caller allowed to mutate showed their owner alive. Made by the daemon,
    never parsed from the wire."""

    keys: tuple[LeaseKey, ...]


@dataclass(slots=True)
class ReclaimRequest:
    """Release these leases if they are still from another boot: the daemon's
    own, once `[leases] reclaim_after_reboot` has passed since it started."""

    keys: tuple[LeaseKey, ...]


@dataclass(slots=True)
class CreateNetworkRequest:
    network: Network

    def __post_init__(self) -> None:
        # Here, not only in the allocator: the writer answers an identical create
        # of a stored network without asking the allocator.
        check_creatable(self.network)

    @classmethod
    def from_wire(cls, params: dict[str, Any]) -> CreateNetworkRequest:
        return cls(Network.from_wire(params))


@dataclass(slots=True)
class DeleteNetworkRequest:
    name: str
    force: bool = False

    @classmethod
    def from_wire(cls, params: dict[str, Any]) -> DeleteNetworkRequest:
        check_keys(params, DELETE_NETWORK_KEYS, "network.delete")
        return cls(validate_name(params.get("name")), optional_bool(params, "force"))


Mutation = (
    AllocRequest
    | ReleaseRequest
    | GcRequest
    | CreateNetworkRequest
    | DeleteNetworkRequest
    | ConfirmRequest
    | ReclaimRequest
)
