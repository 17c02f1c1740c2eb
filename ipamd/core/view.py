"""How the allocator looks up leases without doing I/O itself.

Leases live in the store, not in memory (a million leases would not fit the
daemon's memory budget); the allocator asks a `LeaseView` instead. The writer
hands it a `PendingLeases` over the store, so that a decision sees the
decisions made before it in the same batch. `MemoryLeases` is the same view
over plain dicts, for tests and models. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import IPAddress, Network


class LeaseView(Protocol):
    def lease(self, key: LeaseKey) -> Lease | None: ...

    def owner(self, network: str, address: IPAddress) -> LeaseKey | None: ...

    def leases_of(self, container_id: str, network: str | None = None) -> Iterable[Lease]:
        """Every lease of a container, on every network or on `network` only."""
        ...

    def leases_in(self, network: str) -> Iterable[Lease]: ...


# -- the changes a decision asks the store to persist ---------------------


@dataclass(frozen=True, slots=True)
class PutNetwork:
    network: Network


@dataclass(frozen=True, slots=True)
class DeleteNetwork:
    network: Network


# The changes every alloc and release makes are NamedTuples: the README's
# performance section, "Value types on the hot path".


class PutLease(NamedTuple):
    lease: Lease


class DeleteLease(NamedTuple):
    lease: Lease
    # The addresses whose reverse entries name this lease: only those are freed.
    owned: tuple[IPAddress, ...]


class SetCursor(NamedTuple):
    network: str
    subnet: int
    address: IPAddress
    # The pool's cursor (an offset) before this change: what to restore if the
    # decision is undone. An offset, as the pool keeps it: no address to build.
    previous: int | None


class PutEntry(NamedTuple):
    """A key and value of another module's kind (e.g. a cluster block this host
    owns, ipamd/cluster/local.py), persisted in the same batch as the leases."""

    network: str  # the network it concerns: its snapshot is taken again
    key: bytes
    value: bytes


class DeleteEntry(NamedTuple):
    network: str
    key: bytes


Change = PutNetwork | DeleteNetwork | PutLease | DeleteLease | SetCursor | PutEntry | DeleteEntry


class MemoryLeases:
    """A `LeaseView` over dicts that applies changes as they come."""

    def __init__(self) -> None:
        self.leases: dict[LeaseKey, Lease] = {}
        self.owners: dict[tuple[str, IPAddress], LeaseKey] = {}

    def lease(self, key: LeaseKey) -> Lease | None:
        return self.leases.get(key)

    def owner(self, network: str, address: IPAddress) -> LeaseKey | None:
        return self.owners.get((network, address))

    def leases_of(self, container_id: str, network: str | None = None) -> Iterator[Lease]:
        return (
            lease
            for key, lease in self.leases.items()
            if key.container_id == container_id and network in (None, key.network)
        )

    def leases_in(self, network: str) -> Iterator[Lease]:
        return (lease for key, lease in self.leases.items() if key.network == network)

    def apply(self, change: Change) -> None:
        if isinstance(change, PutLease):
            self.leases[change.lease.key] = change.lease
            for address in change.lease.addresses:
                self.owners[(change.lease.key.network, address)] = change.lease.key
        elif isinstance(change, DeleteLease):
            self.leases.pop(change.lease.key, None)
            for address in change.owned:
                del self.owners[(change.lease.key.network, address)]


# What a layer of `PendingLeases` finds for a key it has not changed (None means deleted).
_UNTOUCHED = object()


class _Layer:
    """The changes of one group's decisions, as lookups need them."""

    __slots__ = ("by_container", "leases", "owners")

    def __init__(self) -> None:
        self.leases: dict[LeaseKey, Lease | None] = {}  # None: deleted in this group
        self.owners: dict[tuple[str, IPAddress], LeaseKey | None] = {}
        # The group's keys by container: `leases_of` must not walk the whole group.
        self.by_container: dict[str, set[LeaseKey]] = {}


class PendingLeases:
    """The store plus the not-yet-persisted changes of the group being decided,
    and of the group being written meanwhile (`beneath`), if any.

    Built once per group by the writer's task, which alone uses it, and never
    rewired: it holds the changes of at most two groups, the one it decides and
    the one being written. Once that one is written its changes are in `base`
    too, and looking through them finds the same leases; by then no group
    before it is unwritten (one group is written at a time), so no third layer
    is ever needed, and only the layers' dicts are kept, never the view they
    came from (which would chain every group to the one before).
    """

    def __init__(self, base: LeaseView, beneath: PendingLeases | None = None) -> None:
        self.base = base
        self._mine = _Layer()
        self._beneath = beneath._mine if beneath is not None else None

    def lease(self, key: LeaseKey) -> Lease | None:
        pending = self._mine.leases.get(key, _UNTOUCHED)
        if pending is _UNTOUCHED and self._beneath is not None:
            pending = self._beneath.leases.get(key, _UNTOUCHED)
        if pending is _UNTOUCHED:
            return self.base.lease(key)
        return pending  # type: ignore[return-value]

    def owner(self, network: str, address: IPAddress) -> LeaseKey | None:
        pending = self._mine.owners.get((network, address), _UNTOUCHED)
        if pending is _UNTOUCHED and self._beneath is not None:
            pending = self._beneath.owners.get((network, address), _UNTOUCHED)
        if pending is _UNTOUCHED:
            return self.base.owner(network, address)
        return pending  # type: ignore[return-value]

    def _layers(self) -> tuple[_Layer, ...]:
        """Newest first."""
        return (self._mine,) if self._beneath is None else (self._mine, self._beneath)

    def _merged(
        self, base: Iterable[Lease], wanted: dict[LeaseKey, Lease | None]
    ) -> Iterator[Lease]:
        """`base`'s leases but those the layers changed, then the layers' (`wanted`)."""
        for lease in base:
            if lease.key not in wanted:
                yield lease
        for pending in wanted.values():
            if pending is not None:
                yield pending

    def leases_of(self, container_id: str, network: str | None = None) -> Iterable[Lease]:
        base = self.base.leases_of(container_id, network)
        beneath = self._beneath
        mine = self._mine.by_container.get(container_id)
        below = beneath.by_container.get(container_id) if beneath is not None else None
        if mine is None and below is None:  # the usual case: no unwritten change of its leases
            return base
        wanted: dict[LeaseKey, Lease | None] = {}
        for layer in self._layers():
            for k in layer.by_container.get(container_id, ()):
                if network in (None, k.network):
                    wanted.setdefault(k, layer.leases[k])
        return self._merged(base, wanted)

    def leases_in(self, network: str) -> Iterator[Lease]:
        wanted: dict[LeaseKey, Lease | None] = {}
        for layer in self._layers():
            for k, v in layer.leases.items():
                if k.network == network:
                    wanted.setdefault(k, v)
        return self._merged(self.base.leases_in(network), wanted)

    def apply(self, change: Change) -> None:
        mine = self._mine
        if isinstance(change, PutLease):
            key = self._touch(change.lease.key)
            mine.leases[key] = change.lease
            for address in change.lease.addresses:
                mine.owners[(key.network, address)] = key
        elif isinstance(change, DeleteLease):
            key = self._touch(change.lease.key)
            mine.leases[key] = None
            for address in change.owned:
                mine.owners[(key.network, address)] = None

    def _touch(self, key: LeaseKey) -> LeaseKey:
        """Note that this group holds a change for `key`; return it."""
        by_container = self._mine.by_container
        held = by_container.get(key.container_id)
        if held is None:
            by_container[key.container_id] = {key}
        else:
            held.add(key)
        return key
