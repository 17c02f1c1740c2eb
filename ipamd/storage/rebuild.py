"""Rebuilding the allocator's index from the store at start: keys only, then a count check.

Rules it keeps:
- Each subnet's free-range index is rebuilt from its reverse keys alone (a
  million of them for a large network), never from lease values.
- Leases and reverse entries must agree in number, network by network; the
  cheap check that stays within the start-up budget (`ipamd check` compares
  them entry by entry). A disagreement, a damaged block or an entry this
  ipamd cannot decode is `CorruptDatabase`.
"""

from __future__ import annotations

import msgpack
import plyvel

from ipamd.core import keys
from ipamd.core.allocator import Allocator, NetworkPool, SubnetPool
from ipamd.errors import InvalidRequest
from ipamd.storage.failures import CorruptDatabase, reason
from ipamd.storage.reads import LeaseReads, check_tail

# What a value or key this ipamd cannot decode raises (msgpack, ipaddress, the
# models' `from_wire`): at load, that is a corrupt database, not a crash.
_DECODE_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    InvalidRequest,
    msgpack.UnpackException,
)


def rebuild(store: LeaseReads) -> Allocator:
    """Every network's pools, rebuilt from the reverse entries. Blocks."""
    try:
        allocator = _pools(store)
        _check_counts(store, allocator)
        check_tail(store.db)
    except plyvel.Error as e:
        raise CorruptDatabase(f"database {store.path} is corrupt: {reason(e)}") from e
    except _DECODE_ERRORS as e:
        raise CorruptDatabase(
            f"database {store.path} holds an entry ipamd cannot decode ({e!r});"
            " run `ipamd check` for details"
        ) from e
    return allocator


def _pools(store: LeaseReads) -> Allocator:
    db = store.db
    allocator = Allocator(store.boot or "")
    for network in store.networks():
        subnet_pools: list[SubnetPool] = []
        for index, subnet in enumerate(network.subnets):
            start, stop = keys.reverse_span(network.name, subnet.cidr)
            used = keys.reverse_key_offsets(
                network.name,
                int(subnet.cidr.network_address),
                db.iterator(start=start, stop=stop, include_value=False, verify_checksums=True),
            )
            raw_cursor = db.get(keys.cursor_key(network.name, index), verify_checksums=True)
            cursor = None
            if raw_cursor is not None:
                cursor = subnet.offset(keys.unpacked_address(raw_cursor))
            subnet_pools.append(SubnetPool(subnet, used, cursor))
        allocator.pools[network.name] = NetworkPool(network, subnet_pools)
    return allocator


def _check_counts(store: LeaseReads, allocator: Allocator) -> None:
    """Compare lease and reverse-entry counts; count each network's suspects."""
    leases_per_network: dict[str, int] = {}
    suspects: dict[str, int] = {}
    current = keys.boot_prefix(store.boot or "")
    for raw_key, value in store.db.iterator(prefix=keys.LEASE, verify_checksums=True):
        network = keys.network_of_lease_key(raw_key)
        leases_per_network[network] = leases_per_network.get(network, 0) + 1
        if not keys.made_in(value, current):
            suspects[network] = suspects.get(network, 0) + 1
    for name, count in leases_per_network.items():
        if name not in allocator.pools:
            raise CorruptDatabase(
                f"{count} lease(s) on network {name!r}, which is not defined;"
                " run `ipamd check` for details"
            )
    for name, pool in allocator.pools.items():
        pool.suspect = suspects.get(name, 0)
        leases = leases_per_network.get(name, 0)
        for subnet_pool in pool.subnets:
            if subnet_pool.used != leases:
                raise CorruptDatabase(
                    f"network {name}: {leases} lease(s) but {subnet_pool.used} reverse"
                    f" entries in subnet {subnet_pool.subnet.cidr};"
                    " run `ipamd check` for details"
                )
