"""The block arithmetic (pure): counts, candidates, and the network model's cluster fields."""

from __future__ import annotations

import ipaddress

import pytest

from ipamd.cluster.blocks import BlockSpace
from ipamd.core.network import Network
from ipamd.errors import InvalidRequest


def cluster_network(**subnet: object) -> Network:
    return Network.from_wire({"name": "c", "scope": "cluster", "subnets": [subnet]})


def test_default_block_prefix_is_filled_in_so_an_identical_create_compares_equal() -> None:
    given = cluster_network(subnet="10.1.0.0/16")
    again = cluster_network(subnet="10.1.0.0/16", block_prefix=26)
    assert given == again
    assert given.to_wire() == {
        "name": "c",
        "driver": "host-local",
        "scope": "cluster",
        "subnets": [{"subnet": "10.1.0.0/16", "block_prefix": 26}],
    }
    v6 = cluster_network(subnet="fd00::/64")
    assert v6.subnets[0].block_prefix == 122
    # A subnet smaller than the default block is one block.
    assert cluster_network(subnet="10.2.0.0/28").subnets[0].block_prefix == 28


def test_local_networks_read_as_before_and_take_no_block_prefix() -> None:
    local = Network.from_wire({"name": "l", "subnets": [{"subnet": "10.3.0.0/24"}]})
    assert "scope" not in local.to_wire()
    assert local.scope == "local"
    with pytest.raises(InvalidRequest, match="only cluster networks"):
        Network.from_wire({"name": "l", "subnets": [{"subnet": "10.3.0.0/24", "block_prefix": 26}]})
    with pytest.raises(InvalidRequest, match="scope 'global'"):
        Network.from_wire({"name": "l", "scope": "global", "subnets": []})


@pytest.mark.parametrize(
    ("subnet", "prefix"), [("10.4.0.0/24", 23), ("10.4.0.0/24", 33), ("fd00::/64", 64 + 47)]
)
def test_a_block_prefix_that_does_not_fit_is_refused_naming_it(subnet: str, prefix: int) -> None:
    with pytest.raises(InvalidRequest, match=f"block_prefix {prefix} does not fit"):
        cluster_network(subnet=subnet, block_prefix=prefix)


def test_counts_skip_network_broadcast_gateway_and_exclusions() -> None:
    network = cluster_network(
        subnet="10.5.0.0/24", gateway="10.5.0.1", exclude=["10.5.0.64-10.5.0.67"], block_prefix=26
    )
    space = BlockSpace(network.subnets[0])
    assert (space.count, space.block_size) == (4, 64)
    # Block 0: minus the network address and the gateway; block 1: minus 4 excluded;
    # block 3: minus the broadcast.
    assert [space.usable(i) for i in range(4)] == [62, 60, 64, 63]
    assert space.cidr(2) == ipaddress.ip_network("10.5.0.128/26")
    assert space.index_of(ipaddress.ip_address("10.5.0.200")) == 3
    assert space.index_of_cidr(ipaddress.ip_network("10.5.0.64/26")) == 1
    assert space.index_of_cidr(ipaddress.ip_network("10.5.0.64/27")) is None


def test_candidates_cover_the_lease_range_once_from_a_per_host_start() -> None:
    network = cluster_network(
        subnet="10.6.0.0/24", range_start="10.6.0.70", range_end="10.6.0.250", block_prefix=27
    )
    space = BlockSpace(network.subnets[0])
    # The lease range touches blocks 2..7 only.
    assert sorted(space.candidates("h1", "c", set())) == [2, 3, 4, 5, 6, 7]
    assert sorted(space.candidates("h1", "c", {3, 5})) == [2, 4, 6, 7]
    starts = {next(space.candidates(f"host{i}", "c", set())) for i in range(20)}
    assert len(starts) > 1  # hosts do not all race for the same first block
    assert list(space.candidates("h1", "c", {2, 3, 4, 5, 6, 7})) == []


def test_an_ipv6_64_cut_into_122s_is_arithmetic_not_a_walk() -> None:
    space = BlockSpace(cluster_network(subnet="fd00:1::/64").subnets[0])
    assert space.count == 2**58
    first = next(space.candidates("h1", "c", set()))
    assert 0 <= first < 2**58
    assert space.dynamic(first) == (63 if first == 0 else 64)
