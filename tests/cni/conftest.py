"""Fixtures for the CNI plugin tests: the plugin on a CNI_PATH, a daemon per module.

`plugin_dir` holds the Go plugin (contrib/cni/) under the name `ipamd`, which is
what `"ipam": {"type": "ipamd"}` makes a runtime look for on CNI_PATH. CI builds
it first and names it in $IPAMD_CNI_PLUGIN; without that, the session builds it
with contrib/cni/build.sh (which needs Go; see contrib/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cni.cni_support import Cni, plugin_binary
from tests.support import Daemon


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for CNI_PATH holding the plugin under the name `ipamd`."""
    directory = tmp_path_factory.mktemp("cni-bin")
    (directory / "ipamd").symlink_to(plugin_binary(tmp_path_factory.mktemp("cni-build")))
    return directory


@pytest.fixture
def cni(plugin_dir: Path, shared_daemon: Daemon) -> Cni:
    return Cni(plugin_dir / "ipamd", shared_daemon.socket)
