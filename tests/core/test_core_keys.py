"""The key layout decodes as it encodes: every part read back out of a key is the part put in."""

from __future__ import annotations

import ipaddress

from ipamd.core import keys
from ipamd.core.lease import Lease, LeaseKey


def test_a_lease_key_gives_back_its_network_and_ifname() -> None:
    key = LeaseKey("n-1.x", "C_9", "é€😀")
    raw = keys.lease_key(key)
    assert keys.network_of_lease_key(raw) == "n-1.x"
    assert keys.attachment_ifname(keys.attachments_prefix("C_9", "n-1.x"), raw) == "é€😀"
    assert keys.LEASE <= raw < keys.LEASES_END


def test_a_reverse_key_gives_back_its_network_and_address() -> None:
    subnet = ipaddress.ip_network("fd00::/64")
    addresses = [subnet.network_address + 1, subnet.network_address + 2**40]
    raw_keys = [keys.reverse_key("n6", address) for address in addresses]
    assert {keys.network_of_reverse_key(raw) for raw in raw_keys} == {"n6"}
    assert keys.reverse_key_offsets("n6", int(subnet.network_address), raw_keys) == [1, 2**40]
    v4 = keys.reverse_key("n4", ipaddress.ip_address("10.0.0.7"))
    assert keys.reverse_key_offsets("n4", int(ipaddress.ip_address("10.0.0.0")), [v4]) == [7]


def test_a_scan_after_a_key_skips_exactly_that_key() -> None:
    key = keys.reverse_key("n", ipaddress.ip_address("10.0.0.7"))
    following = keys.reverse_key("n", ipaddress.ip_address("10.0.0.8"))
    assert key < keys.successor(key) <= following


def test_schema_1_lease_values_carry_no_boot() -> None:
    lease = Lease(LeaseKey("n", "c", "eth0"), (ipaddress.ip_address("10.0.0.7"),), 1, {}, "b1")
    assert keys.has_boot(keys.lease_value(lease))
    assert not keys.has_boot(keys.pack({"ips": ["10.0.0.7"], "created": 1}))
    assert keys.decode_schema(keys.schema_value()) == keys.SCHEMA_VERSION
