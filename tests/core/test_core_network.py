"""Network and subnet validation, and the offsets the index is built from."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ipamd.core.network import MAX_EXCLUDES, MAX_SUBNETS, Network, Subnet
from ipamd.errors import InvalidRequest


def network(*subnets: dict[str, Any], name: str = "net", **extra: Any) -> Network:
    return Network.from_wire({"name": name, "subnets": list(subnets), **extra})


def rejected(raw: dict[str, Any], *named: str) -> InvalidRequest:
    """`raw` is refused as invalid_request (code 1), with every `named` text in the message."""
    with pytest.raises(InvalidRequest) as caught:
        Network.from_wire(raw)
    error = caught.value
    assert (error.code, error.name) == (1, "invalid_request")
    assert error.to_wire()["code"] == 1
    for text in named:
        assert text in error.message, (text, error.message)
    return error


def rejected_subnet(subnet: dict[str, Any], *named: str) -> InvalidRequest:
    return rejected({"name": "net", "subnets": [subnet]}, *named)


# -- names, drivers, keys ---------------------------------------------------


@pytest.mark.parametrize("name", ["podman", "a", "a" * 64, "net_1.x-Y"])
def test_valid_names(name: str) -> None:
    assert network(name=name).name == name


@pytest.mark.parametrize("name", ["", "a" * 65, "bad name", "slash/y", "caf\u00e9", "a\n"])
def test_bad_names_are_named(name: str) -> None:
    rejected({"name": name, "subnets": []}, repr(name))


@pytest.mark.parametrize("name", [None, 7, ["x"]])
def test_non_string_names(name: Any) -> None:
    rejected({"name": name}, repr(name))


def test_unknown_keys_are_named() -> None:
    rejected({"name": "net", "subnets": [], "ipv6": True}, "ipv6")
    rejected_subnet({"subnet": "10.0.0.0/24", "gw": "10.0.0.1"}, "gw")


def test_not_maps_and_not_lists() -> None:
    rejected(["net"], "must be a map")  # type: ignore[arg-type]
    rejected({"name": "net", "subnets": "10.0.0.0/24"}, "'10.0.0.0/24'")
    rejected({"name": "net", "subnets": ["10.0.0.0/24"]}, "'10.0.0.0/24'")


def test_driver_defaults_and_semantics() -> None:
    v4 = {"subnet": "10.0.0.0/24"}
    assert network(v4).driver == "host-local"
    assert network(v4, driver="").driver == "host-local"
    assert network(v4, driver=None).driver == "host-local"
    assert network(v4).allocates
    # Another driver, or no subnets: ipamd allocates nothing (the seed's requiresIPAMAlloc).
    assert not network(v4, driver="dhcp").allocates
    assert not network().allocates
    rejected({"name": "net", "driver": "bad driver"}, "'bad driver'")
    rejected({"name": "net", "driver": 3}, "3")


def test_too_many_subnets() -> None:
    subnets = [{"subnet": f"10.{i}.0.0/16"} for i in range(MAX_SUBNETS + 1)]
    rejected({"name": "net", "subnets": subnets}, str(MAX_SUBNETS + 1))
    assert len(network(*subnets[:MAX_SUBNETS]).subnets) == MAX_SUBNETS


# -- subnets ----------------------------------------------------------------


@pytest.mark.parametrize(
    "cidr", ["10.0.0.0/33", "nonsense", "10.0.0.0", "fd00::/129", "10.0.0.0/-1", "", "::/x"]
)
def test_bad_cidrs_are_named(cidr: str) -> None:
    rejected_subnet({"subnet": cidr}, repr(cidr))


@pytest.mark.parametrize("cidr", [None, 10, ["10.0.0.0/24"]])
def test_non_string_cidrs(cidr: Any) -> None:
    rejected_subnet({"subnet": cidr}, "CIDR")


@pytest.mark.parametrize(
    ("text", "base"), [("10.88.0.5/16", "10.88.0.0"), ("fd00::1/64", "fd00::")]
)
def test_host_bits_are_refused_like_host_local(text: str, base: str) -> None:
    rejected_subnet({"subnet": text}, repr(text), "host bits", f"network address is {base}")


def test_an_exclude_cidr_with_host_bits_is_refused() -> None:
    rejected_subnet(
        {"subnet": "10.0.0.0/24", "exclude": ["10.0.0.15/29"]},
        "'10.0.0.15/29'",
        "network address is 10.0.0.8",
    )


def test_gateway_and_range_must_lie_in_the_subnet() -> None:
    base = {"subnet": "10.0.0.0/24"}
    rejected_subnet({**base, "gateway": "10.0.1.1"}, "gateway 10.0.1.1", "10.0.0.0/24")
    rejected_subnet({**base, "gateway": "fd00::1"}, "gateway fd00::1")
    rejected_subnet({**base, "gateway": "10.0.0.300"}, "'10.0.0.300'")
    rejected_subnet({**base, "gateway": 5}, "5")
    rejected_subnet({**base, "range_start": "10.0.1.1"}, "range_start 10.0.1.1")
    rejected_subnet({**base, "range_end": "9.255.255.255"}, "range_end 9.255.255.255")
    rejected_subnet(
        {**base, "range_start": "10.0.0.9", "range_end": "10.0.0.8"}, "10.0.0.9", "10.0.0.8"
    )


def test_gateway_may_not_be_network_or_broadcast() -> None:
    rejected_subnet({"subnet": "10.0.0.0/24", "gateway": "10.0.0.0"}, "gateway 10.0.0.0")
    rejected_subnet({"subnet": "10.0.0.0/24", "gateway": "10.0.0.255"}, "gateway 10.0.0.255")
    rejected_subnet({"subnet": "fd00::/64", "gateway": "fd00::"}, "gateway fd00::")
    # IPv6 has no broadcast; point-to-point prefixes have neither.
    assert network({"subnet": "fd00::/120", "gateway": "fd00::ff"}).subnets[0].gateway
    assert network({"subnet": "10.0.0.0/31", "gateway": "10.0.0.0"}).subnets[0].gateway


def test_exclude_forms() -> None:
    (subnet,) = network(
        {
            "subnet": "10.0.0.0/24",
            "exclude": ["10.0.0.5", "10.0.0.16/30", "10.0.0.20 - 10.0.0.29", "10.0.0.40/32"],
        }
    ).subnets
    assert [(str(a), str(b)) for a, b in subnet.exclude] == [
        ("10.0.0.5", "10.0.0.5"),
        ("10.0.0.16", "10.0.0.19"),
        ("10.0.0.20", "10.0.0.29"),
        ("10.0.0.40", "10.0.0.40"),
    ]
    assert subnet.to_wire()["exclude"] == [
        "10.0.0.5",
        "10.0.0.16-10.0.0.19",
        "10.0.0.20-10.0.0.29",
        "10.0.0.40",
    ]
    (v6,) = network(
        {"subnet": "fd00::/64", "exclude": ["fd00::1-fd00::ff", "fd00::1:0/112"]}
    ).subnets
    assert v6.reserved_ranges() == [(1, 255), (0x10000, 0x1FFFF)]


@pytest.mark.parametrize(
    "entry",
    [
        "nonsense",
        "10.0.0.5-",
        "10.0.0.5-10.0.0.300",
        "10.0.0.0/40",
        "10.0.0.9-10.0.0.5",  # misordered
        "10.0.1.5",  # outside
        "10.0.0.250-10.0.1.5",  # runs out of the subnet
        "10.0.0.0/23",  # larger than the subnet
        "fd00::1",  # other family
        "10.0.0.1-fd00::1",
    ],
)
def test_bad_exclude_entries_are_named(entry: str) -> None:
    rejected_subnet({"subnet": "10.0.0.0/24", "exclude": [entry]}, repr(entry))


def test_exclude_must_be_a_list_of_strings_and_not_too_long() -> None:
    base = {"subnet": "10.0.0.0/16"}
    rejected_subnet({**base, "exclude": "10.0.0.5"}, "'10.0.0.5'")
    rejected_subnet({**base, "exclude": [5]}, "5")
    too_many = [f"10.0.{i // 256}.{i % 256}" for i in range(MAX_EXCLUDES + 1)]
    rejected_subnet({**base, "exclude": too_many}, str(MAX_EXCLUDES + 1))


def test_overlapping_subnets_are_named() -> None:
    rejected(
        {"name": "net", "subnets": [{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.128/25"}]},
        "10.0.0.0/24",
        "10.0.0.128/25",
        "overlap",
    )
    rejected(
        {"name": "net", "subnets": [{"subnet": "fd00::/64"}, {"subnet": "fd00::/48"}]},
        "fd00::/64",
        "fd00::/48",
    )
    dual = network({"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}, {"subnet": "10.0.1.0/24"})
    assert [s.cidr.version for s in dual.subnets] == [4, 6, 4]


def test_wire_round_trip_is_identical() -> None:
    raw = {
        "name": "net",
        "driver": "host-local",
        "subnets": [
            {
                "subnet": "10.0.0.0/24",
                "gateway": "10.0.0.1",
                "range_start": "10.0.0.10",
                "range_end": "10.0.0.20",
                "exclude": ["10.0.0.15", "10.0.0.16-10.0.0.17"],
            },
            {"subnet": "fd00::/64"},
        ],
    }
    parsed = Network.from_wire(raw)
    assert parsed.to_wire() == raw
    assert Network.from_wire(parsed.to_wire()) == parsed


# -- derived numbers ---------------------------------------------------------


def subnet(**raw: Any) -> Subnet:
    return Subnet.from_wire(raw)


@pytest.mark.parametrize(
    ("cidr", "bounds"),
    [
        ("10.0.0.0/24", (1, 254)),
        ("10.0.0.0/30", (1, 2)),
        ("10.0.0.0/31", (0, 1)),  # RFC 3021: no network or broadcast
        ("10.0.0.7/32", (0, 0)),
        ("fd00::/64", (1, 2**64 - 1)),  # no broadcast in IPv6
        ("fd00::/126", (1, 3)),
        ("fd00::/127", (0, 1)),
        ("fd00::7/128", (0, 0)),
    ],
)
def test_host_bounds(cidr: str, bounds: tuple[int, int]) -> None:
    s = subnet(subnet=cidr)
    assert s.host_bounds == bounds
    assert s.lease_range == bounds
    assert s.allocatable == bounds[1] - bounds[0] + 1


def test_lease_range_is_clipped_to_host_bounds() -> None:
    # The seed's edge cases: a range starting on the network address, ending on the broadcast.
    s = subnet(subnet="10.0.0.0/24", range_start="10.0.0.0", range_end="10.0.0.255")
    assert s.lease_range == (1, 254)
    assert s.range_text == "10.0.0.1 - 10.0.0.254"
    # A range of nothing but the broadcast address is refused, as host-local does.
    with pytest.raises(InvalidRequest, match=r"10\.0\.0\.255 - 10\.0\.0\.255 of subnet"):
        subnet(subnet="10.0.0.0/24", range_start="10.0.0.255", range_end="10.0.0.255")
    assert subnet(subnet="fd00::/64", range_start="fd00::").lease_range == (1, 2**64 - 1)


def test_allocatable_counts_gateway_and_overlapping_excludes_once() -> None:
    s = subnet(
        subnet="10.0.0.0/24",
        gateway="10.0.0.1",
        range_start="10.0.0.1",
        range_end="10.0.0.100",
        exclude=["10.0.0.1", "10.0.0.10-10.0.0.20", "10.0.0.8/29", "10.0.0.90-10.0.0.120"],
    )
    # 1..100 minus {1}, 8..20 (10.0.0.8/29 is 8..15) and 90..100
    assert s.allocatable == 100 - 1 - 13 - 11
    assert s.reserved_reason(ipaddress.ip_address("10.0.0.120")) is not None  # outside range
    assert s.reserved_reason(ipaddress.ip_address("10.0.0.121")) is None


def test_reserved_reasons_name_the_subnet() -> None:
    s = subnet(subnet="10.0.0.0/24", gateway="10.0.0.1", exclude=["10.0.0.5"])
    reason = {
        str(a): s.reserved_reason(ipaddress.ip_address(a))
        for a in ("10.0.0.0", "10.0.0.255", "10.0.0.1", "10.0.0.5", "10.0.0.6")
    }
    assert reason == {
        "10.0.0.0": "the network address of subnet 10.0.0.0/24",
        "10.0.0.255": "the broadcast address of subnet 10.0.0.0/24",
        "10.0.0.1": "the gateway of subnet 10.0.0.0/24",
        "10.0.0.5": "excluded in subnet 10.0.0.0/24",
        "10.0.0.6": None,
    }
    p2p = subnet(subnet="10.0.0.0/31")
    assert p2p.reserved_reason(ipaddress.ip_address("10.0.0.0")) is None
    assert p2p.reserved_reason(ipaddress.ip_address("10.0.0.1")) is None


def test_subnet_of_and_offsets() -> None:
    dual = network({"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"})
    assert dual.subnet_of(ipaddress.ip_address("10.0.0.9")) == 0
    assert dual.subnet_of(ipaddress.ip_address("fd00::9")) == 1
    assert dual.subnet_of(ipaddress.ip_address("10.0.1.9")) is None
    assert dual.subnet_of(ipaddress.ip_address("::ffff:10.0.0.9")) is None
    v6 = dual.subnets[1]
    top = ipaddress.ip_address("fd00::ffff:ffff:ffff:ffff")
    assert v6.offset(top) == 2**64 - 1
    assert v6.address_at(2**64 - 1) == top
