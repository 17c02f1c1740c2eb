"""Fixtures for the CNI plugin tests: the plugin on a CNI_PATH, a daemon per module.

`plugin_dir` holds the plugin under the name `ipamd`, which is what
`"ipam": {"type": "ipamd"}` makes a runtime look for on CNI_PATH.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cni.cni_support import Cni
from tests.support import Daemon


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for CNI_PATH holding ipamd-cni under the name `ipamd`."""
    directory = tmp_path_factory.mktemp("cni-bin")
    console_script = Path(sys.executable).parent / "ipamd-cni"
    if console_script.exists():
        (directory / "ipamd").symlink_to(console_script)
    else:
        script = directory / "ipamd"
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ipamd_cni.plugin "$@"\n')
        script.chmod(0o755)
    return directory


@pytest.fixture
def cni(plugin_dir: Path, shared_daemon: Daemon) -> Cni:
    return Cni(plugin_dir / "ipamd", shared_daemon.socket)
