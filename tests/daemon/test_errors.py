"""The error codes of DESIGN.md section 4, and the frame rules, through the real daemon.

Codes 10 (permission_denied) are in test_permissions.py; 11 (unavailable) in
test_shutdown.py when it shows up; 12 (storage_error) needs a failing disk and
is tested elsewhere.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from tests.daemon.e2e import (
    call_error,
    check_response_shape,
    create_network,
    next_subnet_prefix,
    raw_call,
    receive_until_closed,
    send_frame,
)
from tests.support import Daemon, RawClient

Cid = Callable[[str], str]
MIB = 1 << 20


# -- invalid_request (1) ---------------------------------------------------------------

# (method, params, a piece of the message: the bad value or key it must name)
INVALID = [
    ("ping", {"verbose": True}, "verbose"),
    ("status", {"x": 1}, "'x'"),
    ("network.create", {"name": "bad name!", "subnets": []}, "bad name!"),
    ("network.create", {"name": "n" * 65, "subnets": []}, "n" * 65),
    ("network.create", {"name": "ok", "subnets": [{"subnet": "10.0.0.0/33"}]}, "10.0.0.0/33"),
    ("network.create", {"name": "ok", "subnets": [{"subnet": "10.0.0.0"}]}, "10.0.0.0"),
    ("network.create", {"name": "ok", "subnets": "10.0.0.0/24"}, "10.0.0.0/24"),
    (
        "network.create",
        {"name": "ok", "subnets": [{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]},
        "10.0.1.1",
    ),
    (
        "network.create",
        {"name": "ok", "subnets": [{"subnet": "10.0.0.0/24", "exclude": ["10.0.0.x"]}]},
        "10.0.0.x",
    ),
    ("network.create", {"name": "ok", "subnets": [{"subnet": "10.0.0.0/24", "vlan": 5}]}, "vlan"),
    ("network.create", {"name": "ok", "subnets": [], "mtu": 1500}, "mtu"),
    ("network.get", {"name": 42}, "42"),
    ("network.get", {}, "None"),
    ("network.delete", {"name": "ok", "force": "yes"}, "yes"),
    ("alloc", {"container_id": 12345, "networks": {"n": {}}}, "12345"),
    ("alloc", {"container_id": "-starts-with-dash", "networks": {"n": {}}}, "-starts-with-dash"),
    ("alloc", {"container_id": "c", "networks": {"bad/name": {}}}, "bad/name"),
    ("alloc", {"container_id": "c", "networks": {}}, "network"),
    ("alloc", {"container_id": "c", "networks": "n"}, "'n'"),
    ("alloc", {"container_id": "c", "networks": {"n": {}}, "bogus": 1}, "bogus"),
    (
        "alloc",
        {"container_id": "c", "networks": {"n": {"static_ips": ["10.0.0.300"]}}},
        "10.0.0.300",
    ),
    ("alloc", {"container_id": "c", "networks": {"n": {"static_ips": [7]}}}, "7"),
    ("alloc", {"container_id": "c", "networks": {"n": {"ifname": "eth0/1"}}}, "eth0/1"),
    ("alloc", {"container_id": "c", "networks": {"n": {"ifname": "x" * 16}}}, "x" * 16),
    ("alloc", {"container_id": "c", "networks": {"n": {"attributes": {"k": 1}}}}, "'k'"),
    ("alloc", {"container_id": "c", "networks": {"n": {"mac": "aa"}}}, "mac"),
    ("release", {"container_id": ["c"]}, "['c']"),
    ("release", {"container_id": "c", "networks": {"n": {"ifname": 3}}}, "3"),
    ("get", {"container_id": "c", "networks": 5}, "5"),
    ("get", {"container_id": "c", "extra": None}, "extra"),
    ("lease.list", {"network": "n", "limit": 0}, "0"),
    ("lease.list", {"network": "n", "limit": "10"}, "'10'"),
    ("lease.list", {"network": "n", "after": "nope"}, "nope"),
    ("lease.owner", {"ip": "10.1.2"}, "10.1.2"),
    ("lease.owner", {"ip": None}, "None"),
    ("gc", {"network": "n", "valid": "all"}, "all"),
    ("gc", {"network": "n", "valid": [{"container_id": "c", "pid": 1}]}, "pid"),
    ("gc", {"network": "n", "valid": [], "dry_run": 1}, "1"),
]


@pytest.mark.parametrize(("method", "params", "named"), INVALID)
def test_invalid_request_names_the_bad_value(
    client: RawClient, method: str, params: dict[str, Any], named: str
) -> None:
    # lease.list checks its network first: give it one.
    client.call("network.create", {"name": "n", "subnets": [{"subnet": "10.250.250.0/24"}]})

    error = call_error(client, method, params, code=1)

    assert named in error.message, error.message
    assert client.call("ping")  # the connection carries on


def test_alloc_static_addresses_in_one_subnet_are_invalid(client: RawClient, net_name: str) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix)

    error = call_error(
        client,
        "alloc",
        {
            "container_id": "c",
            "networks": {net_name: {"static_ips": [f"{prefix}.5", f"{prefix}.6"]}},
        },
        code=1,
    )

    assert f"{prefix}.5" in error.message and f"{prefix}.6" in error.message


def test_params_of_the_wrong_shape_are_answered_by_msgid(client: RawClient) -> None:
    for msgid, params in ((11, {}), (12, "x"), (13, [{}, {}]), (14, [5]), (15, [{1: "a"}])):
        response = raw_call(client, [0, msgid, "ping", params])
        assert response[1] == msgid
        assert response[2]["code"] == 1, response
    # A request of five items, or a method that is not a string.
    assert raw_call(client, [0, 16, "ping", [], None])[2]["code"] == 1
    assert raw_call(client, [0, 17, 5, []])[2]["code"] == 1
    # Non-string keys deep inside params are refused, naming where.
    response = raw_call(
        client, [0, 18, "alloc", [{"container_id": "c", "networks": {"n": {1: 2}}}]]
    )
    assert response[2]["code"] == 1 and "networks.n" in response[2]["message"]
    assert client.call("ping")


def test_a_request_without_a_usable_msgid_is_dropped_not_answered(client: RawClient) -> None:
    send_frame(client, [0, "one", "ping", []])
    send_frame(client, [0, -1, "ping", []])
    send_frame(client, [0, 2**32, "ping", []])
    send_frame(client, [1, 5, None, "a response sent to the server"])

    msgid = client.send("ping")
    response = client.receive()

    assert response[1] == msgid and response[2] is None


def test_bin_instead_of_str_is_invalid(client: RawClient) -> None:
    response = raw_call(client, [0, 21, "get", [{"container_id": b"c1"}]])
    assert response[2]["code"] == 1
    # The method name itself as bin: still answered, by msgid.
    response = raw_call(client, [0, 22, b"ping", []])
    assert response[1] == 22 and response[2]["code"] == 1


# -- empty arrays standing for maps, notifications ---------------------------------------


def test_an_empty_array_is_accepted_where_a_map_is_expected(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    create_network(client, net_name)
    for method in ("ping", "status", "network.list", "stats"):
        assert raw_call(client, [0, 31, method, [[]]])[2] is None, method

    result = client.call(
        "alloc", {"container_id": cid("c1"), "networks": {net_name: {"attributes": []}}}
    )
    assert result["networks"][net_name]["ifname"] == ""
    response = raw_call(
        client, [0, 32, "alloc", [{"container_id": cid("c2"), "networks": {net_name: []}}]]
    )
    assert response[2] is None and response[3]["networks"][net_name]["ips"]

    # `networks: []` is the empty map `{}`: no network named, so nothing found or released.
    for method in ("get", "release"):
        as_array = client_result(client, method, {"container_id": cid("c1"), "networks": []})
        as_map = client_result(client, method, {"container_id": cid("c1"), "networks": {}})
        assert as_array == as_map, method
        assert as_array[0] is None or as_array[0]["code"] != 1, as_array
    assert client.call("get", {"container_id": cid("c1")})["networks"][net_name]
    assert client.call("gc", {"network": net_name, "valid": []})["released"]


def client_result(client: RawClient, method: str, params: dict[str, Any]) -> tuple[Any, Any]:
    """(error, result) of one call, whichever it is."""
    response = raw_call(client, [0, 99, method, [params]])
    return response[2], response[3]


def test_notifications_are_never_answered(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)
    send_frame(client, [2, "ping", []])
    send_frame(client, [2, "no.such.method", []])
    send_frame(client, [2, "alloc", [{"container_id": 5}]])
    send_frame(client, [2, "alloc", [{"container_id": cid("n"), "networks": {net_name: {}}}]])
    send_frame(client, [2, 7, "bad notification"])
    send_frame(client, [2, "ping"])

    msgid = client.send("ping")
    response = client.receive()

    assert response[1] == msgid and response[2] is None
    assert client.call("status")["version"]


# -- unknown_method (2) ... network_in_use (9) ---------------------------------------------


def test_unknown_method(client: RawClient) -> None:
    error = call_error(client, "network.rename", {"name": "a"}, code=2)
    assert "network.rename" in error.message
    call_error(client, "", None, code=2)


def test_network_not_found(client: RawClient, cid: Cid) -> None:
    missing = "no-such-network-e2e"
    calls: list[tuple[str, dict[str, Any]]] = [
        ("network.get", {"name": missing}),
        ("network.delete", {"name": missing}),
        ("alloc", {"container_id": cid("c"), "networks": {missing: {}}}),
        ("release", {"container_id": cid("c"), "networks": {missing: {}}}),
        ("lease.list", {"network": missing}),
        ("lease.owner", {"network": missing, "ip": "10.0.0.1"}),
        ("gc", {"network": missing, "valid": []}),
    ]
    for method, params in calls:
        error = call_error(client, method, params, code=3)
        assert missing in error.message, (method, error.message)


def test_network_exists(client: RawClient, net_name: str) -> None:
    create_network(client, net_name)

    error = call_error(
        client, "network.create", {"name": net_name, "driver": "bridge-x", "subnets": []}, code=4
    )

    assert net_name in error.message


def test_address_in_use_names_the_holder(client: RawClient, net_name: str, cid: Cid) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix)
    client.call("alloc", {"container_id": cid("a"), "networks": {net_name: {}}})  # .2

    error = call_error(
        client,
        "alloc",
        {"container_id": cid("b"), "networks": {net_name: {"static_ips": [f"{prefix}.2"]}}},
        code=5,
    )

    assert error.message == (
        f"requested ip address {prefix}.2 is already allocated to container ID {cid('a')}"
    )


@pytest.mark.parametrize(
    ("last_octet", "why"),
    [
        ("0", "network address"),
        ("255", "broadcast"),
        ("1", "gateway"),
        ("9", "excluded"),
    ],
)
def test_address_not_allocatable(
    client: RawClient, net_name: str, cid: Cid, last_octet: str, why: str
) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix, exclude=[f"{prefix}.8-{prefix}.10"])

    error = call_error(
        client,
        "alloc",
        {
            "container_id": cid("c"),
            "networks": {net_name: {"static_ips": [f"{prefix}.{last_octet}"]}},
        },
        code=6,
    )

    assert f"{prefix}.{last_octet}" in error.message and why in error.message


def test_address_outside_every_subnet_is_not_allocatable(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    create_network(client, net_name)

    for outside in ("192.0.2.7", "2001:db8::7"):
        error = call_error(
            client,
            "alloc",
            {"container_id": cid("c"), "networks": {net_name: {"static_ips": [outside]}}},
            code=6,
        )
        assert outside in error.message


def test_range_exhausted_names_the_range(client: RawClient, net_name: str, cid: Cid) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix, range_start=f"{prefix}.10", range_end=f"{prefix}.12")
    for i in range(3):
        client.call("alloc", {"container_id": cid(f"c{i}"), "networks": {net_name: {}}})

    error = call_error(
        client, "alloc", {"container_id": cid("late"), "networks": {net_name: {}}}, code=7
    )

    assert error.message == f"failed to find free IP in range: {prefix}.10 - {prefix}.12"
    # A static address outside the range still works on an exhausted range.
    client.call(
        "alloc",
        {"container_id": cid("late"), "networks": {net_name: {"static_ips": [f"{prefix}.99"]}}},
    )


def test_lease_not_found(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)

    error = call_error(client, "get", {"container_id": cid("ghost")}, code=8)
    assert cid("ghost") in error.message
    call_error(client, "lease.owner", {"ip": "10.254.254.254"}, code=8)


def test_network_in_use(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)
    client.call("alloc", {"container_id": cid("c"), "networks": {net_name: {}}})

    error = call_error(client, "network.delete", {"name": net_name, "force": False}, code=9)

    assert net_name in error.message and "1 lease" in error.message


# -- request_too_large (13) ------------------------------------------------------------


def test_a_frame_over_1_mib_is_refused_then_the_connection_closes(
    client: RawClient, shared_daemon: Daemon
) -> None:
    # Strings stay under the per-string limit; together they pass the frame limit.
    pad = ["x" * 60_000] * 20
    frame = msgpack.packb([0, 41, "ping", [{"pad": pad}]], use_bin_type=True)
    assert len(frame) > MIB

    # The daemon stops reading past the limit: send from a thread so we never block.
    sender = threading.Thread(target=send_ignoring_close, args=(client, frame))
    sender.start()
    frames = receive_until_closed(client)
    sender.join(timeout=20)

    assert len(frames) == 1, frames
    check_response_shape(frames[0])
    error = frames[0][2]
    assert error["code"] == 13 and error["name"] == "request_too_large"
    # Nobody else noticed.
    with shared_daemon.client() as other:
        assert other.call("ping")


def send_ignoring_close(client: RawClient, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the daemon closed the connection first: expected
        client.sock.sendall(data)


def test_a_frame_just_under_the_limit_is_read(client: RawClient) -> None:
    pad = ["x" * 60_000] * 16
    frame = [0, 42, "ping", [{"pad": pad}]]
    assert len(msgpack.packb(frame, use_bin_type=True)) < MIB

    response = raw_call(client, frame)

    assert response[1] == 42 and response[2]["code"] == 1  # unknown key, not too large
    assert client.call("ping")


def test_undecodable_bytes_get_one_error_then_close(client: RawClient) -> None:
    client.sock.sendall(b"\xc1")  # never used in msgpack

    frames = receive_until_closed(client)

    assert len(frames) == 1
    check_response_shape(frames[0])
    assert frames[0][2]["code"] == 1
