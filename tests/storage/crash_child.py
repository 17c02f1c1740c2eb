"""The process test_crash.py kills: a writer under load that reports every answer.

    python crash_child.py STATE_DIR ROUND TASKS

Opens (or creates) the database, rebuilds, ensures the network, prints
`ready`, then runs TASKS client tasks forever. Each line it prints is one
answered mutation, flushed before the task goes on, so the parent knows of an
answer no later than the client would have:

    A <container_id> <address> <address>   alloc answered (durable)
    r <container_id>                       release submitted (may or may not land)
    R <container_id>                       release answered (durable)
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from ipamd.core.network import Network
from ipamd.core.requests import AllocRequest, Attachment, CreateNetworkRequest, ReleaseRequest
from ipamd.daemon.writer import Writer
from ipamd.storage.store import Store
from ipamd.wire.results import result_of

NETWORK = Network.from_wire(
    {"name": "crash", "subnets": [{"subnet": "10.64.0.0/12"}, {"subnet": "fd64::/64"}]}
)


def report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def client(writer: Writer, round_no: int, task: int) -> None:
    i = 0
    while True:
        container_id = f"r{round_no}t{task}n{i}"
        result = result_of(await writer.submit(AllocRequest(container_id, {"crash": Attachment()})))
        ips = [ip["address"].split("/")[0] for ip in result["networks"]["crash"]["ips"]]
        report(f"A {container_id} {' '.join(ips)}")
        if i % 4 == 3:  # churn: release the one before, so addresses get reused
            previous = f"r{round_no}t{task}n{i - 1}"
            report(f"r {previous}")
            await writer.submit(ReleaseRequest(previous, None))
            report(f"R {previous}")
        i += 1


async def main(state_dir: Path, round_no: int, tasks: int) -> None:
    store = Store(state_dir)
    store.open()
    writer = Writer(store, store.load())
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit(CreateNetworkRequest(NETWORK))
        report("ready")
        for task in range(tasks):
            nursery.start_soon(client, writer, round_no, task)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
