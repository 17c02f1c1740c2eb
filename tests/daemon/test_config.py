"""The daemon's TOML config and command line, through the real process (DESIGN.md s6).

Start-up failures exit with the sysexits status of systemd/ipamd.service (64 bad
command line, 78 bad config) and say why in one line on stderr.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.e2e import EXIT_CONFIG, EXIT_USAGE, run_ipamd, write_config
from tests.support import Daemon

NETWORKS = """
[[networks]]
name = "podman"

[[networks.subnets]]
subnet = "10.88.0.0/16"
gateway = "10.88.0.1"

[[networks]]
name = "dual"

[[networks.subnets]]
subnet = "10.89.0.0/24"

[[networks.subnets]]
subnet = "fd00:89::/64"
gateway = "fd00:89::1"
"""


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in f" {line}"]


def test_networks_in_the_config_are_created_at_start(tmp_path: Path) -> None:
    config = write_config(tmp_path / "ipamd.toml", NETWORKS)
    daemon = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock", config=config)
    try:
        daemon.start()
        with daemon.client() as client:
            podman = client.call("network.get", {"name": "podman"})
            dual = client.call("network.get", {"name": "dual"})
            result = client.call("alloc", {"container_id": "c1", "networks": {"dual": {}}})
        # A restart with the same config is fine (ensure semantics) and keeps leases.
        assert daemon.stop() == 0
        daemon.start()
        with daemon.client() as client:
            assert client.call("get", {"container_id": "c1"})["networks"] == result["networks"]
    finally:
        daemon.close()

    assert podman["subnets"][0]["gateway"] == "10.88.0.1"
    assert podman["subnets"][0]["allocatable"] == 65533
    assert [s["subnet"] for s in dual["subnets"]] == ["10.89.0.0/24", "fd00:89::/64"]
    assert [ip["address"] for ip in result["networks"]["dual"]["ips"]] == [
        "10.89.0.1/24",
        "fd00:89::2/64",
    ]


def test_a_config_network_differing_from_the_stored_one_is_a_startup_error(
    tmp_path: Path,
) -> None:
    state, sock = tmp_path / "state", tmp_path / "ipamd.sock"
    daemon = Daemon(state_dir=state, socket=sock).start()
    try:
        with daemon.client() as client:
            client.call(
                "network.create", {"name": "podman", "subnets": [{"subnet": "10.77.0.0/24"}]}
            )
        assert daemon.stop() == 0
    finally:
        daemon.close()
    config = write_config(tmp_path / "ipamd.toml", NETWORKS)

    done = run_ipamd(["--config", str(config), "--socket", str(sock), "--state-dir", str(state)])

    assert done.returncode == EXIT_CONFIG, done.stderr
    (line,) = error_lines(done.stderr)
    assert "podman" in line and "differs from the stored one" in line
    assert not sock.exists()  # it cleaned up after itself


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("socket_mode = 0660\n[limits\n", "not valid TOML"),
        ("colour = 'blue'\n", "colour"),
        ("[limits]\nidle_timeout = 5\n", "idle_timeout"),
        ("[limits]\nmax_connections = 0\n", "max_connections"),
        ("[auth]\nallow_uids = ['root']\n", "allow_uids"),
        ("socket_mode = '0999'\n", "0999"),
        ("log_level = 'chatty'\n", "chatty"),
        ("socket_group = 'no-such-group-e2e'\n", "no-such-group-e2e"),
        ("[[networks]]\nname = 'bad name'\n", "bad name"),
        (
            "[[networks]]\nname = 'n'\n[[networks.subnets]]\nsubnet = '10.0.0.0/24'\n"
            "gateway = '10.1.0.1'\n",
            "10.1.0.1",
        ),
    ],
)
def test_a_bad_config_exits_78_naming_the_problem(tmp_path: Path, text: str, named: str) -> None:
    config = write_config(tmp_path / "ipamd.toml", text)
    sock = tmp_path / "ipamd.sock"

    done = run_ipamd(
        ["--config", str(config), "--socket", str(sock), "--state-dir", str(tmp_path / "s")]
    )

    assert done.returncode == EXIT_CONFIG, done.stderr
    (line,) = error_lines(done.stderr)
    assert named in line and str(config) in line
    assert not sock.exists()


def test_a_missing_config_file_exits_78(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    done = run_ipamd(["--config", str(missing), "--socket", str(tmp_path / "ipamd.sock")])

    assert done.returncode == EXIT_CONFIG
    (line,) = error_lines(done.stderr)
    assert str(missing) in line


@pytest.mark.parametrize(
    "args", [["--bogus"], ["extra-argument"], ["--socket"], ["--state-dir", "a", "b"]]
)
def test_a_bad_command_line_exits_64(tmp_path: Path, args: list[str]) -> None:
    done = run_ipamd(args, cwd=tmp_path)

    assert done.returncode == EXIT_USAGE, done.stderr
    assert "usage: ipamd" in done.stderr


def test_help_and_version_exit_0() -> None:
    assert run_ipamd(["--help"]).returncode == 0
    version = run_ipamd(["--version"])
    assert version.returncode == 0 and "ipamd" in version.stdout
