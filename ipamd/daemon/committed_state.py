"""The read side: what every read is answered from, and nothing that is not synced.

Two parts: the networks' snapshot (ipamd/core/snapshot.py), which the writer
replaces with `publish` only once the group that made it is synced, and the
store's lease lookups, which find only what LevelDB holds, i.e. what was
synced. The service asks this, never the writer; the writer only publishes.

Rules it keeps:
- Read and published on the trio thread only: a read never sees a half-published group.
- Lookups raise `StoreUnavailable` while the database is closed (being
  reopened after a failed write); the service answers those with `unavailable`.
"""

from __future__ import annotations

from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import IPAddress, IPNetwork
from ipamd.core.snapshot import NetworkSnapshot, Snapshot
from ipamd.storage.store import Store


class CommittedState:
    def __init__(self, store: Store, networks: Snapshot) -> None:
        self._store = store
        self.networks = networks
        # The current boot id: leases of any other are suspect.
        self.boot = store.boot or ""

    def publish(self, networks: Snapshot) -> None:
        """The writer's, once the group whose decisions made `networks` is synced."""
        self.networks = networks

    def network(self, name: str) -> NetworkSnapshot | None:
        return self.networks.get(name)

    # -- the store's lookups (synced data only) --------------------------------------

    def lease(self, key: LeaseKey) -> Lease | None:
        return self._store.lease(key)

    def owner(self, network: str, address: IPAddress) -> LeaseKey | None:
        return self._store.owner(network, address)

    def leases_of(self, container_id: str) -> list[Lease]:
        return self._store.leases_of(container_id)

    def leases_in_subnet(
        self, network: str, subnet: IPNetwork, after: IPAddress | None, limit: int
    ) -> list[Lease]:
        return self._store.leases_in_subnet(network, subnet, after, limit)

    def suspect_keys(self, after: bytes | None, limit: int) -> tuple[list[LeaseKey], bytes | None]:
        return self._store.suspect_keys(after, limit)
