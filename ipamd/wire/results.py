"""Results as they go on the wire (DESIGN.md section 4): the one place that turns
outcomes and snapshots into maps. Pure: no I/O.

The writer hands out typed outcomes (ipamd/core/outcomes.py) and the service's
reads find snapshots and leases; both are rendered here, so `alloc` and `get`,
which share a shape, cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ipamd.core.lease import Lease
from ipamd.core.network import Network, address_text
from ipamd.core.outcomes import (
    Allocated,
    Collected,
    Confirmed,
    NetworkCreated,
    NetworkDeleted,
    Reclaimed,
    Released,
)
from ipamd.core.snapshot import NetworkSnapshot

# msgpack integers stop at 64 bits; an IPv6 /64 has 2**64 addresses.
LARGEST_WIRE_INT = 2**63 - 1


def wire_count(n: int) -> int | str:
    """Counts too big for msgpack's 64-bit integers travel as decimal strings."""
    return n if n <= LARGEST_WIRE_INT else str(n)


def attachments(held: Iterable[tuple[Network, Lease]]) -> dict[str, Any]:
    """The `networks` map of `alloc` and `get`: per network, one attachment."""
    out = {}  # a loop, not a comprehension: in CPython 3.11 that is one more frame per alloc
    for network, lease in held:
        out[network.name] = {"ifname": lease.key.ifname, "ips": lease.ips_to_wire(network)}
    return out


def network_result(snap: NetworkSnapshot, *, with_stats: bool) -> dict[str, Any]:
    """`network.list`'s entry; with per-subnet counts for `network.get` and `stats`."""
    out = snap.network.to_wire()
    out["leases"] = snap.leases
    if with_stats:
        out["suspect"] = snap.suspect
        for wire, stats in zip(out["subnets"], snap.subnets, strict=True):
            wire.update(
                size=wire_count(stats.size),
                allocatable=wire_count(stats.allocatable),
                used=wire_count(stats.used),
                free=wire_count(stats.free),
                utilisation=round(stats.utilisation, 6),
            )
    return out


def _allocated(outcome: Allocated) -> dict[str, Any]:
    return {"container_id": outcome.container_id, "networks": attachments(outcome.held)}


def _released(outcome: Released) -> dict[str, Any]:
    released = outcome.addresses
    return {"released": {name: [address_text(a) for a in held] for name, held in released.items()}}


def _collected(outcome: Collected) -> dict[str, Any]:
    network, boot = outcome.network, outcome.boot
    released = [lease.to_wire(network, boot) for lease in outcome.released]
    return {"released": released, "confirmed": outcome.confirmed}


def _confirmed(outcome: Confirmed) -> dict[str, Any]:
    return {"confirmed": outcome.count}


def _reclaimed(outcome: Reclaimed) -> dict[str, Any]:
    boot = outcome.boot
    return {"released": [lease.to_wire(network, boot) for network, lease in outcome.released]}


def _network_created(outcome: NetworkCreated) -> dict[str, Any]:
    return outcome.network.to_wire()


def _network_deleted(outcome: NetworkDeleted) -> dict[str, Any]:
    return {"name": outcome.name, "released": outcome.released}


_RENDERERS: dict[type, Callable[[Any], Any]] = {
    Allocated: _allocated,
    Released: _released,
    Collected: _collected,
    Confirmed: _confirmed,
    Reclaimed: _reclaimed,
    NetworkCreated: _network_created,
    NetworkDeleted: _network_deleted,
}


def result_of(outcome: Any) -> Any:
    """The wire result of a mutation's outcome. Anything that is not an outcome
    (cluster mode's `cluster.*` answers, already maps) goes out as it is."""
    render = _RENDERERS.get(type(outcome))
    return outcome if render is None else render(outcome)
