"""The blocks this host owns, as the writer sees them (its `WriterExtension`).

A cluster subnet's free-range index holds only the free addresses of the
blocks this host owns: everything else is marked taken. So the allocator, the
writer and group commit work unchanged, and a dynamic allocation can only ever
land in an owned block. Claiming a block (after etcd said yes) and giving one
up are writer mutations, decided in order with the leases and persisted in the
same synced batches (key kind `B`, core/keys.py), so that no lease in a block
is durable before the block's record is.

Rules it keeps:
- A block enters the index only through `ClaimBlock`, i.e. after etcd's
  create-if-absent transaction succeeded; its create revision (the fencing
  token) is kept with it.
- `DropBlock` takes the block out of the index at once. When the block is
  being returned it must be empty (checked at decision time, so no allocation
  can slip in between); when it was lost to another host it goes regardless,
  and its leases are reported.
- Per-block use is counted from the index (usable minus free), never by
  reading leases.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ipamd.cluster.blocks import BlockSpace
from ipamd.core import keys
from ipamd.core.allocator import Allocator, NetworkPool, SubnetPool
from ipamd.core.network import IPNetwork
from ipamd.core.view import Change, DeleteEntry, PendingLeases, PutEntry
from ipamd.daemon.writer import ExtensionMutation
from ipamd.storage.store import Store


@dataclass(frozen=True, slots=True)
class OwnedBlock:
    network: str
    subnet: int  # index in the network's subnets
    block: IPNetwork
    revision: int  # etcd create revision: the fencing token


class ClaimBlock(ExtensionMutation):
    """etcd gave `block` to this host: hand out its addresses from now on."""

    def __init__(self, network: str, subnet: int, block: IPNetwork, revision: int) -> None:
        self.owned = OwnedBlock(network, subnet, block, revision)


class DropBlock(ExtensionMutation):
    """Stop handing out `block`'s addresses. `lost`: another host owns it now."""

    def __init__(self, network: str, block: IPNetwork, *, lost: bool) -> None:
        self.network = network
        self.block = block
        self.lost = lost


def block_key(network: str, block: IPNetwork) -> bytes:
    return keys.BLOCK + network.encode() + keys.SEP + str(block).encode()


class LocalBlocks:
    """The owned blocks of every cluster network, and their masks on the index."""

    def __init__(self) -> None:
        self.owned: dict[str, dict[IPNetwork, OwnedBlock]] = {}
        # Blocks not owned here that may still hold leases of this host (a
        # block lost to another host, or given up under an earlier owner
        # record): only for those must opening a block ask who holds each
        # address. Every other block being opened is empty here by construction.
        self._may_hold_leases: set[tuple[str, IPNetwork]] = set()
        self._allocator: Allocator | None = None

    # -- WriterExtension -----------------------------------------------------------

    def rebuilt(self, allocator: Allocator, store: Store) -> None:
        self._allocator = allocator
        self.owned = {}
        for raw_key, raw_value in store.entries(keys.BLOCK):
            network, _, cidr = raw_key[1:].partition(keys.SEP)
            value = keys.unpack(raw_value)
            block = ipaddress.ip_network(cidr.decode())
            owned = OwnedBlock(network.decode(), int(value["subnet"]), block, value["revision"])
            self.owned.setdefault(owned.network, {})[block] = owned
        self._may_hold_leases = set()
        for pool in allocator.pools.values():
            if pool.network.is_cluster:
                self._mask(pool)
                self._note_leases_outside(pool, store)

    def created(self, pool: NetworkPool) -> None:
        if pool.network.is_cluster:
            self.owned.pop(pool.network.name, None)
            self._mask(pool)

    def decide(
        self, mutation: ExtensionMutation, allocator: Allocator, view: PendingLeases
    ) -> tuple[Any, list[Change]]:
        self._allocator = allocator
        if isinstance(mutation, ClaimBlock):
            return self._claim(mutation.owned, allocator, view)
        if isinstance(mutation, DropBlock):
            return self._drop(mutation, allocator)
        raise TypeError(f"not a cluster mutation: {mutation!r}")

    # -- reading (any task) --------------------------------------------------------------

    def owns(self, network: str, block: IPNetwork) -> OwnedBlock | None:
        return self.owned.get(network, {}).get(block)

    def blocks_of(self, network: str) -> list[OwnedBlock]:
        return sorted(self.owned.get(network, {}).values(), key=lambda b: b.block)

    def usage(self, owned: OwnedBlock) -> tuple[int, int]:
        """(used, free) addresses of an owned block, from the live index."""
        assert self._allocator is not None
        subnet_pool = self._allocator.pools[owned.network].subnets[owned.subnet]
        space = BlockSpace(subnet_pool.subnet)
        index = space.index_of(owned.block.network_address)
        first, last = space.offsets(index)
        free = subnet_pool.free.count_free(first, last)
        return space.usable(index) - free, free

    # -- deciding ------------------------------------------------------------------------

    def _claim(
        self, owned: OwnedBlock, allocator: Allocator, view: PendingLeases
    ) -> tuple[Any, list[Change]]:
        pool = allocator.pool(owned.network)
        subnet_pool = pool.subnets[owned.subnet]
        space = BlockSpace(subnet_pool.subnet)
        index = space.index_of_cidr(owned.block)
        if index is None:
            raise ValueError(f"{owned.block} is not a block of {subnet_pool.subnet.cidr}")
        changes: list[Change] = [
            PutEntry(
                owned.network,
                block_key(owned.network, owned.block),
                keys.pack({"subnet": owned.subnet, "revision": owned.revision}),
            )
        ]
        mine = self.owned.setdefault(owned.network, {})
        if owned.block not in mine:
            leased = (owned.network, owned.block) in self._may_hold_leases
            _open_block(subnet_pool, space, index, owned.network, view if leased else None)
            self._may_hold_leases.discard((owned.network, owned.block))
        mine[owned.block] = owned
        return {"block": str(owned.block), "revision": owned.revision}, changes

    def _drop(self, mutation: DropBlock, allocator: Allocator) -> tuple[Any, list[Change]]:
        mine = self.owned.get(mutation.network, {})
        owned = mine.get(mutation.block)
        if owned is None:
            return {"dropped": False, "used": 0}, []
        used, _ = self.usage(owned)
        if used and not mutation.lost:
            return {"dropped": False, "used": used}, []  # not empty any more: keep it
        subnet_pool = allocator.pool(mutation.network).subnets[owned.subnet]
        space = BlockSpace(subnet_pool.subnet)
        first, last = space.offsets(space.index_of(owned.block.network_address))
        _close_range(subnet_pool, first, last)
        del mine[mutation.block]
        if used:
            self._may_hold_leases.add((mutation.network, mutation.block))
        key = block_key(mutation.network, mutation.block)
        return {"dropped": True, "used": used}, [DeleteEntry(mutation.network, key)]

    def _note_leases_outside(self, pool: NetworkPool, store: Store) -> None:
        """Remember the blocks outside the owned ones that hold leases (one
        scan of the network's reverse entries, at start and after a rebuild)."""
        network = pool.network
        mine = self.owned.get(network.name, {})
        for address, _ in store.reverse_entries(network.name):
            index = network.subnet_of(address)
            if index is None:
                continue
            space = BlockSpace(network.subnets[index])
            block = space.cidr(space.index_of(address))
            if block not in mine:
                self._may_hold_leases.add((network.name, block))

    def _mask(self, pool: NetworkPool) -> None:
        """Take every address outside the owned blocks out of the pool's index."""
        mine = self.owned.get(pool.network.name, {})
        for index, subnet_pool in enumerate(pool.subnets):
            space = BlockSpace(subnet_pool.subnet)
            spans = sorted(
                space.offsets(space.index_of(b.block.network_address))
                for b in mine.values()
                if b.subnet == index
            )
            low, high = subnet_pool.subnet.host_bounds
            cursor = low
            for first, last in spans:
                if first > cursor:
                    subnet_pool.free.take_range(cursor, first - 1)
                cursor = max(cursor, last + 1)
            if cursor <= high:
                subnet_pool.free.take_range(cursor, high)
            subnet_pool.free_in_range = subnet_pool.free.count_free(*subnet_pool.subnet.lease_range)


def _open_block(
    subnet_pool: SubnetPool,
    space: BlockSpace,
    index: int,
    network: str,
    view: PendingLeases | None,
) -> None:
    """Put a newly owned block's free addresses into the index: every address
    that may be handed out and that no lease holds. `view` None: the block
    holds no lease of this host, so its spans between reserved ranges open
    whole (a few index operations a block, not one an address)."""
    subnet = subnet_pool.subnet
    first, last = space.offsets(index)
    low, high = subnet.host_bounds
    first, last = max(first, low), min(last, high)
    reserved = sorted(subnet.reserved_ranges())
    range_first, range_last = subnet.lease_range
    in_range = max(first, range_first), min(last, range_last)
    before = subnet_pool.free.count_free(*in_range)
    if view is None:
        cursor = first
        for a, b in reserved:
            if b >= cursor and a <= last:
                subnet_pool.free.give_range(cursor, a - 1)
                cursor = max(cursor, b + 1)
        subnet_pool.free.give_range(cursor, last)
    else:
        for offset in range(first, last + 1):
            if any(a <= offset <= b for a, b in reserved):
                continue
            if view.owner(network, subnet.address_at(offset)) is None:
                subnet_pool.free.give_if_used(offset)
    subnet_pool.free_in_range += subnet_pool.free.count_free(*in_range) - before


def _close_range(subnet_pool: SubnetPool, first: int, last: int) -> None:
    range_first, range_last = subnet_pool.subnet.lease_range
    low, high = max(first, range_first), min(last, range_last)
    before = subnet_pool.free.count_free(low, high) if low <= high else 0
    subnet_pool.free.take_range(first, last)
    subnet_pool.free_in_range -= before
