"""Graceful shutdown (DESIGN.md s6): SIGTERM during a burst of allocations.

Every request gets a success, an `unavailable` error, or a closed connection;
none hangs. Every success is on disk after a restart, and the daemon exits 0.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from tests.daemon.e2e import check_state_dir, create_network
from tests.support import Daemon, RawClient

CLIENTS = 4
IN_FLIGHT = 8  # requests each client keeps pipelined
SIGTERM_AFTER = 150  # successful allocations before the signal


class Tally:
    """Successful allocations across every burst; `reached` is set at `enough`."""

    def __init__(self, enough: int) -> None:
        self.enough = enough
        self.count = 0
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.enough:
                self.reached.set()


class Burst(threading.Thread):
    """Allocates with up to IN_FLIGHT requests pipelined until the daemon says stop."""

    def __init__(self, daemon: Daemon, index: int, tally: Tally) -> None:
        super().__init__()
        self.ipamd = daemon
        self.index = index
        self.tally = tally
        self.successes: dict[str, str] = {}  # container_id -> address
        self.unavailable: list[str] = []
        self.unanswered: list[str] = []  # in flight when the connection closed
        self.problems: list[str] = []
        self.sent = 0

    def run(self) -> None:
        in_flight: dict[int, str] = {}
        stop_sending = False
        try:
            client = RawClient(self.ipamd.socket, timeout=10)  # a hang fails the test
        except OSError as e:
            self.problems.append(f"connect: {e!r}")
            return
        try:
            while True:
                while not stop_sending and len(in_flight) < IN_FLIGHT:
                    container = f"b{self.index}-{self.sent}"
                    msgid = client.send(
                        "alloc", {"container_id": container, "networks": {"net": {}}}
                    )
                    in_flight[msgid] = container
                    self.sent += 1
                if not in_flight:
                    return
                _, msgid, error, result = client.receive()
                container = in_flight.pop(msgid)
                if error is None:
                    self.successes[container] = result["networks"]["net"]["ips"][0]["address"]
                    self.tally.add()
                elif error["name"] == "unavailable":
                    self.unavailable.append(container)
                    stop_sending = True
                else:
                    self.problems.append(f"{container}: {error}")
                    stop_sending = True
        except TimeoutError:
            self.problems.append(f"no answer within 10 s for {sorted(in_flight.values())}")
        except OSError:  # closed: EOF, ECONNRESET or EPIPE
            self.unanswered += in_flight.values()
        finally:
            client.close()


def test_sigterm_during_a_burst_loses_no_answered_allocation(tmp_path: Path) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock").start()
    try:
        with daemon.client() as client:
            create_network(client, "net", "10.20.0", cidr=16)
        tally = Tally(SIGTERM_AFTER)
        bursts = [Burst(daemon, i, tally) for i in range(CLIENTS)]
        for burst in bursts:
            burst.start()
        assert tally.reached.wait(timeout=30), f"only {tally.count} of {SIGTERM_AFTER} allocations"
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for burst in bursts:
            burst.join(timeout=30)
        status = daemon.proc.wait(timeout=20)
        shutdown_s = time.monotonic() - signalled
        check_state_dir(daemon.state_dir)

        restarted = Daemon(state_dir=daemon.state_dir, socket=daemon.socket).start()
        try:
            with restarted.client() as client:
                on_disk = leases_by_container(client)
                successes = {c: a for b in bursts for c, a in b.successes.items()}
                owners = {
                    address: client.call("lease.owner", {"network": "net", "ip": bare(address)})
                    for address in list(successes.values())[:: max(1, len(successes) // 20)]
                }
        finally:
            restarted.close()
    finally:
        daemon.close()

    print(
        f"sent {sum(b.sent for b in bursts)}, ok {len(successes)}, "
        f"unavailable {sum(len(b.unavailable) for b in bursts)}, "
        f"unanswered {sum(len(b.unanswered) for b in bursts)}, shutdown {shutdown_s:.2f} s"
    )
    assert not any(burst.is_alive() for burst in bursts), "a client hung"
    assert [p for b in bursts for p in b.problems] == []
    assert status == 0, daemon.log()
    # Well inside the daemon's 5 s grace for connections: nothing waited for nothing.
    assert shutdown_s < 4, daemon.log()
    for container, address in successes.items():
        assert on_disk.get(container) == address, f"{container} answered {address}, not on disk"
    for address, owner in owners.items():
        assert successes[owner["container_id"]] == address
    assert len(set(on_disk.values())) == len(on_disk)
    # Nothing was decided that no client asked for.
    asked = {f"b{b.index}-{n}" for b in bursts for n in range(b.sent)}
    assert set(on_disk) <= asked


def leases_by_container(client: RawClient) -> dict[str, str]:
    leases: dict[str, str] = {}
    params: dict[str, Any] = {"network": "net", "limit": 500}
    while True:
        page = client.call("lease.list", params)
        leases.update(
            {lease["container_id"]: lease["ips"][0]["address"] for lease in page["leases"]}
        )
        if "next" not in page:
            return leases
        params["after"] = page["next"]


def bare(address: str) -> str:
    return address.split("/")[0]
