"""Leases: the addresses one attachment `(network, container_id, ifname)` holds.

A lease holds one address per subnet of its network, in subnet order. Its wire
form needs the network (for prefix lengths and gateways), so rendering takes the
`Network`. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from ipamd.core.network import IPAddress, Network
from ipamd.errors import InvalidRequest

# CNI's rule for container IDs (spec 1.0 "containerID"): alphanumerics plus
# underscore, period and hyphen. 255 bounds the key size in the store.
CONTAINER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
# Linux interface names: at most 15 bytes, no '/', ':' or whitespace. Empty
# means podman's one-attachment-per-network style.
IFNAME_PATTERN = re.compile(r"[^/:\s\x00]{0,15}")
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_LEN = 256


def validate_container_id(value: Any) -> str:
    if not isinstance(value, str) or not CONTAINER_ID_PATTERN.fullmatch(value):
        raise InvalidRequest(
            f"invalid container_id {value!r}: want 1-255 characters of [A-Za-z0-9_.-],"
            " starting with a letter or digit"
        )
    return value


def validate_ifname(value: Any) -> str:
    if value is None:
        return ""
    if (
        not isinstance(value, str)
        or not IFNAME_PATTERN.fullmatch(value)
        or len(value.encode()) > 15
        or value in (".", "..")
    ):
        raise InvalidRequest(
            f"invalid ifname {value!r}: want at most 15 bytes, no '/', ':' or space"
        )
    return value


def validate_attributes(value: Any) -> dict[str, str]:
    if value is None or value == []:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ATTRIBUTES:
        raise InvalidRequest(f"attributes must be a map of at most {MAX_ATTRIBUTES} strings")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidRequest(f"attribute {k!r}: keys and values must be strings, got {v!r}")
        if len(k) > MAX_ATTRIBUTE_LEN or len(v) > MAX_ATTRIBUTE_LEN:
            raise InvalidRequest(f"attribute {k!r} is longer than {MAX_ATTRIBUTE_LEN} characters")
    return dict(value)


class LeaseKey(NamedTuple):
    """Which attachment a lease belongs to. (A NamedTuple: the README's
    performance section, "Value types on the hot path".)"""

    network: str
    container_id: str
    ifname: str = ""

    def __str__(self) -> str:
        suffix = f" ({self.ifname})" if self.ifname else ""
        return f"{self.container_id}{suffix} on network {self.network}"


class Lease(NamedTuple):
    """One attachment's addresses (a NamedTuple, as LeaseKey). Leases are
    values: the shared default `attributes` map, like every lease's, is never
    mutated."""

    key: LeaseKey
    addresses: tuple[IPAddress, ...]
    created: int
    attributes: dict[str, str] = {}  # noqa: RUF012 -- never mutated, see above
    # The boot id of the host boot it was made or last confirmed in (boot.py).
    boot: str = ""

    def __hash__(self) -> int:
        # As the dataclass hashed: without the (unhashable) attributes.
        return hash((self.key, self.addresses, self.created, self.boot))

    def ips_to_wire(self, network: Network) -> list[dict[str, Any]]:
        ips: list[dict[str, Any]] = []
        for position, address in enumerate(self.addresses):
            # Addresses are in subnet order; look further only if the store disagrees.
            subnets = network.subnets
            if position < len(subnets) and subnets[position].contains(address):
                ips.append(subnets[position].ip_to_wire(address))
                continue
            index = network.subnet_of(address)
            if index is None:  # only a corrupt store gets here; show what we have
                ips.append({"address": str(address), "subnet": ""})
            else:
                ips.append(subnets[index].ip_to_wire(address))
        return ips

    def to_wire(self, network: Network, current_boot: str) -> dict[str, Any]:
        """The LEASE of DESIGN.md; `suspect` when made in a boot other than `current_boot`."""
        out: dict[str, Any] = {
            "network": self.key.network,
            "container_id": self.key.container_id,
            "ifname": self.key.ifname,
            "ips": self.ips_to_wire(network),
            "created": self.created,
            "boot": self.boot,
            "suspect": self.boot != current_boot,
        }
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out
