"""systemd/ipamd-gc@.service: `systemd-analyze verify` accepts it (with the
daemon's units), and what it runs is a gc that releases only suspect leases.

As in test_systemd_units.py, the unit is verified as a copy whose ExecStart=
names an executable that exists here (/opt/ipamd is what install.sh makes on a
host); nothing else in it changes.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from tests.test_systemd_units import (
    METRICS_SOCKET,
    SERVICE,
    SOCKET,
    SYSTEMD_DIR,
    daemon_stand_in,
    needs_systemd_analyze,
    systemd_analyze,
)

GC_UNIT = SYSTEMD_DIR / "ipamd-gc@.service"
INSTALLED_CLIENT = "/opt/ipamd/bin/ipamd-client"


def exec_start() -> list[str]:
    (line,) = [x for x in GC_UNIT.read_text().splitlines() if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_gc_unit_releases_only_suspect_leases_of_its_network() -> None:
    assert exec_start() == [INSTALLED_CLIENT, "gc", "%i", "--suspect-only", "$IPAMD_GC_FROM"]
    assert 'Environment="IPAMD_GC_FROM=--from-podman"' in GC_UNIT.read_text()


@needs_systemd_analyze
def test_the_gc_unit_verifies_cleanly(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    client = Path(sys.executable).parent / "ipamd-client"
    assert client.is_file(), "the venv's console script"
    (units / "ipamd-gc@podman.service").write_text(
        GC_UNIT.read_text().replace(f"ExecStart={INSTALLED_CLIENT} ", f"ExecStart={client} ")
    )
    daemon = daemon_stand_in(tmp_path)
    (units / SERVICE.name).write_text(
        SERVICE.read_text().replace("ExecStart=/opt/ipamd/bin/ipamd ", f"ExecStart={daemon} ")
    )
    shutil.copy(SOCKET, units / SOCKET.name)
    shutil.copy(METRICS_SOCKET, units / METRICS_SOCKET.name)

    result = systemd_analyze(
        "verify",
        "--man=no",
        str(units / SOCKET.name),
        str(units / METRICS_SOCKET.name),
        str(units / SERVICE.name),
        str(units / "ipamd-gc@podman.service"),
    )

    assert (result.returncode, result.stderr) == (0, "")
