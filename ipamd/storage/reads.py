"""The read side of the store: what the allocator and the readers ask of it.

`LeaseReads` is the `LeaseView` (core/view.py) that `Store` is. Reads are
point gets and bounded scans, served from LevelDB's memtable and block cache
in microseconds, so callers make them inline on the event loop. Scans of a
whole kind verify block checksums, and a damaged block raises
`CorruptDatabase` rather than ending the scan early (`check_tail`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plyvel

from ipamd.core import keys
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import IPAddress, IPNetwork, Network
from ipamd.storage.failures import CorruptDatabase, reason


class LeaseReads:
    """Reads of an open database; `Store` provides `db`, `path` and `boot`."""

    path: Path
    boot: str | None

    @property
    def db(self) -> plyvel.DB:
        raise NotImplementedError

    def lease(self, key: LeaseKey) -> Lease | None:
        raw = self.db.get(keys.lease_key(key))
        return None if raw is None else keys.decode_lease(key, raw)

    def owner(self, network: str, address: IPAddress) -> LeaseKey | None:
        raw = self.db.get(keys.reverse_key(network, address))
        return None if raw is None else keys.decode_reverse_value(network, raw)

    def leases_of(self, container_id: str, network: str | None = None) -> list[Lease]:
        if network is None:
            prefix = keys.container_prefix(container_id)
            return [
                keys.decode_lease(keys.decode_lease_key(raw_key), value)
                for raw_key, value in self.db.iterator(prefix=prefix)
            ]
        # One network: a narrower scan, and only the ifname left to decode.
        prefix = keys.attachments_prefix(container_id, network)
        return [
            keys.decode_lease(
                LeaseKey(network, container_id, keys.attachment_ifname(prefix, raw_key)), value
            )
            for raw_key, value in self.db.iterator(prefix=prefix)
        ]

    def leases_in(self, network: str) -> Iterator[Lease]:
        """Every lease of a network, in address order of its first subnet."""
        return iter(self.leases_in_subnet(network, None, after=None, limit=None))

    def leases_in_subnet(
        self, network: str, cidr: IPNetwork | None, after: IPAddress | None, limit: int | None
    ) -> list[Lease]:
        """Leases in address order within one subnet, strictly after `after`.

        Every lease holds exactly one address in every subnet of its network, so
        one subnet's reverse entries name every lease once. `cidr` None means the
        network's first subnet.
        """
        if cidr is None:
            raw = self.db.get(keys.network_key(network))
            if raw is None or not keys.decode_network(raw).subnets:
                return []
            cidr = keys.decode_network(raw).subnets[0].cidr
        start, stop = keys.reverse_span(network, cidr)
        if after is not None:
            start = max(start, keys.successor(keys.reverse_key(network, after)))
        out: list[Lease] = []
        for _, value in self.db.iterator(start=start, stop=stop):
            lease = self.lease(keys.decode_reverse_value(network, value))
            if lease is not None:
                out.append(lease)
            if limit is not None and len(out) >= limit:
                break
        return out

    def reverse_entries(self, network: str) -> Iterator[tuple[IPAddress, LeaseKey]]:
        """Every (address, owner) of a network, whatever subnet it claims."""
        for raw_key, value in self._scan(prefix=keys.reverse_network_prefix(network)):
            address = keys.address_of_reverse_key(network, raw_key)
            yield address, keys.decode_reverse_value(network, value)

    def reverse_networks(self) -> set[str]:
        """Names of every network that has reverse entries (for `ipamd check`)."""
        names: set[str] = set()
        for raw_key in self._scan(prefix=keys.REVERSE, include_value=False):
            names.add(keys.network_of_reverse_key(raw_key))
        return names

    def networks(self) -> Iterator[Network]:
        for _, value in self._scan(prefix=keys.NETWORK):
            yield keys.decode_network(value)

    def entries(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under `prefix`: the kinds other modules own."""
        return self._scan(prefix=prefix)

    def all_leases(self) -> Iterator[Lease]:
        for lease, _ in self.lease_entries():
            yield lease

    def lease_entries(self) -> Iterator[tuple[Lease, bytes]]:
        """Every lease with its stored value (`ipamd check` looks at its layout)."""
        for raw_key, value in self._scan(prefix=keys.LEASE):
            yield keys.decode_lease(keys.decode_lease_key(raw_key), value), value

    def suspect_keys(
        self, after: bytes | None, limit: int, scan_limit: int = 20_000
    ) -> tuple[list[LeaseKey], bytes | None]:
        """Up to `limit` keys of leases not made in the current boot, after the
        raw key `after`, looking at `scan_limit` leases at most; and where to go
        on from (None: the end). Bounded both ways, so the event loop runs
        between pages even when suspects are few among many leases."""
        assert self.boot is not None
        prefix = keys.boot_prefix(self.boot)
        start = keys.LEASE if after is None else keys.successor(after)
        found: list[LeaseKey] = []
        entries = self.db.iterator(start=start, stop=keys.LEASES_END)
        for scanned, (raw_key, value) in enumerate(entries, 1):
            if not keys.made_in(value, prefix):
                found.append(keys.decode_lease_key(raw_key))
            if len(found) >= limit or scanned >= scan_limit:
                return found, raw_key
        return found, None

    def _scan(self, **options: Any) -> Iterator[Any]:
        """A whole-range scan that verifies block checksums (a flipped bit in a
        table must not read as a different lease); corruption becomes
        CorruptDatabase. Verifying costs only on blocks read from disk."""
        db = self.db
        try:
            yield from db.iterator(verify_checksums=True, **options)
            check_tail(db)
        except plyvel.Error as e:
            raise CorruptDatabase(f"database {self.path} is corrupt: {reason(e)}") from e


def check_tail(db: plyvel.DB) -> None:
    """Raise plyvel.Error if a table's last block is damaged.

    LevelDB's iterators skip a block that fails its checksum and remember the
    error; plyvel checks that error after each step, but not when the step
    runs off the end. So a scan whose damaged blocks come last just ends early,
    silently. Seeking to the last entry reads the last block of every level-0
    table and of each level's last table: the blocks a forward scan can end in.
    """
    db.raw_iterator(verify_checksums=True).seek_to_last()
