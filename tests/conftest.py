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
        if instance.proc is not None and instance.proc.poll() is None:
            try:
                instance.stop(timeout=10)
            except Exception:
                instance.kill()
