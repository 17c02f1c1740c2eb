"""The CNI plugin alone, exec'd as a runtime execs it: every command, every cniVersion, the errors.

Each test has a daemon and a network (`net`) of its own.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import ipamd
from tests.cni.cni_support import VERSIONS, Cni, leases
from tests.support import Daemon

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "examples" / "10-ipamd-bridge.conflist"
LEGACY = ("0.3.0", "0.3.1", "0.4.0")  # results carry each IP's "version"
BEFORE_CHECK = ("0.3.0", "0.3.1")
BEFORE_GC_AND_STATUS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")


@pytest.fixture
def shared_daemon(daemon: Daemon) -> Daemon:
    """A daemon per test here, not per module: the tests' networks share the same
    few subnets (and expect the same addresses), and ipamd refuses a subnet that
    overlaps another network's."""
    return daemon


@pytest.fixture
def net(request: pytest.FixtureRequest) -> str:
    """A network name of this test's own."""
    return "cni-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]


def ip(address: str, gateway: str | None, version: str) -> dict[str, str]:
    entry = {"address": address} if gateway is None else {"address": address, "gateway": gateway}
    if version in LEGACY:
        return {"version": "6" if ":" in address else "4", **entry}
    return entry


# -- VERSION -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_version_lists_the_supported_versions(cni: Cni, version: str) -> None:
    out = cni.ok("VERSION", {"cniVersion": version})
    assert out == {"cniVersion": version, "supportedVersions": list(VERSIONS)}


def test_version_without_stdin_or_with_an_unknown_version(cni: Cni) -> None:
    expected = {"cniVersion": "1.1.0", "supportedVersions": list(VERSIONS)}
    assert cni.ok("VERSION", None) == expected  # type: ignore[arg-type]
    assert cni.ok("VERSION", {"cniVersion": "0.2.0"}) == expected


# -- ADD and DEL -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_add_answers_in_the_requested_version_and_del_is_idempotent(
    cni: Cni, shared_daemon: Daemon, net: str, version: str
) -> None:
    config = cni.config(
        net,
        version,
        routes=[{"dst": "0.0.0.0/0"}],
        dns={"nameservers": ["10.250.0.1"], "search": ["example.test"]},
    )
    result = cni.ok("ADD", config)
    assert result == {
        "cniVersion": version,
        "ips": [ip("10.250.0.2/24", "10.250.0.1", version)],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.250.0.1"], "search": ["example.test"]},
    }
    assert cni.ok("ADD", config) == result  # a retried ADD: the same lease
    [lease] = leases(shared_daemon, net)
    assert (lease["container_id"], lease["ifname"]) == ("c1", "eth0")

    assert cni.ok("DEL", config) is None
    assert leases(shared_daemon, net) == []
    assert cni.ok("DEL", config) is None  # nothing held: still fine
    assert cni.ok("DEL", config, CNI_NETNS=None) is None  # DEL needs no netns


@pytest.mark.parametrize("version", VERSIONS)
def test_dual_stack_and_ifnames(cni: Cni, shared_daemon: Daemon, net: str, version: str) -> None:
    config = cni.config(
        net,
        version,
        ranges=[
            [{"subnet": "10.250.1.0/24", "rangeStart": "10.250.1.100", "gateway": "10.250.1.254"}],
            [{"subnet": "fd00:250::/64"}],
        ],
    )
    first = cni.ok("ADD", config, ifname="eth0")
    assert first["ips"] == [
        ip("10.250.1.100/24", "10.250.1.254", version),
        ip("fd00:250::2/64", "fd00:250::1", version),
    ]
    second = cni.ok("ADD", config, ifname="net1")  # a second attachment of the same container
    assert second["ips"][0]["address"] == "10.250.1.101/24"
    cni.ok("DEL", config, ifname="eth0")
    assert [lease["ifname"] for lease in leases(shared_daemon, net)] == ["net1"]
    cni.ok("DEL", config, ifname="net1")
    assert leases(shared_daemon, net) == []


def test_del_succeeds_when_the_daemon_does_not_know_the_network(cni: Cni, net: str) -> None:
    assert cni.ok("DEL", cni.config(net)) is None


def test_the_lease_remembers_netns_and_pod(cni: Cni, shared_daemon: Daemon, net: str) -> None:
    cni.ok("ADD", cni.config(net), CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p")
    [lease] = leases(shared_daemon, net)
    assert lease["attributes"] == {"netns": "/var/run/netns/c1", "pod": "ns/p"}


@pytest.mark.parametrize(
    ("where", "extra", "env"),
    [
        ("args.cni.ips", {"args": {"cni": {"ips": ["10.250.0.77"]}}}, {}),
        ("runtimeConfig.ips", {"runtimeConfig": {"ips": ["10.250.0.77/24"]}}, {}),
        ("CNI_ARGS", {}, {"CNI_ARGS": "IgnoreUnknown=1;IP=10.250.0.77"}),
    ],
)
def test_requested_address(
    cni: Cni, net: str, where: str, extra: dict[str, Any], env: dict[str, str]
) -> None:
    config = {**cni.config(net), **extra}
    result = cni.ok("ADD", config, **env)
    assert result["ips"] == [{"address": "10.250.0.77/24", "gateway": "10.250.0.1"}], where
    assert cni.ok("ADD", config, **env) == result


def test_requested_address_taken_or_outside(cni: Cni, net: str) -> None:
    config = {**cni.config(net), "args": {"cni": {"ips": ["10.250.0.77"]}}}
    cni.ok("ADD", config, container_id="holder")
    taken = cni.fails("ADD", config, 105, container_id="other")
    assert "already allocated to container ID holder" in taken["msg"]
    assert "address_in_use" in taken["details"]
    outside = {**cni.config(net), "args": {"cni": {"ips": ["10.99.0.7"]}}}
    cni.fails("ADD", outside, 106, container_id="third")
    gateway = {**cni.config(net), "args": {"cni": {"ips": ["10.250.0.1"]}}}
    assert "gateway" in cni.fails("ADD", gateway, 106, container_id="third")["msg"]


def test_exhausted_range(cni: Cni, shared_daemon: Daemon, net: str) -> None:
    config = cni.config(net, ranges=[[{"subnet": "10.250.2.0/30"}]])  # .2 is its only address
    assert cni.ok("ADD", config, container_id="a")["ips"][0]["address"] == "10.250.2.2/30"
    error = cni.fails("ADD", config, 107, container_id="b")
    assert error["msg"] == "failed to find free IP in range: 10.250.2.1 - 10.250.2.2"
    assert len(leases(shared_daemon, net)) == 1


def test_a_conflicting_network_definition_is_a_clear_error(cni: Cni, net: str) -> None:
    cni.ok("ADD", cni.config(net))
    other = cni.config(net, ranges=[[{"subnet": "10.250.3.0/24"}]])
    error = cni.fails("ADD", other, 104, container_id="c2")
    assert net in error["msg"] and "network_exists" in error["details"]


def test_a_range_subnet_with_host_bits_is_refused_as_host_local_does(cni: Cni, net: str) -> None:
    config = cni.config(net, ranges=[[{"subnet": "10.250.0.1/24"}]])
    error = cni.fails("ADD", config, 7)
    assert "network has host bits set" in error["msg"]
    assert "the network address is 10.250.0.0" in error["msg"]


def test_a_range_overlapping_another_networks_is_refused(cni: Cni, net: str) -> None:
    cni.ok("ADD", cni.config(net))
    other = cni.config(f"{net}-b", ranges=[[{"subnet": "10.250.0.128/25"}]])
    error = cni.fails("ADD", other, 101, container_id="c2")
    assert error["msg"] == (
        f"subnet 10.250.0.128/25 of network {net}-b overlaps subnet 10.250.0.0/24 of network {net}"
    )


def test_resolv_conf_becomes_dns(cni: Cni, net: str, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# comment\nnameserver 10.250.0.53\nnameserver fd00::53\n"
        "domain example.test\nsearch a.test b.test\noptions ndots:2 edns0\n"
    )
    result = cni.ok("ADD", cni.config(net, resolvConf=str(resolv)))
    assert result["dns"] == {
        "nameservers": ["10.250.0.53", "fd00::53"],
        "domain": "example.test",
        "search": ["a.test", "b.test"],
        "options": ["ndots:2", "edns0"],
    }
    cni.fails("ADD", cni.config(net, resolvConf=str(tmp_path / "missing")), 5, container_id="x")


# -- CHECK -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_check(cni: Cni, net: str, version: str) -> None:
    config = cni.config(net, version)
    if version in BEFORE_CHECK:
        cni.fails("CHECK", {**config, "prevResult": {"ips": []}}, 1)
        return
    result = cni.ok("ADD", config)
    assert cni.ok("CHECK", {**config, "prevResult": result}) is None
    moved = {**result, "ips": [{**result["ips"][0], "address": "10.250.0.99/24"}]}
    assert "10.250.0.2/24" in cni.fails("CHECK", {**config, "prevResult": moved}, 150)["msg"]
    cni.fails("CHECK", config, 7)  # no prevResult
    cni.ok("DEL", config)
    cni.fails("CHECK", {**config, "prevResult": result}, 108)


# -- GC ----------------------------------------------------------------------------------------


def gc_config(cni: Cni, net: str, version: str, valid: list[tuple[str, str]]) -> dict[str, Any]:
    attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
    return {**cni.config(net, version), "cni.dev/valid-attachments": attachments}


@pytest.mark.parametrize("version", VERSIONS)
def test_gc_releases_exactly_the_attachments_not_listed(
    cni: Cni, shared_daemon: Daemon, net: str, version: str
) -> None:
    add = cni.config(net, "1.0.0")
    for cid in ("c1", "c2", "c3", "c4", "c5"):
        cni.ok("ADD", add, container_id=cid)
    valid = [("c1", "eth0"), ("c3", "eth0"), ("c5", "eth0")]
    if version in BEFORE_GC_AND_STATUS:
        cni.fails("GC", gc_config(cni, net, version, valid), 1)
        assert len(leases(shared_daemon, net)) == 5
        return
    outcome = cni.run("GC", gc_config(cni, net, version, valid))
    assert (outcome.returncode, outcome.output) == (0, None)
    kept = sorted(lease["container_id"] for lease in leases(shared_daemon, net))
    assert kept == ["c1", "c3", "c5"]
    assert cni.ok("GC", gc_config(cni, net, version, valid)) is None  # nothing more to do


def test_gc_edges(cni: Cni, shared_daemon: Daemon, net: str) -> None:
    assert cni.ok("GC", gc_config(cni, net, "1.1.0", [])) is None  # unknown network
    cni.ok("ADD", cni.config(net), container_id="keep")
    cni.fails("GC", cni.config(net, "1.1.0"), 7)  # no valid-attachments: never "release all"
    assert cni.ok("GC", gc_config(cni, net, "1.1.0", [("keep", "eth0")])) is None
    assert len(leases(shared_daemon, net)) == 1
    assert cni.ok("GC", gc_config(cni, net, "1.1.0", [("keep", "net1")])) is None
    assert leases(shared_daemon, net) == []


# -- STATUS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_status(cni: Cni, net: str, version: str) -> None:
    config = cni.config(net, version, ranges=[[{"subnet": "10.250.4.0/30"}]])
    if version in BEFORE_GC_AND_STATUS:
        cni.fails("STATUS", config, 1)
        return
    assert cni.ok("STATUS", config) is None  # not created yet: ADD will
    cni.ok("ADD", config, container_id="a")
    error = cni.fails("STATUS", config, 51)
    assert "10.250.4.0/30" in error["msg"]
    cni.ok("DEL", config, container_id="a")
    assert cni.ok("STATUS", config) is None


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_daemon_down(plugin_dir: Path, tmp_path: Path, version: str) -> None:
    down = Cni(plugin_dir / "ipamd", tmp_path / "no-daemon.sock")
    config = down.config("down", version)
    error = down.fails("ADD", config, 11)
    assert str(tmp_path / "no-daemon.sock") in error["msg"]
    assert error["cniVersion"] == version
    down.fails("DEL", config, 11)
    if version not in BEFORE_CHECK:
        down.fails("CHECK", {**config, "prevResult": {"ips": []}}, 11)
    if version not in BEFORE_GC_AND_STATUS:
        down.fails("STATUS", config, 50)
        down.fails("GC", {**config, "cni.dev/valid-attachments": []}, 11)


def test_run_by_hand_it_says_what_it_is_as_host_local_does(plugin_dir: Path) -> None:
    done = subprocess.run(
        [str(plugin_dir / "ipamd")], env={}, stdin=subprocess.DEVNULL, capture_output=True
    )
    assert (done.returncode, done.stdout) == (0, b""), done
    assert done.stderr.decode() == (
        f"CNI ipamd plugin version {ipamd.__version__}; supported CNI versions:"
        f" {', '.join(VERSIONS)}\n"
    )


@pytest.mark.parametrize(
    ("env", "code"),
    [
        ({"CNI_COMMAND": None}, 4),
        ({"CNI_COMMAND": "FROB"}, 4),
        ({"CNI_CONTAINERID": None}, 4),
        ({"CNI_NETNS": None}, 4),
        ({"CNI_IFNAME": None}, 4),
        ({"CNI_PATH": None}, 4),
        ({"CNI_CONTAINERID": "-bad"}, 4),
        ({"CNI_IFNAME": "a/b"}, 4),
        ({"CNI_IFNAME": "sixteen-bytes-xx"}, 4),
        ({"CNI_ARGS": "novalue"}, 4),
    ],
)
def test_bad_environment(cni: Cni, env: dict[str, str | None], code: int) -> None:
    cni.fails("ADD", cni.config("bad-env"), code, **env)


ONE_RANGE = [[{"subnet": "10.9.0.0/24"}]]


def bad(ipam: Any = None, version: str | None = "1.0.0", name: str = "n", **extra: Any) -> Any:
    """A network config for the error table; no `ipam` section when `ipam` is None."""
    config = {"cniVersion": version, "name": name, **extra}
    if version is None:
        del config["cniVersion"]
    if ipam is not None:
        config["ipam"] = ipam
    return config


@pytest.mark.parametrize(
    ("config", "code"),
    [
        (b"{not json", 6),
        (b"[1, 2]", 6),
        (bad({"ranges": ONE_RANGE}, version="0.2.0"), 1),
        (bad({"ranges": ONE_RANGE}, version=None), 1),
        (bad(), 7),  # no ipam section
        (bad({"ranges": ONE_RANGE}, name="bad name!"), 7),
        (bad({}), 7),  # no ranges
        (bad({"ranges": [[]]}), 7),
        (bad({"ranges": [[{"subnet": "10.9.0.0"}]]}), 7),
        (bad({"ranges": [[{"subnet": "x/24"}]]}), 7),
        (bad({"ranges": [[{"subnet": "10.9.0.0/24", "gateway": "10.8.0.1"}]]}), 7),
        (bad({"ranges": ONE_RANGE, "routes": [{"gw": "10.9.0.1"}]}), 7),
        (bad({"ranges": ONE_RANGE}, args={"cni": {"ips": ["not-an-ip"]}}), 7),
        # Several ranges in one range set: ipamd holds one address per subnet.
        (bad({"ranges": [[{"subnet": "10.9.0.0/24"}, {"subnet": "10.9.1.0/24"}]]}), 2),
        # Overlapping subnets: ipamd's invalid_request.
        (bad({"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.9.0.0/16"}]]}), 101),
    ],
)
def test_bad_config(cni: Cni, config: Any, code: int) -> None:
    if isinstance(config, dict) and isinstance(config.get("ipam"), dict):
        config["ipam"]["socket"] = str(cni.socket)
    cni.fails("ADD", config, code)


def test_the_legacy_single_range_form(cni: Cni, net: str) -> None:
    config = cni.config(net, ranges=None)
    del config["ipam"]["ranges"]
    config["ipam"].update(subnet="10.250.5.0/24", rangeStart="10.250.5.10", gateway="10.250.5.1")
    assert cni.ok("ADD", config)["ips"] == [{"address": "10.250.5.10/24", "gateway": "10.250.5.1"}]


def test_the_example_conflist(cni: Cni, net: str) -> None:
    conflist = json.loads(EXAMPLE.read_text())
    bridge = conflist["plugins"][0]
    config = {"cniVersion": conflist["cniVersion"], "name": net, **bridge}
    config["ipam"] = {**bridge["ipam"], "socket": str(cni.socket)}
    result = cni.ok("ADD", config)
    assert [ip["address"] for ip in result["ips"]] == ["10.89.0.2/24", "fd89::100/64"]
    assert result["dns"] == {"nameservers": ["10.89.0.1"]}
