"""Lease views: MemoryLeases, and PendingLeases (a batch's decisions over a base view)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ipamd.core.allocator import Allocator
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import Network
from ipamd.core.requests import AllocRequest, ReleaseRequest
from ipamd.core.view import Change, DeleteLease, MemoryLeases, PendingLeases, PutLease
from ipamd.errors import AddressInUse

ip = ipaddress.ip_address
NET = {"name": "net", "subnets": [{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]}


def lease(container_id: str, *addresses: str, ifname: str = "") -> Lease:
    return Lease(LeaseKey("net", container_id, ifname), tuple(map(ip, addresses)), 1)


def keys(leases: Any) -> list[str]:
    return sorted(str(lease.key) for lease in leases)


def test_memory_leases_lookups() -> None:
    view = MemoryLeases()
    a, b = lease("a", "10.0.0.1", "fd00::1"), lease("b", "10.0.0.2", ifname="eth1")
    other = Lease(LeaseKey("other", "a"), (ip("10.0.0.1"),), 1)
    for each in (a, b, other):
        view.apply(PutLease(each))
    assert view.lease(a.key) is a
    assert view.lease(LeaseKey("net", "b")) is None  # the ifname is part of the key
    assert view.owner("net", ip("fd00::1")) == a.key
    assert view.owner("other", ip("10.0.0.1")) == other.key
    assert view.owner("net", ip("10.0.0.3")) is None
    assert keys(view.leases_of("a")) == ["a on network net", "a on network other"]
    assert keys(view.leases_in("net")) == ["a on network net", "b (eth1) on network net"]
    view.apply(DeleteLease(a, a.addresses))
    assert view.lease(a.key) is None
    assert view.owner("net", ip("10.0.0.1")) is None
    assert view.owner("other", ip("10.0.0.1")) == other.key


def test_pending_reads_through_and_shadows_the_base() -> None:
    base = MemoryLeases()
    kept, dropped = lease("kept", "10.0.0.1"), lease("dropped", "10.0.0.2")
    base.apply(PutLease(kept))
    base.apply(PutLease(dropped))
    pending = PendingLeases(base)
    added = lease("added", "10.0.0.2")  # reuses the address freed in the same batch
    pending.apply(DeleteLease(dropped, dropped.addresses))
    pending.apply(PutLease(added))
    assert pending.lease(kept.key) is kept
    assert pending.lease(dropped.key) is None
    assert pending.lease(added.key) is added
    assert pending.owner("net", ip("10.0.0.2")) == added.key
    assert keys(pending.leases_in("net")) == ["added on network net", "kept on network net"]
    assert keys(pending.leases_of("dropped")) == []
    # The base is untouched until the batch is persisted.
    assert base.lease(dropped.key) is dropped
    assert base.lease(added.key) is None


def test_a_group_sees_the_group_being_written_beneath_it_and_only_that_one() -> None:
    """The writer decides group 2 while group 1 is being written: group 2 sees
    group 1's changes, newest first, but never what group 1 itself was decided
    over (group 0, written before group 1 could be written)."""
    disk = MemoryLeases()
    zero = PendingLeases(disk)
    gone = lease("gone", "10.0.0.3")
    zero.apply(PutLease(gone))
    one = PendingLeases(disk, beneath=zero)
    moved, freed = lease("moved", "10.0.0.1"), lease("freed", "10.0.0.2")
    one.apply(PutLease(moved))
    one.apply(PutLease(freed))
    two = PendingLeases(disk, beneath=one)
    two.apply(DeleteLease(freed, freed.addresses))
    again = lease("moved", "10.0.0.9")
    two.apply(DeleteLease(moved, moved.addresses))
    two.apply(PutLease(again))
    assert two.lease(moved.key) is again
    assert two.lease(freed.key) is None
    assert two.owner("net", ip("10.0.0.1")) is None
    assert two.owner("net", ip("10.0.0.9")) == moved.key
    assert list(two.leases_of("moved")) == [again]
    assert keys(two.leases_in("net")) == ["moved on network net"]
    assert two.lease(gone.key) is None  # group 0's layer is not one of group 2's
    unchanged = PendingLeases(disk, beneath=one)
    assert unchanged.owner("net", ip("10.0.0.2")) == freed.key
    assert keys(unchanged.leases_of("freed")) == ["freed on network net"]


def test_pending_replaced_lease_is_listed_once() -> None:
    base = MemoryLeases()
    old = lease("c", "10.0.0.1")
    base.apply(PutLease(old))
    pending = PendingLeases(base)
    new = lease("c", "10.0.0.9")
    pending.apply(DeleteLease(old, old.addresses))
    pending.apply(PutLease(new))
    assert list(pending.leases_of("c")) == [new]
    assert pending.owner("net", ip("10.0.0.1")) is None


def test_pending_delete_forgets_only_owned_addresses() -> None:
    base = MemoryLeases()
    owner = lease("owner", "10.0.0.1")
    base.apply(PutLease(owner))
    stale = lease("stale", "10.0.0.1")  # claims an address it does not own
    pending = PendingLeases(base)
    pending.apply(DeleteLease(stale, ()))
    assert pending.owner("net", ip("10.0.0.1")) == owner.key


def decide(view: Any, allocator: Allocator, steps: list[tuple[str, str, Any]]) -> list[Change]:
    changes: list[Change] = []
    for kind, container_id, networks in steps:
        if kind == "alloc":
            request = AllocRequest.from_wire({"container_id": container_id, "networks": networks})
            changes += allocator.alloc(request, view, 7)[1]
        else:
            request_r = ReleaseRequest.from_wire({"container_id": container_id})
            changes += allocator.release(request_r, view)[1]
    return changes


STEPS: list[tuple[str, str, Any]] = [
    ("alloc", "a", {"net": {}}),
    ("alloc", "b", {"net": {"static_ips": ["10.0.0.9"]}}),
    ("release", "a", None),
    ("alloc", "c", {"net": {"static_ips": ["10.0.0.1", "fd00::1"]}}),  # what a held, freed
    ("release", "b", None),
    ("alloc", "d", {"net": {"static_ips": ["10.0.0.9"]}}),
    ("alloc", "e", {"net": {"ifname": "eth1"}}),
]


def test_a_batch_decided_over_pending_equals_deciding_one_by_one() -> None:
    direct, direct_allocator = MemoryLeases(), Allocator()
    direct_allocator.create_network(Network.from_wire(NET))
    decide(direct, direct_allocator, STEPS)

    store, allocator = MemoryLeases(), Allocator()
    allocator.create_network(Network.from_wire(NET))
    pending = PendingLeases(store)
    changes = decide(pending, allocator, STEPS)
    assert store.leases == {}  # nothing persisted yet
    for change in changes:  # what the writer's batch persists
        store.apply(change)
    assert store.leases == direct.leases
    assert store.owners == direct.owners
    pool, direct_pool = allocator.pool("net"), direct_allocator.pool("net")
    for mine, theirs in zip(pool.subnets, direct_pool.subnets, strict=True):
        assert mine.free == theirs.free
        assert mine.cursor == theirs.cursor


def test_a_batch_sees_its_own_earlier_decisions() -> None:
    allocator = Allocator()
    allocator.create_network(Network.from_wire(NET))
    pending = PendingLeases(MemoryLeases())
    decide(pending, allocator, [("alloc", "a", {"net": {"static_ips": ["10.0.0.5"]}})])
    with pytest.raises(AddressInUse, match=r"container ID a$"):
        decide(pending, allocator, [("alloc", "b", {"net": {"static_ips": ["10.0.0.5"]}})])
