"""What a decided mutation hands back: typed outcomes, not wire maps. Pure: no I/O.

The writer's decider (ipamd/core/decide.py) makes one per mutation and the
writer passes it, once the group is synced, to whoever submitted it; the
service renders it for the wire (ipamd/wire/results.py). Each outcome carries
the network definitions its rendering needs, as they were when it was decided:
a later mutation in the same group may delete the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipamd.core.lease import Lease
from ipamd.core.network import IPAddress, Network


@dataclass(slots=True)
class Allocated:
    container_id: str
    # Per network of the request, in its order: the network and the lease held there.
    held: tuple[tuple[Network, Lease], ...]


@dataclass(slots=True)
class Released:
    # Per network where a lease of the container was released: the addresses freed.
    addresses: dict[str, list[IPAddress]]


@dataclass(slots=True)
class Collected:
    """A gc: the leases it released (or, with dry_run, would release)."""

    network: Network
    boot: str  # the current boot, against which a lease is suspect
    released: tuple[Lease, ...]
    confirmed: int  # suspect leases it found listed as valid, made current


@dataclass(slots=True)
class Confirmed:
    count: int  # suspect leases made current


@dataclass(slots=True)
class Reclaimed:
    boot: str
    released: tuple[tuple[Network, Lease], ...]


@dataclass(slots=True)
class NetworkCreated:
    network: Network  # the stored definition (the one given, or the identical one held)


@dataclass(slots=True)
class NetworkDeleted:
    name: str
    released: int  # leases released with it (force)


Outcome = Allocated | Released | Collected | Confirmed | Reclaimed | NetworkCreated | NetworkDeleted
