"""The metrics text, for the `metrics` method and the HTTP endpoint alike.

The collector (metrics_collector.py) and prometheus_client are imported on the
first call, not at start: most daemons are never scraped, and the import
costs about 18 ms of start-up. A daemon with an HTTP endpoint calls `prepare`
before READY instead, so no scrape pays for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipamd.daemon.service import Service

# The Prometheus text format, version 0.0.4: what `render` returns.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, service: Service) -> None:
        self._service = service
        self._render: Callable[[], bytes] | None = None

    def prepare(self) -> None:
        if self._render is None:
            from ipamd.metrics.collector import renderer

            self._render = renderer(self._service)

    def render(self) -> bytes:
        """Every metric, in the text exposition format (UTF-8)."""
        self.prepare()
        assert self._render is not None
        return self._render()

    def text(self) -> str:
        return self.render().decode("utf-8")
