"""The store alone: open and schema, the LeaseView reads, and the rebuild at load.

Decisions are made by the real allocator over a `PendingLeases` view of the
store and persisted with `Store.write`, as the writer does, minus the writer.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import plyvel
import pytest

from ipamd.core import keys
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import Network
from ipamd.core.requests import CreateNetworkRequest, GcRequest, ReleaseRequest
from ipamd.core.view import Change, DeleteLease, PendingLeases, PutNetwork
from ipamd.errors import InvalidRequest
from ipamd.storage.store import CorruptDatabase, Store, StoreUnavailable
from tests.storage.storage_helpers import (
    NET,
    NOW,
    V4,
    V6,
    alloc,
    assert_pools_equal,
    decide_and_write,
    network,
    open_store,
    release,
    seeded_random,
)


def test_open_creates_database_with_schema(state_dir: Path) -> None:
    store, allocator = open_store(state_dir)
    assert store.db.get(keys.SCHEMA_KEY) == keys.pack(keys.SCHEMA_VERSION)
    assert allocator.pools == {}
    store.close()
    store.open(create=False)  # a second open finds it
    store.close()


def test_open_without_create_refuses_a_missing_database(state_dir: Path) -> None:
    with pytest.raises(StoreUnavailable, match="no database"):
        Store(state_dir).open(create=False)
    assert not state_dir.exists()


def test_second_open_while_locked_is_unavailable(state_dir: Path) -> None:
    store, _ = open_store(state_dir)
    try:
        with pytest.raises(StoreUnavailable):
            Store(state_dir).open()
    finally:
        store.close()


def test_newer_schema_is_refused(state_dir: Path) -> None:
    store, _ = open_store(state_dir)
    store.db.put(keys.SCHEMA_KEY, keys.pack(keys.SCHEMA_VERSION + 1))
    store.close()
    with pytest.raises(CorruptDatabase, match="newer"):
        store.open()
    assert not store.is_open


def test_data_without_schema_is_refused(state_dir: Path) -> None:
    store, _ = open_store(state_dir)
    store.db.delete(keys.SCHEMA_KEY)
    store.db.put(keys.network_key(NET), keys.network_value(network()))
    store.close()
    with pytest.raises(CorruptDatabase, match="no schema"):
        store.open()


def test_reads_see_what_was_written(state_dir: Path) -> None:
    store, allocator = open_store(state_dir)
    net = network(NET, V4, V6)
    _, changes = allocator.create_network(net)
    store.write(changes)
    for i in range(5):
        decide_and_write(store, allocator, alloc(f"c{i}", ifname="eth0" if i == 3 else ""))

    key = LeaseKey(NET, "c3", "eth0")
    lease = store.lease(key)
    assert lease is not None and lease.key == key
    assert [a.version for a in lease.addresses] == [4, 6]
    for address in lease.addresses:
        assert store.owner(NET, address) == key
    assert store.owner(NET, ipaddress.ip_address("10.88.9.9")) is None
    assert [lease.key for lease in store.leases_of("c3")] == [key]
    assert len(list(store.leases_in(NET))) == 5
    assert list(store.networks()) == [net]
    assert store.reverse_networks() == {NET}
    assert len(list(store.reverse_entries(NET))) == 10

    # Paging by address within one subnet: pages join up, in address order.
    first = store.leases_in_subnet(NET, net.subnets[1].cidr, after=None, limit=2)
    after = first[-1].addresses[1]
    rest = store.leases_in_subnet(NET, net.subnets[1].cidr, after=after, limit=None)
    paged = [lease.addresses[1] for lease in first + rest]
    assert paged == sorted(paged) and len(paged) == 5
    store.close()


def test_load_rebuilds_exactly_the_live_index(state_dir: Path) -> None:
    """A seeded mix of allocs, releases, statics and gc; every few steps a fresh
    store rebuilds from disk and must equal the live pools."""
    rng = seeded_random()
    store, allocator = open_store(state_dir)
    for net in (
        network(NET, "10.88.0.0/26", V6, gateway="10.88.0.1", exclude=["10.88.0.8-10.88.0.12"]),
        network("p2p", "192.168.7.0/31"),
    ):
        store.write(allocator.create_network(net)[1])
    held: set[str] = set()
    for step in range(300):
        roll = rng.random()
        if held and roll < 0.4:
            container = rng.choice(sorted(held))
            decide_and_write(store, allocator, release(container))
            held.discard(container)
        elif roll < 0.45:
            keep = frozenset((c, None) for c in held if rng.random() < 0.8)
            stale = decide_and_write(store, allocator, GcRequest(NET, keep))
            held -= {lease.key.container_id for lease in stale}
        else:
            container = f"c{step}"
            nets = [NET] if rng.random() < 0.9 else [NET, "p2p"]
            try:
                decide_and_write(store, allocator, alloc(container, *nets))
            except Exception as e:  # a full range is a fine outcome here
                assert getattr(e, "name", "") == "range_exhausted", e
            else:
                held.add(container)
        if step % 50 == 49:
            store.close()
            store.open()
            assert_pools_equal(allocator, store.load())
    store.close()


def test_load_refuses_leases_and_reverse_entries_that_disagree(state_dir: Path) -> None:
    store, allocator = open_store(state_dir)
    store.write(allocator.create_network(network())[1])
    decide_and_write(store, allocator, alloc("c1"))
    lease = store.lease(LeaseKey(NET, "c1"))
    assert lease is not None
    store.db.delete(keys.reverse_key(NET, lease.addresses[0]))
    with pytest.raises(CorruptDatabase, match=r"1 lease.*0 reverse.*ipamd check"):
        store.load()
    store.close()


def test_load_refuses_leases_on_an_undefined_network(state_dir: Path) -> None:
    store, _ = open_store(state_dir)
    key = LeaseKey("ghost", "c1")
    store.db.put(keys.lease_key(key), keys.lease_value(Lease(key, (), 0)))
    with pytest.raises(CorruptDatabase, match="'ghost', which is not defined"):
        store.load()
    store.close()


@pytest.mark.parametrize("kind", ["network", "cursor"])
def test_load_turns_undecodable_entries_into_corrupt_database(state_dir: Path, kind: str) -> None:
    store, allocator = open_store(state_dir)
    store.write(allocator.create_network(network())[1])
    raw_key = keys.network_key(NET) if kind == "network" else keys.cursor_key(NET, 0)
    store.db.put(raw_key, b"\xc1garbage")
    with pytest.raises(CorruptDatabase, match="cannot decode"):
        store.load()
    store.close()


def test_load_of_many_leases_hand_written_in_bulk(state_dir: Path) -> None:
    """The benchmark's way of building a big database (plyvel batches, key
    encoders) gives what the allocator would have: one run per hole."""
    store, _ = open_store(state_dir)
    net = network(NET, "10.0.0.0/14")
    store.db.put(keys.network_key(NET), keys.network_value(net))
    base = int(net.subnets[0].cidr.network_address)
    with store.db.write_batch() as batch:
        for i in range(20_000):
            offset = 2 + i + i // 100  # a hole after every hundred
            lease = Lease(LeaseKey(NET, f"c{i}"), (ipaddress.IPv4Address(base + offset),), 0)
            batch.put(keys.lease_key(lease.key), keys.lease_value(lease))
            batch.put(keys.reverse_key(NET, lease.addresses[0]), keys.reverse_value(lease.key))
    pool = store.load().pools[NET].subnets[0]
    assert pool.used == 20_000
    assert pool.free.run_count == 1 + 20_000 // 100  # offset 1, then each hole
    store.close()


def test_release_of_one_network_takes_every_ifname_there_and_nothing_else(
    state_dir: Path,
) -> None:
    """`release` naming a network but no ifname scans that network's keys only;
    decisions earlier in the same batch (not yet on disk) count as well."""
    store, allocator = open_store(state_dir)
    # "a" is a prefix of "ab": its scan must not see "ab". Subnets never overlap.
    for name, cidr in (("a", "10.1.0.0/16"), ("ab", "10.2.0.0/16"), (NET, V4)):
        _, changes = allocator.create_network(network(name, cidr))
        store.write(changes)
    for request in (
        alloc("c", NET, "a", "ab"),
        alloc("c", NET, ifname="eth0"),
        alloc("c", NET, ifname="eth1"),
        alloc("c", "a", ifname="eth0"),
        alloc("cc", NET),  # "c" is a prefix of "cc": not c's
    ):
        decide_and_write(store, allocator, request)
    # c's leases on disk, as the store lists them, whole and per network.
    assert sorted(lease.key.ifname for lease in store.leases_of("c", NET)) == ["", "eth0", "eth1"]
    assert [lease.key for lease in store.leases_of("c", "ab")] == [LeaseKey("ab", "c", "")]
    assert len(store.leases_of("c")) == 6
    assert store.leases_of("nobody", NET) == []

    # One batch: a new lease and a release on NET, then release NET again.
    view = PendingLeases(store)
    decided, _ = allocator.alloc(alloc("c", NET, ifname="eth2"), view, NOW)
    released, _ = allocator.release(ReleaseRequest("c", {NET: "eth0"}), view)
    assert list(released) == [NET]
    released, changes = allocator.release(ReleaseRequest("c", {NET: None}), view)
    assert sorted(released[NET]) == sorted(
        lease.addresses[0] for lease in store.leases_of("c", NET) if lease.key.ifname != "eth0"
    ) + list(decided[NET].addresses)  # eth2's, decided in this batch
    assert sorted(c.lease.key.ifname for c in changes if isinstance(c, DeleteLease)) == [
        "",
        "eth1",
        "eth2",
    ]
    released, changes = allocator.release(ReleaseRequest("c", {NET: None}), view)
    assert (released, changes) == ({}, [])
    # The other networks, and the other container, keep theirs.
    assert sorted(lease.key.network for lease in view.leases_of("c")) == ["a", "a", "ab"]
    assert [lease.key for lease in view.leases_of("cc", NET)] == [LeaseKey(NET, "cc", "")]
    store.close()


def test_one_batch_stores_what_its_changes_one_by_one_would(tmp_path: Path) -> None:
    """Store.write keeps only a subnet's last cursor of a batch: the database must
    end as if every change had been written by itself, in order, even when the
    batch deletes the network after moving its cursor, then creates it again."""
    store, allocator = open_store(tmp_path / "batched")
    view = PendingLeases(store)
    changes: list[Change] = []

    def decided(outcome: tuple[object, list[Change]]) -> None:
        changes.extend(outcome[1])

    decided(allocator.create_network(network(NET, V4, V6)))
    decided(allocator.create_network(network("other", "10.2.0.0/16")))
    for i in range(5):
        decided(allocator.alloc(alloc(f"c{i}", NET, "other"), view, NOW))
    decided(allocator.release(release("c1"), view))
    decided(allocator.delete_network("other", True, view))  # after its cursor moved
    decided(allocator.create_network(network("other", "10.2.0.0/16")))
    decided(allocator.alloc(alloc("again", "other"), view, NOW))
    decided(allocator.create_network(network("gone", "10.3.0.0/16")))
    decided(allocator.alloc(alloc("x", "gone"), view, NOW))
    decided(allocator.delete_network("gone", True, view))  # a cursor that never lands
    store.write(changes)

    one_by_one, _ = open_store(tmp_path / "one_by_one")
    for change in changes:
        one_by_one.write([change])
    assert list(store.db.iterator()) == list(one_by_one.db.iterator())
    assert store.db.get(keys.cursor_key("other", 0)) is not None
    assert store.db.get(keys.cursor_key("gone", 0)) is None
    assert_pools_equal(allocator, store.load())
    store.close()
    one_by_one.close()


def test_lease_keys_are_their_parts_joined() -> None:
    """keys.lease_key encodes the joined text at once; the bytes are the joined parts'."""
    for key in (
        LeaseKey(NET, "c", ""),
        LeaseKey("n-1.x", "C_9", "eth0"),
        LeaseKey(NET, "c", "é€😀"),
    ):
        parts = key.container_id.encode() + keys.SEP + key.network.encode() + keys.SEP
        assert keys.lease_key(key) == keys.LEASE + parts + key.ifname.encode()
        assert keys.lease_key(key).startswith(
            keys.attachments_prefix(key.container_id, key.network)
        )
        assert keys.decode_lease_key(keys.lease_key(key)) == key


# LevelDB names the filter policy in every table it writes a filter block for.
BLOOM_FILTER_NAME = b"filter.leveldb.BuiltinBloomFilter2"


def put_leases(db: plyvel.DB, count: int, prefix: str) -> list[LeaseKey]:
    held = [LeaseKey(NET, f"{prefix}{i}") for i in range(count)]
    with db.write_batch() as batch:
        for i, key in enumerate(held):
            lease = Lease(key, (ipaddress.IPv4Address(0x0A000002 + i),), NOW)
            batch.put(keys.lease_key(key), keys.lease_value(lease))
    return held


def tables_with_filters(state_dir: Path) -> list[bool]:
    return [BLOOM_FILTER_NAME in t.read_bytes() for t in (state_dir / "leases.ldb").glob("*.ldb")]


def test_tables_carry_bloom_filters_for_the_lookups_of_absent_leases(state_dir: Path) -> None:
    """Every alloc of a new container looks up a lease that is not there: the
    filters let LevelDB skip tables without reading them."""
    store, _ = open_store(state_dir)
    put_leases(store.db, 2_000, "c")
    store.db.compact_range()  # into tables, written by this handle
    store.close()
    filtered = tables_with_filters(state_dir)
    assert filtered
    assert all(filtered)


def test_tables_written_without_filters_are_read_as_before(state_dir: Path) -> None:
    """Databases from before the filters were on (or from other tools) need no migration."""
    store, _ = open_store(state_dir)
    store.close()
    raw = plyvel.DB(str(state_dir / "leases.ldb"))  # no filter policy
    held = [LeaseKey(NET, f"old{i}") for i in range(2_000)]
    with raw.write_batch() as batch:
        for i, key in enumerate(held):
            lease = Lease(key, (ipaddress.IPv4Address(0x0A000002 + i),), NOW)
            batch.put(keys.lease_key(key), keys.lease_value(lease))
    raw.compact_range()
    raw.close()
    assert not any(
        BLOOM_FILTER_NAME in table.read_bytes()
        for table in (state_dir / "leases.ldb").glob("*.ldb")
    )
    store.open(create=False)
    try:
        assert all(store.lease(key) is not None for key in held)
        assert store.lease(LeaseKey(NET, "never-seen")) is None
    finally:
        store.close()


def test_a_host_local_network_stored_without_subnets_still_loads(state_dir: Path) -> None:
    """Refused at create now (issue 14), but a database from before that rule opens."""
    legacy = Network.from_wire({"name": "legacy"})
    store, _ = open_store(state_dir)
    store.write([PutNetwork(legacy)])
    store.close()
    store, allocator = open_store(state_dir)
    try:
        assert allocator.pools["legacy"].network == legacy
        with pytest.raises(InvalidRequest, match="network legacy has driver host-local but no"):
            CreateNetworkRequest(legacy)
    finally:
        store.close()
