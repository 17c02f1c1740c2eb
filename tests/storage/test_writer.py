"""The single writer: group commit, failed groups, recovery, shutdown, overload.

The store is the real one on a real LevelDB. Where a test needs a write or an
open to fail on demand, or a write to stay in flight, `FlakyStore` wraps the
real methods (test_enospc.py makes the disk fail for real).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import plyvel
import pytest
import trio
import trio.testing

import ipamd.daemon.recovery
import ipamd.daemon.syncer
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.requests import DeleteNetworkRequest, Mutation, ReleaseRequest
from ipamd.core.snapshot import NetworkSnapshot, snapshot
from ipamd.daemon.recovery import WriterFailed
from ipamd.daemon.writer import Writer
from ipamd.errors import IpamError, NetworkNotFound, StorageError, Unavailable
from ipamd.storage.store import Store, StoreUnavailable
from tests.storage.storage_helpers import (
    NET,
    V4,
    V6,
    addresses_of,
    alloc,
    assert_matches_disk,
    create,
    network,
    open_store,
    release,
    running,
)


class FlakyStore(Store):
    """The real store; counts synced writes, fails writes or opens on demand,
    and can hold a write in flight until the test lets it go."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.syncs = 0
        self.failing_writes = 0
        self.failing_opens = 0
        self.opens = 0
        self.write_started = threading.Event()
        self.write_may_finish = threading.Event()
        self.write_may_finish.set()
        self.threads: list[str] = []  # the thread each write ran on
        self.slow_s = 0.0  # how long each write takes at least

    def commit(self, batch: plyvel.WriteBatch) -> None:
        self.threads.append(threading.current_thread().name)
        self.write_started.set()
        self.write_may_finish.wait()
        time.sleep(self.slow_s)
        if self.failing_writes:
            self.failing_writes -= 1
            raise StorageError(f"write to {self.path} failed: Input/output error (injected)")
        super().commit(batch)
        self.syncs += 1

    def open(self, *, create: bool = True) -> None:
        self.opens += 1
        if self.failing_opens:
            self.failing_opens -= 1
            raise StoreUnavailable(f"cannot open database {self.path}: injected")
        super().open(create=create)


def flaky_writer(state_dir: Path, **options: Any) -> Writer:
    store = FlakyStore(state_dir)
    store.open()
    return Writer(store, store.load(), **options)


def flaky(writer: Writer) -> FlakyStore:
    assert isinstance(writer.store, FlakyStore)
    return writer.store


async def outcome(writer: Writer, mutation: Mutation) -> Any:
    """The result, or the IpamError the mutation was answered with."""
    try:
        return await writer.submit(mutation)
    except IpamError as e:
        return e


async def submit_as_one_group(
    nursery: trio.Nursery, writer: Writer, mutations: dict[str, Mutation]
) -> dict[str, Any]:
    """Queue every mutation in order, then start the writer in `nursery`: its
    first group is all of them. Returns once all are answered, outcomes by name."""
    outcomes: dict[str, Any] = {}

    async def one(name: str, mutation: Mutation) -> None:
        outcomes[name] = await outcome(writer, mutation)

    async with trio.open_nursery() as clients:
        for name, mutation in mutations.items():
            clients.start_soon(one, name, mutation)
            await trio.testing.wait_all_tasks_blocked()  # queued before the next one
        await nursery.start(writer.run)
    return outcomes


async def test_group_commit_forms_batches_and_every_answer_is_on_disk(state_dir: Path) -> None:
    writer = flaky_writer(state_dir)
    tasks = 300
    answered: dict[str, tuple[str, ...]] = {}

    async def client(i: int) -> None:
        result = await writer.submit(alloc(f"c{i}"))
        answered[f"c{i}"] = addresses_of(result)
        if i % 3 == 0:  # some churn: releases travel in the same groups
            await writer.submit(release(f"c{i}"))
            del answered[f"c{i}"]

    async with running(writer):
        await writer.submit(create(network(NET, V4, V6)))
        async with trio.open_nursery() as nursery:
            for i in range(tasks):
                nursery.start_soon(client, i)

    mutations = 1 + tasks + tasks // 3
    syncs = flaky(writer).syncs
    mean = writer.counters.mean_batch_size
    print(f"{mutations} mutations in {syncs} synced writes, mean batch {mean}")
    assert writer.counters.mutations == mutations
    assert syncs == writer.counters.batches
    assert syncs < mutations / 4
    on_disk = assert_matches_disk(writer)
    assert {key.container_id for key in on_disk} == set(answered)
    for container_id, addresses in answered.items():
        lease = on_disk[LeaseKey(NET, container_id)]
        assert tuple(map(str, lease.addresses)) == addresses
    held = [address for lease in on_disk.values() for address in lease.addresses]
    assert len(held) == len(set(held)) == 2 * len(answered)


async def test_a_group_mixes_successes_and_refusals(state_dir: Path) -> None:
    writer = flaky_writer(state_dir)
    async with running(writer):
        await writer.submit(create(network()))
    writer = Writer(writer.store, writer.allocator)
    syncs = flaky(writer).syncs
    async with trio.open_nursery() as nursery:
        outcomes = await submit_as_one_group(
            nursery,
            writer,
            {
                "a": alloc("a"),
                "static-taken": alloc("b", static_ips=(ip_address("10.88.0.1"),)),
                "unknown": ReleaseRequest("a", {"nope": None}),
                "c": alloc("c"),
            },
        )
        nursery.cancel_scope.cancel()
    assert writer.counters.batches == 1 and flaky(writer).syncs == syncs + 1
    assert addresses_of(outcomes["a"]) == ("10.88.0.1",)
    assert getattr(outcomes["static-taken"], "name", None) == "address_in_use"
    assert isinstance(outcomes["unknown"], NetworkNotFound)
    assert addresses_of(outcomes["c"]) == ("10.88.0.2",)
    assert set(assert_matches_disk(writer)) == {LeaseKey(NET, "a"), LeaseKey(NET, "c")}


async def test_a_failed_write_fails_the_whole_group_and_changes_nothing(state_dir: Path) -> None:
    writer = flaky_writer(state_dir)
    async with running(writer):
        await writer.submit(create(network(NET, V4, V6)))
        for i in range(3):
            await writer.submit(alloc(f"c{i}"))
    store = flaky(writer)
    before = writer.committed
    leases_before = {lease.key: lease for lease in store.all_leases()}

    writer = Writer(store, writer.allocator)
    store.failing_writes = 1
    async with trio.open_nursery() as nursery:
        outcomes = await submit_as_one_group(
            nursery,
            writer,
            {
                "new": alloc("new"),
                "static": alloc("static", static_ips=(ip_address("10.88.0.200"),)),
                "release": release("c0"),
                "network": create(network("other", "10.99.0.0/24")),
                "delete": DeleteNetworkRequest(NET, force=True),
                "refused anyway": ReleaseRequest("c1", {"nope": None}),
            },
        )
        check_nothing_of_the_group_is_visible(writer, outcomes, before, leases_before)

        # The next group rebuilds from disk first (without a restart) and succeeds;
        # the failed group's cursor moves are gone with it, so `next` gets the
        # address `new` would have had.
        opens = store.opens
        assert addresses_of(await writer.submit(alloc("next"))) == ("10.88.0.4", "fd88::4")
        assert store.opens == opens + 1
        nursery.cancel_scope.cancel()
    on_disk = assert_matches_disk(writer)
    assert {key.container_id for key in on_disk} == {"c0", "c1", "c2", "next"}


def check_nothing_of_the_group_is_visible(
    writer: Writer,
    outcomes: dict[str, Any],
    before: dict[str, NetworkSnapshot],
    leases_before: dict[LeaseKey, Lease],
) -> None:
    store = flaky(writer)
    for name, answer in outcomes.items():
        assert isinstance(answer, StorageError), name
        assert answer.name == "storage_error" and "Input/output error" in answer.message
    assert writer.counters.failed_writes == 1 and writer.counters.batches == 0
    # Nothing of the group is visible: not in the published state, not on disk,
    # and what is published is what a rebuild from disk gives. (The writer's
    # working pools are rebuilt from disk before its next decision; the caller
    # checks them then.)
    assert writer.committed == before == snapshot(store.load())
    assert {lease.key: lease for lease in store.all_leases()} == leases_before
    assert [n.name for n in store.networks()] == [NET]
    assert store.owner(NET, ip_address("10.88.0.200")) is None


async def test_a_failed_reopen_refuses_reads_and_is_retried(state_dir: Path) -> None:
    writer = flaky_writer(state_dir)
    store = flaky(writer)
    async with running(writer):
        await writer.submit(create(network()))
        await writer.submit(alloc("kept"))
        store.failing_writes = 1
        store.failing_opens = 1
        assert isinstance(await outcome(writer, alloc("lost")), StorageError)
        # The reopen fails: the group gets storage_error, the database stays closed.
        second = await outcome(writer, alloc("retry"))
        assert isinstance(second, StorageError) and "unavailable" in second.message
        assert not store.is_open
        with pytest.raises(Unavailable):
            store.lease(LeaseKey(NET, "kept"))
        # The next group reopens and goes through.
        assert addresses_of(await writer.submit(alloc("retry"))) == ("10.88.0.2",)
    on_disk = assert_matches_disk(writer)
    assert {key.container_id for key in on_disk} == {"kept", "retry"}


async def test_a_reopen_failing_for_too_long_stops_the_writer(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ipamd.daemon.recovery, "REOPEN_GIVE_UP_S", -1.0)
    writer = flaky_writer(state_dir)
    store = flaky(writer)
    answers: list[Any] = []
    with pytest.raises(ExceptionGroup) as failed:
        async with running(writer):
            await writer.submit(create(network()))
            store.failing_writes = 1
            store.failing_opens = 1
            answers.append(await outcome(writer, alloc("a")))
            answers.append(await outcome(writer, alloc("b")))
    assert failed.group_contains(WriterFailed, match="cannot reopen")
    assert isinstance(answers[0], StorageError)
    assert isinstance(answers[1], Unavailable)
    assert isinstance(await outcome(writer, alloc("c")), Unavailable)


async def test_shutdown_answers_the_groups_in_flight_and_refuses_the_rest(
    state_dir: Path,
) -> None:
    """In flight: the group being written and the one decided meanwhile; what
    is queued once shutdown has begun is refused."""
    writer = flaky_writer(state_dir, inline_lone_writes=False)  # holds a write
    store = flaky(writer)
    outcomes: dict[str, Any] = {}

    async def client(name: str) -> None:
        outcomes[name] = await outcome(writer, alloc(name))

    async with trio.open_nursery() as clients, trio.open_nursery() as writer_nursery:
        await writer_nursery.start(writer.run)
        await writer.submit(create(network()))
        store.write_started.clear()
        store.write_may_finish.clear()
        clients.start_soon(client, "in-flight")
        await trio.to_thread.run_sync(store.write_started.wait)
        for i in range(3):
            clients.start_soon(client, f"decided{i}")
        await trio.testing.wait_all_tasks_blocked()  # decided, waiting for the write
        writer_nursery.cancel_scope.cancel()  # shutdown, with the write in its thread
        for i in range(5):  # they run (and submit) only once shutdown has begun
            clients.start_soon(client, f"queued{i}")
        store.write_may_finish.set()

    assert addresses_of(outcomes.pop("in-flight")) == ("10.88.0.1",)
    decided = {addresses_of(outcomes.pop(f"decided{i}")) for i in range(3)}
    assert decided == {("10.88.0.2",), ("10.88.0.3",), ("10.88.0.4",)}
    assert len(outcomes) == 5
    for name, answer in outcomes.items():
        assert isinstance(answer, Unavailable), name
    assert isinstance(await outcome(writer, alloc("late")), Unavailable)
    assert set(assert_matches_disk(writer)) == {
        LeaseKey(NET, name) for name in ("in-flight", "decided0", "decided1", "decided2")
    }


async def test_a_full_queue_refuses_with_unavailable(state_dir: Path) -> None:
    writer = flaky_writer(state_dir, max_queue=2)
    outcomes = []

    async def client(name: str) -> None:
        outcomes.append(await outcome(writer, alloc(name)))

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as clients:
            clients.start_soon(client, "a")
            clients.start_soon(client, "b")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(Unavailable, match="too many"):
                await writer.submit(alloc("c"))
            await nursery.start(writer.run)
        nursery.cancel_scope.cancel()
    # Both queued ones were answered (network_not_found: no network was created).
    assert [getattr(o, "name", None) for o in outcomes] == ["network_not_found"] * 2


async def test_an_identical_create_on_an_idle_writer_is_answered_without_a_write(
    state_dir: Path,
) -> None:
    writer = flaky_writer(state_dir)
    async with running(writer):
        created = await writer.submit(create(network()))
        batches, syncs = writer.counters.batches, flaky(writer).syncs
        assert await writer.submit(create(network())) == created
        assert (writer.counters.batches, flaky(writer).syncs) == (batches, syncs)
        other = await outcome(writer, create(network(NET, "10.99.0.0/24")))
        assert getattr(other, "name", None) == "network_exists"


async def test_an_identical_create_behind_a_delete_waits_its_turn(state_dir: Path) -> None:
    """Not idle: the create is decided after the delete queued before it (here in
    the same tick, as two connections' requests in one server round), so it
    creates the network again rather than confirm the one being deleted."""
    writer = flaky_writer(state_dir)
    answered: list[tuple[str, IpamError | None]] = []
    both = trio.Event()

    def answer(name: str) -> Callable[[Any, IpamError | None], None]:
        def on_done(_: Any, error: IpamError | None) -> None:
            answered.append((name, error))
            if len(answered) == 2:
                both.set()

        return on_done

    async with running(writer):
        await writer.submit(create(network()))
        await writer.submit(alloc("a"))
        writer.submit_nowait(DeleteNetworkRequest(NET, force=True), answer("delete"))
        writer.submit_nowait(create(network()), answer("create"))
        assert answered == []  # the create was not answered from the state before the delete
        await both.wait()
    assert answered == [("delete", None), ("create", None)]
    # Decided after the delete (which released `a`), the create made it anew.
    assert assert_matches_disk(writer) == {}
    assert NET in writer.committed


async def test_a_lone_group_is_written_on_the_loops_thread_while_syncs_are_quick(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Quick" made generous, so that a loaded machine's real fsyncs still count as
    # quick; only the injected slow write below is not.
    monkeypatch.setattr(ipamd.daemon.syncer, "INLINE_SYNC_MAX_S", 0.25)
    writer = flaky_writer(state_dir, max_batch=1)
    store = flaky(writer)
    loop, committer = threading.current_thread().name, "ipamd-committer"
    async with running(writer):
        await writer.submit(create(network()))  # alone: no hand-off
        async with trio.open_nursery() as clients:  # two at once, one per group
            clients.start_soon(writer.submit, alloc("a"))
            clients.start_soon(writer.submit, alloc("b"))
        assert store.threads == [loop, committer, loop]
        store.slow_s = 0.3
        await writer.submit(alloc("c"))  # alone, after quick syncs: on the loop's thread...
        store.slow_s = 0.0
        await writer.submit(alloc("d"))  # ...which took too long: the committer's again
        await writer.submit(alloc("e"))
    assert store.threads[3:] == [loop, committer, loop]
    assert set(assert_matches_disk(writer)) == {LeaseKey(NET, c) for c in "abcde"}


async def test_restart_sees_exactly_what_was_answered(state_dir: Path) -> None:
    store, allocator = open_store(state_dir)
    writer = Writer(store, allocator)
    async with running(writer):
        await writer.submit(create(network(NET, V4, gateway="10.88.0.1")))
        for i in range(10):
            await writer.submit(alloc(f"c{i}"))
        await writer.submit(release("c3"))
    assert_matches_disk(writer)
    # A second daemon life continues from the cursor, not from the start.
    store, allocator = open_store(state_dir)
    writer = Writer(store, allocator)
    async with running(writer):
        assert addresses_of(await writer.submit(alloc("after"))) == ("10.88.0.12",)
    assert_matches_disk(writer)


async def test_a_group_is_decided_while_the_one_before_is_written(state_dir: Path) -> None:
    """The next group sees the decisions of the group being written (a retry
    gets the same lease, a new container the next address) and is answered
    only after that write, with its own."""
    writer = flaky_writer(state_dir, inline_lone_writes=False)  # holds a write
    store = flaky(writer)
    outcomes: dict[str, Any] = {}

    async def client(name: str, mutation: Mutation) -> None:
        outcomes[name] = await outcome(writer, mutation)

    async with trio.open_nursery() as clients, trio.open_nursery() as writer_nursery:
        await writer_nursery.start(writer.run)
        await writer.submit(create(network()))
        store.write_started.clear()
        store.write_may_finish.clear()
        clients.start_soon(client, "first", alloc("a"))
        await trio.to_thread.run_sync(store.write_started.wait)
        clients.start_soon(client, "retry", alloc("a"))
        clients.start_soon(client, "second", alloc("b"))
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == {}  # nothing answered before its write is synced
        store.write_may_finish.set()
        await trio.testing.wait_all_tasks_blocked()
        writer_nursery.cancel_scope.cancel()

    assert addresses_of(outcomes["first"]) == addresses_of(outcomes["retry"]) == ("10.88.0.1",)
    assert addresses_of(outcomes["second"]) == ("10.88.0.2",)
    assert writer.counters.batches == 3
    assert set(assert_matches_disk(writer)) == {LeaseKey(NET, "a"), LeaseKey(NET, "b")}


async def test_a_failed_write_fails_the_group_decided_on_top_of_it(state_dir: Path) -> None:
    writer = flaky_writer(state_dir, inline_lone_writes=False)  # holds a write
    store = flaky(writer)
    outcomes: dict[str, Any] = {}

    async def client(name: str, mutation: Mutation) -> None:
        outcomes[name] = await outcome(writer, mutation)

    async with trio.open_nursery() as writer_nursery:
        await writer_nursery.start(writer.run)
        await writer.submit(create(network()))
        before = writer.committed
        store.write_started.clear()
        store.write_may_finish.clear()
        store.failing_writes = 1
        async with trio.open_nursery() as clients:  # until both are answered
            clients.start_soon(client, "failed", alloc("a"))
            await trio.to_thread.run_sync(store.write_started.wait)
            clients.start_soon(client, "on top", alloc("b"))
            await trio.testing.wait_all_tasks_blocked()
            store.write_may_finish.set()
        assert writer.committed == before
        # Rebuilt from disk before the next decision: `a` and `b` never happened.
        assert addresses_of(await writer.submit(alloc("c"))) == ("10.88.0.1",)
        writer_nursery.cancel_scope.cancel()

    for name in ("failed", "on top"):
        assert isinstance(outcomes[name], StorageError), name
        assert "Input/output error" in outcomes[name].message
    assert set(assert_matches_disk(writer)) == {LeaseKey(NET, "c")}


async def test_committed_is_taken_again_only_for_the_networks_a_group_touched(
    state_dir: Path,
) -> None:
    """Readers see every network's counts as of the last synced group; networks
    the group did not touch keep their snapshot (the same object)."""
    writer = flaky_writer(state_dir)
    async with running(writer):
        for name, cidr in (("one", "10.1.0.0/24"), ("two", "10.2.0.0/24"), ("gone", "10.3.0.0/24")):
            await writer.submit(create(network(name, cidr)))
        before = writer.committed
        await writer.submit(alloc("c1", "one"))
        after_alloc = writer.committed
        assert after_alloc["one"].leases == 1
        assert after_alloc["two"] is before["two"]
        assert after_alloc["gone"] is before["gone"]
        assert after_alloc == snapshot(writer.allocator)

        await writer.submit(DeleteNetworkRequest("gone", force=False))
        assert set(writer.committed) == {"one", "two"}
        await writer.submit(release("c1"))  # `release` of every network the container has
        assert writer.committed["one"].leases == 0
        assert writer.committed["two"] is before["two"]
        assert writer.committed == snapshot(writer.allocator)
    assert_matches_disk(writer)
