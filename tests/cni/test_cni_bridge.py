"""End to end: Debian's `bridge` CNI plugin calls ipamd's (contrib/cni/) as its IPAM plugin.

Three network namespaces of the test's own: one plays the host (the bridge
plugin runs inside it, so the machine's own network is never touched) and two
play containers. The address range exists only inside them. The namespaces,
and with the host one the bridge, are removed at the end, pass or fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cni.cni_support import CNI_DIR
from tests.support import Daemon, RpcError

PID = os.getpid()
SUBNET = "10.250.99.0/24"
GATEWAY = "10.250.99.1"
PORT = 4789
COMMAND_TIMEOUT_S = 30.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        not (CNI_DIR / "bridge").exists() or shutil.which("ip") is None,
        reason="needs containernetworking-plugins and iproute2",
    ),
]


def sh(*argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=check, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, **kwargs
    )


@dataclass(frozen=True)
class Namespaces:
    host: str
    containers: tuple[str, str]
    bridge: str


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    spaces = Namespaces(
        host=f"ipamd-host-{PID}",
        containers=(f"ipamd-ctr1-{PID}", f"ipamd-ctr2-{PID}"),
        bridge=f"ipbr{PID}"[:15],
    )
    created: list[str] = []
    try:
        for name in (spaces.host, *spaces.containers):
            sh("ip", "netns", "add", name)
            created.append(name)
        yield spaces
    finally:
        if spaces.host in created:
            sh("ip", "netns", "exec", spaces.host, "ip", "link", "del", spaces.bridge, check=False)
        for name in reversed(created):
            sh("ip", "netns", "del", name, check=False)
        left = sh("ip", "netns", "list").stdout
        assert str(PID) not in left, f"namespaces left behind: {left}"


@dataclass(frozen=True)
class Runtime:
    """Execs the bridge plugin inside the host namespace, as a runtime would."""

    host: str
    plugin_dir: Path
    config: dict[str, Any]

    def run(
        self, command: str, netns: str, prev_result: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = self.config if prev_result is None else {**self.config, "prevResult": prev_result}
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"e2e-{netns}",
            "CNI_NETNS": f"/var/run/netns/{netns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{self.plugin_dir}:{CNI_DIR}",
        }
        bridge = str(CNI_DIR / "bridge")
        return sh(
            "ip", "netns", "exec", self.host, bridge, input=json.dumps(config), env=env, check=False
        )


def addresses_in(netns: str) -> list[str]:
    shown = sh("ip", "netns", "exec", netns, "ip", "-j", "addr", "show", "dev", "eth0")
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(shown.stdout)
        for a in link["addr_info"]
        if a["family"] == "inet"
    ]


LISTENER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
connection, _ = server.accept()
connection.sendall(b"hello from " + sys.argv[1].encode())
connection.close()
"""
CONNECTOR = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    print(s.recv(100).decode())
"""


def tcp_reaches(source: str, target: str, address: str) -> str:
    """Connect from namespace `source` to `address` served in namespace `target`; the greeting."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", target, sys.executable, "-c", LISTENER, address, str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        connect = [sys.executable, "-c", CONNECTOR, address, str(PORT)]
        return sh("ip", "netns", "exec", source, *connect).stdout.strip()
    finally:
        listener.kill()
        listener.wait()


def test_bridge_plugin_with_ipamd_ipam(
    namespaces: Namespaces, daemon: Daemon, plugin_dir: Path
) -> None:
    network = f"e2e-{PID}"
    config = {
        "cniVersion": "1.0.0",
        "name": network,
        "type": "bridge",
        "bridge": namespaces.bridge,
        "isGateway": True,
        "ipMasq": False,
        "ipam": {
            "type": "ipamd",
            "socket": str(daemon.socket),
            "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    runtime = Runtime(namespaces.host, plugin_dir, config)
    one, two = namespaces.containers

    results = {}
    for netns in (one, two):
        done = runtime.run("ADD", netns)
        assert done.returncode == 0, done
        results[netns] = json.loads(done.stdout)
    address = {netns: result["ips"][0]["address"] for netns, result in results.items()}
    assert len(set(address.values())) == 2
    for netns in (one, two):
        assert addresses_in(netns) == [address[netns]]
        assert results[netns]["ips"][0]["gateway"] == GATEWAY
    bridge_addresses = sh("ip", "netns", "exec", namespaces.host, "ip", "-j", "addr", "show")
    assert GATEWAY in bridge_addresses.stdout  # isGateway put the gateway on the bridge

    target = address[two].split("/")[0]
    assert tcp_reaches(one, two, target) == f"hello from {target}"

    # CHECK through the bridge plugin, which hands prevResult on to ipamd's plugin.
    checked = runtime.run("CHECK", one, prev_result=results[one])
    assert checked.returncode == 0, checked

    with daemon.client() as client:
        assert len(client.call("lease.list", {"network": network})["leases"]) == 2
    for netns in (one, two):
        done = runtime.run("DEL", netns, prev_result=results[netns])
        assert done.returncode == 0, done
        gone = sh("ip", "netns", "exec", netns, "ip", "link", "show", "eth0", check=False)
        assert gone.returncode != 0, gone
        with daemon.client() as client, pytest.raises(RpcError) as lookup:
            client.call("get", {"container_id": f"e2e-{netns}"})
        assert lookup.value.name == "lease_not_found"
    with daemon.client() as client:
        assert client.call("lease.list", {"network": network})["leases"] == []
