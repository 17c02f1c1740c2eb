"""Boot epochs on a real LevelDB: suspect counts at load and as decisions change
them, and reclaim_after_reboot on trio's mock clock (never before the grace,
never a lease confirmed meanwhile)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from ipamd.config import Config
from ipamd.core.allocator import Allocator
from ipamd.core.lease import LeaseKey
from ipamd.core.outcomes import Confirmed
from ipamd.core.requests import AllocRequest, Attachment, ConfirmRequest, GcRequest
from ipamd.daemon.mutation_log import LOGGER_NAME, MutationLog
from ipamd.daemon.service import Service
from ipamd.daemon.suspects import reclaim_after_reboot
from ipamd.daemon.writer import Writer
from ipamd.errors import NetworkNotFound
from ipamd.storage.store import Store
from tests.storage.storage_helpers import (
    NET,
    addresses_of,
    alloc,
    decide_and_write,
    network,
    release,
    running,
)


def boot_store(state_dir: Path, boot: str) -> tuple[Store, Allocator]:
    store = Store(state_dir, boot)
    store.open()
    return store, store.load()


def made_in_boot_one(state_dir: Path, *container_ids: str) -> dict[str, tuple[str, ...]]:
    """A database whose leases were all made in boot "one"; their addresses."""
    store, allocator = boot_store(state_dir, "one")
    try:
        store.write(allocator.create_network(network())[1])
        held = {}
        for cid in container_ids:
            leases = decide_and_write(store, allocator, alloc(cid))
            held[cid] = tuple(str(a) for a in leases[NET].addresses)
        return held
    finally:
        store.close()


def suspect(allocator: Allocator) -> int:
    return allocator.pools[NET].suspect


def test_load_counts_leases_from_other_boots_and_decisions_count_down(state_dir: Path) -> None:
    held = made_in_boot_one(state_dir, "a", "b", "c", "d")
    store, allocator = boot_store(state_dir, "one")
    assert suspect(allocator) == 0  # same boot (a restart, a crash): nothing suspect
    store.close()

    store, allocator = boot_store(state_dir, "two")
    try:
        assert suspect(allocator) == 4
        again = decide_and_write(store, allocator, alloc("a"))  # confirms, same address
        assert tuple(str(x) for x in again[NET].addresses) == held["a"]
        assert again[NET].boot == "two" and suspect(allocator) == 3
        decide_and_write(store, allocator, alloc("a"))  # a current lease: nothing to confirm
        assert suspect(allocator) == 3
        decide_and_write(store, allocator, release("b"))  # releasing a suspect counts it down
        assert suspect(allocator) == 2
        decide_and_write(store, allocator, alloc("new"))  # new leases are never suspect
        assert suspect(allocator) == 2
        gc = GcRequest(NET, frozenset({("c", None), ("new", None), ("a", None)}))
        stale = decide_and_write(store, allocator, gc)
        assert [lease.key.container_id for lease in stale] == ["d"]
        assert suspect(allocator) == 0  # c confirmed, d released
    finally:
        store.close()
    # What was decided is what is on disk: a fresh load counts the same.
    store, allocator = boot_store(state_dir, "two")
    assert suspect(allocator) == 0
    assert {lease.key.container_id: lease.boot for lease in store.all_leases()} == {
        "a": "two",
        "c": "two",
        "new": "two",
    }
    store.close()


def test_a_failed_multi_network_alloc_leaves_the_suspect_count_alone(state_dir: Path) -> None:
    made_in_boot_one(state_dir, "a")
    store, allocator = boot_store(state_dir, "two")
    try:
        request = AllocRequest("a", {NET: Attachment(), "missing": Attachment()})
        with pytest.raises(NetworkNotFound):
            decide_and_write(store, allocator, request)
        assert suspect(allocator) == 1
        assert store.lease(LeaseKey(NET, "a")).boot == "one"  # type: ignore[union-attr]
    finally:
        store.close()


@pytest.fixture
def mutation_lines() -> Iterator[io.StringIO]:
    logger = logging.getLogger(LOGGER_NAME)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield io.StringIO()
    finally:
        logger.setLevel(level)


async def test_reclaim_waits_for_the_grace_and_spares_what_was_confirmed(
    state_dir: Path, mock_clock: trio.testing.MockClock, mutation_lines: io.StringIO
) -> None:
    held = made_in_boot_one(state_dir, "a", "b", "c")
    store, allocator = boot_store(state_dir, "two")
    writer = Writer(store, allocator)
    service = Service(writer.published, writer, Config(state_dir=state_dir))
    service.mutation_log = MutationLog(mutation_lines)
    finished = trio.Event()

    deadline = trio.current_time() + 600

    async def reclaim() -> None:
        await reclaim_after_reboot(service, deadline, "10m")
        finished.set()

    try:
        async with running(writer) as nursery:
            nursery.start_soon(reclaim)
            mock_clock.jump(599.5)
            await trio.testing.wait_all_tasks_blocked()
            assert not finished.is_set()
            assert writer.committed[NET].suspect == 3
            # Within the grace, a is re-ADDed and b is seen by a get (a CNI CHECK).
            assert addresses_of(await writer.submit(alloc("a"))) == held["a"]
            assert await writer.submit(ConfirmRequest((LeaseKey(NET, "b"),))) == Confirmed(1)
            assert writer.committed[NET].suspect == 1
            mock_clock.jump(0.4)
            await trio.testing.wait_all_tasks_blocked()
            assert not finished.is_set()
            mock_clock.jump(0.2)
            await finished.wait()
            assert writer.committed[NET].suspect == 0
            assert writer.committed[NET].leases == 2
    finally:
        store.close()
    lines = mutation_lines.getvalue().splitlines()
    assert lines == [
        f"INFO ipamd.mutations: reclaim container_id=c network={NET} by ipamd: released"
        f" {held['c'][0]}/16: made in boot one, not confirmed within reclaim_after_reboot"
        " (10m) of start"
    ]


def test_suspect_keys_pages_are_bounded_and_cover_every_suspect(state_dir: Path) -> None:
    made_in_boot_one(state_dir, *[f"old{i:02}" for i in range(7)])
    store, allocator = boot_store(state_dir, "two")
    try:
        for i in range(5):  # current leases between the suspects
            decide_and_write(store, allocator, alloc(f"new{i}"))
        found: list[str] = []
        after: bytes | None = None
        pages = 0
        while True:
            keys, after = store.suspect_keys(after, limit=2, scan_limit=3)
            assert len(keys) <= 2
            found += [key.container_id for key in keys]
            pages += 1
            if after is None:
                break
        assert found == [f"old{i:02}" for i in range(7)]
        assert pages >= 4
    finally:
        store.close()
