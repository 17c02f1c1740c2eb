"""The sans-IO client core, the request builders and the human renderers: no sockets."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ipamd.client import methods, render
from ipamd.client.core import (
    ClientCore,
    ConnectionFailed,
    ProtocolError,
    Reply,
)
from ipamd.errors import NetworkNotFound, RequestTooLarge
from ipamd.wire.protocol import MSGID_MAX, NEED_DATA

PATH = Path("/run/test/ipamd.sock")


def response(msgid: int, result: Any = None, error: dict[str, Any] | None = None) -> bytes:
    data: bytes = msgpack.packb([1, msgid, error, result], use_bin_type=True)
    return data


def test_requests_are_numbered_from_1_and_encoded_per_the_spec() -> None:
    core = ClientCore(PATH)
    msgid, data = core.start("network.get", {"name": "podman"})
    assert msgid == 1
    assert msgpack.unpackb(data) == [0, 1, "network.get", [{"name": "podman"}]]
    assert msgpack.unpackb(core.start("ping")[1]) == [0, 2, "ping", []]
    assert core.in_flight == 2


def test_replies_match_their_msgid_in_any_order() -> None:
    core = ClientCore(PATH)
    first, _ = core.start("a")
    second, _ = core.start("b")
    core.receive_data(response(second, "B") + response(first, "A")[:3])
    reply = core.next_reply()
    assert reply == Reply(second, None, "B")
    assert core.next_reply() is NEED_DATA
    core.receive_data(response(first, "A")[3:])
    assert core.next_reply() == Reply(first, None, "A")
    assert core.in_flight == 0


def test_an_error_reply_carries_its_class() -> None:
    core = ClientCore(PATH)
    msgid, _ = core.start("network.get", {"name": "x"})
    error = {"code": 3, "name": "network_not_found", "message": "could not find network 'x'"}
    core.receive_data(response(msgid, error=error))
    reply = core.next_reply()
    assert isinstance(reply, Reply) and isinstance(reply.error, NetworkNotFound)
    with pytest.raises(NetworkNotFound, match="could not find network 'x'"):
        reply.value()


def test_the_daemons_msgid_0_verdict_is_raised() -> None:
    core = ClientCore(PATH)
    core.start("ping")
    error = {"code": 13, "name": "request_too_large", "message": "frame is over the limit"}
    core.receive_data(response(0, error=error))
    with pytest.raises(RequestTooLarge):
        core.next_reply()


def test_abandoned_replies_are_dropped_and_strangers_refused() -> None:
    core = ClientCore(PATH)
    gave_up, _ = core.start("slow")
    wanted, _ = core.start("fast")
    core.abandon(gave_up)
    core.receive_data(response(gave_up, "late") + response(wanted, "ok"))
    assert core.next_reply() == Reply(wanted, None, "ok")
    core.receive_data(response(77, "who asked?"))
    with pytest.raises(ProtocolError, match="msgid 77"):
        core.next_reply()


def test_eof_fails_the_calls_in_flight() -> None:
    core = ClientCore(PATH)
    core.start("alloc", {"container_id": "c"})
    core.receive_data(b"")
    with pytest.raises(ConnectionFailed, match="closed the connection with 1 call") as info:
        core.next_reply()
    assert not isinstance(info.value, ProtocolError) and info.value.socket_path == PATH


def test_eof_mid_reply_is_a_lost_connection_garbage_a_protocol_error() -> None:
    core = ClientCore(PATH)
    msgid, _ = core.start("ping")
    core.receive_data(response(msgid, {"version": "0.1.0"})[:5])
    core.receive_data(b"")
    with pytest.raises(ConnectionFailed, match="middle of a reply") as info:
        core.next_reply()
    assert not isinstance(info.value, ProtocolError)
    core = ClientCore(PATH)
    core.start("ping")
    core.receive_data(b"\xc1")
    with pytest.raises(ProtocolError, match=str(PATH)):
        core.next_reply()


def test_msgids_wrap_and_skip_those_in_flight() -> None:
    core = ClientCore(PATH)
    core._next_msgid = MSGID_MAX
    assert core.start("a")[0] == MSGID_MAX
    assert core.start("b")[0] == 1
    core._next_msgid = 1
    assert core.start("c")[0] == 2  # 1 is still in flight


def test_results_bigger_than_the_servers_limits_decode() -> None:
    core = ClientCore(PATH)
    msgid, _ = core.start("gc", {"network": "n", "valid": []})
    released = [{"container_id": f"c{i}", "ips": [{"address": "10.0.0.1/8"}]} for i in range(30000)]
    data = response(msgid, {"released": released})
    assert len(data) > 1 << 20  # over the daemon's own frame limit
    for i in range(0, len(data), 65536):
        core.receive_data(data[i : i + 65536])
    reply = core.next_reply()
    assert isinstance(reply, Reply)
    assert len(reply.value()["released"]) == 30000


def test_core_and_builders_do_no_io() -> None:
    for module in ("core", "methods", "render"):
        source = Path(__file__).parents[2] / "ipamd" / "client" / f"{module}.py"
        imported: set[str] = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & {"socket", "trio", "os", "select", "threading"}, (module, imported)


# -- request builders --------------------------------------------------------------------------


def test_builders_leave_out_what_was_not_given() -> None:
    assert methods.network_create("n", [{"subnet": "10.0.0.0/8"}]) == (
        "network.create",
        {"name": "n", "subnets": [{"subnet": "10.0.0.0/8"}]},
    )
    assert methods.network_create("n", [], "bridge")[1]["driver"] == "bridge"
    assert methods.network_delete("n") == ("network.delete", {"name": "n"})
    assert methods.network_delete("n", force=True)[1] == {"name": "n", "force": True}
    assert methods.release("c") == ("release", {"container_id": "c"})
    assert methods.release("c", {"n": {"ifname": "eth0"}})[1]["networks"] == {
        "n": {"ifname": "eth0"}
    }
    assert methods.get("c", ["a", "b"])[1]["networks"] == ["a", "b"]
    assert methods.get("c", {"a": {}})[1]["networks"] == {"a": {}}
    assert methods.lease_list("n") == ("lease.list", {"network": "n"})
    assert methods.lease_list("n", "10.0.0.5", 10)[1] == {
        "network": "n",
        "after": "10.0.0.5",
        "limit": 10,
    }
    assert methods.lease_owner("10.0.0.5") == ("lease.owner", {"ip": "10.0.0.5"})
    assert methods.gc("n", [{"container_id": "c"}]) == (
        "gc",
        {"network": "n", "valid": [{"container_id": "c"}]},
    )
    assert methods.gc("n", [], dry_run=True)[1]["dry_run"] is True


def test_a_page_with_next_but_no_leases_is_refused() -> None:
    with pytest.raises(ProtocolError):
        methods.lease_page(PATH, {"leases": [], "next": "10.0.0.1"})
    assert methods.lease_page(PATH, {"leases": []}) == ([], None)


# -- renderers ---------------------------------------------------------------------------------


def test_counts_arrive_as_ints_or_decimal_strings() -> None:
    assert render.count(256) == 256
    assert render.count(str(2**64)) == 2**64
    for bad in (None, True, "-1", "1e5", 2.5):
        with pytest.raises(render.BadResult):
            render.count(bad)
    assert render.show_count(2**64) == "1.84e+19"
    assert render.show_count(10**15 - 1) == "999999999999999"


@pytest.mark.parametrize(
    ("allocatable", "free", "expected"),
    [
        (10, 10, "[....................]   0.0%"),
        (10, 9, "[##..................]  10.0%"),
        (10, 0, "[####################] 100.0%"),
        (2**64 - 1, 2**64 - 3, "[....................]  <0.1%"),
        (100_000, 1, "[####################] >99.9%"),
        (0, 0, "[####################] 100.0%"),
    ],
)
def test_utilisation_bar(allocatable: int, free: int, expected: str) -> None:
    assert render.utilisation(allocatable, free) == expected


def test_table_alignment() -> None:
    assert render.table(["A", "NUMBER"], [["long-name", "7"], ["x", "12345678"]], right=[1]) == [
        "A            NUMBER",
        "long-name         7",
        "x          12345678",
    ]
