from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A running `ipamd` on a temp state dir; stopped (or killed) after the test."""
    instance = Daemon(state_dir=tmp_path / "state", socket=tmp_path / "ipamd.sock").start()
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One `ipamd` for a whole module; its tests keep apart by their own names."""
    base = tmp_path_factory.mktemp("shared")
    instance = Daemon(state_dir=base / "state", socket=base / "ipamd.sock").start()
    try:
        yield instance
    finally:
        instance.close()
