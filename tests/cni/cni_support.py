"""Running the CNI plugin exactly as a CNI runtime does: exec, environment, config on stdin.

`Cni` execs the plugin with a clean environment, so nothing of the test's own
(IPAMD_SOCKET, say) leaks in; the daemon's socket reaches the plugin only
through the config's `ipam.socket`.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import Daemon

VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CNI_DIR = Path("/usr/lib/cni")
BUILD = Path(__file__).resolve().parents[2] / "contrib" / "cni" / "build.sh"
PLUGIN_ENV = "IPAMD_CNI_PLUGIN"
BUILD_TIMEOUT_S = 300.0
# One plugin call is one process start; a loaded CI machine gets this long.
PLUGIN_TIMEOUT_S = 30.0


def plugin_binary(build_dir: Path) -> Path:
    """The plugin $IPAMD_CNI_PLUGIN names (CI builds it first), else one built into `build_dir`."""
    given = os.environ.get(PLUGIN_ENV)
    if given:
        return Path(given).resolve()
    binary = build_dir / "ipamd"
    done = subprocess.run(
        [str(BUILD), str(binary)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    assert done.returncode == 0, f"cannot build the CNI plugin: {done.stderr}"
    return binary


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: Any  # the JSON on stdout, or None when there was none
    stderr: str

    @property
    def code(self) -> int | None:
        """The CNI error code, when the plugin failed."""
        return self.output.get("code") if isinstance(self.output, dict) else None


@dataclass(frozen=True)
class Cni:
    plugin: Path
    socket: Path

    def config(self, name: str, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
        """A network config with an ipamd IPAM section; `ranges` defaults to one /24."""
        ipam.setdefault("ranges", [[{"subnet": "10.250.0.0/24"}]])
        return {
            "cniVersion": version,
            "name": name,
            "type": "bridge",
            "ipam": {"type": "ipamd", "socket": str(self.socket), **ipam},
        }

    def run(
        self,
        command: str,
        config: dict[str, Any] | bytes | None,
        container_id: str = "c1",
        ifname: str = "eth0",
        **env: str | None,
    ) -> Outcome:
        """Exec the plugin; `env` adds variables, or removes them when None."""
        environ: dict[str, str | None] = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/var/run/netns/{container_id}",
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.plugin.parent),
            **env,
        }
        stdin = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
        done = subprocess.run(
            [str(self.plugin)],
            input=b"" if config is None else stdin,
            env={k: v for k, v in environ.items() if v is not None},
            capture_output=True,
            timeout=PLUGIN_TIMEOUT_S,
        )
        text = done.stdout.decode()
        return Outcome(
            done.returncode, json.loads(text) if text.strip() else None, done.stderr.decode()
        )

    def ok(self, command: str, config: dict[str, Any], **kwargs: Any) -> Any:
        """Run and require success; the output."""
        outcome = self.run(command, config, **kwargs)
        assert outcome.returncode == 0, outcome
        return outcome.output

    def fails(self, command: str, config: Any, code: int, **kwargs: Any) -> dict[str, Any]:
        """Run and require the CNI error `code`; the error JSON."""
        outcome = self.run(command, config, **kwargs)
        assert outcome.returncode != 0 and outcome.code == code, outcome
        assert set(outcome.output) <= {"cniVersion", "code", "msg", "details"}, outcome
        assert outcome.output["msg"], outcome
        return outcome.output  # type: ignore[no-any-return]


def leases(daemon: Daemon, network: str) -> list[dict[str, Any]]:
    with daemon.client() as client:
        return client.call("lease.list", {"network": network})["leases"]  # type: ignore[no-any-return]
