"""The fast address text helpers agree with `ipaddress` exactly: results and errors."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipamd.core.network import MAX_REMEMBERED_IPV6_TEXTS, address_from_text, address_text

EDGES = [0, 1, 255, 256, 2**24 - 1, 2**31, 2**32 - 2, 2**32 - 1]


@given(st.integers(0, 2**32 - 1))
def test_ipv4_text_is_str(n: int) -> None:
    address = ipaddress.IPv4Address(n)
    assert address_text(address) == str(address)
    assert address_from_text(str(address)) == address


@pytest.mark.parametrize("n", EDGES)
def test_ipv4_edges(n: int) -> None:
    address = ipaddress.IPv4Address(n)
    assert address_text(address) == str(address)
    assert address_from_text(str(address)) == address


@given(st.integers(0, 2**128 - 1))
def test_ipv6_text_is_str(n: int) -> None:
    address = ipaddress.IPv6Address(n)
    assert address_text(address) == str(address)
    assert address_from_text(str(address)) == address


ODD_TEXTS: list[Any] = [
    "10.0.0.1",
    "010.0.0.1",
    "10.0.0.01",
    "10.0.0.256",
    "10.0.0.-1",
    "10.0.0.+1",
    "10.0.0. 1",
    "10.0.0.1 ",
    "10.0.0.1_0",
    "10.0.0.\u0661",  # an Arabic-Indic digit: int() takes it, ip_address does not
    "10.0.0",
    "10.0.0.0.0",
    "1.2.3.99999999999999999999",
    "",
    "...",
    "::1",
    "fd00::1",
    "::ffff:10.0.0.1",
    "fe80::1%eth0",
    ":::",
    "1::2::3",
    "fd00::1 ",
    "fd00::g",
    "::ffff:10.0.0.256",
    "fd00:0:0:0:0:0:0:0:1",
    "FD00::A",
    "10.0.0.1/32",
    "garbage",
    167772161,  # an int: ip_address takes it, and so must a corrupt stored value
    b"\x0a\x00\x00\x01",
    None,
    ["10.0.0.1"],
]


@pytest.mark.parametrize("text", ODD_TEXTS, ids=repr)
def test_odd_texts_parse_or_fail_as_ip_address_does(text: Any) -> None:
    try:
        expected: Any = ipaddress.ip_address(text)
    except Exception as e:
        with pytest.raises(type(e)) as caught:
            address_from_text(text)
        assert str(caught.value) == str(e)
    else:
        assert address_from_text(text) == expected
        assert type(address_from_text(text)) is type(expected)


def test_ipv6_texts_stay_right_past_the_memo_bound() -> None:
    """The memo of IPv6 texts is bounded; every text stays `str`'s."""
    base = int(ipaddress.IPv6Address("fd00::"))
    addresses = [ipaddress.IPv6Address(base + i) for i in range(MAX_REMEMBERED_IPV6_TEXTS + 10)]
    for _ in range(2):
        for address in addresses:
            assert address_text(address) == str(address)
    zoned = ipaddress.IPv6Address("fe80::1%eth0")  # a scope makes a different address
    assert address_text(zoned) == "fe80::1%eth0"
    assert address_text(ipaddress.IPv6Address("fe80::1")) == "fe80::1"
