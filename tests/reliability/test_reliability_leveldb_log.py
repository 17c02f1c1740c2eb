"""ipamd.storage.leveldb_log: a torn log tail passes, a corrupted length field does not.

The logs are real: written by LevelDB (plyvel) with synced puts, then cut or
flipped here, bytes in, verdict out.
"""

from __future__ import annotations

from pathlib import Path

import plyvel
import pytest

from ipamd.storage.leveldb_log import HEADER_SIZE, last_block_start, silently_dropped_tail


def records(data: bytes) -> list[tuple[int, int]]:
    """(offset, end) of each record; the test logs fit in one block."""
    out, offset = [], 0
    while len(data) - offset >= HEADER_SIZE:
        end = offset + HEADER_SIZE + (data[offset + 4] | data[offset + 5] << 8)
        out.append((offset, end))
        offset = end
    return out


@pytest.fixture
def log(tmp_path: Path) -> bytes:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    for i in range(20):
        db.put(f"key{i}".encode(), b"value" * (i + 1), sync=True)
    db.close()
    (path,) = (tmp_path / "db").glob("*.log")
    data = path.read_bytes()
    assert len(data) < 32768 and len(records(data)) == 20
    return data


def flipped(data: bytes, offset: int, mask: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def test_an_intact_log_passes(log: bytes) -> None:
    assert silently_dropped_tail(log) is None


@pytest.mark.parametrize("keep", [1, 3, HEADER_SIZE, HEADER_SIZE + 5, -1])
def test_a_torn_last_record_passes(log: bytes, keep: int) -> None:
    start, end = records(log)[-1]
    cut = end - 1 if keep == -1 else start + keep
    assert silently_dropped_tail(log[:cut]) is None


def test_zero_padding_passes(log: bytes) -> None:
    assert silently_dropped_tail(log + b"\0" * 100) is None


@pytest.mark.parametrize("index", [0, 10, 18, 19])
@pytest.mark.parametrize(("byte", "mask"), [(5, 0x80), (5, 0x01), (4, 0x80)])
def test_a_corrupt_length_is_caught_where_leveldb_would_not(
    log: bytes, index: int, byte: int, mask: int
) -> None:
    start, end = records(log)[index]
    corrupt = flipped(log, start + byte, mask)
    claimed = corrupt[start + 4] | corrupt[start + 5] << 8
    problem = silently_dropped_tail(corrupt)
    if start + HEADER_SIZE + claimed <= len(log):
        # Still ends inside the file: LevelDB's checksum check reports it, not this.
        assert problem is None
        return
    assert problem is not None
    assert f"record at byte {start}" in problem
    assert f"complete at {end - start - HEADER_SIZE} bytes" in problem


def test_offsets_count_from_the_last_block() -> None:
    assert last_block_start(0) == 0
    assert last_block_start(100) == 0
    assert last_block_start(32768) == 32768
    assert last_block_start(40000) == 32768
