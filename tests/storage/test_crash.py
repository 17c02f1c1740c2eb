"""Crash: SIGKILL a writer under load; every answered mutation must survive.

A child process (crash_child.py) runs the real writer on a real LevelDB with
1 to 64 client tasks and prints each answer, flushed, before the client goes
on. The parent reads those lines, kills the child with SIGKILL after a random
number of answers (the child keeps answering while the parent reads, so the
moment is random within a group too), reopens the database and checks:
- every answered alloc is there with the addresses it was answered with;
- every answered release is gone (one submitted but unanswered may go either way);
- no address has two owners and `ipamd check` is clean;
- what an earlier round left on disk is still there, unchanged.
The rounds share one database, so each also recovers from the previous crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ipamd.storage.check import check
from ipamd.storage.store import Store
from tests.storage.storage_helpers import seeded_random

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 6


class Answers:
    """What the child said, one line at a time; a torn last line is ignored."""

    def __init__(self) -> None:
        self.allocated: dict[str, tuple[str, ...]] = {}
        self.releasing: set[str] = set()  # submitted, maybe not answered
        self.released: set[str] = set()
        self.count = 0

    def record(self, line: bytes) -> None:
        if not line.endswith(b"\n"):
            return  # killed mid-line: that answer never reached anyone
        kind, container_id, *addresses = line.decode().split()
        if kind == "A":
            self.allocated[container_id] = tuple(addresses)
        elif kind == "r":
            self.releasing.add(container_id)
        elif kind == "R":
            self.released.add(container_id)
            del self.allocated[container_id]
        self.count += 1


def run_and_kill(state_dir: Path, round_no: int, tasks: int, kill_after: int) -> Answers:
    answers = Answers()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    stderr = state_dir.parent / f"child-{round_no}.err"
    with stderr.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(state_dir), str(round_no), str(tasks)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == b"ready\n", stderr.read_text()
        while answers.count < kill_after:
            line = child.stdout.readline()
            if not line:
                break  # it died by itself: the return code check below says so
            answers.record(line)
        child.send_signal(signal.SIGKILL)
        for line in child.stdout:  # what it answered before it died
            answers.record(line)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, stderr.read_text()
    return answers


def leases_on_disk(state_dir: Path) -> dict[str, tuple[str, ...]]:
    """Reopen and rebuild like a restarting daemon; the leases by container."""
    store = Store(state_dir)
    store.open()
    try:
        store.load()  # raises CorruptDatabase if leases and reverse entries disagree
        leases = list(store.all_leases())
    finally:
        store.close()
    assert all(lease.key.network == "crash" and lease.key.ifname == "" for lease in leases)
    return {lease.key.container_id: tuple(map(str, lease.addresses)) for lease in leases}


@pytest.mark.slow  # a few seconds: six child processes
def test_sigkill_under_load_loses_no_answered_mutation(state_dir: Path) -> None:
    rng = seeded_random()
    survivors: dict[str, tuple[str, ...]] = {}  # on disk after the previous rounds
    for round_no in range(ROUNDS):
        tasks = rng.choice([1, 8, 64])
        kill_after = rng.randint(1, 1500)
        answers = run_and_kill(state_dir, round_no, tasks, kill_after)
        print(f"round {round_no}: {tasks} task(s), killed after {answers.count} answers")

        on_disk = leases_on_disk(state_dir)
        for container_id, addresses in survivors.items():
            assert on_disk.get(container_id) == addresses, f"{container_id} of an earlier round"
        for container_id, addresses in answers.allocated.items():
            if container_id in answers.releasing and container_id not in on_disk:
                continue  # its release was submitted and landed, unanswered
            assert on_disk.get(container_id) == addresses, f"answered alloc {container_id}"
        for container_id in answers.released:
            assert container_id not in on_disk, f"answered release {container_id}"
        held = [address for addresses in on_disk.values() for address in addresses]
        assert len(held) == len(set(held)), "an address has two owners"
        assert check(state_dir) == []
        survivors = on_disk
