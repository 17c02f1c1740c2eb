"""Many clients at once: 64 connections allocate on one /24 until it is exhausted."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.daemon.e2e import create_network, next_subnet_prefix
from tests.support import Daemon, RawClient, RpcError

Cid = Callable[[str], str]
CLIENTS = 64
ALLOCATABLE = 253  # a /24 minus network, broadcast and gateway


def test_64_clients_exhaust_a_24_with_every_address_handed_out_once(
    shared_daemon: Daemon, client: RawClient, net_name: str, cid: Cid
) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix)
    start = threading.Barrier(CLIENTS)
    successes: list[list[str]] = [[] for _ in range(CLIENTS)]
    errors: list[list[RpcError]] = [[] for _ in range(CLIENTS)]
    crashes: list[BaseException] = []

    def allocate_until_exhausted(index: int) -> None:
        try:
            with shared_daemon.client(timeout=30) as own:
                start.wait(timeout=30)
                for n in range(ALLOCATABLE + 1):
                    container = cid(f"w{index}-{n}")
                    try:
                        result = own.call(
                            "alloc", {"container_id": container, "networks": {net_name: {}}}
                        )
                    except RpcError as e:
                        errors[index].append(e)
                        return
                    successes[index].append(result["networks"][net_name]["ips"][0]["address"])
        except BaseException as e:  # reported below, with the thread's index
            crashes.append(e)

    threads = [threading.Thread(target=allocate_until_exhausted, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not crashes, crashes
    assert not any(thread.is_alive() for thread in threads)
    handed_out = [address for per_client in successes for address in per_client]
    assert len(handed_out) == ALLOCATABLE
    assert sorted(handed_out) == sorted(f"{prefix}.{i}/24" for i in range(2, 255))
    every_error = [e for per_client in errors for e in per_client]
    assert len(every_error) == CLIENTS  # each client stops at its first refusal
    for error in every_error:
        assert (error.code, error.name) == (7, "range_exhausted")
        assert error.message == f"failed to find free IP in range: {prefix}.1 - {prefix}.254"
    subnet = client.call("network.get", {"name": net_name})["subnets"][0]
    assert (subnet["used"], subnet["free"]) == (ALLOCATABLE, 0)
