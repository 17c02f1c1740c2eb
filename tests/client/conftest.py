"""Fixtures for the client tests: a daemon shared by a module, unique names, fake peers."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.client.fakes import FakePeer

_numbers = itertools.count(1)


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names unique to the test, valid as network names and container ids."""
    token = f"t{next(_numbers)}"
    return lambda what: re.sub(r"[^A-Za-z0-9_.-]", "-", f"{token}-{what}")[:64]


@pytest.fixture
def fake_peer(tmp_path: Path) -> Iterator[Callable[[str], FakePeer]]:
    """Start a `FakePeer` on a socket in tmp_path with the given behaviour."""
    peers: list[FakePeer] = []

    def start(behaviour: str) -> FakePeer:
        peer = FakePeer(tmp_path / f"fake-{len(peers)}.sock", behaviour)
        peers.append(peer)
        return peer.start()

    try:
        yield start
    finally:
        for peer in peers:
            peer.stop()
