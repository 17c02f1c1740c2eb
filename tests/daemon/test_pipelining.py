"""Pipelining: 1,000 requests on one connection without waiting, answered by msgid.

Responses may come out of order (reads are answered inline, mutations when their
batch is synced), so everything is matched by msgid. The mix is random; its seed
is printed and can be pinned with IPAMD_TEST_SEED.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from tests.daemon.e2e import check_response_shape, create_network
from tests.support import RawClient

Cid = Callable[[str], str]
REQUESTS = 1000


def test_a_thousand_pipelined_requests_are_all_answered(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    seed = int(os.environ.get("IPAMD_TEST_SEED", random.randrange(2**32)))
    print(f"IPAMD_TEST_SEED={seed}")
    rng = random.Random(seed)
    # A /20 of its own: next_subnet_prefix's /24s on the shared daemon lie in 10.100+,
    # and a subnet overlapping another network's is refused.
    create_network(client, net_name, "10.98.16", cidr=20)
    held = {
        cid(f"pre{i}"): client.call(
            "alloc", {"container_id": cid(f"pre{i}"), "networks": {net_name: {}}}
        )
        for i in range(5)
    }

    # msgid -> (method, params) of every request, all sent before any answer is read.
    requests: dict[int, tuple[str, dict[str, Any]]] = {}
    for msgid in range(1, REQUESTS + 1):
        kind = rng.choice(["alloc", "alloc", "realloc", "ping", "network.get", "get", "owner"])
        if kind == "alloc":
            requests[msgid] = (
                "alloc",
                {"container_id": cid(f"p{msgid}"), "networks": {net_name: {}}},
            )
        elif kind == "realloc":  # an idempotent retry of a held lease
            container = rng.choice(sorted(held))
            requests[msgid] = ("alloc", {"container_id": container, "networks": {net_name: {}}})
        elif kind == "ping":
            requests[msgid] = ("ping", {})
        elif kind == "network.get":
            requests[msgid] = ("network.get", {"name": net_name})
        elif kind == "get":
            requests[msgid] = ("get", {"container_id": rng.choice(sorted(held))})
        else:
            container = rng.choice(sorted(held))
            address = held[container]["networks"][net_name]["ips"][0]["address"].split("/")[0]
            requests[msgid] = ("lease.owner", {"network": net_name, "ip": address})
    data = b"".join(
        msgpack.packb([0, msgid, method, [params] if params else []], use_bin_type=True)
        for msgid, (method, params) in requests.items()
    )
    sender = threading.Thread(target=client.sock.sendall, args=(data,))
    sender.start()

    responses: dict[int, list[Any]] = {}
    for _ in range(REQUESTS):
        response = client.receive()
        check_response_shape(response)
        assert response[1] not in responses, f"msgid {response[1]} answered twice"
        responses[response[1]] = response
    sender.join(timeout=30)

    assert set(responses) == set(requests)
    new_addresses = []
    for msgid, (method, params) in requests.items():
        _, _, error, result = responses[msgid]
        assert error is None, (method, params, error)
        if method == "alloc" and params["container_id"] in held:
            assert result == held[params["container_id"]]
        elif method == "alloc":
            assert result["container_id"] == params["container_id"]
            new_addresses.append(result["networks"][net_name]["ips"][0]["address"])
        elif method == "get":
            assert result["networks"] == held[params["container_id"]]["networks"]
        elif method == "lease.owner":
            assert result["container_id"] in held
        elif method == "network.get":
            assert result["name"] == net_name
    assert len(new_addresses) == len(set(new_addresses)), "an address was handed out twice"
    used = client.call("network.get", {"name": net_name})["subnets"][0]["used"]
    assert used == len(held) + len(new_addresses)
