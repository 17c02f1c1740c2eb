"""The shipped systemd units and example config, checked by the tools that read them.

- `systemd-analyze verify` must accept both units with exit 0 and say
  nothing. Unknown keys and bad values are only warnings on stderr (exit 0),
  so an empty stderr is the real check.
- `systemd-analyze security --offline=yes` must rate the service below 2.0.
- systemd/ipamd.conf must be valid TOML once its settings are uncommented,
  and must show every key.

Needs only /usr/bin/systemd-analyze (systemd 250 or later for --offline).
It works as any user and without systemd running as PID 1 (as in a
container). The tests skip when the tool is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ipamd.config import CLUSTER_KEYS

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
SERVICE = SYSTEMD_DIR / "ipamd.service"
SOCKET = SYSTEMD_DIR / "ipamd.socket"
METRICS_SOCKET = SYSTEMD_DIR / "ipamd-metrics.socket"
CONFIG = SYSTEMD_DIR / "ipamd.conf"

INSTALLED_DAEMON = "/opt/ipamd/bin/ipamd"
SHIPPED_EXEC_START = (
    f"ExecStart={INSTALLED_DAEMON} --config /etc/ipamd/ipamd.conf --state-dir ${{STATE_DIRECTORY}}"
)

MAX_EXPOSURE = 2.0
"""Below this, systemd-analyze rates a service "OK" or better. The unit scores 0.7."""

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",  # the security table uses emoji in UTF-8 locales
        timeout=60,
        check=False,
    )


def daemon_stand_in(tmp_path: Path) -> Path:
    """An executable for ExecStart=, for `verify`.

    verify fails when ExecStart='s program does not exist ("Command ... is
    not executable"). It only checks that the file exists and is executable,
    and never runs it. The unit names /opt/ipamd/bin/ipamd, the venv that
    systemd/install.sh makes on a host. A checkout or CI venv has no file
    there, and a test must not write to /opt.
    So the test verifies a copy whose ExecStart names another executable,
    and changes nothing else. It prefers the real console script when `pip`
    installed one next to this interpreter (the CI venv). Otherwise it uses
    an inert stub, which passes the same check.

    `systemd-analyze verify --root=DIR` would keep the unit byte for byte,
    but then it looks for every unit (sysinit.target, sockets.target, ...)
    under DIR too. That means copying the host's unit tree, which costs more
    than it proves.
    """
    installed = Path(sys.executable).parent / "ipamd"
    if installed.is_file():
        return installed
    stub = tmp_path / "ipamd"
    stub.write_text("#!/bin/sh\necho 'stand-in for ipamd, never run' >&2\nexit 1\n")
    stub.chmod(0o755)
    return stub


@needs_systemd_analyze
def test_units_verify_cleanly(tmp_path: Path) -> None:
    service_text = SERVICE.read_text()
    assert service_text.count(SHIPPED_EXEC_START + "\n") == 1, "ExecStart changed"
    daemon = daemon_stand_in(tmp_path)
    units = tmp_path / "units"
    units.mkdir()
    # Both units are verified together from one directory: the socket alone
    # fails with "service ipamd.service not loaded, socket cannot be started".
    (units / SERVICE.name).write_text(
        service_text.replace(f"ExecStart={INSTALLED_DAEMON} ", f"ExecStart={daemon} ")
    )
    shutil.copy(SOCKET, units / SOCKET.name)
    shutil.copy(METRICS_SOCKET, units / METRICS_SOCKET.name)
    print(f"verifying with ExecStart={daemon}")

    result = systemd_analyze(
        "verify",
        "--man=no",
        str(units / SOCKET.name),
        str(units / METRICS_SOCKET.name),
        str(units / SERVICE.name),
    )

    assert (result.returncode, result.stderr) == (0, "")


@needs_systemd_analyze
def test_service_exposure_is_low() -> None:
    result = systemd_analyze("security", "--offline=yes", str(SERVICE))
    assert result.returncode == 0, result.stderr

    # "→ Overall exposure level for ipamd.service: 0.7 SAFE 😀" ("->" in the C locale)
    match = re.search(r"Overall exposure level for ipamd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    exposure = float(match.group(1))
    print(f"systemd-analyze security: exposure {exposure} for {SERVICE.name}")
    assert exposure < MAX_EXPOSURE, result.stdout


def test_every_failure_is_retried_at_a_pace_without_a_start_limit() -> None:
    # ipamd.service says why: under socket activation a waiting client restarts
    # the service at once anyway, so RestartPreventExitStatus= would only turn
    # paced retries into a burst that fails the socket (tests/nspawn checks
    # the behaviour under a real systemd).
    lines = SERVICE.read_text().splitlines()
    assert "Restart=on-failure" in lines
    assert "StartLimitIntervalSec=0" in lines
    assert [line for line in lines if line.startswith("RestartSec=")] == ["RestartSec=2s"]
    assert not [line for line in lines if line.startswith("RestartPreventExitStatus=")]
    assert "RemoveOnStop=yes" in SOCKET.read_text().splitlines()


def test_install_script_knows_the_units_it_installed() -> None:
    # install.sh rewrites or removes a unit file only when it carries the marker.
    script = (SYSTEMD_DIR / "install.sh").read_text()
    (marker,) = re.findall(r'^MARKER="(.*)"$', script, re.MULTILINE)
    for unit in (SERVICE, SOCKET):
        assert marker in unit.read_text().splitlines(), unit


def uncommented(text: str) -> str:
    """The example config with its settings switched on: `#key` -> `key`."""
    return "\n".join(line[1:] if re.match(r"#[^\s#]", line) else line for line in text.splitlines())


def test_example_config_shows_every_key() -> None:
    text = CONFIG.read_text()
    assert tomllib.loads(text) == {}, "the example must change nothing until edited"

    config = tomllib.loads(uncommented(text))

    assert set(config) == {
        "socket",
        "state_dir",
        "log_level",
        "socket_mode",
        "socket_group",
        "auth",
        "limits",
        "metrics",
        "leases",
        "networks",
        "cluster",
    }
    assert set(config["cluster"]) == CLUSTER_KEYS
    assert config["cluster"]["prefix"] == "/ipamd"
    assert config["metrics"] == {"listen": "127.0.0.1:9388"}
    assert set(config["auth"]) == {"allow_uids", "allow_gids"}
    assert config["leases"] == {
        "boot_id_path": "/proc/sys/kernel/random/boot_id",
        "reclaim_after_reboot": "10m",
    }
    assert config["limits"] == {
        "max_frame_bytes": 1048576,
        "max_array_len": 4096,
        "max_connections": 1024,
        "max_in_flight": 64,
        "idle_timeout_s": 300,
        "max_batch": 256,
    }
    assert config["log_level"] == "info"
    assert config["socket_mode"] == "0660"
    (network,) = config["networks"]
    assert network["name"] == "podman"
    assert network["driver"] == "host-local"
    assert [s["subnet"] for s in network["subnets"]] == ["10.88.0.0/16", "fd00:88::/64"]
    assert set(network["subnets"][0]) == {
        "subnet",
        "gateway",
        "range_start",
        "range_end",
        "exclude",
    }
