"""The allocation rules (DESIGN.md section 3), decided in memory, persisted by others.

The allocator owns one `SubnetPool` (free-range index, cursor, counters) per
subnet of every network. Each decision updates the pools in place and returns
its result plus the list of `Change`s a store must persist; it writes nothing
itself. A decision that fails leaves the pools exactly as they were. Leases are
looked up through a `WritableView` (see view.py), to which each successful
decision also applies its changes, so later decisions in the same batch see it.

Rules this module keeps (from the seed, then better):
- Dynamic: the first free address strictly after the subnet's cursor, wrapping
  once to the lease range start; reserved addresses are never in the index.
- Static: inside a subnet, not reserved, free; may lie outside the lease range.
- One lease per (network, container_id, ifname), one address per subnet.
- Multi-network requests commit all networks or none.
- Alloc and release are idempotent; release frees only what the key owns.
- Boot epochs: every lease made here carries the allocator's `boot`. A lease
  from another boot is suspect; what shows its owner alive (an idempotent
  alloc, a confirm from `get`, a `gc` listing it) restamps it with the current
  boot. Each pool counts its suspects: they only ever go down while the
  daemon runs (new leases are never suspect).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ipamd.core.freeranges import FreeRanges
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import IPAddress, Network, Subnet, check_creatable
from ipamd.core.requests import (
    AllocRequest,
    Attachment,
    ConfirmRequest,
    GcRequest,
    ReclaimRequest,
    ReleaseRequest,
)
from ipamd.core.view import (
    Change,
    DeleteLease,
    DeleteNetwork,
    LeaseView,
    PutLease,
    PutNetwork,
    SetCursor,
)
from ipamd.errors import (
    AddressInUse,
    AddressNotAllocatable,
    InvalidRequest,
    NetworkExists,
    NetworkInUse,
    NetworkNotFound,
    RangeExhausted,
)


class WritableView(LeaseView, Protocol):
    def apply(self, change: Change) -> None: ...


@dataclass(frozen=True, slots=True)
class SubnetStats:
    size: int
    allocatable: int
    used: int
    free: int

    @property
    def utilisation(self) -> float:
        if self.allocatable == 0:
            return 1.0
        return (self.allocatable - self.free) / self.allocatable


class SubnetPool:
    """One subnet's free addresses, cursor and counters."""

    __slots__ = ("allocatable", "cursor", "free", "free_in_range", "subnet", "used")

    def __init__(self, subnet: Subnet, used: Iterable[int] = (), cursor: int | None = None) -> None:
        self.subnet = subnet
        low, high = subnet.host_bounds
        used = list(used)
        self.free = FreeRanges.from_used(low, high, used)
        for first, last in subnet.reserved_ranges():
            self.free.take_range(first, last)
        self.cursor = cursor
        self.used = len(used)
        self.allocatable = subnet.allocatable
        self.free_in_range = self.free.count_free(*subnet.lease_range)

    def _in_range(self, offset: int) -> bool:
        first, last = self.subnet.lease_range
        return first <= offset <= last

    def take(self, offset: int) -> None:
        self.free.take(offset)
        self.used += 1
        if self._in_range(offset):
            self.free_in_range -= 1

    def give(self, offset: int) -> None:
        self.free.give(offset)
        self.used -= 1
        if self._in_range(offset):
            self.free_in_range += 1

    def give_if_taken(self, offset: int) -> None:
        """`give(offset)` unless it is free already (one search of the index, not two)."""
        if self.free.give_if_used(offset):
            self.used -= 1
            if self._in_range(offset):
                self.free_in_range += 1

    def next_dynamic(self) -> int:
        """The offset rule 1 picks, without taking it."""
        return self._find_dynamic(self.free.first_free_at_or_after)

    def take_next_dynamic(self) -> int:
        """`take(next_dynamic())`, searching the index once: every dynamic alloc does it.
        Moves the cursor too; the caller records the old one to undo."""
        found = self._find_dynamic(self.free.take_first_at_or_after)
        # Within the lease range by construction.
        self.used += 1
        self.free_in_range -= 1
        self.cursor = found
        return found

    def _find_dynamic(self, search: Callable[[int, int], int | None]) -> int:
        """Rule 1 with `search(lo, hi)`: the first free offset strictly after the
        cursor (if that is in range), wrapping once to the lease range start."""
        first, last = self.subnet.lease_range
        cursor = self.cursor
        start = cursor + 1 if cursor is not None and first <= cursor + 1 <= last else first
        found = search(start, last)
        if found is None and start > first:
            found = search(first, start - 1)
        if found is None:
            raise RangeExhausted(f"failed to find free IP in range: {self.subnet.range_text}")
        return found

    def stats(self) -> SubnetStats:
        return SubnetStats(self.subnet.size, self.allocatable, self.used, self.free_in_range)


class NetworkPool:
    __slots__ = ("allocates", "network", "subnets", "suspect")

    def __init__(self, network: Network, subnets: list[SubnetPool] | None = None) -> None:
        self.network = network
        self.subnets = subnets if subnets is not None else [SubnetPool(s) for s in network.subnets]
        self.allocates = network.allocates  # asked by every alloc; the network is frozen
        self.suspect = 0  # leases from another boot (set by the store's load)


class Allocator:
    def __init__(self, boot: str = "") -> None:
        self.pools: dict[str, NetworkPool] = {}
        self.boot = boot  # the current boot id: what new and confirmed leases carry

    def pool(self, name: str) -> NetworkPool:
        try:
            return self.pools[name]
        except KeyError:
            raise NetworkNotFound(f"could not find network {name!r}") from None

    # -- networks --------------------------------------------------------

    def create_network(self, network: Network) -> tuple[Network, list[Change]]:
        check_creatable(network)
        existing = self.pools.get(network.name)
        if existing is not None:
            if existing.network == network:
                return existing.network, []  # ensure: identical is a no-op
            raise NetworkExists(
                f"network {network.name} already exists with a different definition"
            )
        self._refuse_overlap(network)
        self.pools[network.name] = NetworkPool(network)
        return network, [PutNetwork(network)]

    def _refuse_overlap(self, network: Network) -> None:
        """As podman: a subnet may belong to one network only, or one address could
        be leased on two networks at once while `lease.owner` names only one."""
        for other in self.pools.values():
            for subnet in network.subnets:
                for taken in other.network.subnets:
                    if subnet.cidr.version == taken.cidr.version and subnet.cidr.overlaps(
                        taken.cidr  # type: ignore[arg-type,unused-ignore]
                    ):
                        raise InvalidRequest(
                            f"subnet {subnet.cidr} of network {network.name} overlaps subnet"
                            f" {taken.cidr} of network {other.network.name}"
                        )

    def delete_network(
        self, name: str, force: bool, view: WritableView
    ) -> tuple[int, list[Change]]:
        pool = self.pool(name)
        leases = list(view.leases_in(name))
        if leases and not force:
            raise NetworkInUse(
                f"network {name} has {len(leases)} lease(s); release them or delete with force"
            )
        changes: list[Change] = [self._release_lease(lease, view) for lease in leases]
        del self.pools[name]
        changes.append(DeleteNetwork(pool.network))
        return len(leases), changes

    # -- alloc -----------------------------------------------------------

    def alloc(
        self, request: AllocRequest, view: WritableView, now: int
    ) -> tuple[dict[str, Lease], list[Change]]:
        """Leases for every requested network, all new ones or none."""
        leases: dict[str, Lease] = {}
        changes: list[Change] = []
        taken: list[tuple[SubnetPool, int]] = []
        confirmed: list[NetworkPool] = []
        boot = self.boot
        try:
            for name, attachment in request.networks.items():
                pool = self.pool(name)
                key = LeaseKey(name, request.container_id, attachment.ifname)
                existing = view.lease(key)
                if existing is not None:
                    _check_retry(existing, attachment)
                    if existing.boot != boot:  # its owner is back: the same addresses
                        existing = existing._replace(boot=boot)
                        pool.suspect -= 1
                        confirmed.append(pool)
                        changes.append(PutLease(existing))
                    leases[name] = existing
                    continue
                if not pool.allocates:
                    leases[name] = Lease(key, (), now)  # the seed's requiresIPAMAlloc: nothing
                    continue
                if attachment.static_ips:
                    addresses = self._pick(pool, key, attachment, view, taken, changes)
                else:
                    addresses = _pick_dynamic(pool, taken, changes)
                lease = Lease(key, addresses, now, attachment.attributes or {}, boot)
                leases[name] = lease
                changes.append(PutLease(lease))
        except Exception:  # IpamError, or a bug: either way leave the pools untouched
            for subnet_pool, offset in reversed(taken):
                subnet_pool.give(offset)
            for pool in confirmed:
                pool.suspect += 1
            for change in reversed(changes):
                if isinstance(change, SetCursor):
                    self.pools[change.network].subnets[change.subnet].cursor = change.previous
            raise
        for change in changes:
            view.apply(change)
        return leases, changes

    def _pick(
        self,
        pool: NetworkPool,
        key: LeaseKey,
        attachment: Attachment,
        view: LeaseView,
        taken: list[tuple[SubnetPool, int]],
        changes: list[Change],
    ) -> tuple[IPAddress, ...]:
        network = pool.network
        static_by_subnet: dict[int, IPAddress] = {}
        for address in attachment.static_ips:
            index = network.subnet_of(address)
            if index is None:
                raise AddressNotAllocatable(
                    f"requested ip address {address} is not in any subnet of network {network.name}"
                )
            if index in static_by_subnet:
                raise InvalidRequest(
                    f"requested ip addresses {static_by_subnet[index]} and {address} are in the"
                    f" same subnet {network.subnets[index].cidr}: at most one per subnet"
                )
            static_by_subnet[index] = address

        addresses: list[IPAddress] = []
        for index, subnet_pool in enumerate(pool.subnets):
            subnet = subnet_pool.subnet
            static = static_by_subnet.get(index)
            if static is not None:
                reason = subnet.reserved_reason(static)
                if reason is not None:
                    raise AddressNotAllocatable(f"requested ip address {static} is {reason}")
                offset = subnet.offset(static)
                if not subnet_pool.free.is_free(offset):
                    holder = view.owner(network.name, static)
                    raise AddressInUse(
                        f"requested ip address {static} is already allocated to container ID"
                        f" {holder.container_id if holder else '(unknown)'}"
                    )
                subnet_pool.take(offset)
                taken.append((subnet_pool, offset))
                addresses.append(static)
            else:
                addresses.append(_take_dynamic(network.name, index, subnet_pool, taken, changes))
        return tuple(addresses)

    # -- release and gc --------------------------------------------------

    def release(
        self, request: ReleaseRequest, view: WritableView
    ) -> tuple[dict[str, list[IPAddress]], list[Change]]:
        if request.networks is None:
            leases = [lease for lease in view.leases_of(request.container_id)]
        else:
            leases = []
            for name, ifname in request.networks.items():
                self.pool(name)  # an unknown network is an error, not a silent no-op
                if ifname is None:
                    leases += view.leases_of(request.container_id, name)
                else:
                    held = view.lease(LeaseKey(name, request.container_id, ifname))
                    if held is not None:
                        leases.append(held)
        released: dict[str, list[IPAddress]] = {}
        changes: list[Change] = []
        for lease in leases:
            change = self._release_lease(lease, view)
            changes.append(change)
            released.setdefault(lease.key.network, []).extend(change.owned)
        return released, changes

    def gc(self, request: GcRequest, view: WritableView) -> tuple[list[Lease], list[Change]]:
        """Release every lease `request` does not list (returned as they were);
        confirm the suspects it lists (each a PutLease among the changes)."""
        pool = self.pool(request.network)
        stale: list[Lease] = []
        alive: list[Lease] = []
        for lease in view.leases_in(request.network):
            if not request.keeps(lease.key.container_id, lease.key.ifname):
                if not request.suspect_only or lease.boot != self.boot:
                    stale.append(lease)
            elif lease.boot != self.boot:
                alive.append(lease)
        if request.dry_run:
            return stale, []
        changes: list[Change] = [self._release_lease(lease, view) for lease in stale]
        changes += [self._confirm(pool, lease, view) for lease in alive]
        return stale, changes

    def confirm(
        self, request: ConfirmRequest, view: WritableView
    ) -> tuple[list[Lease], list[Change]]:
        """Make the suspect leases among `request.keys` current (a `get` saw them)."""
        confirmed: list[Lease] = []
        changes: list[Change] = []
        for key in request.keys:
            pool = self.pools.get(key.network)
            lease = view.lease(key)
            if pool is not None and lease is not None and lease.boot != self.boot:
                changes.append(self._confirm(pool, lease, view))
                confirmed.append(lease)
        return confirmed, changes

    def reclaim(
        self, request: ReclaimRequest, view: WritableView
    ) -> tuple[list[Lease], list[Change]]:
        """Release the leases among `request.keys` still from another boot (the
        grace after a reboot is over). One confirmed meanwhile stays."""
        stale: list[Lease] = []
        changes: list[Change] = []
        for key in request.keys:
            lease = view.lease(key)
            if lease is not None and key.network in self.pools and lease.boot != self.boot:
                changes.append(self._release_lease(lease, view))
                stale.append(lease)
        return stale, changes

    def _confirm(self, pool: NetworkPool, lease: Lease, view: WritableView) -> PutLease:
        """Restamp a suspect `lease` with the current boot. REQUIRES: lease.boot != self.boot."""
        pool.suspect -= 1
        change = PutLease(lease._replace(boot=self.boot))
        view.apply(change)
        return change

    def _release_lease(self, lease: Lease, view: WritableView) -> DeleteLease:
        """Free what `lease` owns (only that) and drop it from the view."""
        # Not ours to free: never hand out, or forget, someone else's address.
        key = lease.key
        owned = tuple([a for a in lease.addresses if view.owner(key.network, a) == key])
        pool = self.pools.get(key.network)
        if pool is not None:
            if lease.boot != self.boot:
                pool.suspect -= 1
            for address in owned:
                index = pool.network.subnet_of(address)
                if index is None:
                    continue
                subnet_pool = pool.subnets[index]
                subnet_pool.give_if_taken(subnet_pool.subnet.offset(address))
        change = DeleteLease(lease, owned)
        view.apply(change)
        return change


def _pick_dynamic(
    pool: NetworkPool, taken: list[tuple[SubnetPool, int]], changes: list[Change]
) -> tuple[IPAddress, ...]:
    """`Allocator._pick` without static addresses (the usual request): the next
    dynamic address in every subnet, noting what to undo in `taken` and `changes`."""
    name = pool.network.name
    addresses: list[IPAddress] = []
    for index, subnet_pool in enumerate(pool.subnets):
        addresses.append(_take_dynamic(name, index, subnet_pool, taken, changes))
    return tuple(addresses)


def _take_dynamic(
    network: str,
    index: int,
    subnet_pool: SubnetPool,
    taken: list[tuple[SubnetPool, int]],
    changes: list[Change],
) -> IPAddress:
    """Take the subnet's next dynamic address and move its cursor, noting both to undo."""
    previous = subnet_pool.cursor
    offset = subnet_pool.take_next_dynamic()
    taken.append((subnet_pool, offset))
    address = subnet_pool.subnet.address_at(offset)
    changes.append(SetCursor(network, index, address, previous))
    return address


def _check_retry(existing: Lease, attachment: Attachment) -> None:
    """A retried alloc must not ask for other static addresses than the lease holds."""
    wanted = set(attachment.static_ips) - set(existing.addresses)
    if wanted:
        held = ", ".join(map(str, existing.addresses)) or "no address"
        asked = ", ".join(sorted(map(str, wanted)))
        raise InvalidRequest(
            f"{existing.key} already holds {held}; release it before requesting {asked}"
        )
