"""The write side of the store: `Change`s into one synced LevelDB batch.

Rules it keeps:
- Every change of a group goes into ONE `WriteBatch(sync=True)`: a lease and
  its reverse entries always travel together, and a success reply means the
  whole group is synced.
- Encoding (`fill`) does no I/O, so it runs on the writer's own thread;
  `commit` writes and syncs, and runs in the committer's (LevelDB releases the
  GIL meanwhile).
- A refused write is `StorageError` (ENOSPC, an I/O error), which the client
  sees; nothing of the batch is applied.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import plyvel

from ipamd.core import keys
from ipamd.core.lease import Lease
from ipamd.core.network import IPAddress
from ipamd.core.view import (
    Change,
    DeleteEntry,
    DeleteLease,
    DeleteNetwork,
    PutEntry,
    PutLease,
    PutNetwork,
    SetCursor,
)
from ipamd.errors import StorageError
from ipamd.storage.failures import reason


def fill(batch: plyvel.WriteBatch, changes: list[Change]) -> None:
    """Put `changes` into `batch`: the database after the batch is as if each
    change had been written in order."""
    # A batch of allocations moves a subnet's cursor once per allocation, and
    # only the last position is ever read: only that one is written, at the end.
    cursors: dict[tuple[str, int], IPAddress] = {}
    for change in changes:
        if isinstance(change, PutLease):
            _put_lease(batch, change.lease)
        elif isinstance(change, SetCursor):
            cursors[(change.network, change.subnet)] = change.address
        elif isinstance(change, DeleteLease):
            key = change.lease.key
            batch.delete(keys.lease_key(key))
            for address in change.owned:
                batch.delete(keys.reverse_key(key.network, address))
        elif isinstance(change, PutNetwork):
            batch.put(keys.network_key(change.network.name), keys.network_value(change.network))
        elif isinstance(change, PutEntry):
            batch.put(change.key, change.value)
        elif isinstance(change, DeleteEntry):
            batch.delete(change.key)
        elif isinstance(change, DeleteNetwork):
            batch.delete(keys.network_key(change.network.name))
            for index in range(len(change.network.subnets)):
                cursors.pop((change.network.name, index), None)  # moved earlier: goes too
                batch.delete(keys.cursor_key(change.network.name, index))
    for (network, subnet), address in cursors.items():
        batch.put(keys.cursor_key(network, subnet), keys.packed_address(address))


def commit(batch: plyvel.WriteBatch, path: Path) -> None:
    """Write and sync a filled batch to the database at `path`. Blocks; raises StorageError."""
    try:
        batch.write()
    except plyvel.Error as e:
        raise StorageError(f"write to {path} failed: {reason(e)}") from e
    except OSError as e:
        raise StorageError(f"write to {path} failed: {os.strerror(e.errno or errno.EIO)}") from e


def _put_lease(batch: plyvel.WriteBatch, lease: Lease) -> None:
    """A lease and its reverse entries, which always travel together."""
    key = lease.key
    batch.put(keys.lease_key(key), keys.lease_value(lease))
    owner = keys.reverse_value(key)
    for address in lease.addresses:
        batch.put(keys.reverse_key(key.network, address), owner)
