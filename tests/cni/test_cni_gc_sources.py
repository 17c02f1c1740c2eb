"""`ipamd-client gc --from-cni-cache / --from-podman / --from-crictl`: the
valid list taken from where the runtimes keep their attachments.

- libcni's cache is written and removed by the real libcni (Debian's
  golang-github-appc-cni-dev, built into tests/cni/libcni_runner), running the
  real plugin against the real daemon, as a runtime does.
- podman is Debian's real podman, on a storage root of the test's own (an
  image imported from a tarball, containers created, none run).
- crictl is not packaged in Debian: a small executable on PATH stands in for
  it, printing what `crictl pods --quiet --no-trunc` prints (one ID a line),
  or failing as a runtime that is down does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipamd.client.runtimes import boot_time
from tests.cni.cni_support import BUILD_TIMEOUT_S, PLUGIN_TIMEOUT_S
from tests.support import Daemon, RawClient

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "ipamd.cli"]
RUNNER_SOURCE = Path(__file__).parent / "libcni_runner" / "main.go"
EXIT_UNAVAILABLE = 69


@pytest.fixture(scope="session")
def libcni_runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/cni/libcni_runner built against Debian's libcni (GOPATH mode, offline)."""
    build = tmp_path_factory.mktemp("libcni-runner")
    binary = build / "libcni_runner"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{build / 'gopath'}:/usr/share/gocode",
        "GOFLAGS": "",
        # Go's cache under $HOME as usual; one of its own where there is no $HOME.
        "GOCACHE": os.environ.get("GOCACHE")
        or (f"{os.environ['HOME']}/.cache/go-build" if os.environ.get("HOME") else "")
        or str(build / "gocache"),
        "CGO_ENABLED": "0",
    }
    done = subprocess.run(
        ["go", "build", "-o", str(binary), str(RUNNER_SOURCE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=BUILD_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return binary


def gc_cli(
    daemon: Daemon, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--socket", str(daemon.socket), "gc", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def gc_json(daemon: Daemon, *args: str, env: dict[str, str] | None = None) -> Any:
    done = subprocess.run(
        [*CLI, "--socket", str(daemon.socket), "--json", "gc", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done
    return json.loads(done.stdout)


def holders(daemon: Daemon, network: str) -> list[tuple[str, str]]:
    with daemon.client() as client:
        leases = client.call("lease.list", {"network": network})["leases"]
    return sorted((lease["container_id"], lease["ifname"]) for lease in leases)


def leak(daemon: Daemon, network: str, container_id: str, ifname: str = "eth0") -> None:
    """A lease no runtime knows of: a DEL that never came."""
    with RawClient(daemon.socket) as client:
        client.call(
            "alloc", {"container_id": container_id, "networks": {network: {"ifname": ifname}}}
        )


class Libcni:
    """ADD and DEL through the real libcni, its cache under `cache_dir`."""

    def __init__(
        self, runner: Path, plugin_dir: Path, daemon: Daemon, tmp: Path, net: str, subnet: str
    ) -> None:
        self.runner, self.plugin_dir, self.cache_dir = runner, plugin_dir, tmp / "cni-cache"
        self.conflist = tmp / f"{net}.conflist"
        ipam = {"type": "ipamd", "socket": str(daemon.socket), "ranges": [[{"subnet": subnet}]]}
        # The plugin as the only one of the list: libcni caches its result as any.
        self.conflist.write_text(
            json.dumps(
                {"cniVersion": "1.0.0", "name": net, "plugins": [{"type": "ipamd", "ipam": ipam}]}
            )
        )

    def run(self, command: str, container_id: str, ifname: str) -> str:
        done = subprocess.run(
            [
                str(self.runner),
                command,
                str(self.plugin_dir),
                str(self.cache_dir),
                str(self.conflist),
                container_id,
                ifname,
                f"/var/run/netns/{container_id}",
            ],
            capture_output=True,
            text=True,
            timeout=PLUGIN_TIMEOUT_S,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


def test_gc_from_libcni_cache_keeps_what_libcni_holds_and_releases_the_rest(
    libcni_runner: Path, plugin_dir: Path, shared_daemon: Daemon, tmp_path: Path
) -> None:
    net = "cache-net"
    libcni = Libcni(libcni_runner, plugin_dir, shared_daemon, tmp_path, net, "10.251.0.0/24")
    for container_id, ifname in (("c1", "eth0"), ("c2", "eth0"), ("c3", "net1")):
        libcni.run("add", container_id, ifname)
    libcni.run("del", "c2", "eth0")  # libcni drops its cache file; the plugin its lease
    leak(shared_daemon, net, "ghost")
    results = libcni.cache_dir / "results"
    assert sorted(p.name for p in results.iterdir()) == [f"{net}-c1-eth0", f"{net}-c3-net1"]
    assert holders(shared_daemon, net) == [("c1", "eth0"), ("c3", "net1"), ("ghost", "eth0")]

    # --dry-run prints what would go, and where the valid list came from.
    dry = gc_cli(shared_daemon, net, "--from-cni-cache", str(libcni.cache_dir), "--dry-run")
    assert dry.returncode == 0, dry
    lines = dry.stdout.splitlines()
    assert lines[0] == f"valid: 2 attachment(s) from libcni's cache {results}"
    assert lines[1] == f"would release 1 lease(s) on {net}"
    assert "ghost" in lines[3] and "c1" not in dry.stdout
    assert len(holders(shared_daemon, net)) == 3

    # A cache file from before this boot shows no live attachment.
    before_boot = boot_time() - 60
    os.utime(results / f"{net}-c3-net1", (before_boot, before_boot))
    released = gc_json(shared_daemon, net, "--from-cni-cache", str(results))
    assert sorted(x["container_id"] for x in released["released"]) == ["c3", "ghost"]
    assert holders(shared_daemon, net) == [("c1", "eth0")]
    # The source was only read: libcni's files are where they were.
    assert sorted(p.name for p in results.iterdir()) == [f"{net}-c1-eth0", f"{net}-c3-net1"]


def test_an_unreadable_cache_file_fails_gc_and_releases_nothing(
    libcni_runner: Path, plugin_dir: Path, shared_daemon: Daemon, tmp_path: Path
) -> None:
    net = "cache-bad"
    libcni = Libcni(libcni_runner, plugin_dir, shared_daemon, tmp_path, net, "10.250.0.0/24")
    libcni.run("add", "c1", "eth0")
    leak(shared_daemon, net, "ghost")
    broken = libcni.cache_dir / "results" / f"{net}-c9-eth0"
    broken.write_text('{"kind": "cniCacheV1", "containerId": ')

    done = gc_cli(shared_daemon, net, "--from-cni-cache", str(libcni.cache_dir))

    assert done.returncode == EXIT_UNAVAILABLE and done.stdout == ""
    assert f"cannot read libcni cache file {broken}" in done.stderr
    assert holders(shared_daemon, net) == [("c1", "eth0"), ("ghost", "eth0")]
    missing = gc_cli(shared_daemon, net, "--from-cni-cache", str(tmp_path / "nowhere"))
    assert missing.returncode == EXIT_UNAVAILABLE
    assert f"cannot read libcni's cache {tmp_path / 'nowhere'}" in missing.stderr
    assert len(holders(shared_daemon, net)) == 2


# -- podman -----------------------------------------------------------------------------------


@pytest.fixture
def podman_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """podman on storage of the test's own, with one image imported from a tarball."""
    root = tmp_path / "podman"
    (root / "rootfs").mkdir(parents=True)
    (root / "rootfs" / "placeholder").write_text("never run\n")
    with tarfile.open(root / "rootfs.tar", "w") as tar:
        tar.add(root / "rootfs" / "placeholder", arcname="placeholder")
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
    )
    (root / "containers.conf").write_text(
        f'[engine]\ntmp_dir = "{root}/tmp"\nvolume_path = "{root}/volumes"\n'
        f'static_dir = "{root}/static"\n'
    )
    env = {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
        "CONTAINERS_CONF": str(root / "containers.conf"),
    }
    podman(env, "import", str(root / "rootfs.tar"), "localhost/ipamd-test:latest")
    try:
        yield env
    finally:
        podman(env, "rm", "--all", "--force")


def podman(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_gc_from_podman_keeps_every_container_podman_knows(
    podman_env: dict[str, str], shared_daemon: Daemon
) -> None:
    net = "podman-net"
    with RawClient(shared_daemon.socket) as client:
        client.call("network.create", {"name": net, "subnets": [{"subnet": "10.252.0.0/24"}]})
    kept = [
        podman(podman_env, "create", "--network", "none", "localhost/ipamd-test", "/placeholder")
        for _ in range(2)
    ]
    for container_id in kept:
        leak(shared_daemon, net, container_id, "")
    leak(shared_daemon, net, "f" * 64, "")  # a container podman no longer knows

    dry = gc_cli(shared_daemon, net, "--from-podman", "--dry-run", env=podman_env)
    assert dry.returncode == 0, dry
    assert dry.stdout.splitlines()[:2] == [
        "valid: 2 container(s) from podman ps --all",
        f"would release 1 lease(s) on {net}",
    ]
    released = gc_json(shared_daemon, net, "--from-podman", env=podman_env)
    assert [x["container_id"] for x in released["released"]] == ["f" * 64]
    assert holders(shared_daemon, net) == sorted((cid, "") for cid in kept)


# -- crictl (a stand-in: cri-tools is not in Debian) ---------------------------------------


def fake_crictl(directory: Path, script: str) -> dict[str, str]:
    """An environment whose PATH finds `crictl` running `script` (sh) first."""
    directory.mkdir()
    crictl = directory / "crictl"
    crictl.write_text(f"#!/bin/sh\n{script}\n")
    crictl.chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{os.environ['PATH']}"}


def test_gc_from_crictl_keeps_every_pod_sandbox(shared_daemon: Daemon, tmp_path: Path) -> None:
    net = "crictl-net"
    with RawClient(shared_daemon.socket) as client:
        client.call("network.create", {"name": net, "subnets": [{"subnet": "10.253.0.0/24"}]})
    for sandbox in ("a" * 64, "b" * 64, "c" * 64):
        leak(shared_daemon, net, sandbox)
    env = fake_crictl(
        tmp_path / "bin",
        f'[ "$*" = "pods --quiet --no-trunc" ] || exit 3\necho {"a" * 64}\necho {"b" * 64}',
    )
    released = gc_json(shared_daemon, net, "--from-crictl", env=env)
    assert [x["container_id"] for x in released["released"]] == ["c" * 64]
    assert [cid for cid, _ in holders(shared_daemon, net)] == ["a" * 64, "b" * 64]


def test_a_runtime_that_cannot_answer_fails_gc_and_releases_nothing(
    shared_daemon: Daemon, tmp_path: Path
) -> None:
    net = "crictl-down"
    with RawClient(shared_daemon.socket) as client:
        client.call("network.create", {"name": net, "subnets": [{"subnet": "10.254.0.0/24"}]})
    leak(shared_daemon, net, "a" * 64)
    env = fake_crictl(tmp_path / "bin", 'echo "connect: connection refused" >&2\nexit 1')
    done = gc_cli(shared_daemon, net, "--from-crictl", env=env)
    assert done.returncode == EXIT_UNAVAILABLE, done
    assert "crictl pods --quiet --no-trunc exited 1: connect: connection refused" in done.stderr
    absent = {**os.environ, "PATH": str(tmp_path / "empty")}
    done = gc_cli(shared_daemon, net, "--from-crictl", env=absent)
    assert done.returncode == EXIT_UNAVAILABLE
    assert "crictl is not installed (not found on PATH)" in done.stderr
    assert len(holders(shared_daemon, net)) == 1
