"""The allocation rules (DESIGN.md section 3), one example at a time.

Every test drives the real `Allocator` over a `MemoryLeases` view, with requests
parsed from their wire form as the server would.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest

from ipamd.core.allocator import Allocator, SubnetPool, SubnetStats
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import Network
from ipamd.core.requests import AllocRequest, GcRequest, ReleaseRequest
from ipamd.core.view import (
    DeleteLease,
    DeleteNetwork,
    MemoryLeases,
    PutLease,
    PutNetwork,
    SetCursor,
)
from ipamd.errors import (
    AddressInUse,
    AddressNotAllocatable,
    InvalidRequest,
    NetworkExists,
    NetworkInUse,
    NetworkNotFound,
    RangeExhausted,
)

ip = ipaddress.ip_address


class Host:
    """An allocator, its lease view and a clock: what the writer holds."""

    def __init__(self, *networks: dict[str, Any]) -> None:
        self.allocator = Allocator()
        self.view = MemoryLeases()
        self.now = 1_000
        for raw in networks:
            self.allocator.create_network(Network.from_wire(raw))

    def alloc(self, container_id: str, networks: Any) -> dict[str, Lease]:
        if isinstance(networks, str):
            networks = {networks: {}}
        self.now += 1
        request = AllocRequest.from_wire({"container_id": container_id, "networks": networks})
        leases, _ = self.allocator.alloc(request, self.view, self.now)
        return leases

    def ips(self, container_id: str, networks: Any, name: str | None = None) -> list[str]:
        leases = self.alloc(container_id, networks)
        name = name or next(iter(leases))
        return [str(a) for a in leases[name].addresses]

    def ip(self, container_id: str, networks: Any) -> str:
        (address,) = self.ips(container_id, networks)
        return address

    def release(self, container_id: str, networks: Any = None) -> dict[str, list[str]]:
        params: dict[str, Any] = {"container_id": container_id}
        if networks is not None:
            params["networks"] = networks
        released, _ = self.allocator.release(ReleaseRequest.from_wire(params), self.view)
        return {name: [str(a) for a in addresses] for name, addresses in released.items()}

    def gc(self, network: str, valid: list[dict[str, str]], dry_run: bool = False) -> list[str]:
        request = GcRequest.from_wire({"network": network, "valid": valid, "dry_run": dry_run})
        stale, _ = self.allocator.gc(request, self.view)
        return sorted(str(lease.key) for lease in stale)

    def pool(self, network: str, subnet: int = 0) -> SubnetPool:
        return self.allocator.pool(network).subnets[subnet]

    def snapshot(self) -> Any:
        """Everything a failed decision must leave untouched."""
        pools = {
            name: [(list(p.free.runs()), p.cursor, p.stats()) for p in pool.subnets]
            for name, pool in self.allocator.pools.items()
        }
        return pools, dict(self.view.leases), dict(self.view.owners)


def net(name: str, *subnets: dict[str, Any] | str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "subnets": [{"subnet": s} if isinstance(s, str) else s for s in subnets],
        **extra,
    }


def ranged(cidr: str, start: str, end: str, **extra: str) -> dict[str, str]:
    return {"subnet": cidr, "range_start": start, "range_end": end, **extra}


def exhausted(range_text: str) -> Any:
    """Expect the seed's exhaustion message, naming exactly this range."""
    message = f"failed to find free IP in range: {range_text}"
    return pytest.raises(RangeExhausted, match=f"^{re.escape(message)}$")


PODMAN = net("podman", {"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"})


# -- rule 1: dynamic ----------------------------------------------------------


def test_dynamic_hands_out_in_order_skipping_network_and_gateway() -> None:
    host = Host(PODMAN)
    assert [host.ip(f"c{i}", "podman") for i in range(3)] == [
        "10.88.0.2",
        "10.88.0.3",
        "10.88.0.4",
    ]


def test_round_robin_delays_reuse_of_a_released_address() -> None:
    host = Host(PODMAN)
    assert host.ip("a", "podman") == "10.88.0.2"
    assert host.ip("b", "podman") == "10.88.0.3"
    host.release("a")
    assert host.ip("c", "podman") == "10.88.0.4"  # not .2: the cursor moved past it
    assert host.pool("podman").cursor == 4


def test_wrap_around_to_the_range_start_then_exhaustion_names_the_range() -> None:
    host = Host(net("small", {"subnet": "10.0.0.0/29", "gateway": "10.0.0.1"}))
    handed = [host.ip(f"c{i}", "small") for i in range(5)]
    assert handed == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    host.release("c1")
    host.release("c3")
    assert host.ip("d1", "small") == "10.0.0.3"  # wrapped once, first free from the start
    assert host.ip("d2", "small") == "10.0.0.5"  # then on from the cursor
    with pytest.raises(RangeExhausted) as caught:
        host.alloc("d3", "small")
    assert caught.value.message == "failed to find free IP in range: 10.0.0.1 - 10.0.0.6"
    assert (caught.value.code, caught.value.name) == (7, "range_exhausted")


def test_ipv6_wrap_around_uses_the_last_address_and_names_the_range() -> None:
    host = Host(net("six", {"subnet": "fd00::/125", "gateway": "fd00::1"}))  # no broadcast
    handed = [host.ip(f"c{i}", "six") for i in range(6)]
    assert handed == ["fd00::2", "fd00::3", "fd00::4", "fd00::5", "fd00::6", "fd00::7"]
    host.release("c2")
    host.release("c0")
    assert host.ip("d1", "six") == "fd00::2"  # wrapped: the lowest free from the range start
    assert host.ip("d2", "six") == "fd00::4"
    with exhausted("fd00::1 - fd00::7"):
        host.alloc("d3", "six")


def test_the_cursor_address_itself_comes_last() -> None:
    host = Host(net("small", "10.0.0.0/29"))  # hosts .1 - .6
    for i in range(6):
        host.alloc(f"c{i}", "small")
    host.release("c2")  # .3
    host.release("c5")  # .6, the cursor
    assert host.ip("x", "small") == "10.0.0.3"  # after the cursor (.6): wrap to .1.., first is .3
    assert host.ip("y", "small") == "10.0.0.6"


def test_exclusions_are_skipped() -> None:
    excluded = ["10.0.0.3", "10.0.0.4/31", "10.0.0.7-10.0.0.9"]
    host = Host(net("ex", {"subnet": "10.0.0.0/24", "gateway": "10.0.0.1", "exclude": excluded}))
    assert [host.ip(f"c{i}", "ex") for i in range(3)] == ["10.0.0.2", "10.0.0.6", "10.0.0.10"]


def test_lease_range_bounds_dynamic_allocation() -> None:
    host = Host(net("r", ranged("10.0.0.0/24", "10.0.0.100", "10.0.0.102")))
    assert [host.ip(f"c{i}", "r") for i in range(3)] == ["10.0.0.100", "10.0.0.101", "10.0.0.102"]
    with exhausted("10.0.0.100 - 10.0.0.102"):
        host.alloc("c3", "r")


def test_seed_edge_lease_range_ending_on_the_broadcast() -> None:
    host = Host(net("b", ranged("10.0.0.0/24", "10.0.0.253", "10.0.0.255")))
    assert [host.ip(f"c{i}", "b") for i in range(2)] == ["10.0.0.253", "10.0.0.254"]
    with exhausted("10.0.0.253 - 10.0.0.254"):
        host.alloc("c2", "b")  # the broadcast is never handed out


def test_seed_edge_range_starting_on_the_network_address() -> None:
    host = Host(net("n", {"subnet": "10.0.0.0/24", "range_start": "10.0.0.0"}))
    assert host.ip("c", "n") == "10.0.0.1"
    host6 = Host(net("n6", {"subnet": "fd00::/64", "range_start": "fd00::"}))
    assert host6.ip("c", "n6") == "fd00::1"


def test_seed_edge_gateway_at_the_range_start() -> None:
    host = Host(net("g", ranged("10.0.0.0/24", "10.0.0.10", "10.0.0.11", gateway="10.0.0.10")))
    assert host.ip("a", "g") == "10.0.0.11"
    with exhausted("10.0.0.10 - 10.0.0.11"):
        host.alloc("b", "g")


def test_seed_edge_full_range_and_reuse_after_release() -> None:
    host = Host(net("f", {"subnet": "10.0.0.0/30"}))  # .1 and .2
    assert [host.ip("a", "f"), host.ip("b", "f")] == ["10.0.0.1", "10.0.0.2"]
    for _ in range(2):  # failing twice changes nothing
        with exhausted("10.0.0.1 - 10.0.0.2"):
            host.alloc("c", "f")
    host.release("a")
    assert host.ip("c", "f") == "10.0.0.1"


@pytest.mark.parametrize(
    ("cidr", "expected", "text"),
    [
        ("10.0.0.0/31", ["10.0.0.0", "10.0.0.1"], "10.0.0.0 - 10.0.0.1"),
        ("10.0.0.9/32", ["10.0.0.9"], "10.0.0.9 - 10.0.0.9"),
        ("fd00::/127", ["fd00::", "fd00::1"], "fd00:: - fd00::1"),
        ("fd00::9/128", ["fd00::9"], "fd00::9 - fd00::9"),
    ],
)
def test_point_to_point_prefixes_use_every_address(
    cidr: str, expected: list[str], text: str
) -> None:
    host = Host(net("p2p", cidr))
    assert [host.ip(f"c{i}", "p2p") for i in range(len(expected))] == expected
    with exhausted(text):
        host.alloc("late", "p2p")


def test_point_to_point_gateway_is_still_skipped() -> None:
    host = Host(net("p2p", {"subnet": "10.0.0.0/31", "gateway": "10.0.0.0"}))
    assert host.ip("a", "p2p") == "10.0.0.1"
    with pytest.raises(RangeExhausted):
        host.alloc("b", "p2p")
    with pytest.raises(AddressNotAllocatable, match="gateway"):
        host.alloc("b", {"p2p": {"static_ips": ["10.0.0.0"]}})


def test_ipv6_skips_only_the_network_address() -> None:
    top = "fd00::ffff:ffff:ffff:ffff"
    host = Host(net("v6", {"subnet": "fd00::/64", "range_start": "fd00::ffff:ffff:ffff:fffe"}))
    assert [host.ip("a", "v6"), host.ip("b", "v6")] == ["fd00::ffff:ffff:ffff:fffe", top]
    with exhausted(f"fd00::ffff:ffff:ffff:fffe - {top}"):
        host.alloc("c", "v6")
    fresh = Host(net("v6", {"subnet": "fd00::/64", "gateway": "fd00::1"}))
    assert fresh.ip("a", "v6") == "fd00::2"


def test_a_64_is_one_run_and_stays_small() -> None:
    host = Host(net("v6", "fd00::/64"))
    for i in range(50):
        host.alloc(f"c{i}", "v6")
    pool = host.pool("v6")
    assert list(pool.free.runs()) == [(51, 2**64 - 1)]
    assert pool.stats() == SubnetStats(2**64, 2**64 - 1, 50, 2**64 - 1 - 50)


# -- rule 2: static -----------------------------------------------------------


STATIC = net(
    "st",
    {
        "subnet": "10.0.0.0/24",
        "gateway": "10.0.0.1",
        "range_start": "10.0.0.10",
        "range_end": "10.0.0.20",
        "exclude": ["10.0.0.30-10.0.0.39"],
    },
    {"subnet": "fd00::/120", "gateway": "fd00::1"},
)


def static(*addresses: str) -> dict[str, Any]:
    return {"st": {"static_ips": list(addresses)}}


def test_static_inside_and_outside_the_lease_range() -> None:
    host = Host(STATIC)
    assert host.ips("a", static("10.0.0.15")) == ["10.0.0.15", "fd00::2"]
    assert host.ips("b", static("10.0.0.200", "fd00::ff")) == ["10.0.0.200", "fd00::ff"]
    # A static address does not move the cursor; dynamic skips what statics hold.
    assert host.pool("st").cursor is None
    assert host.ips("c", "st") == ["10.0.0.10", "fd00::3"]
    host.alloc("d", static("10.0.0.11"))
    assert host.ips("e", "st") == ["10.0.0.12", "fd00::5"]


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.0.0.0", "requested ip address 10.0.0.0 is the network address of subnet 10.0.0.0/24"),
        ("10.0.0.255", "requested ip address 10.0.0.255 is the broadcast address of subnet"),
        ("10.0.0.1", "requested ip address 10.0.0.1 is the gateway of subnet 10.0.0.0/24"),
        ("10.0.0.33", "requested ip address 10.0.0.33 is excluded in subnet 10.0.0.0/24"),
        ("fd00::", "requested ip address fd00:: is the network address of subnet fd00::/120"),
        ("fd00::1", "requested ip address fd00::1 is the gateway of subnet fd00::/120"),
        ("10.0.1.1", "requested ip address 10.0.1.1 is not in any subnet of network st"),
        ("fd01::1", "requested ip address fd01::1 is not in any subnet of network st"),
    ],
)
def test_static_not_allocatable(address: str, message: str) -> None:
    host = Host(STATIC)
    before = host.snapshot()
    with pytest.raises(AddressNotAllocatable) as caught:
        host.alloc("a", static(address))
    assert caught.value.message.startswith(message)
    assert (caught.value.code, caught.value.name) == (6, "address_not_allocatable")
    assert host.snapshot() == before


def test_static_already_held_names_the_holder_with_the_seeds_message() -> None:
    host = Host(STATIC)
    host.alloc("holder", static("10.0.0.15"))
    before = host.snapshot()
    with pytest.raises(AddressInUse) as caught:
        host.alloc("late", static("10.0.0.15"))
    assert caught.value.message == (
        "requested ip address 10.0.0.15 is already allocated to container ID holder"
    )
    assert (caught.value.code, caught.value.name) == (5, "address_in_use")
    assert host.snapshot() == before
    # ... and the same for an address handed out dynamically.
    host.alloc("dyn", "st")
    with pytest.raises(
        AddressInUse, match=r"10\.0\.0\.10 is already allocated to container ID dyn$"
    ):
        host.alloc("late", static("10.0.0.10"))


def test_at_most_one_static_per_subnet() -> None:
    host = Host(STATIC)
    with pytest.raises(
        InvalidRequest, match=r"10\.0\.0\.15 and 10\.0\.0\.16 are in the same subnet"
    ):
        host.alloc("a", static("10.0.0.15", "10.0.0.16"))
    assert host.ips("a", static("10.0.0.15", "fd00::10")) == ["10.0.0.15", "fd00::10"]


# -- one lease per key, one address per subnet ---------------------------------


def test_one_lease_per_key_with_one_address_per_subnet() -> None:
    host = Host(STATIC)
    eth0 = host.alloc("c", {"st": {"ifname": "eth0"}})["st"]
    eth1 = host.alloc("c", {"st": {"ifname": "eth1"}})["st"]
    plain = host.alloc("c", "st")["st"]
    assert eth0.key == LeaseKey("st", "c", "eth0")
    assert plain.key == LeaseKey("st", "c", "")
    assert [len(lease.addresses) for lease in (eth0, eth1, plain)] == [2, 2, 2]
    assert [a.version for a in eth0.addresses] == [4, 6]  # subnet order
    assert len({eth0.addresses, eth1.addresses, plain.addresses}) == 3
    assert len(host.view.leases) == 3


def test_attributes_are_kept_on_the_lease() -> None:
    host = Host(PODMAN)
    lease = host.alloc("c", {"podman": {"attributes": {"pod": "web"}}})["podman"]
    assert lease.attributes == {"pod": "web"}
    assert host.view.lease(lease.key) == lease


# -- rule 3: all or nothing -----------------------------------------------------


def test_multi_network_request_commits_every_network() -> None:
    host = Host(PODMAN, net("other", "10.89.0.0/24"))
    leases = host.alloc("c", {"podman": {}, "other": {"ifname": "eth1"}})
    assert {name: [str(a) for a in lease.addresses] for name, lease in leases.items()} == {
        "podman": ["10.88.0.2"],
        "other": ["10.89.0.1"],
    }
    assert set(host.view.leases) == {LeaseKey("podman", "c"), LeaseKey("other", "c", "eth1")}


@pytest.mark.parametrize(
    ("networks", "error"),
    [
        ({"podman": {}, "full": {}}, RangeExhausted),
        ({"podman": {}, "nope": {}}, NetworkNotFound),
        ({"podman": {}, "full": {"static_ips": ["10.90.0.1"]}}, AddressInUse),
        ({"podman": {"static_ips": ["10.88.0.50"]}, "full": {}}, RangeExhausted),
        ({"podman": {}, "held": {"static_ips": ["10.91.0.9"]}}, InvalidRequest),
    ],
)
def test_multi_network_request_commits_nothing_on_failure(
    networks: dict[str, Any], error: type[Exception]
) -> None:
    host = Host(PODMAN, net("full", "10.90.0.0/30"), net("held", "10.91.0.0/24"))
    host.alloc("f1", "full")
    host.alloc("f2", "full")
    host.alloc("c", "held")  # so a different static for c on held is an error
    host.alloc("x", "podman")  # move the podman cursor off None
    before = host.snapshot()
    with pytest.raises(error):
        host.alloc("c", networks)
    assert host.snapshot() == before
    assert host.ip("y", "podman") == "10.88.0.3"  # the cursor was restored too


def test_dual_stack_rolls_back_the_first_subnet_when_the_second_is_full() -> None:
    host = Host(net("dual", "10.0.0.0/24", {"subnet": "fd00::/126", "range_end": "fd00::1"}))
    assert host.ips("a", "dual") == ["10.0.0.1", "fd00::1"]
    before = host.snapshot()
    with exhausted("fd00::1 - fd00::1"):
        host.alloc("b", "dual")
    assert host.snapshot() == before
    assert host.pool("dual", 0).cursor == 1


# -- rule 4: idempotent alloc ----------------------------------------------------


def test_alloc_again_returns_the_same_lease_unchanged() -> None:
    host = Host(STATIC)
    first = host.alloc("c", {"st": {"ifname": "eth0", "attributes": {"pod": "p"}}})["st"]
    before = host.snapshot()
    request = AllocRequest.from_wire({"container_id": "c", "networks": {"st": {"ifname": "eth0"}}})
    again, changes = host.allocator.alloc(request, host.view, host.now + 60)
    assert again["st"] is first  # same addresses, same created time, same attributes
    assert changes == []
    assert host.snapshot() == before
    # Asking again for the static addresses it holds is still the same lease.
    addresses = [str(a) for a in first.addresses]
    assert host.alloc("c", {"st": {"ifname": "eth0", "static_ips": addresses}})["st"] is first


def test_alloc_again_with_another_static_address_is_an_error() -> None:
    host = Host(STATIC)
    host.alloc("c", static("10.0.0.15"))
    before = host.snapshot()
    with pytest.raises(InvalidRequest) as caught:
        host.alloc("c", static("10.0.0.16"))
    assert "10.0.0.15" in caught.value.message
    assert "10.0.0.16" in caught.value.message
    assert host.snapshot() == before


# -- rule 5: release ----------------------------------------------------------------


def test_release_is_idempotent_and_says_what_it_freed() -> None:
    host = Host(PODMAN)
    host.alloc("c", "podman")
    assert host.release("c") == {"podman": ["10.88.0.2"]}
    assert host.release("c") == {}
    assert host.release("never-seen") == {}
    assert host.release("c", {"podman": {}}) == {}
    assert host.pool("podman").stats().used == 0
    assert host.view.owner("podman", ip("10.88.0.2")) is None


def test_release_by_network_and_ifname() -> None:
    host = Host(PODMAN, net("other", "10.89.0.0/24"))
    for ifname in ("eth0", "eth1"):
        host.alloc("c", {"podman": {"ifname": ifname}, "other": {"ifname": ifname}})
    assert host.release("c", {"podman": {"ifname": "eth1"}}) == {"podman": ["10.88.0.3"]}
    assert host.release("c", {"podman": {"ifname": "eth1"}}) == {}
    assert host.release("c", {"other": {}}) == {"other": ["10.89.0.1", "10.89.0.2"]}
    assert set(host.view.leases) == {LeaseKey("podman", "c", "eth0")}
    with pytest.raises(NetworkNotFound, match="'nope'"):
        host.release("c", {"nope": {}})
    assert host.release("c") == {"podman": ["10.88.0.2"]}


def test_release_frees_only_what_the_key_owns() -> None:
    host = Host(PODMAN)
    owner = host.alloc("owner", "podman")["podman"]
    # A stale lease claiming the same address (what a corrupt store would hold).
    stale = Lease(LeaseKey("podman", "stale"), owner.addresses, 1)
    host.view.leases[stale.key] = stale
    host.release("stale")
    assert host.view.lease(stale.key) is None
    assert host.view.owner("podman", owner.addresses[0]) == owner.key
    assert not host.pool("podman").free.is_free(2)  # still taken: never hand it out twice
    assert host.ip("next", "podman") == "10.88.0.3"


def test_release_returns_delete_changes_and_alloc_returns_put_and_cursor() -> None:
    host = Host(PODMAN)
    request = AllocRequest.from_wire({"container_id": "c", "networks": {"podman": {}}})
    leases, changes = host.allocator.alloc(request, host.view, 5)
    lease = leases["podman"]
    assert changes == [
        SetCursor("podman", 0, ip("10.88.0.2"), None),
        PutLease(lease),
    ]
    static_request = AllocRequest.from_wire(
        {"container_id": "s", "networks": {"podman": {"static_ips": ["10.88.9.9"]}}}
    )
    _, changes = host.allocator.alloc(static_request, host.view, 5)
    assert [type(c) for c in changes] == [PutLease]  # a static address moves no cursor
    _, changes = host.allocator.release(ReleaseRequest.from_wire({"container_id": "c"}), host.view)
    assert [type(c) for c in changes] == [DeleteLease]
    assert isinstance(changes[0], DeleteLease)
    assert changes[0].lease == lease


# -- gc -----------------------------------------------------------------------------


def test_gc_releases_every_key_not_in_the_valid_set() -> None:
    host = Host(PODMAN, net("other", "10.89.0.0/24"))
    host.alloc("keep", {"podman": {"ifname": "eth0"}, "other": {}})
    host.alloc("keep", {"podman": {"ifname": "eth1"}})
    host.alloc("half", {"podman": {"ifname": "eth0"}})
    host.alloc("half", {"podman": {"ifname": "eth1"}})
    host.alloc("gone", {"podman": {}, "other": {}})
    valid = [{"container_id": "keep"}, {"container_id": "half", "ifname": "eth0"}]
    before = host.snapshot()
    expected = ["gone on network podman", "half (eth1) on network podman"]
    assert host.gc("podman", valid, dry_run=True) == expected
    assert host.snapshot() == before
    assert host.gc("podman", valid) == expected
    assert sorted(str(k) for k in host.view.leases) == [
        "gone on network other",  # gc is per network
        "half (eth0) on network podman",
        "keep (eth0) on network podman",
        "keep (eth1) on network podman",
        "keep on network other",
    ]
    assert host.pool("podman").stats().used == 3
    assert host.gc("podman", valid) == []
    assert host.gc("other", []) == ["gone on network other", "keep on network other"]
    with pytest.raises(NetworkNotFound):
        host.gc("nope", [])


# -- lookups --------------------------------------------------------------------------


def test_lookups_by_key_and_by_address() -> None:
    host = Host(STATIC, PODMAN)
    lease = host.alloc("c", {"st": {"ifname": "eth0"}, "podman": {}})["st"]
    assert host.view.lease(LeaseKey("st", "c", "eth0")) == lease
    assert host.view.lease(LeaseKey("st", "c")) is None
    for address in lease.addresses:
        assert host.view.owner("st", address) == lease.key
        assert host.view.owner("podman", address) is None  # addresses are per network
    assert sorted(lease.key.network for lease in host.view.leases_of("c")) == ["podman", "st"]
    assert [lease.key for lease in host.view.leases_in("st")] == [lease.key]
    host.release("c", {"st": {}})
    assert host.view.lease(lease.key) is None
    assert all(host.view.owner("st", a) is None for a in lease.addresses)


# -- driver semantics ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [net("mac", "10.0.0.0/24", driver="macvlan"), net("mac", driver="macvlan")]
)
def test_non_host_local_allocates_nothing(raw: dict[str, Any]) -> None:
    host = Host(raw)
    request = AllocRequest.from_wire({"container_id": "c", "networks": {"mac": {}}})
    leases, changes = host.allocator.alloc(request, host.view, 5)
    assert leases["mac"].addresses == ()
    assert changes == []
    assert host.view.leases == {}
    assert host.release("c") == {}


# -- networks --------------------------------------------------------------------------


def test_create_is_ensure_and_a_different_definition_fails() -> None:
    allocator = Allocator()
    network = Network.from_wire(PODMAN)
    assert allocator.create_network(network) == (network, [PutNetwork(network)])
    assert allocator.create_network(Network.from_wire(PODMAN)) == (network, [])
    with pytest.raises(NetworkExists, match="podman"):
        allocator.create_network(Network.from_wire(net("podman", "10.88.0.0/16")))
    with pytest.raises(NetworkNotFound, match="'nope'"):
        allocator.pool("nope")


@pytest.mark.parametrize(
    ("taken", "wanted"),
    [
        ("10.88.0.0/16", "10.88.0.0/16"),
        ("10.88.0.0/16", "10.88.7.0/24"),  # inside
        ("10.88.7.0/24", "10.88.0.0/16"),  # around
        ("fd00::/48", "fd00:0:0:1::/64"),
    ],
)
def test_a_subnet_overlapping_another_networks_is_refused(taken: str, wanted: str) -> None:
    allocator = Allocator()
    allocator.create_network(Network.from_wire(net("a", taken)))
    with pytest.raises(InvalidRequest) as info:
        allocator.create_network(Network.from_wire(net("b", "10.99.0.0/16", wanted)))
    assert str(info.value) == f"subnet {wanted} of network b overlaps subnet {taken} of network a"
    assert set(allocator.pools) == {"a"}  # and nothing else changed
    # Neighbours, and the other family, are fine.
    allocator.create_network(Network.from_wire(net("c", "10.89.0.0/16", "fd01::/64")))


def test_a_host_local_network_without_subnets_is_refused_at_create() -> None:
    allocator = Allocator()
    for raw in (net("empty"), net("empty", driver="host-local"), net("empty", driver="")):
        with pytest.raises(InvalidRequest, match="network empty has driver host-local but no"):
            allocator.create_network(Network.from_wire(raw))
    assert allocator.pools == {}
    allocator.create_network(Network.from_wire(net("empty", driver="macvlan")))


def test_delete_network_in_use_needs_force() -> None:
    host = Host(PODMAN)
    lease = host.alloc("c", "podman")["podman"]
    with pytest.raises(NetworkInUse, match="1 lease"):
        host.allocator.delete_network("podman", False, host.view)
    count, changes = host.allocator.delete_network("podman", True, host.view)
    assert count == 1
    assert [type(c) for c in changes] == [DeleteLease, DeleteNetwork]
    assert isinstance(changes[0], DeleteLease)
    assert changes[0].lease == lease
    assert changes[1] == DeleteNetwork(Network.from_wire(PODMAN))
    assert host.view.leases == {}
    assert "podman" not in host.allocator.pools
    with pytest.raises(NetworkNotFound):
        host.alloc("c", "podman")


# -- stats and rebuild -------------------------------------------------------------------


def test_stats_count_the_lease_range_and_statics_outside_it() -> None:
    host = Host(STATIC)
    pool = host.pool("st")
    assert pool.stats() == SubnetStats(size=256, allocatable=11, used=0, free=11)
    host.alloc("a", "st")
    host.alloc("b", static("10.0.0.200"))  # outside the lease range
    assert pool.stats() == SubnetStats(size=256, allocatable=11, used=2, free=10)
    assert pool.stats().utilisation == pytest.approx(1 / 11)
    assert SubnetStats(1, 0, 0, 0).utilisation == 1.0


def test_a_pool_rebuilt_from_leases_and_cursor_equals_the_live_one() -> None:
    host = Host(STATIC)
    for i in range(8):
        host.alloc(f"c{i}", "st")
    host.alloc("s", static("10.0.0.99"))
    for i in (1, 4, 6):
        host.release(f"c{i}")
    live = host.pool("st")
    used = [live.subnet.offset(lease.addresses[0]) for lease in host.view.leases.values()]
    rebuilt = SubnetPool(live.subnet, used=used, cursor=live.cursor)
    assert rebuilt.free == live.free
    assert rebuilt.stats() == live.stats()
    assert rebuilt.next_dynamic() == live.next_dynamic() == 18
