"""Fixtures for the end-to-end tests: a daemon shared by a module, and clients of it."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pytest

from tests.support import Daemon, RawClient

_test_numbers = itertools.count(1)


@pytest.fixture
def client(shared_daemon: Daemon) -> Iterator[RawClient]:
    with shared_daemon.client(timeout=20) as instance:
        yield instance


@pytest.fixture
def net_name(request: pytest.FixtureRequest) -> str:
    """A network name unique to the test (names are 1-64 of [A-Za-z0-9_.-])."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[-64:]


@pytest.fixture
def cid() -> Callable[[str], str]:
    """Container ids unique to the test: `get`/`release` without networks see every network."""
    token = f"t{next(_test_numbers)}"
    return lambda name: f"{token}-{name}"
