"""The decider: one mutation in, its typed outcome and the changes to persist
out, decided against the allocator's pools and a view of the leases. Pure: no
I/O; the writer (ipamd/daemon/writer.py) calls it in order, one group at a time.

Rules it keeps:
- It renders nothing: outcomes are typed (outcomes.py); the service turns them
  into wire maps.
- A mutation of another module (cluster mode's block claims) goes to that
  module's `ExtensionDecisions.decide`, in the same order and the same groups.
"""

from __future__ import annotations

from typing import Any, Protocol

from ipamd.core.allocator import Allocator, NetworkPool, WritableView
from ipamd.core.outcomes import (
    Allocated,
    Collected,
    Confirmed,
    NetworkCreated,
    NetworkDeleted,
    Outcome,
    Reclaimed,
    Released,
)
from ipamd.core.requests import (
    AllocRequest,
    ConfirmRequest,
    CreateNetworkRequest,
    DeleteNetworkRequest,
    GcRequest,
    Mutation,
    ReclaimRequest,
    ReleaseRequest,
)
from ipamd.core.view import Change, PendingLeases, PutLease


class ExtensionMutation:
    """A mutation the writer's extension decides (a cluster block claimed or
    given up, ipamd/cluster/local.py): in order, in the same groups and syncs."""


class ExtensionDecisions(Protocol):
    """The deciding half of the writer's extension (daemon/writer.py's `WriterExtension`)."""

    def created(self, pool: NetworkPool) -> None:
        """`pool` was just created by a network.create decision."""

    def decide(
        self, mutation: ExtensionMutation, allocator: Allocator, view: PendingLeases
    ) -> tuple[Any, list[Change]]:
        """Its own mutations: a result for their submitter, and the changes."""
        ...


def decide(
    mutation: Mutation,
    allocator: Allocator,
    view: WritableView,
    now: int,
    extension: ExtensionDecisions | None = None,
) -> tuple[Outcome, list[Change]]:
    """Raises the mutation's `IpamError` when it is refused (the pools unchanged)."""
    if isinstance(mutation, AllocRequest):
        leases, changes = allocator.alloc(mutation, view, now)
        pools = allocator.pools  # every network in `leases` has one: alloc just used it
        # A list comprehension, not a generator: no generator frame per alloc.
        held = tuple([(pools[name].network, lease) for name, lease in leases.items()])
        return Allocated(mutation.container_id, held), changes
    if isinstance(mutation, ReleaseRequest):
        released, changes = allocator.release(mutation, view)
        return Released(released), changes
    if isinstance(mutation, GcRequest):
        stale, changes = allocator.gc(mutation, view)
        network = allocator.pool(mutation.network).network
        confirmed = sum(isinstance(change, PutLease) for change in changes)
        return Collected(network, allocator.boot, tuple(stale), confirmed), changes
    if isinstance(mutation, ConfirmRequest):
        made_current, changes = allocator.confirm(mutation, view)
        return Confirmed(len(made_current)), changes
    if isinstance(mutation, ReclaimRequest):
        reclaimed, changes = allocator.reclaim(mutation, view)
        pools = allocator.pools
        held = tuple([(pools[lease.key.network].network, lease) for lease in reclaimed])
        return Reclaimed(allocator.boot, held), changes
    if isinstance(mutation, CreateNetworkRequest):
        network, changes = allocator.create_network(mutation.network)
        if changes and extension is not None:
            extension.created(allocator.pools[network.name])
        return NetworkCreated(network), changes
    if isinstance(mutation, DeleteNetworkRequest):
        count, changes = allocator.delete_network(mutation.name, mutation.force, view)
        return NetworkDeleted(mutation.name, count), changes
    raise TypeError(f"not a mutation: {mutation!r}")
