"""Corruption: the daemon opens with every acknowledged lease, or refuses with status 65.

Two databases are built through the daemon, each mutation acknowledged before
the next is sent (so each is one log record): one left as a SIGKILL leaves it
(everything in LevelDB's log), one reopened and stopped cleanly (everything in
a table). Copies of them then get flipped bytes (random ones, and the length
fields of log records, which LevelDB reads as a torn tail), truncated log
tails, a missing MANIFEST, CURRENT or table. For each, the daemon must either
serve exactly the acknowledged leases (and `ipamd check` be clean) or exit 65
naming the database (and `ipamd check` exit 65 too): never start with fewer.

A truncated log tail is the one case where fewer is right: LevelDB cannot tell
it from a write torn by a crash, which is what it is when the cut falls in the
last, unacknowledged record. What it must keep is every record wholly before
the cut, all or nothing per mutation, consistently.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import (
    EXIT_CORRUPT,
    Budget,
    TestDaemon,
    all_leases,
    bare,
    ipamd_check,
    lease_ips,
    write_config,
)

NETWORK = {"name": "corrupt", "subnets": [{"subnet": "10.66.0.0/16", "gateway": "10.66.0.1"}]}
ALLOCS = 40
RELEASES = 8
BLOCK = 32768
# The records before the first mutation: the schema version and the config's network.
SETUP_RECORDS = 2


@dataclass
class History:
    """The acknowledged mutations, in order: ("alloc", cid, ips) or ("release", cid, ips)."""

    ops: list[tuple[str, str, frozenset[str]]]

    def leases_after(self, count: int) -> dict[str, frozenset[str]]:
        held: dict[str, frozenset[str]] = {}
        for op, cid, ips in self.ops[:count]:
            if op == "alloc":
                held[cid] = ips
            else:
                held.pop(cid, None)
        return held


def log_records(data: bytes) -> list[tuple[int, int]]:
    """(offset, end) of each physical record of a LevelDB log (doc/log_format.md)."""
    records = []
    offset = 0
    while len(data) - offset >= 7:
        if BLOCK - offset % BLOCK < 7:
            offset += BLOCK - offset % BLOCK
            continue
        length = data[offset + 4] | data[offset + 5] << 8
        records.append((offset, offset + 7 + length))
        offset += 7 + length
    return records


def only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}: {found}"
    return found[0]


def flip(path: Path, offset: int, mask: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.config = write_config(tmp_path / "ipamd.toml", networks=[NETWORK])
        self.cases = 0
        self.outcomes: dict[str, int] = {"served everything": 0, "refused (65)": 0}

    def build(self) -> tuple[Path, Path, History]:
        """The SIGKILLed database, the cleanly stopped one, and what was acknowledged."""
        log_state = self.tmp_path / "base-log"
        daemon = TestDaemon(
            state_dir=log_state, socket=self.tmp_path / "base.sock", config=self.config
        )
        ops: list[tuple[str, str, frozenset[str]]] = []
        try:
            daemon.start()
            with daemon.client() as client:
                for i in range(ALLOCS):
                    cid = f"c{i}"
                    result = client.call(
                        "alloc", {"container_id": cid, "networks": {"corrupt": {}}}
                    )
                    ops.append(("alloc", cid, lease_ips(result["networks"]["corrupt"])))
                for i in range(0, 2 * RELEASES, 2):
                    cid = f"c{i}"
                    released = client.call("release", {"container_id": cid})["released"]["corrupt"]
                    ops.append(("release", cid, frozenset(map(bare, released))))
            daemon.kill()
            table_state = self.tmp_path / "base-table"
            shutil.copytree(log_state, table_state)
            daemon = TestDaemon(
                state_dir=table_state, socket=self.tmp_path / "base.sock", config=self.config
            )
            daemon.start()
            assert daemon.stop() == 0, daemon.log()
        finally:
            daemon.ensure_dead()
        return log_state, table_state, History(ops)

    def case(self, base: Path, name: str) -> tuple[Path, Path]:
        """A fresh copy of `base` for one fault: (its state dir, its database dir)."""
        self.cases += 1
        state = self.tmp_path / f"case{self.cases}"
        shutil.copytree(base, state)
        return state, state / "leases.ldb"

    def outcome(self, state: Path, name: str) -> tuple[int | None, dict[str, frozenset[str]], str]:
        """Start a daemon on `state`: (exit status or None, leases served, what happened)."""
        daemon = TestDaemon(
            state_dir=state, socket=self.tmp_path / f"c{self.cases}.sock", config=self.config
        )
        try:
            status = daemon.start_or_exit()
            if status is not None:
                return status, {}, daemon.last_log_lines(1).replace(f"{state}/", "")
            with daemon.client() as client:
                served = {
                    lease["container_id"]: frozenset(bare(ip["address"]) for ip in lease["ips"])
                    for lease in all_leases(client, "corrupt")
                }
            assert daemon.stop() == 0, daemon.log()
            return None, served, f"served {len(served)} leases"
        finally:
            daemon.ensure_dead()

    def expect_all_or_refusal(
        self, state: Path, name: str, expected: dict[str, frozenset[str]]
    ) -> str:
        status, served, what = self.outcome(state, name)
        check = ipamd_check(state)
        if status is None:
            changed = sorted(c for c in expected if c in served and served[c] != expected[c])
            assert served == expected, (
                f"{name}: the daemon started with {len(served)} leases, {len(expected)} were"
                f" acknowledged: lost {sorted(set(expected) - set(served))[:10]},"
                f" changed {changed[:10]}"
            )
            assert check.status == 0, f"{name}: {check}"
            self.outcomes["served everything"] += 1
            return f"{name}: {what}, all acknowledged; ipamd check ok"
        assert status == EXIT_CORRUPT, f"{name}: exit {status}, want {EXIT_CORRUPT}: {what}"
        assert "database" in what and ("corrupt" in what or "CURRENT" in what), f"{name}: {what}"
        assert check.status == EXIT_CORRUPT, f"{name}: the daemon refused it, but {check}"
        self.outcomes["refused (65)"] += 1
        return f"{name}: refused, exit 65: {what.split(': ', 1)[-1][:160]}"


@pytest.mark.slow
def test_corruption_is_refused_or_harmless(tmp_path: Path, budget: Budget) -> None:
    rng = random.Random(budget.seed)
    flips = budget.corruption_flips
    print(f"\ncorruption: {flips} random flips per file kind, seed {budget.seed}")
    lab = Lab(tmp_path)
    log_base, table_base, history = lab.build()
    everything = history.leases_after(len(history.ops))
    log_file = only(log_base / "leases.ldb", "*.log")
    data = log_file.read_bytes()
    records = log_records(data)
    assert len(records) == SETUP_RECORDS + len(history.ops), "one log record per mutation"
    print(
        f"built: {len(history.ops)} acknowledged mutations ({ALLOCS} allocs, {RELEASES} releases),"
        f" {len(everything)} leases; log {log_file.name} of {len(data)} bytes in {len(records)}"
        f" records; table database {sorted(p.name for p in (table_base / 'leases.ldb').iterdir())}"
    )
    lines: list[str] = []

    def run(
        base: Path, name: str, fault: Any, expected: dict[str, frozenset[str]] = everything
    ) -> None:
        state, db = lab.case(base, name)
        fault(db)
        lines.append(lab.expect_all_or_refusal(state, name, expected))
        print(lines[-1])

    # Random flips anywhere in the log.
    for _ in range(flips):
        offset, mask = rng.randrange(len(data)), 1 << rng.randrange(8)
        run(
            log_base,
            f"log byte {offset} ^ {mask:#04x}",
            lambda db, o=offset, m=mask: flip(only(db, "*.log"), o, m),
        )
    # Length fields that send a record past the end of the file (LevelDB: a torn tail).
    for index in (0, len(records) // 2, len(records) - 2, len(records) - 1):
        offset = records[index][0]
        for byte, mask in ((5, 0x80), (4, 0x80), (5, 0x01)):
            run(
                log_base,
                f"log record {index} length byte {byte} ^ {mask:#04x}",
                lambda db, o=offset + byte, m=mask: flip(only(db, "*.log"), o, m),
            )
    # Random flips in the table and the MANIFEST of the cleanly stopped database.
    table = only(table_base / "leases.ldb", "*.ldb")
    table_size = table.stat().st_size
    for _ in range(flips):
        offset, mask = rng.randrange(table_size), 1 << rng.randrange(8)
        run(
            table_base,
            f"table byte {offset} ^ {mask:#04x}",
            lambda db, o=offset, m=mask: flip(only(db, "*.ldb"), o, m),
        )
    manifest_size = only(table_base / "leases.ldb", "MANIFEST-*").stat().st_size
    for _ in range(max(2, flips // 4)):
        offset, mask = rng.randrange(manifest_size), 1 << rng.randrange(8)
        run(
            table_base,
            f"MANIFEST byte {offset} ^ {mask:#04x}",
            lambda db, o=offset, m=mask: flip(only(db, "MANIFEST-*"), o, m),
        )
    # Missing or wrong files.
    for base, kind in ((log_base, "log db"), (table_base, "table db")):
        run(base, f"{kind}: MANIFEST deleted", lambda db: only(db, "MANIFEST-*").unlink())
        run(base, f"{kind}: CURRENT deleted", lambda db: (db / "CURRENT").unlink())
        run(
            base,
            f"{kind}: CURRENT names a missing MANIFEST",
            lambda db: (db / "CURRENT").write_text("MANIFEST-999999\n"),
        )
        run(
            base,
            f"{kind}: CURRENT is garbage",
            lambda db: (db / "CURRENT").write_bytes(b"\x00\xff garbage"),
        )
    run(table_base, "table db: table file deleted", lambda db: only(db, "*.ldb").unlink())

    # Truncated log tails: exactly the mutations wholly before the cut survive.
    last_start, last_end = records[-1]
    middle = records[len(records) // 2]
    cuts = {
        "inside the last record's header": last_start + 3,
        "inside the last record's payload": (last_start + last_end) // 2,
        "one byte short of the end": last_end - 1,
        "at the last record's start": last_start,
        "inside a middle record": (middle[0] + middle[1]) // 2,
    }
    for where, cut in cuts.items():
        complete = sum(1 for _, end in records if end <= cut)
        kept = max(0, complete - SETUP_RECORDS)
        expected = history.leases_after(kept)
        state, db = lab.case(log_base, where)
        os.truncate(only(db, "*.log"), cut)
        status, served, what = lab.outcome(state, where)
        assert status is None, f"log cut {where} (at {cut}): exit {status}: {what}"
        assert served == expected, (
            f"log cut {where} (at {cut}): served {len(served)} leases, the {kept} mutations"
            f" before the cut hold {len(expected)}"
        )
        check = ipamd_check(state)
        assert check.status == 0, f"log cut {where}: {check}"
        lines.append(
            f"log cut {where} (byte {cut} of {len(data)}): served the {kept} mutations before it"
            f" ({len(expected)} leases), lost the {len(history.ops) - kept} after it;"
            " ipamd check ok"
        )
        print(lines[-1])
    print(
        f"total: {lab.cases} corrupted copies; {lab.outcomes['served everything']} served every"
        f" acknowledged lease, {lab.outcomes['refused (65)']} were refused with exit 65,"
        f" {len(cuts)} truncated logs kept every record before the cut"
    )
