"""The HTTP metrics endpoint: only GET/HEAD /metrics, bounded, and harmless to the daemon.

The first tests talk to the real daemon over real loopback TCP. The timing
rules (request timeout, render pacing) are checked in-process on trio's
autojump clock, against memory streams: bytes in, bytes out, no waiting.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from ipamd.metrics import http as metrics_http
from ipamd.metrics.http import MetricsEndpoint
from tests.daemon.e2e import create_network
from tests.daemon.metrics_support import http_request, metrics_daemon, parse, scrape
from tests.support import Daemon


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    daemon, port = metrics_daemon(tmp_path_factory.mktemp("metrics-http"))
    try:
        yield daemon, port
    finally:
        daemon.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data`, then read until the daemon closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_other_paths_are_not_found(metered: tuple[Daemon, int]) -> None:
    _, port = metered
    for path in ("/", "/metricsx", "/metrics/", "/favicon.ico"):
        reply = http_request(port, path=path)
        assert reply.status == 404, (path, reply)
        assert b"/metrics" in reply.body


def test_other_methods_are_not_allowed(metered: tuple[Daemon, int]) -> None:
    _, port = metered
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        reply = http_request(port, method=method)
        assert reply.status == 405, (method, reply)
        assert reply.headers["allow"] == "GET, HEAD"


def test_head_has_the_headers_and_no_body(metered: tuple[Daemon, int]) -> None:
    _, port = metered
    reply = http_request(port, method="HEAD")
    assert reply.status == 200
    assert reply.body == b""
    assert int(reply.headers["content-length"]) > 1000
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_a_query_string_is_ignored_and_keep_alive_works(metered: tuple[Daemon, int]) -> None:
    _, port = metered
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        request = b"GET /metrics?debug=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request * 3)  # pipelined, on one connection
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 4


def test_a_broken_request_gets_400_and_the_connection_closes(metered: tuple[Daemon, int]) -> None:
    _, port = metered
    answer = raw_exchange(port, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in answer.lower()


def test_a_body_too_large_gets_413(metered: tuple[Daemon, int]) -> None:
    _, port = metered
    size = metrics_http.MAX_BODY_BYTES + 1
    answer = raw_exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    )
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_head_too_large_gets_431(metered: tuple[Daemon, int]) -> None:
    _, port = metered
    answer = raw_exchange(port, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000)
    assert answer.startswith(b"HTTP/1.1 431 ")


@pytest.mark.slow
def test_hostile_scrapers_cost_only_their_own_connections(metered: tuple[Daemon, int]) -> None:
    daemon, port = metered
    held: list[socket.socket] = []
    try:
        # Every slot taken: each of these has been answered once and is kept open.
        for _ in range(metrics_http.MAX_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            held.append(sock)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        # One more is closed at once, unanswered.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as extra:
            extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert extra.recv(65536) == b""
        # Half a request on every held connection, never finished.
        for sock in held:
            sock.sendall(b"GET /metr")
        # Allocations carry on meanwhile.
        with daemon.client(timeout=10) as client:
            create_network(client, "met-hostile", cidr=24)
            for i in range(20):
                client.call("alloc", {"container_id": f"h{i}", "networks": {"met-hostile": {}}})
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, scrapes work again (the daemon frees slots on EOF).
    families = parse(scrape_when_free(port))
    assert families["ipamd_network_leases"].value(
        "ipamd_network_leases", network="met-hostile"
    ) == (20)


def scrape_when_free(port: int) -> str:
    """A scrape, retried while the daemon has not yet seen the held connections close.

    Closing a socket here and the daemon's task ending are not ordered with
    our next connect; a refused connection is closed unanswered, which
    http.client reports as RemoteDisconnected (or a reset)."""
    for _ in range(200):
        try:
            return scrape(port)
        except (ConnectionError, OSError):
            continue
    raise AssertionError("the metrics endpoint never freed a slot")


# -- in-process, on trio's autojump clock ----------------------------------------------


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_a_request_that_never_completes_is_dropped_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoint = MetricsEndpoint(lambda: b"x 1\n")
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint._handle, server)
        start = trio.current_time()
        await client.send_all(b"GET /metrics HTTP/1.1\r\nHo")  # and nothing more
        assert await read_all(client) == b""  # closed without an answer
        waited = trio.current_time() - start
    assert metrics_http.REQUEST_TIMEOUT_S <= waited < metrics_http.REQUEST_TIMEOUT_S + 1
    assert endpoint.open == 0


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoint = MetricsEndpoint(lambda: b"x 1\n")
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint._handle, server)
        await client.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answered_at = trio.current_time()
        data = await read_all(client)
        closed_after = trio.current_time() - answered_at
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"x 1\n")
    assert metrics_http.REQUEST_TIMEOUT_S <= closed_after < metrics_http.REQUEST_TIMEOUT_S + 1


async def test_a_scraper_that_never_reads_its_answer_is_dropped_after_the_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoint = MetricsEndpoint(lambda: b"x 1\n" * 100_000)
    # Lockstep: a send waits until the peer receives, as a full socket buffer would.
    client, server = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        started = trio.current_time()
        with trio.fail_after(10 * metrics_http.SEND_TIMEOUT_S):  # a failure, not a hang
            await endpoint._handle(server)  # returns once it has given up on us
        gave_up_after = trio.current_time() - started
    assert endpoint.open == 0
    limit = metrics_http.SEND_TIMEOUT_S + metrics_http.LINGER_S
    assert metrics_http.SEND_TIMEOUT_S <= gave_up_after <= limit + 0.1


async def test_renders_are_paced_however_fast_scrapers_ask(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rendered_at: list[float] = []

    def render() -> bytes:
        rendered_at.append(trio.current_time())
        return b"x 1\n"

    endpoint = MetricsEndpoint(render)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with trio.open_nursery() as nursery:
        clients = []
        for _ in range(3):  # three scrapers, each asking four times as fast as it can
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(endpoint._handle, server)
            clients.append(client)
        for client in clients:
            await client.send_all(request * 3 + last)
        answers = [await read_all(client) for client in clients]
    assert all(answer.count(b"200 OK") == 4 for answer in answers)
    assert len(rendered_at) == 12
    gaps = [b - a for a, b in itertools.pairwise(rendered_at)]
    assert min(gaps) >= metrics_http.MIN_RENDER_INTERVAL_S - 1e-9, gaps


async def test_slow_renders_are_spaced_out_to_a_share_of_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    render_s = 0.01  # as if there were hundreds of networks
    spans: list[tuple[float, float]] = []

    def render() -> bytes:
        started = trio.current_time()
        autojump_clock.jump(render_s)  # the render's own (blocking) time
        spans.append((started, trio.current_time()))
        return b"x 1\n"

    endpoint = MetricsEndpoint(render)
    client, server = trio.testing.memory_stream_pair()
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint._handle, server)
        await client.send_all(
            request * 9 + request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        )
        assert (await read_all(client)).count(b"200 OK") == 10
    # From the first render's start to the last one's: every render but the last ran in it.
    busy = sum(end - start for start, end in spans[:-1])
    elapsed = spans[-1][0] - spans[0][0]
    assert busy / elapsed <= metrics_http.MAX_LOOP_SHARE + 1e-6, (busy, elapsed)
    assert busy / elapsed > metrics_http.MAX_LOOP_SHARE / 2  # paced, not stalled


async def test_a_bug_in_one_connection_does_not_stop_the_endpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    def render() -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return b"x 1\n"

    endpoint = MetricsEndpoint(render)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with trio.open_nursery() as nursery:
        first, server = trio.testing.memory_stream_pair()
        nursery.start_soon(endpoint._handle, server)
        await first.send_all(request)
        assert await read_all(first) == b""  # that connection is dropped
        second, server = trio.testing.memory_stream_pair()
        nursery.start_soon(endpoint._handle, server)
        await second.send_all(request)
        assert (await read_all(second)).startswith(b"HTTP/1.1 200 OK")
