"""Helpers for the storage tests: requests, a writer in a nursery, hand edits, and
bbolt's habit after each test: reopen the database, rebuild the index from it,
compare with the live state, and run `ipamd check` on it.

Imported by name (`tests.storage.storage_helpers`), like tests/support.py;
conftest.py keeps only the fixtures.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ipamd.core import keys
from ipamd.core.allocator import Allocator
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import Network
from ipamd.core.requests import (
    AllocRequest,
    Attachment,
    CreateNetworkRequest,
    GcRequest,
    ReleaseRequest,
)
from ipamd.core.snapshot import snapshot
from ipamd.core.view import Change, PendingLeases
from ipamd.daemon.writer import Writer
from ipamd.storage.check import check
from ipamd.storage.store import Store
from ipamd.wire.results import result_of

NET = "net"
NOW = 1_700_000_000
V4 = "10.88.0.0/16"
V6 = "fd88::/64"


def seeded_random(default: int = 20240611) -> random.Random:
    """A deterministic generator; IPAMD_TEST_SEED=n replays or varies it."""
    seed = int(os.environ.get("IPAMD_TEST_SEED", default))
    print(f"seed={seed} (IPAMD_TEST_SEED={seed} to replay)")
    return random.Random(seed)


# -- requests ------------------------------------------------------------------


def network(name: str = NET, *cidrs: str, **first_subnet: Any) -> Network:
    subnets: list[dict[str, Any]] = [{"subnet": cidr} for cidr in cidrs or (V4,)]
    subnets[0].update(first_subnet)
    return Network.from_wire({"name": name, "subnets": subnets})


def create(net: Network) -> CreateNetworkRequest:
    return CreateNetworkRequest(net)


def alloc(container_id: str, *networks: str, **attachment: Any) -> AllocRequest:
    return AllocRequest(container_id, {n: Attachment(**attachment) for n in networks or (NET,)})


def release(container_id: str) -> ReleaseRequest:
    return ReleaseRequest(container_id, None)


def addresses_of(result: Any, net: str = NET) -> tuple[str, ...]:
    """The bare addresses an `alloc` gives on `net` (its outcome, or its wire result)."""
    wire = result_of(result)
    return tuple(ip["address"].split("/")[0] for ip in wire["networks"][net]["ips"])


# -- the store and the writer ------------------------------------------------------


def open_store(state_dir: Path) -> tuple[Store, Allocator]:
    store = Store(state_dir)
    store.open()
    return store, store.load()


@asynccontextmanager
async def running(writer: Writer) -> AsyncIterator[trio.Nursery]:
    """The writer running in a nursery, cancelled (shut down) on exit."""
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        yield nursery
        nursery.cancel_scope.cancel()


def put_raw_lease(store: Store, lease: Lease, *, reverse: bool = True) -> None:
    """Write a lease by hand, as a buggy tool or a person might (no allocator)."""
    store.db.put(keys.lease_key(lease.key), keys.lease_value(lease))
    if reverse:
        for address in lease.addresses:
            store.db.put(
                keys.reverse_key(lease.key.network, address), keys.reverse_value(lease.key)
            )


def decide_and_write(
    store: Store, allocator: Allocator, request: AllocRequest | ReleaseRequest | GcRequest
) -> Any:
    """One decision, persisted in one synced batch: the writer's job for a group of one."""
    view = PendingLeases(store)
    changes: list[Change]
    if isinstance(request, AllocRequest):
        result, changes = allocator.alloc(request, view, NOW)
    elif isinstance(request, ReleaseRequest):
        result, changes = allocator.release(request, view)
    else:
        result, changes = allocator.gc(request, view)
    store.write(changes)
    return result


# -- reopen, rebuild, compare -----------------------------------------------------


def disk_leases(state_dir: Path) -> dict[LeaseKey, Lease]:
    """Every lease on disk, read by a fresh store (the live one must be closed)."""
    store = Store(state_dir)
    store.open(create=False)
    try:
        return {lease.key: lease for lease in store.all_leases()}
    finally:
        store.close()


def assert_pools_equal(live: Allocator, disk: Allocator) -> None:
    assert live.pools.keys() == disk.pools.keys()
    for name, pool in live.pools.items():
        other = disk.pools[name]
        assert pool.network == other.network, name
        for mine, theirs in zip(pool.subnets, other.subnets, strict=True):
            where = f"{name} {mine.subnet.cidr}"
            assert mine.free == theirs.free, where
            assert mine.cursor == theirs.cursor, where
            assert (mine.used, mine.free_in_range, mine.allocatable) == (
                theirs.used,
                theirs.free_in_range,
                theirs.allocatable,
            ), where


def assert_matches_disk(writer: Writer) -> dict[LeaseKey, Lease]:
    """Close the writer's store, reopen it fresh, rebuild, compare, check.

    REQUIRES: the writer has stopped. Returns the leases on disk.
    """
    state_dir = writer.store.state_dir
    writer.store.close()
    fresh = Store(state_dir)
    fresh.open(create=False)
    try:
        rebuilt = fresh.load()
        leases = {lease.key: lease for lease in fresh.all_leases()}
    finally:
        fresh.close()
    assert snapshot(rebuilt) == writer.committed
    assert_pools_equal(writer.allocator, rebuilt)
    assert check(state_dir) == []
    return leases
