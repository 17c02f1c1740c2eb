"""Suspect leases: leases made in an earlier boot of the host, not confirmed since.

After a reboot every container is gone, but ipamd's leases are durable. A
suspect lease is kept (its container may be restored and re-ADDed, and gets
the same address back) until something decides: an idempotent alloc, a `get`
or a `gc` listing it confirms it; a `gc` not listing it releases it; and, only
when `[leases] reclaim_after_reboot` is set, `reclaim_after_reboot` below
releases whatever is still suspect once the daemon has been up that long.

Rules it keeps:
- Never before the grace: the deadline is the daemon's start plus the grace,
  on trio's clock (tests give it a mock one).
- Never a lease confirmed in this boot: the writer checks each lease again
  when it decides the release (`Allocator.reclaim`), so a confirm that came
  first wins.
- Every lease released for being stale gets its own mutation-log line, saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from ipamd.core.requests import ReclaimRequest
from ipamd.core.snapshot import NetworkSnapshot
from ipamd.errors import IpamError
from ipamd.wire.results import result_of

if TYPE_CHECKING:
    from ipamd.daemon.service import Service

log = logging.getLogger("ipamd.suspects")

# Suspect keys per reclaim mutation: one synced batch, a few milliseconds.
RECLAIM_PAGE = 1000
# After a failed page (the database being reopened, a full disk), wait this
# long before trying again rather than spin.
RECLAIM_RETRY_S = 5.0


def suspect_total(committed: Mapping[str, NetworkSnapshot]) -> int:
    return sum(snap.suspect for snap in committed.values())


def stale_line(lease: Mapping[str, Any]) -> tuple[str, str]:
    """(subject, what) of a released LEASE for the mutation log."""
    ifname = f" ifname={lease['ifname']}" if lease["ifname"] else ""
    subject = f"container_id={lease['container_id']}{ifname} network={lease['network']}"
    ips = ", ".join(ip["address"] for ip in lease["ips"]) or "no address"
    return subject, ips


async def reclaim_after_reboot(
    service: Service,
    deadline: float,
    grace_text: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """At `deadline` (trio's clock), release every lease still from another boot."""
    task_status.started()
    await trio.sleep_until(deadline)
    while suspect_total(service.committed.networks):
        try:
            await _reclaim_all(service, grace_text)
            return
        except IpamError as e:
            log.warning("reclaiming suspect leases failed (%s); trying again", e)
            await trio.sleep(RECLAIM_RETRY_S)


async def _reclaim_all(service: Service, grace_text: str) -> None:
    after: bytes | None = None
    released = 0
    while True:
        keys, after = service.committed.suspect_keys(after, RECLAIM_PAGE)
        if keys:
            result = result_of(await service.writer.submit(ReclaimRequest(tuple(keys))))
            for lease in result["released"]:
                subject, ips = stale_line(lease)
                service.mutation_log.record(
                    "reclaim",
                    subject,
                    "ipamd",
                    f"released {ips}: made in boot {lease['boot']}, not confirmed within"
                    f" reclaim_after_reboot ({grace_text}) of start",
                )
            released += len(result["released"])
            for lease in result["released"]:
                service.counters.reclaimed[lease["network"]] += 1
        if after is None:
            break
        await trio.lowlevel.checkpoint()  # let requests in between pages
    log.info("reclaim_after_reboot (%s): released %d suspect lease(s)", grace_text, released)
