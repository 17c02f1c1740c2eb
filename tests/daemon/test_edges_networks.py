"""Network definitions ipamd refuses (issue 14, must-fix 2, 3 and 4), through the real daemon.

- A subnet overlapping another network's: `invalid_request` naming both
  networks and both subnets; from the config at start, exit 78.
- Host bits in a subnet (or an exclude CIDR): refused, naming the network address.
- A host-local network without subnets: refused at create (other drivers keep
  the seed's "record it, allocate nothing").
Each refusal changes nothing: the network does not exist afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.daemon.e2e import EXIT_CONFIG, call_error, run_ipamd, write_config
from tests.support import Daemon, RawClient

INVALID_REQUEST = 1
NETWORK_NOT_FOUND = 3


def create(client: RawClient, name: str, *subnets: str, **extra: Any) -> Any:
    return client.call(
        "network.create", {"name": name, "subnets": [{"subnet": s} for s in subnets], **extra}
    )


def refused_create(client: RawClient, name: str, *subnets: str, **extra: Any) -> str:
    params = {"name": name, "subnets": [{"subnet": s} for s in subnets], **extra}
    message = call_error(client, "network.create", params, code=INVALID_REQUEST).message
    call_error(client, "network.get", {"name": name}, code=NETWORK_NOT_FOUND)
    return message


# -- overlapping subnets across networks (must-fix 2) -----------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("10.31.0.0/16", "10.31.0.0/16"),  # the same subnet
        ("10.32.0.0/16", "10.32.9.0/24"),  # inside another
        ("10.33.9.0/24", "10.33.0.0/16"),  # around another
        ("fd31::/48", "fd31:0:0:5::/64"),
    ],
)
def test_a_subnet_overlapping_another_networks_is_refused(
    client: RawClient, net_name: str, first: str, second: str
) -> None:
    create(client, f"{net_name[:60]}-a", first)

    message = refused_create(client, f"{net_name[:60]}-b", "10.250.250.0/24", second)

    assert message == (
        f"subnet {second} of network {net_name[:60]}-b overlaps subnet {first}"
        f" of network {net_name[:60]}-a"
    )


def test_so_one_address_is_never_leased_on_two_networks(client: RawClient, net_name: str) -> None:
    create(client, f"{net_name[:60]}-a", "10.34.0.0/24")
    refused_create(client, f"{net_name[:60]}-b", "10.34.0.0/24")
    lease = client.call("alloc", {"container_id": "c1", "networks": {f"{net_name[:60]}-a": {}}})
    address = lease["networks"][f"{net_name[:60]}-a"]["ips"][0]["address"].split("/")[0]
    assert client.call("lease.owner", {"ip": address})["network"] == f"{net_name[:60]}-a"
    # Neighbouring subnets and the same addresses in the other family are fine.
    create(client, f"{net_name[:60]}-c", "10.34.1.0/24", "fd34::/64")


OVERLAPPING_CONFIG = """
[[networks]]
name = "one"
subnets = [{ subnet = "10.41.0.0/16" }]

[[networks]]
name = "two"
subnets = [{ subnet = "10.41.128.0/17" }]
"""


def test_config_networks_that_overlap_stop_the_daemon_with_78(tmp_path: Path) -> None:
    config = write_config(tmp_path / "ipamd.toml", OVERLAPPING_CONFIG)
    done = run_ipamd(
        ["--config", str(config), "--socket", str(tmp_path / "s"), "--state-dir", str(tmp_path)]
    )
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert (
        "subnet 10.41.128.0/17 of network two overlaps subnet 10.41.0.0/16 of network one"
        in done.stderr
    )


def test_a_config_network_overlapping_a_stored_one_stops_the_daemon_with_78(
    tmp_path: Path,
) -> None:
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock")
    try:
        daemon.start()
        with daemon.client() as client:
            create(client, "stored", "10.42.0.0/24")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    config = write_config(
        tmp_path / "ipamd.toml",
        '[[networks]]\nname = "declared"\nsubnets = [{ subnet = "10.42.0.0/23" }]\n',
    )
    done = run_ipamd(
        [
            *("--config", str(config), "--socket", str(daemon.socket)),
            *("--state-dir", str(daemon.state_dir)),
        ]
    )
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert (
        "subnet 10.42.0.0/23 of network declared overlaps subnet 10.42.0.0/24 of network stored"
        in done.stderr
    )


# -- host bits (must-fix 3) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "network_address"),
    [("10.43.0.1/24", "10.43.0.0"), ("10.44.7.9/16", "10.44.0.0"), ("fd43::1/64", "fd43::")],
)
def test_host_bits_in_a_subnet_are_refused_naming_its_network_address(
    client: RawClient, net_name: str, written: str, network_address: str
) -> None:
    message = refused_create(client, net_name, written)
    assert f"subnet {written!r} has host bits set" in message
    assert f"its network address is {network_address}" in message


def test_host_bits_in_an_exclude_cidr_are_refused(client: RawClient, net_name: str) -> None:
    params = {
        "name": net_name,
        "subnets": [{"subnet": "10.45.0.0/24", "exclude": ["10.45.0.17/28"]}],
    }
    message = call_error(client, "network.create", params, code=INVALID_REQUEST).message
    assert "exclude entry '10.45.0.17/28' has host bits set" in message
    assert "its network address is 10.45.0.16" in message
    call_error(client, "network.get", {"name": net_name}, code=NETWORK_NOT_FOUND)


# -- host-local without subnets (must-fix 4) ---------------------------------------------------


@pytest.mark.parametrize("driver", [None, "host-local", ""])
def test_a_host_local_network_without_subnets_is_refused(
    client: RawClient, net_name: str, driver: str | None
) -> None:
    extra = {} if driver is None else {"driver": driver}
    message = refused_create(client, net_name, **extra)
    assert f"network {net_name} has driver host-local but no subnets" in message


def test_another_driver_without_subnets_is_still_recorded(client: RawClient, net_name: str) -> None:
    create(client, net_name, driver="macvlan")
    result = client.call("alloc", {"container_id": "c1", "networks": {net_name: {}}})
    assert result["networks"][net_name]["ips"] == []


def test_a_config_host_local_network_without_subnets_stops_the_daemon(tmp_path: Path) -> None:
    config = write_config(tmp_path / "ipamd.toml", '[[networks]]\nname = "empty"\n')
    done = run_ipamd(
        ["--config", str(config), "--socket", str(tmp_path / "s"), "--state-dir", str(tmp_path)]
    )
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "network empty has driver host-local but no subnets" in done.stderr
