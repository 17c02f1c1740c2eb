"""The STATUS= line that `systemctl status ipamd` shows, kept current.

systemd keeps the last STATUS= a service sent, so a line sent once with
READY=1 goes stale at the first allocation. `StatusReporter.run` looks at the
counts every STATUS_REFRESH_S and sends a new line only when it reads
differently, so an idle daemon sends nothing. The counts come from the
`status` method, so the line and `ipamd-client status` never disagree.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from ipamd.daemon import sdnotify
from ipamd.daemon.service import Service

STATUS_REFRESH_S = 1.0
"""How stale the line may be. A refresh adds up one count per network."""


def status_text(status: dict[str, Any]) -> str:
    """One line from a `status` result: what an operator checks first."""
    text = (
        f"{status['leases']} lease(s) on {status['networks']} network(s), "
        f"{status['connections']} client(s) connected, "
        f"{status['mutations']} change(s) since start"
    )
    if status["failed_writes"]:
        text += f"; {status['failed_writes']} failed write(s) since start"
    if status.get("suspect"):
        text += f"; {status['suspect']} suspect (from an earlier boot, not confirmed yet)"
    cluster = status.get("cluster")
    if cluster is not None:
        if cluster.get("etcd_error"):
            text += f"; cluster: {cluster['etcd_error']}"
        elif not cluster["caught_up"]:
            text += "; cluster: catching up with etcd"
    return text


class StatusReporter:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.sent: str | None = None
        self._scope = trio.CancelScope()

    def text(self) -> str:
        return status_text(self.service.status({}))

    def mark_sent(self, text: str) -> None:
        """`text` went out some other way (with READY=1)."""
        self.sent = text

    def refresh(self) -> None:
        text = self.text()
        # Not marked sent when sending failed: the next refresh tries again.
        if text != self.sent and sdnotify.notify(f"STATUS={text}"):
            self.sent = text

    async def run(self) -> None:
        """Refresh until `stop()`; returns at once when not under systemd."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        with self._scope:
            while True:
                await trio.sleep(STATUS_REFRESH_S)
                self.refresh()

    def stop(self) -> None:
        """Before STOPPING=1, so that no count overwrites "shutting down"."""
        self._scope.cancel()
