"""ipamd-metrics.socket under a real systemd 252 (container.py): the TCP socket
systemd binds in the host's network namespace serves the daemon's metrics,
while the service keeps PrivateNetwork=yes, RestrictAddressFamilies=AF_UNIX
and IPAddressDeny=any.

- A scrape that arrives before the daemon runs starts it (socket activation)
  and is answered;
- the daemon runs in a network namespace of its own, not PID 1's;
- what the scrape says agrees with `stats` after an allocation;
- only /metrics exists.

Waiting is on events: the client blocks until answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.metrics_support import parse
from tests.nspawn.container import Container

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL = "/src/systemd/install.sh"
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"}
# Debian's python3 inside the container: status, content type, then the body.
SCRAPE = """
import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen("http://127.0.0.1:9388" + sys.argv[1], timeout=60)
except urllib.error.HTTPError as e:
    print(e.code); print(e.headers["content-type"]); sys.stdout.write(e.read().decode())
else:
    print(r.status); print(r.headers["content-type"]); sys.stdout.write(r.read().decode())
"""


@pytest.fixture(scope="module")
def box(
    rootfs: Path, wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    container = Container(
        rootfs, tmp_path_factory.mktemp("nspawn-metrics"), {REPO_ROOT: "/src", wheels: "/wheels"}
    )
    try:
        container.boot()
        container.run(INSTALL, env=OFFLINE, timeout=300)
        yield container
    finally:
        container.shutdown()


def scrape(box: Container, path: str = "/metrics") -> tuple[int, str, str]:
    out = box.run("python3", "-c", SCRAPE, path, timeout=90).stdout
    status, content_type, body = out.split("\n", 2)
    return int(status), content_type, body


def test_install_leaves_the_metrics_socket_off(box: Container) -> None:
    assert box.show("ipamd-metrics.socket", "UnitFileState") == "disabled"
    assert box.show("ipamd-metrics.socket", "ActiveState") == "inactive"


def test_a_scrape_starts_the_sandboxed_daemon_and_is_answered(box: Container) -> None:
    box.run("systemctl", "enable", "--now", "ipamd-metrics.socket")
    assert box.show("ipamd-metrics.socket", "Listen") == "127.0.0.1:9388 (Stream)"
    assert box.show("ipamd.service", "ActiveState") == "inactive"

    status, content_type, body = scrape(box)

    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    families = parse(body)
    assert families["ipamd_writer_up"].value("ipamd_writer_up") == 1
    # The process collector reads /proc/self inside the sandbox (ProtectProc=invisible).
    assert families["process_max_fds"].value("process_max_fds") == 4096  # LimitNOFILE=
    assert families["process_open_fds"].value("process_open_fds") > 3
    assert box.show("ipamd.service", "ActiveState") == "active"
    # The sandbox stays as the unit says, and the daemon is not in PID 1's namespace.
    assert box.show("ipamd.service", "PrivateNetwork") == "yes"
    assert box.show("ipamd.service", "RestrictAddressFamilies") == "AF_UNIX"
    pid = box.show("ipamd.service", "MainPID")
    namespaces = box.run("readlink", f"/proc/{pid}/ns/net", "/proc/1/ns/net").stdout.split()
    assert len(set(namespaces)) == 2, namespaces


def test_the_scrape_agrees_with_stats(box: Container) -> None:
    box.run("ipamd-client", "network", "create", "podman", "--subnet", "10.88.0.0/16")
    box.run("ipamd-client", "alloc", "c1", "--network", "podman")
    stats = json.loads(box.run("ipamd-client", "--json", "stats").stdout)

    families = parse(scrape(box)[2])

    (podman,) = [n for n in stats["networks"] if n["name"] == "podman"]
    (subnet,) = podman["subnets"]
    free = families["ipamd_subnet_free_addresses"]
    assert (
        free.value("ipamd_subnet_free_addresses", network="podman", subnet="10.88.0.0/16")
        == (subnet["free"])
    )
    leases = families["ipamd_network_leases"]
    assert leases.value("ipamd_network_leases", network="podman") == podman["leases"] == 1
    allocations = families["ipamd_allocations"]
    assert allocations.value("ipamd_allocations_total", network="podman") == 1


def test_only_metrics_is_served(box: Container) -> None:
    status, _, body = scrape(box, "/")
    assert status == 404 and "/metrics" in body
