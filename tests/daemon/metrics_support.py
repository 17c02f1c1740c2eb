"""Helpers for the metrics tests: a free loopback port, an HTTP scrape, the parser.

Scrapes are parsed with prometheus_client's own text parser, so what is
checked is what a Prometheus server would read.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import Daemon


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(port: int, method: str = "GET", path: str = "/metrics", **kw: object) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, **kw)  # type: ignore[arg-type]
        response = conn.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


def scrape(port: int) -> str:
    reply = http_request(port)
    assert reply.status == 200, reply
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return reply.body.decode("utf-8")


@dataclass(frozen=True)
class Family:
    type: str
    # sample name -> tuple of sorted label items -> value
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]]

    def value(self, sample: str, **labels: str) -> float:
        return self.samples[sample][tuple(sorted(labels.items()))]


def parse(text: str) -> dict[str, Family]:
    families: dict[str, Family] = {}
    for family in text_string_to_metric_families(text):
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        assert family.name not in families, f"{family.name} twice"
        families[family.name] = Family(family.type, samples)
    return families


def metrics_config(path: Path, port: int) -> Path:
    path.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    return path


def metrics_daemon(base: Path) -> tuple[Daemon, int]:
    """A started `ipamd` whose HTTP endpoint listens on a free loopback port."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    daemon = Daemon(
        state_dir=base / "state",
        socket=base / "ipamd.sock",
        config=metrics_config(base / "ipamd.toml", port),
    )
    return daemon.start(), port
