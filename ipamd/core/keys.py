"""Key and value encoding for the LevelDB store. Pure: bytes in, bytes out.

Each kind of key has its own one-byte prefix, so a kind is one contiguous,
ordered key range. Names never contain NUL (validated), so NUL separates parts
and no name is a prefix of another's keys.

    \\x00schema                          -> msgpack int: the schema version
    N <network>                         -> msgpack network (its wire form)
    L <container_id> \\0 <network> \\0 <ifname>
                                        -> msgpack {"boot": str, "ips": [str],
                                                    "created": int,
                                                    "attributes"?: {str: str}}
    R <network> \\0 <4|6> <address>      -> msgpack [container_id, ifname]
    C <network> \\0 <subnet#>            -> packed address: the subnet's cursor
    B <network> \\0 <block cidr>          -> msgpack {"subnet": int, "revision": int}:
                                           a cluster block this host owns
                                           (ipamd/cluster/local.py)

Leases are keyed by container first, so `get` for a container is one prefix
scan; reverse entries are keyed by IP version and address (4 or 16 big-endian
bytes), so finding an address's owner is one get, a subnet's leases are one
ordered key range (`reverse_span`), and rebuilding the index reads keys only.

A lease value's first key is always "boot" (schema 2): the start-up count of
suspect leases compares each value's first bytes with the current boot's
packed prefix (`boot_prefix`) instead of decoding a million values.
Schema 1 had no "boot"; `Store` migrates it explicitly (storage/schema.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import msgpack

from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import (
    IPAddress,
    IPNetwork,
    IPv4Address,
    Network,
    address_from_text,
    address_text,
)

SCHEMA_VERSION = 2
# Schema 1: lease values without "boot" (before boot epochs).
SCHEMA_WITHOUT_BOOT = 1
SCHEMA_KEY = b"\x00schema"
NETWORK = b"N"
LEASE = b"L"
REVERSE = b"R"
CURSOR = b"C"
BLOCK = b"B"
SEP = b"\x00"
# Just past every lease key (plyvel takes `prefix` or `start`, not both).
LEASES_END = bytes([LEASE[0] + 1])


# One Packer for every value: msgpack.packb builds a Packer and its buffer per
# call, and a batch packs two values per lease. Sharing it is safe: the C
# Packer packs a whole value without letting another thread run and resets
# its buffer when a value fails to pack; and only the writer packs.
_packer = msgpack.Packer(use_bin_type=True)


def pack(value: Any) -> bytes:
    return _packer.pack(value)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def successor(key: bytes) -> bytes:
    """The least key greater than `key`: where a scan strictly after `key` starts."""
    return key + SEP


# -- the schema version -------------------------------------------------------


def schema_value(version: int = SCHEMA_VERSION) -> bytes:
    return pack(version)


def decode_schema(value: bytes) -> Any:
    """The stored schema version: an int, unless the database is damaged."""
    return unpack(value)


def packed_address(address: IPAddress) -> bytes:
    return address.packed


def unpacked_address(data: bytes) -> IPAddress:
    return ipaddress.ip_address(data)


# -- networks ---------------------------------------------------------------


def network_key(name: str) -> bytes:
    return NETWORK + name.encode()


def network_value(network: Network) -> bytes:
    return pack(network.to_wire())


def decode_network(value: bytes) -> Network:
    return Network.from_wire(unpack(value))


# -- leases -----------------------------------------------------------------


def container_prefix(container_id: str) -> bytes:
    return LEASE + container_id.encode() + SEP


def attachments_prefix(container_id: str, network: str) -> bytes:
    """The prefix of a container's lease keys on one network, one per ifname."""
    return LEASE + container_id.encode() + SEP + network.encode() + SEP


def lease_key(key: LeaseKey) -> bytes:
    # attachments_prefix(...) + ifname, as one text encoded once (the UTF-8 of
    # joined texts is the joined UTF-8): every alloc and release builds one.
    return f"L{key.container_id}\0{key.network}\0{key.ifname}".encode()


def decode_lease_key(raw: bytes) -> LeaseKey:
    container_id, network, ifname = raw[len(LEASE) :].decode().split("\x00", 2)
    return LeaseKey(network, container_id, ifname)


def attachment_ifname(prefix: bytes, raw: bytes) -> str:
    """The ifname of the lease key `raw`, found under `prefix` = `attachments_prefix(...)`."""
    return raw[len(prefix) :].decode()


def network_of_lease_key(raw: bytes) -> str:
    return raw.split(SEP, 2)[1].decode()


def lease_value(lease: Lease) -> bytes:
    value: dict[str, Any] = {
        "boot": lease.boot,  # first: see boot_prefix
        "ips": [address_text(address) for address in lease.addresses],
        "created": lease.created,
    }
    if lease.attributes:
        value["attributes"] = lease.attributes
    return pack(value)


def decode_lease(key: LeaseKey, value: bytes) -> Lease:
    raw = unpack(value)
    return Lease(
        key,
        tuple([address_from_text(ip) for ip in raw["ips"]]),
        int(raw["created"]),
        dict(raw.get("attributes") or {}),
        raw.get("boot", ""),
    )


def boot_prefix(boot: str) -> bytes:
    """What a lease value made in `boot` holds from its second byte on (the first
    is the map's header): the key "boot" and the boot id, packed."""
    return pack("boot") + pack(boot)


def has_boot(value: bytes) -> bool:
    """Whether a packed lease value carries a boot id (schema 2; schema 1's do not)."""
    raw = unpack(value)
    return isinstance(raw, dict) and "boot" in raw


def made_in(value: bytes, prefix: bytes) -> bool:
    """Whether a packed lease value was made in the boot whose `boot_prefix` is `prefix`."""
    return value.startswith(prefix, 1)


# -- reverse entries and cursors ------------------------------------------------


def reverse_network_prefix(network: str) -> bytes:
    return REVERSE + network.encode() + SEP


_VERSION_BYTE = {4: b"\x04", 6: b"\x06"}


def reverse_key(network: str, address: IPAddress) -> bytes:
    if type(address) is IPv4Address:  # every v4 alloc: one encode, no `ipaddress` properties
        return f"R{network}\0\x04".encode() + int(address).to_bytes(4, "big")
    return reverse_network_prefix(network) + _VERSION_BYTE[address.version] + address.packed


def reverse_span(network: str, cidr: IPNetwork) -> tuple[bytes, bytes]:
    """`[start, stop)` of the reverse keys of every address in `cidr`."""
    return (
        reverse_key(network, cidr.network_address),
        reverse_key(network, cidr.broadcast_address) + SEP,
    )


def address_of_reverse_key(network: str, raw: bytes) -> IPAddress:
    return ipaddress.ip_address(raw[len(network) + 3 :])


def reverse_key_offsets(network: str, base: int, raw_keys: Iterable[bytes]) -> list[int]:
    """Each reverse key's address as an offset from the int `base`: rebuilding
    the index reads keys only, a million of them for a large network."""
    skip = len(reverse_network_prefix(network)) + 1  # + the version byte
    return [int.from_bytes(raw[skip:], "big") - base for raw in raw_keys]


def network_of_reverse_key(raw: bytes) -> str:
    return raw[len(REVERSE) :].split(SEP, 1)[0].decode()


def reverse_value(key: LeaseKey) -> bytes:
    return pack([key.container_id, key.ifname])


def decode_reverse_value(network: str, value: bytes) -> LeaseKey:
    container_id, ifname = unpack(value)
    return LeaseKey(network, container_id, ifname)


def cursor_key(network: str, subnet: int) -> bytes:
    return CURSOR + network.encode() + SEP + bytes([subnet])
