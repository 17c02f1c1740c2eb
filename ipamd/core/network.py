"""Networks and subnets: parsed and validated once, trusted everywhere after.

`Network.from_wire()` is the only way in from the outside; it checks every field
and raises `InvalidRequest` naming the bad value. Past that, the model is frozen
and its derived numbers (the addresses a subnet may ever hand out, its lease
range, its exclusions) are offsets from the subnet's network address, ready for
the free-range index. Pure: no I/O.

Rules (DESIGN.md sections 2 and 3, host-local's `Range.Canonicalize`):
- The network address and the IPv4 broadcast are never handed out, except in
  point-to-point prefixes (IPv4 /31 and /32, IPv6 /127 and /128, RFC 3021).
- The gateway and excluded addresses are never handed out.
- The lease range bounds dynamic allocation only; a static address may lie
  anywhere in the subnet that is not reserved.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from ipamd.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_DRIVER = "host-local"
# A network with more subnets than this is a mistake, not a plan.
MAX_SUBNETS = 16
# Exclusions are kept as a list and applied at every index rebuild.
MAX_EXCLUDES = 256

SUBNET_KEYS = frozenset(
    {"subnet", "gateway", "range_start", "range_end", "exclude", "block_prefix"}
)
NETWORK_KEYS = frozenset({"name", "driver", "subnets", "scope"})
# A cluster network's definition lives in etcd and its subnets are cut into
# blocks that hosts claim (ipamd/cluster/); a local one is this host's alone.
SCOPES = ("local", "cluster")
# Blocks of 64 addresses unless the network says otherwise (Calico's default).
DEFAULT_BLOCK_PREFIX = {4: 26, 6: 122}
# A block is claimed and filled address by address: at most 2**16 of them.
MAX_BLOCK_BITS = 16


def parse_address(value: Any, what: str) -> IPAddress:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be an IP address string, got {value!r}")
    if "%" in value:  # an IPv6 zone index names a link, not an address to lease
        raise InvalidRequest(f"{what} {value!r} must not carry a zone index (%...)")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise InvalidRequest(f"{what} {value!r} is not a valid IP address") from None


# The text of each byte value: looking it up takes half the time of formatting it.
_OCTET = tuple(str(byte) for byte in range(256))


MAX_REMEMBERED_IPV6_TEXTS = 4096


def address_text(address: IPAddress) -> str:
    """`str(address)`, at half the cost for IPv4: every reply and every stored
    lease spells its addresses out, and `ipaddress` takes four calls to."""
    if type(address) is IPv4Address:  # (a subclass takes the general path: same text)
        n = int(address)
        return f"{_OCTET[n >> 24]}.{_OCTET[n >> 16 & 255]}.{_OCTET[n >> 8 & 255]}.{_OCTET[n & 255]}"
    if type(address) is IPv6Address:
        return _ipv6_text(address)
    return str(address)


# A dual-stack allocation spells its new IPv6 address twice (answer and stored
# lease); why a memo pays: the README's performance section, "IPv6 text".
@functools.lru_cache(maxsize=MAX_REMEMBERED_IPV6_TEXTS)
def _ipv6_text(address: IPv6Address) -> str:
    return str(address)


def address_from_text(text: Any) -> IPAddress:
    """`ipaddress.ip_address(text)` (same results, same errors), faster for the
    texts `address_text` writes into every stored lease."""
    if isinstance(text, str):
        if ":" in text:
            # ip_address tries IPv4 first, which fails (and costs an exception)
            # for any text with a colon: a third of the time of an IPv6 read.
            try:
                return ipaddress.IPv6Address(text)
            except ValueError:  # let ip_address say why
                return ipaddress.ip_address(text)
        parts = text.split(".")
        if len(parts) == 4:
            try:
                address = ipaddress.IPv4Address(int.from_bytes(bytes(map(int, parts)), "big"))
            except ValueError:  # not ints, or not 0-255: let ip_address say why
                pass
            else:
                # int() also takes " 1", "+1", "01" or "1_0": only the text
                # address_text gives back is what ip_address would accept.
                if address_text(address) == text:
                    return address
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=1024)
def _is_name(text: str) -> bool:
    # Cached: every alloc names its networks, nearly always the same few.
    return NAME_PATTERN.fullmatch(text) is not None


def validate_name(value: Any, what: str = "network name") -> str:
    if type(value) is not str or not _is_name(value):
        raise InvalidRequest(f"invalid {what} {value!r}: want 1-64 characters of [A-Za-z0-9_.-]")
    return value


def is_point_to_point(cidr: IPNetwork) -> bool:
    return cidr.max_prefixlen - cidr.prefixlen <= 1


@dataclass(frozen=True, slots=True)
class Subnet:
    cidr: IPNetwork
    gateway: IPAddress | None = None
    range_start: IPAddress | None = None
    range_end: IPAddress | None = None
    # Normalised exclusion ranges as (first, last) addresses, in the given order.
    exclude: tuple[tuple[IPAddress, IPAddress], ...] = field(default=())
    # Cluster networks only: the prefix length of the blocks hosts claim.
    block_prefix: int | None = None

    # Derived once (every allocation asks for them; `ipaddress` is slow):
    # the network address as an int, the host bounds and the lease range as
    # offsets from it, and the text forms the wire needs.
    _base: int = field(init=False, repr=False, compare=False)
    _size: int = field(init=False, repr=False, compare=False)
    _host_bounds: tuple[int, int] = field(init=False, repr=False, compare=False)
    _lease_range: tuple[int, int] = field(init=False, repr=False, compare=False)
    _wire_ip: dict[str, str] = field(init=False, repr=False, compare=False)
    _address_type: type[IPAddress] = field(init=False, repr=False, compare=False)
    _slash_prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base = int(self.cidr.network_address)
        size = int(self.cidr.num_addresses)
        last = size - 1
        if is_point_to_point(self.cidr):
            bounds = (0, last)
        elif self.cidr.version == 4:
            bounds = (1, last - 1)  # minus network and broadcast
        else:
            bounds = (1, last)  # minus the network (subnet-router anycast) address
        low, high = bounds
        first = low if self.range_start is None else max(low, int(self.range_start) - base)
        end = high if self.range_end is None else min(high, int(self.range_end) - base)
        wire = {"subnet": str(self.cidr)}
        if self.gateway is not None:
            wire["gateway"] = str(self.gateway)
        for name, value in (
            ("_base", base),
            ("_size", size),
            ("_host_bounds", bounds),
            ("_lease_range", (first, end)),
            ("_wire_ip", wire),
            ("_address_type", type(self.cidr.network_address)),
            ("_slash_prefix", f"/{self.cidr.prefixlen}"),
        ):
            object.__setattr__(self, name, value)

    # -- derived offsets (from the network address) -------------------------

    def offset(self, address: IPAddress) -> int:
        return int(address) - self._base

    def address_at(self, offset: int) -> IPAddress:
        # The address class straight from the int: `network_address + offset`
        # costs two more calls, on every allocation.
        return self._address_type(self._base + offset)

    def contains(self, address: IPAddress) -> bool:
        return (
            isinstance(address, self._address_type) and 0 <= int(address) - self._base < self._size
        )

    @property
    def size(self) -> int:
        return self._size

    @property
    def host_bounds(self) -> tuple[int, int]:
        """Offsets of the first and last address that may ever be handed out."""
        return self._host_bounds

    @property
    def lease_range(self) -> tuple[int, int]:
        """Offsets bounding dynamic allocation, clipped to the host bounds.

        May be empty (first > last), e.g. a range of just the network address.
        """
        return self._lease_range

    def ip_to_wire(self, address: IPAddress) -> dict[str, str]:
        """An address of this subnet as the wire shows it in a lease."""
        return {"address": address_text(address) + self._slash_prefix, **self._wire_ip}

    def reserved_ranges(self) -> list[tuple[int, int]]:
        """Offset ranges inside the host bounds that are never handed out."""
        reserved = [(self.offset(a), self.offset(b)) for a, b in self.exclude]
        if self.gateway is not None:
            reserved.append((self.offset(self.gateway), self.offset(self.gateway)))
        return reserved

    def reserved_reason(self, address: IPAddress) -> str | None:
        """Why `address` (inside the subnet) may never be leased, as what it "is"
        (e.g. "the gateway of subnet 10.88.0.0/16"), or None."""
        offset = self.offset(address)
        low, high = self.host_bounds
        if offset < low:
            return f"the network address of subnet {self.cidr}"
        if offset > high:
            return f"the broadcast address of subnet {self.cidr}"
        if address == self.gateway:
            return f"the gateway of subnet {self.cidr}"
        for first, last in self.exclude:
            if int(first) <= int(address) <= int(last):
                return f"excluded in subnet {self.cidr}"
        return None

    @property
    def allocatable(self) -> int:
        """How many addresses dynamic allocation may ever hand out."""
        first, last = self.lease_range
        if first > last:
            return 0
        count = last - first + 1
        covered: list[tuple[int, int]] = []
        for a, b in sorted(self.reserved_ranges()):
            a, b = max(a, first), min(b, last)
            if a > b:
                continue
            if covered and a <= covered[-1][1] + 1:
                covered[-1] = (covered[-1][0], max(covered[-1][1], b))
            else:
                covered.append((a, b))
        return count - sum(b - a + 1 for a, b in covered)

    @property
    def range_text(self) -> str:
        """The lease range as the seed's exhaustion message names it: `A - B`."""
        first, last = self.lease_range
        return f"{self.address_at(first)} - {self.address_at(last)}"

    # -- wire form ----------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"subnet": str(self.cidr)}
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        if self.range_start is not None:
            out["range_start"] = str(self.range_start)
        if self.range_end is not None:
            out["range_end"] = str(self.range_end)
        if self.exclude:
            out["exclude"] = [str(a) if a == b else f"{a}-{b}" for a, b in self.exclude]
        if self.block_prefix is not None:
            out["block_prefix"] = self.block_prefix
        return out

    @classmethod
    def from_wire(cls, raw: Any) -> Subnet:
        if isinstance(raw, list) and not raw:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidRequest(f"a subnet must be a map, got {raw!r}")
        unknown = set(raw) - SUBNET_KEYS
        if unknown:
            raise InvalidRequest(f"unknown subnet key(s) {sorted(map(str, unknown))}")
        value = raw.get("subnet")
        if not isinstance(value, str) or "%" in value:
            raise InvalidRequest(f"subnet must be a CIDR string, got {value!r}")
        try:
            cidr: IPNetwork = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise InvalidRequest(f"subnet {value!r} is not a valid CIDR") from None
        if "/" not in value:
            raise InvalidRequest(f"subnet {value!r} needs a prefix length, e.g. {value}/24")
        _refuse_host_bits(value, cidr, "subnet")

        def inside(key: str) -> IPAddress | None:
            if raw.get(key) is None:
                return None
            address = parse_address(raw[key], key)
            if address not in cidr:
                raise InvalidRequest(f"{key} {address} is not in subnet {cidr}")
            return address

        gateway = inside("gateway")
        range_start = inside("range_start")
        range_end = inside("range_end")
        if range_start is not None and range_end is not None and int(range_start) > int(range_end):
            raise InvalidRequest(f"range_start {range_start} is after range_end {range_end}")
        subnet = cls(
            cidr,
            gateway,
            range_start,
            range_end,
            _parse_excludes(raw, cidr),
            _parse_block_prefix(raw.get("block_prefix"), cidr),
        )
        first, last = subnet.lease_range
        if first > last:
            raise InvalidRequest(
                f"lease range {range_start or cidr.network_address} - {range_end or 'end'}"
                f" of subnet {cidr} holds no address that can be handed out"
            )
        if gateway is not None:
            low, high = subnet.host_bounds
            if not low <= subnet.offset(gateway) <= high:
                raise InvalidRequest(
                    f"gateway {gateway} is the network or broadcast address of subnet {cidr}"
                )
        return subnet


def _refuse_host_bits(text: str, cidr: IPNetwork, what: str) -> None:
    """Refuse "10.88.0.1/24", as host-local does: dropping the host bits silently
    would lease from a subnet other than the one the user believes they wrote."""
    if ipaddress.ip_interface(text.strip()).ip != cidr.network_address:
        raise InvalidRequest(
            f"{what} {text!r} has host bits set: for a prefix length of {cidr.prefixlen}"
            f" its network address is {cidr.network_address}, so write {cidr}"
        )


def _parse_block_prefix(value: Any, cidr: IPNetwork) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"block_prefix must be a prefix length, got {value!r}")
    narrowest = cidr.max_prefixlen
    widest = max(cidr.prefixlen, cidr.max_prefixlen - MAX_BLOCK_BITS)
    if not widest <= value <= narrowest:
        raise InvalidRequest(
            f"block_prefix {value} does not fit subnet {cidr}: want {widest}..{narrowest}"
            f" (a block lies inside the subnet and holds at most 2**{MAX_BLOCK_BITS} addresses)"
        )
    return value


def _parse_excludes(
    raw: dict[str, Any], cidr: IPNetwork
) -> tuple[tuple[IPAddress, IPAddress], ...]:
    entries = raw.get("exclude") or []
    if not isinstance(entries, list):
        raise InvalidRequest(f"exclude must be a list, got {entries!r}")
    if len(entries) > MAX_EXCLUDES:
        raise InvalidRequest(f"too many exclude entries ({len(entries)} > {MAX_EXCLUDES})")
    out: list[tuple[IPAddress, IPAddress]] = []
    for entry in entries:
        if not isinstance(entry, str) or "%" in entry:
            raise InvalidRequest(f"exclude entry must be an address string, got {entry!r}")
        try:
            if "/" in entry:
                excluded = ipaddress.ip_network(entry, strict=False)
                _refuse_host_bits(entry, excluded, "exclude entry")
                first, last = excluded.network_address, excluded.broadcast_address
            elif "-" in entry:
                a, b = entry.split("-", 1)
                first, last = ipaddress.ip_address(a.strip()), ipaddress.ip_address(b.strip())
            else:
                first = last = ipaddress.ip_address(entry)
        except ValueError:
            raise InvalidRequest(
                f"exclude entry {entry!r} is not an address, a CIDR or an a-b range"
            ) from None
        if first.version != cidr.version or int(first) > int(last):
            raise InvalidRequest(f"exclude entry {entry!r} is not a range in subnet {cidr}")
        if first not in cidr or last not in cidr:
            raise InvalidRequest(f"exclude entry {entry!r} is not in subnet {cidr}")
        out.append((first, last))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    subnets: tuple[Subnet, ...]
    driver: str = DEFAULT_DRIVER
    scope: str = "local"

    @property
    def is_cluster(self) -> bool:
        return self.scope == "cluster"

    @property
    def allocates(self) -> bool:
        """Whether ipamd hands out addresses here (the seed's `requiresIPAMAlloc`)."""
        return self.driver in ("", DEFAULT_DRIVER) and bool(self.subnets)

    def subnet_of(self, address: IPAddress) -> int | None:
        """Index of the subnet holding `address`, or None."""
        for i, subnet in enumerate(self.subnets):
            if subnet.contains(address):
                return i
        return None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "driver": self.driver,
            "subnets": [subnet.to_wire() for subnet in self.subnets],
        }
        if self.is_cluster:  # (local networks read as they always did)
            out["scope"] = self.scope
        return out

    @classmethod
    def from_wire(cls, raw: Any) -> Network:
        if not isinstance(raw, dict):
            raise InvalidRequest(f"a network must be a map, got {raw!r}")
        unknown = set(raw) - NETWORK_KEYS
        if unknown:
            raise InvalidRequest(f"unknown network key(s) {sorted(map(str, unknown))}")
        name = validate_name(raw.get("name"))
        driver = raw.get("driver", DEFAULT_DRIVER)
        if driver is None or driver == "":
            driver = DEFAULT_DRIVER
        if not isinstance(driver, str) or not NAME_PATTERN.fullmatch(driver):
            raise InvalidRequest(f"invalid driver {driver!r} for network {name}")
        raw_subnets = raw.get("subnets", [])
        if not isinstance(raw_subnets, list):
            raise InvalidRequest(f"subnets of network {name} must be a list, got {raw_subnets!r}")
        if len(raw_subnets) > MAX_SUBNETS:
            raise InvalidRequest(
                f"network {name} has {len(raw_subnets)} subnets (max {MAX_SUBNETS})"
            )
        subnets = tuple(Subnet.from_wire(s) for s in raw_subnets)
        for i, a in enumerate(subnets):
            for b in subnets[:i]:
                if a.cidr.version == b.cidr.version and a.cidr.overlaps(b.cidr):  # type: ignore[arg-type,unused-ignore]
                    raise InvalidRequest(f"subnets {b.cidr} and {a.cidr} of network {name} overlap")
        scope = raw.get("scope", "local")
        if scope not in SCOPES:
            raise InvalidRequest(f"scope {scope!r} of network {name} is not one of {SCOPES}")
        if scope == "cluster":
            subnets = tuple(_with_block_prefix(s) for s in subnets)
        else:
            for s in subnets:
                if s.block_prefix is not None:
                    raise InvalidRequest(
                        f"block_prefix of subnet {s.cidr}: only cluster networks have blocks"
                    )
        return cls(name, subnets, driver, scope)


def _with_block_prefix(subnet: Subnet) -> Subnet:
    """The subnet with its block prefix set: the default if none was given (a
    block never wider than the subnet), so that an identical create compares equal."""
    if subnet.block_prefix is not None:
        return subnet
    prefix = max(DEFAULT_BLOCK_PREFIX[subnet.cidr.version], subnet.cidr.prefixlen)
    return dataclasses.replace(subnet, block_prefix=prefix)


def check_creatable(network: Network) -> None:
    """Refuse, at create only, a definition that would misbehave: a host-local network
    without subnets answers every alloc with no address. (A network stored before
    this rule still loads: `Network.from_wire` does not ask.)"""
    if network.driver == DEFAULT_DRIVER and not network.subnets:
        raise InvalidRequest(
            f"network {network.name} has driver {DEFAULT_DRIVER} but no subnets, so ipamd"
            " would answer every alloc on it with no address: give it a subnet (or"
            " another driver, for which ipamd records the network and allocates nothing)"
        )
