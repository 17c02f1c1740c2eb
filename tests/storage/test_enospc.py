"""A full disk, for real: the state dir on a 1 MiB tmpfs this test mounts.

Writes fail with `storage_error` and change nothing; every lease answered
before stays; reads keep working while the disk is full; once the test frees
space (by deleting a ballast file it wrote first), writes succeed again without
a restart. Needs root to mount (CI runs as root): it fails, not skips, without.

The ballast is 600 KiB of the 1 MiB: the writer reopens the database only once
free space covers LevelDB's log plus a margin (`Store.room_to_reopen`), and the
log is what filled the rest of the disk.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from ipamd.core.lease import LeaseKey
from ipamd.daemon.writer import Writer
from ipamd.errors import IpamError, StorageError
from ipamd.storage.store import Store
from ipamd.wire.results import result_of
from tests.storage.storage_helpers import (
    NET,
    addresses_of,
    alloc,
    assert_matches_disk,
    create,
    network,
    running,
)

TMPFS_SIZE = "1m"
BALLAST_BYTES = 600 * 1024
# Big leases fill the disk in a few dozen writes: 16 attributes of 250 bytes.
ATTRIBUTES = {f"k{i:02d}": "x" * 250 for i in range(16)}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mountpoint)],
        check=True,
        capture_output=True,
    )
    try:
        yield mountpoint
    finally:
        done = subprocess.run(["umount", str(mountpoint)], capture_output=True)
        if done.returncode != 0:  # something still holds a file open: detach anyway
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)


async def outcome(writer: Writer, container_id: str) -> Any:
    try:
        return await writer.submit(alloc(container_id, attributes=ATTRIBUTES))
    except IpamError as e:
        return e


@pytest.mark.root
async def test_a_full_disk_fails_writes_keeps_reads_and_recovers_without_restart(
    small_disk: Path,
) -> None:
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\xa5" * BALLAST_BYTES)
    store = Store(small_disk / "state")
    store.open()
    writer = Writer(store, store.load())
    answered: dict[str, tuple[str, ...]] = {}
    try:
        async with running(writer):
            await writer.submit(create(network()))
            # Fill the disk: allocate until the disk refuses.
            for i in range(1000):
                result = await outcome(writer, f"c{i}")
                if isinstance(result, IpamError):
                    break
                answered[f"c{i}"] = addresses_of(result)
            else:
                pytest.fail("1000 big leases fit on a 1 MiB disk?")
            assert isinstance(result, StorageError), result
            assert result.name == "storage_error" and result.code == 12
            assert "No space left on device" in result.message, result.message
            full = writer.committed
            print(f"disk full after {len(answered)} leases: {result.message}")

            # While the disk is full: writes keep failing (fast, nothing is
            # retried blindly); reads are served from the old handle.
            again = await outcome(writer, "while-full")
            assert isinstance(again, StorageError) and "still full" in again.message
            assert writer.committed == full
            for container_id, addresses in answered.items():
                lease = store.lease(LeaseKey(NET, container_id))
                assert lease is not None and tuple(map(str, lease.addresses)) == addresses
            assert len(list(store.leases_in(NET))) == len(answered)
            assert store.lease(LeaseKey(NET, f"c{len(answered)}")) is None

            # Free space: the next write reopens, rebuilds and goes through.
            ballast.unlink()
            with trio.fail_after(30):
                after = await writer.submit(alloc("after-space-freed"))
            answered["after-space-freed"] = addresses_of(after)
            # The failed allocations left nothing behind: the next address is
            # the one after the last answered lease.
            assert (
                result_of(after)["networks"][NET]["ips"][0]["address"]
                == f"10.88.0.{len(answered)}/16"
            )
            more = await writer.submit(alloc("and-more"))
            answered["and-more"] = addresses_of(more)
        on_disk = assert_matches_disk(writer)
    finally:
        store.close()
    assert {
        key.container_id: tuple(map(str, lease.addresses)) for key, lease in on_disk.items()
    } == answered
