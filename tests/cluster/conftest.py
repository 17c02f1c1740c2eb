"""A single-member etcd shared by a module; each test keeps to its own key prefix."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.support import EtcdCluster, Host, start_hosts

_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def prefix() -> str:
    return f"/t{next(_prefixes)}"


@pytest.fixture
def hosts(tmp_path: Path, etcd: EtcdCluster, prefix: str) -> Iterator[Callable[..., list[Host]]]:
    """`hosts(["h1", "h2"], **config)`: running ipamd hosts, stopped after the test."""
    started: list[Iterator[list[Host]]] = []

    def start(names: list[str], **config: Any) -> list[Host]:
        config.setdefault("prefix", prefix)
        generator = start_hosts(tmp_path, etcd, names, **config)
        started.append(generator)
        return next(generator)

    yield start
    for generator in started:
        generator.close()
