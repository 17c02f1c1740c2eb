"""Every method of DESIGN.md section 4 through the real daemon, checked on the wire.

The daemon is shared by the module; each test works on its own network (named
after the test) and its own subnet, so tests do not see each other's leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ipamd
from tests.daemon.e2e import call_error, create_network, next_subnet_prefix
from tests.support import Daemon, RawClient

Cid = Callable[[str], str]


def alloc(client: RawClient, container_id: str, networks: dict[str, Any]) -> dict[str, Any]:
    return client.call("alloc", {"container_id": container_id, "networks": networks})  # type: ignore[no-any-return]


def address_of(result: dict[str, Any], network: str, index: int = 0) -> str:
    """The bare address ("10.1.2.3") of an alloc/get result's ip on `network`."""
    return str(result["networks"][network]["ips"][index]["address"].split("/")[0])


# -- ping, status, stats -------------------------------------------------------------


def test_ping_answers_version_and_uptime(client: RawClient) -> None:
    result = client.call("ping")

    assert set(result) == {"version", "uptime_s"}
    assert result["version"] == ipamd.__version__
    assert isinstance(result["uptime_s"], int | float) and result["uptime_s"] >= 0


def test_status_reports_daemon_facts(
    client: RawClient, shared_daemon: Daemon, net_name: str, cid: Cid
) -> None:
    before = client.call("status")
    create_network(client, net_name)
    alloc(client, cid("c1"), {net_name: {}})

    after = client.call("status")

    expected = {
        "version",
        "state_dir",
        "networks",
        "leases",
        "batches",
        "mean_batch_size",
        "connections",
    }
    assert expected <= set(after)
    assert after["version"] == ipamd.__version__
    assert after["state_dir"] == str(shared_daemon.state_dir)
    assert after["networks"] == before["networks"] + 1
    assert after["leases"] == before["leases"] + 1
    assert after["batches"] >= before["batches"] + 2
    assert after["mean_batch_size"] >= 1
    assert after["connections"] >= 1
    assert isinstance(after["uptime_s"], int | float)


def test_stats_per_network_and_subnet(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)
    for i in range(3):
        alloc(client, cid(f"c{i}"), {net_name: {}})

    stats = client.call("stats")

    entry = next(n for n in stats["networks"] if n["name"] == net_name)
    assert entry["leases"] == 3
    (subnet,) = entry["subnets"]
    assert subnet["size"] == 256
    assert subnet["allocatable"] == 253
    assert subnet["used"] == 3
    assert subnet["free"] == 250
    assert abs(subnet["utilisation"] - 3 / 253) < 1e-5


# -- networks --------------------------------------------------------------------------


def test_network_create_returns_the_network(client: RawClient, net_name: str, cid: Cid) -> None:
    prefix = next_subnet_prefix()
    params = {
        "name": net_name,
        "subnets": [
            {
                "subnet": f"{prefix}.0/24",
                "gateway": f"{prefix}.1",
                "range_start": f"{prefix}.10",
                "range_end": f"{prefix}.20",
                "exclude": [f"{prefix}.15"],
            }
        ],
    }

    result = client.call("network.create", params)

    assert result == {"driver": "host-local", **params}


def test_network_create_identical_again_succeeds(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    prefix = next_subnet_prefix()
    first = create_network(client, net_name, prefix)

    # The same definition, spelled with the default driver written out.
    again = client.call(
        "network.create",
        {
            "name": net_name,
            "driver": "host-local",
            "subnets": [{"subnet": f"{prefix}.0/24", "gateway": f"{prefix}.1"}],
        },
    )

    assert again == first


def test_network_create_different_definition_is_network_exists(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix)

    error = call_error(
        client,
        "network.create",
        {"name": net_name, "subnets": [{"subnet": f"{prefix}.0/25"}]},
        code=4,
    )

    assert net_name in error.message
    # The stored definition is untouched.
    assert client.call("network.get", {"name": net_name})["subnets"][0]["subnet"] == (
        f"{prefix}.0/24"
    )


def test_network_get_counts_per_subnet(client: RawClient, net_name: str, cid: Cid) -> None:
    v4 = next_subnet_prefix()
    client.call(
        "network.create",
        {
            "name": net_name,
            "subnets": [
                {
                    "subnet": f"{v4}.0/24",
                    "gateway": f"{v4}.1",
                    "range_start": f"{v4}.10",
                    "range_end": f"{v4}.20",
                    "exclude": [f"{v4}.15"],
                },
                {"subnet": "fd00:e2e::/64", "gateway": "fd00:e2e::1"},
            ],
        },
    )
    alloc(client, cid("c1"), {net_name: {}})
    alloc(client, cid("c2"), {net_name: {"static_ips": [f"{v4}.100"]}})  # outside the range

    result = client.call("network.get", {"name": net_name})

    assert result["name"] == net_name
    assert result["leases"] == 2
    v4_stats, v6_stats = result["subnets"]
    assert v4_stats["subnet"] == f"{v4}.0/24"
    assert v4_stats["size"] == 256
    assert v4_stats["allocatable"] == 10  # .10-.20 minus .15
    assert v4_stats["used"] == 2
    assert v4_stats["free"] == 9  # the static .100 is outside the lease range
    # 2**64 does not fit msgpack's integers: such counts travel as decimal strings.
    assert v6_stats["size"] == str(2**64)
    assert v6_stats["allocatable"] == str(2**64 - 2)
    assert v6_stats["used"] == 2
    assert v6_stats["free"] == str(2**64 - 4)


def test_network_list(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)
    alloc(client, cid("c1"), {net_name: {}})

    networks = client.call("network.list")

    assert isinstance(networks, list)
    entry = next(n for n in networks if n["name"] == net_name)
    assert set(entry) == {"name", "driver", "subnets", "leases"}
    assert entry["driver"] == "host-local"
    assert entry["leases"] == 1
    names = [n["name"] for n in networks]
    assert names == sorted(names)


def test_network_delete_in_use_then_force(client: RawClient, net_name: str, cid: Cid) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix)
    first = alloc(client, cid("c1"), {net_name: {}})
    alloc(client, cid("c2"), {net_name: {}})

    error = call_error(client, "network.delete", {"name": net_name}, code=9)
    assert net_name in error.message
    assert client.call("network.get", {"name": net_name})["leases"] == 2

    result = client.call("network.delete", {"name": net_name, "force": True})

    assert result == {"name": net_name, "released": 2}
    call_error(client, "network.get", {"name": net_name}, code=3)
    call_error(client, "get", {"container_id": cid("c1"), "networks": [net_name]}, code=8)
    # Re-created, the network starts empty: the first address is free again.
    create_network(client, net_name, prefix)
    assert address_of(alloc(client, cid("c3"), {net_name: {}}), net_name) == address_of(
        first, net_name
    )


def test_network_delete_empty_needs_no_force(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)

    assert client.call("network.delete", {"name": net_name}) == {"name": net_name, "released": 0}
    call_error(client, "network.delete", {"name": net_name}, code=3)


# -- alloc -----------------------------------------------------------------------------


def test_alloc_dynamic_hands_out_addresses_in_order(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix)

    first = alloc(client, cid("c1"), {net_name: {}})
    second = alloc(client, cid("c2"), {net_name: {}})

    assert first == {
        "container_id": cid("c1"),
        "networks": {
            net_name: {
                "ifname": "",
                "ips": [
                    {
                        "address": f"{prefix}.2/24",
                        "gateway": f"{prefix}.1",
                        "subnet": f"{prefix}.0/24",
                    }
                ],
            }
        },
    }
    assert address_of(second, net_name) == f"{prefix}.3"


def test_alloc_static_may_lie_outside_the_range(client: RawClient, net_name: str, cid: Cid) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix, range_start=f"{prefix}.10", range_end=f"{prefix}.20")

    result = alloc(client, cid("c1"), {net_name: {"static_ips": [f"{prefix}.200"]}})

    assert address_of(result, net_name) == f"{prefix}.200"
    owner = client.call("lease.owner", {"network": net_name, "ip": f"{prefix}.200"})
    assert owner["container_id"] == cid("c1")
    # Dynamic allocation still starts at the range.
    assert address_of(alloc(client, cid("c2"), {net_name: {}}), net_name) == f"{prefix}.10"


def test_alloc_dual_stack_gets_one_address_per_subnet(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    v4 = next_subnet_prefix()
    client.call(
        "network.create",
        {
            "name": net_name,
            "subnets": [
                {"subnet": f"{v4}.0/24", "gateway": f"{v4}.1"},
                {"subnet": "fd00:d5::/64", "gateway": "fd00:d5::1"},
            ],
        },
    )

    result = alloc(client, cid("c1"), {net_name: {"static_ips": ["fd00:d5::42"]}})

    assert result["networks"][net_name]["ips"] == [
        {"address": f"{v4}.2/24", "gateway": f"{v4}.1", "subnet": f"{v4}.0/24"},
        {"address": "fd00:d5::42/64", "gateway": "fd00:d5::1", "subnet": "fd00:d5::/64"},
    ]


def test_alloc_ifname_and_attributes(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)

    eth0 = alloc(client, cid("c1"), {net_name: {"ifname": "eth0", "attributes": {"pod": "web-1"}}})
    eth1 = alloc(client, cid("c1"), {net_name: {"ifname": "eth1"}})

    assert eth0["networks"][net_name]["ifname"] == "eth0"
    assert eth1["networks"][net_name]["ifname"] == "eth1"
    assert address_of(eth0, net_name) != address_of(eth1, net_name)
    leases = client.call("lease.list", {"network": net_name})["leases"]
    assert [(lease["ifname"], lease.get("attributes")) for lease in leases] == [
        ("eth0", {"pod": "web-1"}),
        ("eth1", None),
    ]


def test_alloc_on_a_network_ipamd_does_not_manage_allocates_nothing(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    prefix = next_subnet_prefix()
    client.call(
        "network.create",
        {"name": net_name, "driver": "macvlan-dhcp", "subnets": [{"subnet": f"{prefix}.0/24"}]},
    )

    result = alloc(client, cid("c1"), {net_name: {}})

    assert result["networks"][net_name]["ips"] == []


def test_alloc_multi_network_commits_all(client: RawClient, net_name: str, cid: Cid) -> None:
    a, b = f"{net_name[:60]}-a", f"{net_name[:60]}-b"
    create_network(client, a)
    create_network(client, b)

    result = alloc(client, cid("c1"), {a: {}, b: {"ifname": "eth1"}})

    assert set(result["networks"]) == {a, b}
    got = client.call("get", {"container_id": cid("c1"), "networks": [a, b]})
    assert got["networks"] == result["networks"]


def test_alloc_multi_network_is_all_or_nothing(client: RawClient, net_name: str, cid: Cid) -> None:
    roomy, full, missing = f"{net_name[:58]}-roomy", f"{net_name[:58]}-full", "no-such-net-e2e"
    create_network(client, roomy)
    full_prefix = next_subnet_prefix()
    create_network(client, full, full_prefix, cidr=30)  # one allocatable address: .2
    alloc(client, cid("holder"), {full: {}})
    roomy_before = client.call("network.get", {"name": roomy})

    call_error(
        client, "alloc", {"container_id": cid("c1"), "networks": {roomy: {}, full: {}}}, code=7
    )
    call_error(
        client,
        "alloc",
        {
            "container_id": cid("c1"),
            "networks": {roomy: {}, full: {"static_ips": [f"{full_prefix}.2"]}},
        },
        code=5,
    )
    call_error(
        client, "alloc", {"container_id": cid("c1"), "networks": {roomy: {}, missing: {}}}, code=3
    )

    assert client.call("network.get", {"name": roomy}) == roomy_before
    call_error(client, "get", {"container_id": cid("c1")}, code=8)
    # The address the failed attempts tried first is still the next one handed out.
    first = alloc(client, cid("c2"), {roomy: {}})
    assert address_of(first, roomy).endswith(".2")


def test_alloc_retry_returns_the_same_lease(client: RawClient, net_name: str, cid: Cid) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix)
    first = alloc(client, cid("c1"), {net_name: {}})
    static = alloc(client, cid("c2"), {net_name: {"static_ips": [f"{prefix}.50"]}})

    assert alloc(client, cid("c1"), {net_name: {}}) == first
    assert alloc(client, cid("c2"), {net_name: {"static_ips": [f"{prefix}.50"]}}) == static
    assert alloc(client, cid("c2"), {net_name: {}}) == static
    assert client.call("network.get", {"name": net_name})["subnets"][0]["used"] == 2


def test_alloc_retry_with_another_static_address_fails(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix)
    alloc(client, cid("c1"), {net_name: {"static_ips": [f"{prefix}.50"]}})

    error = call_error(
        client,
        "alloc",
        {"container_id": cid("c1"), "networks": {net_name: {"static_ips": [f"{prefix}.51"]}}},
    )

    assert error.code == 1
    assert f"{prefix}.51" in error.message and f"{prefix}.50" in error.message
    owner = client.call("lease.owner", {"network": net_name, "ip": f"{prefix}.50"})
    assert owner["container_id"] == cid("c1")
    call_error(client, "lease.owner", {"network": net_name, "ip": f"{prefix}.51"}, code=8)


# -- release ---------------------------------------------------------------------------


def test_release_says_what_it_released_and_is_idempotent(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    create_network(client, net_name)
    address = address_of(alloc(client, cid("c1"), {net_name: {}}), net_name)

    first = client.call("release", {"container_id": cid("c1"), "networks": {net_name: {}}})
    again = client.call("release", {"container_id": cid("c1"), "networks": {net_name: {}}})

    assert first == {"released": {net_name: [address]}}
    assert again == {"released": {}}
    call_error(client, "get", {"container_id": cid("c1")}, code=8)


def test_release_without_networks_releases_every_network(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    a, b = f"{net_name[:60]}-a", f"{net_name[:60]}-b"
    create_network(client, a)
    create_network(client, b)
    result = alloc(client, cid("c1"), {a: {}, b: {}})

    released = client.call("release", {"container_id": cid("c1")})

    assert released == {"released": {a: [address_of(result, a)], b: [address_of(result, b)]}}


def test_release_by_ifname_releases_only_that_attachment(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    create_network(client, net_name)
    eth0 = address_of(alloc(client, cid("c1"), {net_name: {"ifname": "eth0"}}), net_name)
    alloc(client, cid("c1"), {net_name: {"ifname": "eth1"}})

    released = client.call(
        "release", {"container_id": cid("c1"), "networks": {net_name: {"ifname": "eth0"}}}
    )

    assert released == {"released": {net_name: [eth0]}}
    left = client.call("get", {"container_id": cid("c1")})
    assert [lease["ifname"] for lease in left["leases"]] == ["eth1"]


def test_released_address_is_reused_only_after_the_others(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix, cidr=29)  # .2-.6 allocatable
    for i in range(3):
        alloc(client, cid(f"c{i}"), {net_name: {}})  # .2 .3 .4
    client.call("release", {"container_id": cid("c0")})

    addresses = [
        address_of(alloc(client, cid(f"d{i}"), {net_name: {}}), net_name) for i in range(3)
    ]

    assert addresses == [f"{prefix}.5", f"{prefix}.6", f"{prefix}.2"]


# -- get -------------------------------------------------------------------------------


def test_get_has_the_shape_of_alloc(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)
    result = alloc(client, cid("c1"), {net_name: {"attributes": {"pod": "p"}}})

    got = client.call("get", {"container_id": cid("c1")})

    assert got["container_id"] == cid("c1")
    assert got["networks"] == result["networks"]
    (lease,) = got["leases"]
    assert lease["network"] == net_name and lease["attributes"] == {"pod": "p"}
    assert client.call("get", {"container_id": cid("c1"), "networks": {net_name: {}}}) == got
    assert client.call("get", {"container_id": cid("c1"), "networks": [net_name]}) == got


def test_get_of_nothing_held_is_lease_not_found(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)
    alloc(client, cid("c1"), {net_name: {"ifname": "eth0"}})

    error = call_error(client, "get", {"container_id": cid("nobody-e2e")}, code=8)
    assert cid("nobody-e2e") in error.message
    call_error(
        client,
        "get",
        {"container_id": cid("c1"), "networks": {net_name: {"ifname": "eth9"}}},
        code=8,
    )


# -- lease.list, lease.owner -------------------------------------------------------------


def test_lease_list_pages_in_address_order(client: RawClient, net_name: str, cid: Cid) -> None:
    prefix = next_subnet_prefix()
    create_network(client, net_name, prefix)
    # Allocate out of address order: statics high, dynamics low.
    for i in range(5):
        alloc(client, cid(f"s{i}"), {net_name: {"static_ips": [f"{prefix}.{200 + i}"]}})
    for i in range(20):
        alloc(client, cid(f"d{i}"), {net_name: {}})

    pages = []
    params: dict[str, Any] = {"network": net_name, "limit": 10}
    while True:
        page = client.call("lease.list", params)
        pages.append(page)
        if "next" not in page:
            break
        params["after"] = page["next"]
        assert len(pages) < 10, "lease.list does not end"

    assert [len(page["leases"]) for page in pages] == [10, 10, 5]
    leases = [lease for page in pages for lease in page["leases"]]
    addresses = [lease["ips"][0]["address"] for lease in leases]
    expected = [f"{prefix}.{i}/24" for i in range(2, 22)] + [
        f"{prefix}.{200 + i}/24" for i in range(5)
    ]
    assert addresses == expected
    assert set(leases[0]) >= {"network", "container_id", "ifname", "ips", "created"}
    assert leases[0]["network"] == net_name and leases[0]["container_id"] == cid("d0")


def test_lease_list_exact_multiple_has_no_empty_last_page(
    client: RawClient, net_name: str, cid: Cid
) -> None:
    create_network(client, net_name)
    for i in range(4):
        alloc(client, cid(f"c{i}"), {net_name: {}})

    first = client.call("lease.list", {"network": net_name, "limit": 2})
    second = client.call("lease.list", {"network": net_name, "limit": 2, "after": first["next"]})

    assert len(first["leases"]) == 2 and "next" in first
    assert len(second["leases"]) == 2 and "next" not in second
    assert client.call("lease.list", {"network": net_name}) == {
        "leases": first["leases"] + second["leases"]
    }


def test_lease_owner(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)
    before = int(time.time())
    address = address_of(alloc(client, cid("c1"), {net_name: {"ifname": "eth0"}}), net_name)

    with_network = client.call("lease.owner", {"network": net_name, "ip": address})
    without = client.call("lease.owner", {"ip": address})

    assert with_network == without
    assert set(with_network) == {"network", "container_id", "ifname", "created"}
    assert with_network["network"] == net_name
    assert with_network["container_id"] == cid("c1")
    assert with_network["ifname"] == "eth0"
    assert before - 1 <= with_network["created"] <= time.time() + 1
    error = call_error(client, "lease.owner", {"network": net_name, "ip": "10.255.255.254"}, code=8)
    assert "10.255.255.254" in error.message


# -- gc --------------------------------------------------------------------------------


def test_gc_dry_run_then_real(client: RawClient, net_name: str, cid: Cid) -> None:
    create_network(client, net_name)
    for container in (cid("keep"), cid("drop1"), cid("drop2")):
        alloc(client, container, {net_name: {}})
    alloc(client, cid("keep"), {net_name: {"ifname": "eth1"}})
    alloc(client, cid("half"), {net_name: {"ifname": "eth0"}})
    alloc(client, cid("half"), {net_name: {"ifname": "eth1"}})
    valid = [{"container_id": cid("keep")}, {"container_id": cid("half"), "ifname": "eth0"}]

    dry = client.call("gc", {"network": net_name, "valid": valid, "dry_run": True})

    stale = sorted((lease["container_id"], lease["ifname"]) for lease in dry["released"])
    assert stale == [(cid("drop1"), ""), (cid("drop2"), ""), (cid("half"), "eth1")]
    assert client.call("network.get", {"name": net_name})["leases"] == 6
    assert set(dry["released"][0]) >= {"network", "container_id", "ifname", "ips", "created"}

    real = client.call("gc", {"network": net_name, "valid": valid})

    assert real == dry
    assert client.call("network.get", {"name": net_name})["leases"] == 3
    call_error(client, "get", {"container_id": cid("drop1")}, code=8)
    assert len(client.call("get", {"container_id": cid("keep")})["leases"]) == 2
    assert client.call("gc", {"network": net_name, "valid": valid})["released"] == []
