"""What the container tests need before their timed part: the cached root file
system and a directory of wheels for an offline install.

Both are built once and cached under CACHE_DIR (.ci/run builds them before
the suite; these fixtures only check, or build when run alone). The
container has no network (`--private-network`), so systemd/install.sh runs
there with pip's own PIP_NO_INDEX and PIP_FIND_LINKS pointing at the wheels,
which the host downloads from the index it is configured with.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("IPAMD_TEST_CACHE", "/var/cache/ipamd-test"))


def requirements() -> list[str]:
    """What pip needs to build and install the project: its build backend and dependencies."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return sorted([*project["build-system"]["requires"], *project["project"]["dependencies"]])


@pytest.fixture(scope="session")
def rootfs() -> Path:
    if os.geteuid() != 0:
        pytest.skip("booting a container needs root")
    for tool in ("systemd-nspawn", "nsenter", "mount"):
        assert shutil.which(tool), f"{tool} is missing: .ci/run installs it"
    done = subprocess.run(
        ["bash", str(Path(__file__).with_name("build_rootfs.sh")), str(CACHE_DIR)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def wheels() -> Path:
    wanted = requirements()
    key = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:12]
    target = CACHE_DIR / f"wheels-{key}"
    if (target / ".complete").exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".wheels-", dir=CACHE_DIR))
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(work), *wanted],
            check=True,
        )
        (work / ".complete").touch()
        try:
            work.rename(target)
        except OSError:  # another run finished first: theirs is as good
            assert (target / ".complete").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
