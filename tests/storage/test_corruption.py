"""Corruption: a damaged database is refused with a clear error, or opens with
every acknowledged lease, or `ipamd check` names the damage; never a silent loss.

"Acknowledged" here is what `Store.write` (one synced batch, as the writer
does) returned from. Damage is done to copies of one database: bytes flipped
in table files and in the log, CURRENT or a table file removed, the log's tail
cut off.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from ipamd.core.lease import Lease, LeaseKey
from ipamd.storage.check import check, main
from ipamd.storage.store import DB_DIRNAME, CorruptDatabase, Store, StoreUnavailable
from tests.storage.storage_helpers import (
    NET,
    V6,
    alloc,
    decide_and_write,
    network,
    open_store,
    seeded_random,
)

Leases = dict[LeaseKey, Lease]
# LevelDB's log: 32 KiB blocks of records, each a 7-byte header (crc32c: 4,
# length: 2, type: 1) and its payload (leveldb doc/log_format.md).
LOG_BLOCK = 32 * 1024
LOG_HEADER = 7


def build(state_dir: Path, leases: int, *, compact: bool) -> list[Leases]:
    """A database with `leases` acknowledged leases, one synced batch each.

    Returns the leases after each batch (element k: the first k batches), so a
    test can tell "a prefix of the batches" from anything else. With `compact`,
    everything ends in .ldb table files on two levels: the first two thirds
    compacted down, the rest flushed from the log by a reopen; without, it all
    stays in the log.
    """
    store, allocator = open_store(state_dir)
    # Two subnets: two reverse entries per lease; attributes make the values big
    # enough to span several table blocks.
    store.write(allocator.create_network(network(NET, "10.88.0.0/16", V6))[1])
    history: list[Leases] = [{}]
    for i in range(leases):
        decide_and_write(store, allocator, alloc(f"c{i:04d}", attributes={"pod": f"pod-{i}" * 8}))
        history.append({lease.key: lease for lease in store.all_leases()})
        if compact and i == leases * 2 // 3:
            store.db.compact_range()
    store.close()
    if compact:
        store.open()  # replays the log into a new level-0 table
        store.close()
    return history


def db_files(state_dir: Path, suffix: str) -> list[Path]:
    return sorted(p for p in (state_dir / DB_DIRNAME).iterdir() if p.name.endswith(suffix))


def copy_of(state_dir: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(state_dir, copy)
    return copy


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(data)


def open_like_the_daemon(state_dir: Path) -> Leases:
    """Open (with create, as the daemon does), rebuild, and read every lease."""
    store = Store(state_dir)
    store.open()
    try:
        store.load()
        return {lease.key: lease for lease in store.all_leases()}
    finally:
        store.close()


def outcome(state_dir: Path, acknowledged: Leases) -> str:
    """'refused', 'intact', or 'reported' by `ipamd check`; fails on a silent loss."""
    try:
        found = open_like_the_daemon(state_dir)
    except (CorruptDatabase, StoreUnavailable):
        return "refused"
    if found == acknowledged:
        return "intact"
    try:
        problems = check(state_dir)
    except CorruptDatabase:
        return "reported"
    assert problems, "the database opened without some acknowledged leases, and check is clean"
    return "reported"


def log_payload_offsets(log: Path) -> list[int]:
    """Offsets of every payload byte in a LevelDB log file."""
    data = log.read_bytes()
    offsets: list[int] = []
    block = 0
    while block < len(data):
        at = block
        end = min(block + LOG_BLOCK, len(data))
        while at + LOG_HEADER <= end:
            length = int.from_bytes(data[at + 4 : at + 6], "little")
            if length == 0 and data[at + 6] == 0:
                break  # zero padding up to the block's end
            offsets.extend(range(at + LOG_HEADER, at + LOG_HEADER + length))
            at += LOG_HEADER + length
        block += LOG_BLOCK
    return offsets


# -- tables -----------------------------------------------------------------------


def test_flipped_bytes_in_table_files_are_refused_or_harmless(
    state_dir: Path, tmp_path: Path
) -> None:
    acknowledged = build(state_dir, 150, compact=True)[-1]
    tables = db_files(state_dir, ".ldb")
    assert tables, "compaction left no table file"
    rng = seeded_random()
    tally: Counter[str] = Counter()
    for trial in range(40):
        copy = copy_of(state_dir, tmp_path, f"flip{trial}")
        table = copy / DB_DIRNAME / rng.choice(tables).name
        size = table.stat().st_size
        # The footer (last 48 bytes) and the first block get some extra attention.
        offset = rng.choice(
            [rng.randrange(size), rng.randrange(size - 48, size), rng.randrange(64)]
        )
        flip(table, offset)
        result = outcome(copy, acknowledged)
        tally[result] += 1
        if result == "refused":
            assert main(["--state-dir", str(copy)]) == 65
        shutil.rmtree(copy)
    print(dict(tally))
    # Every outcome was one of the three (`outcome` fails on a silent loss). Many
    # flips land in bytes LevelDB never reads (the footer's padding, the unused
    # metaindex): intact. Most of the rest fail a checksum.
    assert tally["refused"] >= 16


def test_a_missing_table_file_is_refused(state_dir: Path) -> None:
    build(state_dir, 20, compact=True)
    db_files(state_dir, ".ldb")[0].unlink()
    with pytest.raises(CorruptDatabase, match="missing files"):
        open_like_the_daemon(state_dir)


# -- CURRENT ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["tables", "log"])
def test_a_missing_current_is_refused_not_replaced_by_an_empty_database(
    state_dir: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    build(state_dir, 10, compact=where == "tables")
    if where == "tables":  # a reopen moves the log into a table, leaving no log data
        Store(state_dir).open()
    (state_dir / DB_DIRNAME / "CURRENT").unlink()
    before = sorted(os.listdir(state_dir / DB_DIRNAME))
    with pytest.raises(CorruptDatabase, match="no CURRENT file"):
        open_like_the_daemon(state_dir)
    with pytest.raises(CorruptDatabase):
        check(state_dir)
    assert sorted(os.listdir(state_dir / DB_DIRNAME)) == before  # nothing was touched
    assert main(["--state-dir", str(state_dir)]) == 65
    assert "CURRENT" in capsys.readouterr().err


# -- the log ------------------------------------------------------------------------


def test_a_flipped_byte_in_a_log_record_is_refused(state_dir: Path, tmp_path: Path) -> None:
    acknowledged = build(state_dir, 60, compact=False)[-1]
    (log,) = db_files(state_dir, ".log")
    payload = log_payload_offsets(log)
    rng = seeded_random()
    for trial, offset in enumerate(sorted(rng.sample(payload, 12))):
        copy = copy_of(state_dir, tmp_path, f"log{trial}")
        flip(copy / DB_DIRNAME / log.name, offset)
        # paranoid_checks: a record failing its checksum stops the open rather
        # than being skipped with the rest of its block.
        assert outcome(copy, acknowledged) == "refused", f"payload byte at {offset}"
        shutil.rmtree(copy)


def test_a_torn_unanswered_write_at_the_log_tail_opens_cleanly(
    state_dir: Path, tmp_path: Path
) -> None:
    """What a crash in the middle of a write leaves: part of a record nobody was
    answered for. LevelDB drops it; every acknowledged lease is there."""
    store, allocator = open_store(state_dir)
    store.write(allocator.create_network(network(NET, "10.88.0.0/16", V6))[1])
    for i in range(30):
        decide_and_write(store, allocator, alloc(f"c{i}"))
    acknowledged = {lease.key: lease for lease in store.all_leases()}
    (log,) = db_files(state_dir, ".log")
    answered_size = log.stat().st_size
    decide_and_write(store, allocator, alloc("torn", attributes={"k": "v" * 200}))
    store.close()
    torn_size = log.stat().st_size
    rng = seeded_random()
    cuts = {answered_size + 1, torn_size - 1, *rng.sample(range(answered_size, torn_size), 6)}
    for cut in sorted(cuts):
        copy = copy_of(state_dir, tmp_path, f"cut{cut}")
        os.truncate(copy / DB_DIRNAME / log.name, cut)
        assert open_like_the_daemon(copy) == acknowledged, f"cut at {cut}"
        assert check(copy) == []
        shutil.rmtree(copy)


def test_a_truncated_log_keeps_whole_batches_only(state_dir: Path, tmp_path: Path) -> None:
    """Cutting into records that were acknowledged: LevelDB cannot tell this from
    the torn write above (the file simply ends early), so the lost batches go
    unnoticed; no crash can do this to synced records, only a bad disk or a
    hand. What ipamd does guarantee: a lease and its reverse entries share one
    batch, so what survives is exactly the first k batches, consistent, with
    `ipamd check` clean; never half a lease."""
    history = build(state_dir, 40, compact=False)
    (log,) = db_files(state_dir, ".log")
    size = log.stat().st_size
    rng = seeded_random()
    for cut in sorted(rng.sample(range(size), 15)):
        copy = copy_of(state_dir, tmp_path, f"cut{cut}")
        os.truncate(copy / DB_DIRNAME / log.name, cut)
        try:
            found = open_like_the_daemon(copy)
        except CorruptDatabase:
            pass  # the cut left the network but not the schema key, say: refused is fine
        else:
            assert found in history, f"cut at {cut}: not a prefix of the batches"
            assert check(copy) == []
        shutil.rmtree(copy)
