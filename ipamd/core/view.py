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


# The changes every alloc and release makes are NamedTuples rather than frozen
# dataclasses: as immutable, and built in C (a frozen dataclass's __init__ calls
# object.__setattr__ once per field: twice the cost, on every decision).


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


# What `PendingLeases` finds for a key this batch has not changed (None means deleted).
_UNTOUCHED = object()


class PendingLeases:
    """A base view plus the not-yet-persisted changes of the batch being decided."""

    def __init__(self, base: LeaseView) -> None:
        self.base = base
        self._leases: dict[LeaseKey, Lease | None] = {}  # None: deleted in this batch
        self._owners: dict[tuple[str, IPAddress], LeaseKey | None] = {}
        # This batch's keys by container: `leases_of` must not walk the whole batch.
        self._by_container: dict[str, set[LeaseKey]] = {}

    def lease(self, key: LeaseKey) -> Lease | None:
        pending = self._leases.get(key, _UNTOUCHED)
        if pending is _UNTOUCHED:
            return self.base.lease(key)
        return pending  # type: ignore[return-value]

    def owner(self, network: str, address: IPAddress) -> LeaseKey | None:
        pending = self._owners.get((network, address), _UNTOUCHED)
        if pending is _UNTOUCHED:
            return self.base.owner(network, address)
        return pending  # type: ignore[return-value]

    def _merged(
        self, base: Iterable[Lease], wanted: dict[LeaseKey, Lease | None]
    ) -> Iterator[Lease]:
        for lease in base:
            if lease.key not in self._leases:
                yield lease
        for pending in wanted.values():
            if pending is not None:
                yield pending

    def leases_of(self, container_id: str, network: str | None = None) -> Iterable[Lease]:
        base = self.base.leases_of(container_id, network)
        touched = self._by_container.get(container_id)
        if touched is None:  # the usual case: this batch changed nothing of the container's
            return base
        mine = {k: self._leases[k] for k in touched if network in (None, k.network)}
        return self._merged(base, mine)

    def leases_in(self, network: str) -> Iterator[Lease]:
        mine = {k: v for k, v in self._leases.items() if k.network == network}
        return self._merged(self.base.leases_in(network), mine)

    def apply(self, change: Change) -> None:
        if isinstance(change, PutLease):
            key = self._touch(change.lease.key)
            self._leases[key] = change.lease
            for address in change.lease.addresses:
                self._owners[(key.network, address)] = key
        elif isinstance(change, DeleteLease):
            key = self._touch(change.lease.key)
            self._leases[key] = None
            for address in change.owned:
                self._owners[(key.network, address)] = None

    def _touch(self, key: LeaseKey) -> LeaseKey:
        """Note that this batch holds a change for `key`; return it."""
        mine = self._by_container.get(key.container_id)
        if mine is None:
            self._by_container[key.container_id] = {key}
        else:
            mine.add(key)
        return key
