"""LevelDB's write-ahead log, read just far enough to tell a torn tail from a corrupt one.

LevelDB's log reader takes a record that runs past the end of the file for a
write torn by a crash and stops there without a word, even with
`paranoid_checks`: everything from that record on is dropped silently. A crash
can only tear the last, unacknowledged write, and then the record's payload is
a prefix of what was meant. But one flipped bit in the length field of any
record in the log's last 32 KiB block looks the same, and LevelDB would then
open the database without every acknowledged write after it (if it is the
first record: an empty database, whose addresses ipamd would hand out again).
The difference shows in the record's checksum: a complete record whose length
was corrupted still has its whole payload, and the checksum matches it at its
true length, which a torn record's does not (but by a 2**-32 chance).

Pure: bytes in, an explanation or None out. The format is LevelDB's
`doc/log_format.md`: 32 KiB blocks of records, each a 7-byte header (masked
CRC-32C of type and payload, little-endian 16-bit length, type) and payload; a
block's last bytes are zero padding when a header no longer fits.
"""

from __future__ import annotations

BLOCK_SIZE = 32768
HEADER_SIZE = 7
_MASK_DELTA = 0xA282EAD8
_ZERO_TYPE = 0  # preallocated space; LevelDB skips the rest of the block


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def _masked(crc: int) -> int:
    """LevelDB's `crc32c::Mask`: stored checksums are rotated and offset."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def last_block_start(size: int) -> int:
    """Where the block that LevelDB reads last (and short) begins in a log of `size` bytes.

    Only in a short last block does LevelDB take a record running past the end
    for a torn one; elsewhere it reports a bad record length itself.
    """
    return size - size % BLOCK_SIZE


def silently_dropped_tail(data: bytes, start: int = 0) -> str | None:
    """Why LevelDB would silently drop complete records at the end of a log, or None.

    `data` is the log from byte `start` (a block boundary, e.g. `last_block_start`)
    to its end. None for a clean log, for a genuinely torn last record, and for
    anything LevelDB reports as corrupt by itself.
    """
    offset = 0
    size = len(data)
    while size - offset >= HEADER_SIZE:
        left_in_block = BLOCK_SIZE - offset % BLOCK_SIZE
        if left_in_block < HEADER_SIZE:
            offset += left_in_block  # the block's zero trailer
            continue
        length = data[offset + 4] | data[offset + 5] << 8
        kind = data[offset + 6]
        if kind == _ZERO_TYPE and length == 0:
            offset += left_in_block
            continue
        end = offset + HEADER_SIZE + length
        if end <= size:
            # Checksums and lengths that cross a block are LevelDB's to report.
            offset = end
            continue
        # Runs past the end: torn, unless a shorter payload matches its checksum.
        stored = int.from_bytes(data[offset : offset + 4], "little")
        crc = _TABLE[(0xFFFFFFFF ^ kind) & 0xFF] ^ (0xFFFFFFFF >> 8)
        if _masked(crc ^ 0xFFFFFFFF) == stored:
            return _explain(start + offset, length, 0, start + size)
        for position in range(offset + HEADER_SIZE, size):
            crc = _TABLE[(crc ^ data[position]) & 0xFF] ^ (crc >> 8)
            if _masked(crc ^ 0xFFFFFFFF) == stored:
                true_length = position + 1 - offset - HEADER_SIZE
                return _explain(start + offset, length, true_length, start + size)
        return None
    return None


def _explain(offset: int, length: int, true_length: int, size: int) -> str:
    return (
        f"the record at byte {offset} claims {length} bytes, past the end of the file"
        f" ({size} bytes), but is complete at {true_length} bytes: its length field is"
        " corrupt, and LevelDB would silently drop it and every record after it"
    )
