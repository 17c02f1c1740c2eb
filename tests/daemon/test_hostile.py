"""Hostile and broken clients lose their own connection and nothing else (DESIGN.md s6).

- Garbage (random bytes, msgpack values of the wrong shape, wrong-typed params
  for real methods) from hypothesis, while a good client allocates and releases:
  the daemon stays up, answers only well-formed frames, and the good client sees
  no error. Examples are derandomized (a fixed budget, the same every run).
- A client that sends half a frame and stalls is closed after the idle timeout.
- A client that pipelines and never reads its answers does not hold up others.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon.e2e import (
    check_response_shape,
    create_network,
    next_subnet_prefix,
    receive_until_closed,
    wait_for,
    write_config,
)
from tests.support import Daemon, RawClient

Cid = Callable[[str], str]
SENTINEL_MSGID = 3_141_592
GARBAGE_EXAMPLES = 200

METHOD_KEYS = {
    "ping": [],
    "status": [],
    "stats": [],
    "network.create": ["name", "subnets", "driver"],
    "network.get": ["name"],
    "network.list": [],
    "network.delete": ["name", "force"],
    "alloc": ["container_id", "networks"],
    "release": ["container_id", "networks"],
    "get": ["container_id", "networks"],
    "lease.list": ["network", "after", "limit"],
    "lease.owner": ["network", "ip"],
    "gc": ["network", "valid", "dry_run"],
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers(0, 3), children, max_size=5)
    ),
    max_leaves=15,
)
msgids = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def wrong_params(draw: st.DrawFn) -> list[Any]:
    """A well-formed request for a real method, with params of random types."""
    method = draw(st.sampled_from(sorted(METHOD_KEYS)))
    keys = METHOD_KEYS[method] + ["bogus"]
    params = draw(st.dictionaries(st.sampled_from(keys), values, max_size=4))
    return [0, draw(msgids), method, [params]]


frames = st.one_of(
    values,
    wrong_params(),
    st.tuples(st.sampled_from([0, 1, 2, 3, -1]), values, values, values).map(list),
    st.tuples(st.just(0), msgids, st.text(max_size=15), values).map(list),
    st.tuples(st.just(2), st.sampled_from(sorted(METHOD_KEYS)), values).map(list),
)
garbage = st.one_of(
    st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=200)),
    st.tuples(st.just("frame"), frames),
)


class GoodClient(threading.Thread):
    """Allocates and releases in a loop on its own network; records anything odd."""

    def __init__(self, daemon: Daemon, network: str, container_prefix: str) -> None:
        super().__init__()
        self.ipamd = daemon
        self.network = network
        self.container_prefix = container_prefix
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.rounds = 0

    def run(self) -> None:
        try:
            with self.ipamd.client(timeout=20) as client:
                while not self.stop.is_set():
                    container = f"{self.container_prefix}-{self.rounds % 4}"
                    result = client.call(
                        "alloc", {"container_id": container, "networks": {self.network: {}}}
                    )
                    address = result["networks"][self.network]["ips"][0]["address"]
                    released = client.call("release", {"container_id": container})
                    if released != {"released": {self.network: [address.split("/")[0]]}}:
                        self.problems.append(f"release of {container} said {released}")
                    self.rounds += 1
        except Exception as e:
            self.problems.append(repr(e))


class GarbageSender:
    """Sends garbage on one connection, reconnecting when the daemon closes it."""

    def __init__(self, daemon: Daemon) -> None:
        self.ipamd = daemon
        self.client: RawClient | None = None
        self.reconnects = 0
        self.answers = 0

    def send(self, kind: str, payload: Any) -> None:
        if kind == "bytes":
            self._send_bytes(payload)
        else:
            self._send_frame(msgpack.packb(payload, use_bin_type=True))

    def _send_bytes(self, data: bytes) -> None:
        # Random bytes may stop mid-frame: on their own connection, closed for writing,
        # the daemon answers what it can and then closes.
        with self.ipamd.client(timeout=20) as client:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                client.sock.sendall(data)
                client.sock.shutdown(socket.SHUT_WR)
            for frame in receive_until_closed(client):
                self._check(frame)

    def _send_frame(self, data: bytes) -> None:
        if self.client is None:
            self.client = self.ipamd.client(timeout=20)
            self.reconnects += 1
        sentinel = msgpack.packb([0, SENTINEL_MSGID, "ping", []])
        try:
            self.client.sock.sendall(data + sentinel)
            while True:
                frame = self.client.receive()
                self._check(frame)
                if frame[1] == SENTINEL_MSGID and frame[2] is None:
                    return
        except (BrokenPipeError, ConnectionError):
            self.close()  # the daemon gave up on this connection: a fresh one next time

    def _check(self, frame: Any) -> None:
        check_response_shape(frame)
        self.answers += 1
        error = frame[2]
        if error is not None:
            assert error["code"] not in (11, 12), error  # no internal error, no storage error

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def test_garbage_does_not_disturb_a_good_client(
    shared_daemon: Daemon, client: RawClient, net_name: str, cid: Cid
) -> None:
    print(f"hypothesis: derandomize=True, {GARBAGE_EXAMPLES} examples (fixed seed)")
    create_network(client, net_name, next_subnet_prefix())
    good = GoodClient(shared_daemon, net_name, cid("good"))
    sender = GarbageSender(shared_daemon)

    @settings(
        max_examples=GARBAGE_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(garbage)
    def send_garbage(action: tuple[str, Any]) -> None:
        assert shared_daemon.proc is not None and shared_daemon.proc.poll() is None
        sender.send(*action)

    good.start()
    try:
        send_garbage()
    finally:
        sender.close()
        good.stop.set()
        good.join(timeout=30)

    print(f"good client rounds: {good.rounds}; garbage answers: {sender.answers}")
    assert not good.is_alive()
    assert good.problems == []
    assert good.rounds > 0
    assert shared_daemon.proc is not None and shared_daemon.proc.poll() is None
    assert client.call("ping")
    assert "Traceback" not in shared_daemon.log()
    assert "internal error" not in shared_daemon.log()


# -- idle and non-reading clients ----------------------------------------------------


@pytest.fixture(scope="module")
def strict_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with a 1 s idle timeout."""
    base = tmp_path_factory.mktemp("strict")
    config = write_config(base / "ipamd.toml", "[limits]\nidle_timeout_s = 1\n")
    instance = Daemon(state_dir=base / "state", socket=base / "ipamd.sock", config=config)
    instance.start()
    try:
        yield instance
    finally:
        instance.close()


def test_a_stalled_half_frame_is_closed_after_the_idle_timeout(strict_daemon: Daemon) -> None:
    """When is tests/test_connection.py's business (a given clock); here, that it happens."""
    with strict_daemon.client(timeout=5) as setup:
        create_network(setup, "idle-net")
    good = GoodClient(strict_daemon, "idle-net", "idle")
    frame = msgpack.packb([0, 1, "alloc", [{"container_id": "c", "networks": {"n": {}}}]])
    with strict_daemon.client(timeout=10) as stalled:
        stalled.sock.sendall(frame[: len(frame) // 2])
        good.start()  # meanwhile, another client works normally
        try:
            assert receive_until_closed(stalled) == []  # closed, with nothing to say
        finally:
            good.stop.set()
            good.join(timeout=30)
    assert good.problems == [] and good.rounds > 0


def test_a_frame_trickled_a_byte_at_a_time_is_closed_before_it_completes(
    strict_daemon: Daemon,
) -> None:
    """Each byte arrives well within the idle timeout (1 s), but the frame never
    completes: the daemon closes the connection rather than wait for the rest."""
    frame = msgpack.packb([0, 1, "ping", [{"pad": "x" * 200}]])
    sent = 0
    with strict_daemon.client(timeout=10) as trickler:
        for byte in frame[:-1]:
            try:
                trickler.sock.sendall(bytes([byte]))
            except OSError:
                break  # the daemon has closed it already
            sent += 1
            # The next byte in 0.2 s, or sooner if the daemon closes the connection.
            readable, _, _ = select.select([trickler.sock], [], [], 0.2)
            if readable:
                break
        assert receive_until_closed(trickler) == []  # closed, with nothing to say
    assert sent < len(frame) - 1, "the daemon waited for the whole frame"


def test_a_client_that_never_reads_does_not_block_others(strict_daemon: Daemon) -> None:
    with strict_daemon.client(timeout=5) as setup:
        create_network(setup, "fat-net", cidr=24)
        for i in range(200):
            setup.call("alloc", {"container_id": f"fat-{i}", "networks": {"fat-net": {}}})
    # Each answer is a page of 200 leases (tens of KiB); the request is tiny.
    request = msgpack.packb([0, 1, "lease.list", [{"network": "fat-net"}]])
    hog = strict_daemon.client()
    hog.sock.setblocking(False)
    sent = 0
    pending = b""
    try:
        # Pipeline until the daemon stops reading us: our socket stays unwritable.
        while True:
            pending = pending or request * 64
            try:
                n = hog.sock.send(pending)
                pending = pending[n:]
                sent += n
                continue
            except BlockingIOError:
                pass
            _, writable, _ = select.select([], [hog.sock], [], 1.0)
            if not writable:
                break
            assert sent < 64 << 20, "the daemon never pushed back"

        # The hog is stuck; everyone else is served, within the socket timeout.
        with strict_daemon.client(timeout=5) as other:
            for i in range(20):
                assert other.call("ping")
                other.call("alloc", {"container_id": f"other-{i}", "networks": {"fat-net": {}}})
            assert other.call("status")["connections"] >= 2
    finally:
        hog.close()
    assert strict_daemon.proc is not None and strict_daemon.proc.poll() is None


# -- clients that hang up, and bursts of reads --------------------------------------


def daemon_sockets(daemon: Daemon) -> int:
    """How many sockets the daemon holds open (its epoll set can watch no others)."""
    assert daemon.proc is not None
    fds = Path(f"/proc/{daemon.proc.pid}/fd")
    return sum(str(fd.readlink()).startswith("socket:") for fd in fds.iterdir())


def test_clients_that_hang_up_with_mutations_in_flight_cost_nothing_after(
    shared_daemon: Daemon, client: RawClient, net_name: str, cid: Cid
) -> None:
    """Their allocations still commit (the runtime retries idempotently), and the
    hung-up sockets leave nothing behind: no connection, no descriptor (so nothing
    left in the epoll set to spin on)."""
    create_network(client, net_name, next_subnet_prefix())
    before = client.call("status")["connections"]
    sockets_before = daemon_sockets(shared_daemon)
    for n in range(20):
        with shared_daemon.client() as hasty:
            frames = [
                msgpack.packb(
                    [
                        0,
                        i,
                        "alloc",
                        [{"container_id": cid(f"h{n}-{i}"), "networks": {net_name: {}}}],
                    ]
                )
                for i in range(100)
            ]
            hasty.sock.sendall(b"".join(frames))
    # A connection made after theirs is accepted after theirs: once it is answered,
    # every hung-up one has been accepted, and the count below has seen them all.
    with shared_daemon.client() as late:
        wait_for(
            lambda: late.call("status")["connections"] == before + 1, what="hung-up connections"
        )
        assert daemon_sockets(shared_daemon) == sockets_before + 1, "a hung-up socket was kept"
    leases = client.call("lease.list", {"network": net_name, "limit": 4000})["leases"]
    held = {lease["container_id"] for lease in leases}
    # Whatever was read before the hang-up was allocated and kept; nothing else.
    assert held <= {cid(f"h{n}-{i}") for n in range(20) for i in range(100)}
    assert held, "no allocation from a hung-up client was made"


def test_a_half_closed_client_gets_every_answer_beyond_the_in_flight_cap(
    shared_daemon: Daemon, client: RawClient, net_name: str, cid: Cid
) -> None:
    create_network(client, net_name, next_subnet_prefix())
    count = 250  # well past max_in_flight (64), within the /24: reading pauses and resumes
    with shared_daemon.client(timeout=30) as burst:
        burst.sock.sendall(
            b"".join(
                msgpack.packb(
                    [0, i, "alloc", [{"container_id": cid(f"b{i}"), "networks": {net_name: {}}}]]
                )
                for i in range(count)
            )
        )
        burst.sock.shutdown(socket.SHUT_WR)
        answers = receive_until_closed(burst)
    assert sorted(frame[1] for frame in answers) == list(range(count))
    assert all(frame[2] is None for frame in answers), [f[2] for f in answers if f[2]][:3]
    addresses = {frame[3]["networks"][net_name]["ips"][0]["address"] for frame in answers}
    assert len(addresses) == count


def test_a_burst_of_pipelined_reads_does_not_hold_up_another_client(
    shared_daemon: Daemon, client: RawClient
) -> None:
    """Reads are answered inline; one client's burst of them is interleaved with
    other clients' requests rather than served to the end first. `ping` answers
    carry the daemon's uptime, which orders the two clients' answers."""
    burst_size = 10_000  # some 100 ms of work, and answers within the outbox's bound
    with shared_daemon.client(timeout=30) as burst:
        burst.sock.sendall(b"".join(msgpack.packb([0, i, "ping", []]) for i in range(burst_size)))
        other_uptime = client.call("ping")["uptime_s"]
        burst_uptimes = [burst.receive()[3]["uptime_s"] for _ in range(burst_size)]
    print(
        f"other client answered at {other_uptime} s; burst {burst_uptimes[0]}-{burst_uptimes[-1]} s"
    )
    assert other_uptime < burst_uptimes[-1], "the other client waited for the whole burst"
