"""The method table of DESIGN.md section 4: params in, result or `IpamError` out.

Mutations are parsed into typed requests and handed to the writer, which
answers with a typed outcome once their batch is synced; that outcome is
rendered for the wire here, through ipamd/wire/results.py, as the reads are.
Reads are answered here, synchronously, from the committed state
(ipamd/daemon/committed_state.py: synced data only), so they never wait for
the writer. Authorisation happens here too: the server passes in the caller's
SO_PEERCRED credentials and, when allow_gids is set, its supplementary groups
(ipamd/daemon/peercred.py).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from ipamd import __version__
from ipamd.config import Config
from ipamd.core.lease import Lease, LeaseKey, validate_container_id, validate_ifname
from ipamd.core.network import parse_address, validate_name
from ipamd.core.outcomes import Confirmed
from ipamd.core.requests import (
    AllocRequest,
    ConfirmRequest,
    CreateNetworkRequest,
    DeleteNetworkRequest,
    GcRequest,
    Mutation,
    ReleaseRequest,
    check_keys,
)
from ipamd.core.snapshot import NetworkSnapshot
from ipamd.daemon.committed_state import CommittedState
from ipamd.daemon.mutation_log import MutationLog
from ipamd.daemon.suspects import stale_line, suspect_total
from ipamd.daemon.writer import Writer
from ipamd.errors import (
    InvalidRequest,
    IpamError,
    LeaseNotFound,
    NetworkNotFound,
    PermissionDenied,
    UnknownMethod,
)
from ipamd.metrics.instruments import ConnectionCounters, RequestCounters
from ipamd.metrics.text import Metrics
from ipamd.wire.results import attachments, network_result, result_of
from ipamd.wire.values import as_map, as_optional_map

log = logging.getLogger("ipamd.service")
# What the server gets for a mutation: `on_answer(render, outcome, error)`,
# called in the writer's task, where `render(outcome, error)` gives the wire's
# (result, error), logged and counted. The server calls it when it delivers, on
# the poller's turn: rendering, logging and counting a group's answers one by
# one as each is written, rather than all of them before the first leaves, is
# what keeps the first client's wait short. `on_answer` bound to its render
# (functools.partial) is the writer's OnDone: no frame of ours between the two.
Reply: TypeAlias = tuple[Any, IpamError | None]
Render: TypeAlias = Callable[[Any, IpamError | None], Reply]
OnAnswer: TypeAlias = Callable[[Render, Any, IpamError | None], None]


def ready(result: Any, error: IpamError | None) -> Reply:
    """The `Render` of an answer that is already a wire result."""
    return result, error


if TYPE_CHECKING:
    from ipamd.cluster.frontend import ClusterFrontend

MUTATIONS: dict[str, Callable[[dict[str, Any]], Mutation]] = {
    "network.create": CreateNetworkRequest.from_wire,
    "network.delete": DeleteNetworkRequest.from_wire,
    "alloc": AllocRequest.from_wire,
    "release": ReleaseRequest.from_wire,
    "gc": GcRequest.from_wire,
}
LEASE_PAGE_DEFAULT = 1000
# Stays under the protocol's default array limit (4096), so any client can read a page.
LEASE_PAGE_MAX = 4000
# Methods of cluster mode (ipamd/cluster/frontend.py): answered once etcd has
# been asked, so they travel the mutations' path (a callback), not the reads'.
CLUSTER_READS = frozenset({"cluster.status", "cluster.blocks", "cluster.check"})
CLUSTER_METHODS = CLUSTER_READS | {"cluster.release_host"}
# Every method `start_mutation` takes (the server asks, per request).
MUTATING_METHODS = frozenset(MUTATIONS) | CLUSTER_METHODS


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    # Supplementary groups (SO_PEERGROUPS), read only when [auth] allow_gids
    # could use them (ipamd/daemon/peercred.py).
    groups: frozenset[int] = frozenset()
    # "pid=... uid=...", for the mutation log: built once per connection, not
    # once per mutation.
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", f"pid={self.pid} uid={self.uid}")

    def __str__(self) -> str:
        return self.text


class PendingRead:
    """A read that must first write: a `get` that saw suspect leases confirms
    them through the writer before it answers. The server queues it as it
    queues a mutation: `start(peer, on_answer)`. Every other read stays inline."""

    __slots__ = ("start",)

    def __init__(self, start: Callable[[Peer, OnAnswer], None]) -> None:
        self.start = start


class Service:
    def __init__(
        self,
        committed: CommittedState,
        writer: Writer,
        config: Config,
        connections: ConnectionCounters | None = None,
    ) -> None:
        self.committed = committed  # the reads' source
        self.writer = writer  # the mutations' way
        self.config = config
        # The server's counts (it counts, main.py hands both the same object).
        self.connections = connections if connections is not None else ConnectionCounters()
        self.exposition = Metrics(self)  # the Prometheus text, built from what is here
        self.cluster: ClusterFrontend | None = None  # with a [cluster] config
        self.started = time.monotonic()
        self.mutation_log = MutationLog()
        self.counters = RequestCounters()
        self.boot = committed.boot
        self._own_uid = os.getuid()
        self._reads: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self.ping,
            "status": self.status,
            "stats": self.stats,
            "network.get": self.network_get,
            "network.list": self.network_list,
            "get": self.get,
            "lease.list": self.lease_list,
            "lease.owner": self.lease_owner,
            "metrics": self.metrics,
        }

    def may_mutate(self, peer: Peer) -> bool:
        return (
            peer.uid in (0, self._own_uid)
            or peer.uid in self.config.allow_uids
            or peer.gid in self.config.allow_gids
            or not self.config.allow_gids.isdisjoint(peer.groups)
        )

    def read(self, method: str, params: dict[str, Any]) -> Any:
        """Answer a read. REQUIRES: method not in MUTATING_METHODS."""
        handler = self._reads.get(method)
        try:
            if handler is None:
                raise UnknownMethod(f"no such method {method!r}")
            return handler(params)
        except IpamError as e:
            # Any name a client sends would be a new label value: bound them.
            self.counters.answered(method if handler else "unknown", None, e)
            raise

    def start_mutation(
        self, method: str, params: dict[str, Any], peer: Peer, on_answer: OnAnswer
    ) -> None:
        """Check, parse and queue a mutation now, in the caller's order (raising
        its IpamError at once if that fails); `on_answer(render, outcome, error)`
        is called from the writer task once its batch is synced, and
        `render(outcome, error)` later gives the wire's (result, error). Every
        outcome is logged with the caller's pid and uid.
        """
        subject, caller = _subject(params), peer.text
        dry_run = params.get("dry_run") is True

        def render(outcome: Any, error: IpamError | None) -> Reply:
            result = result_of(outcome) if error is None else None
            logged = _outcome(method, result) if error is None else f"{error.name}: {error}"
            self.mutation_log.record(method, subject, caller, logged)
            self.counters.answered(method, result, error, dry_run=dry_run)
            if method == "gc" and error is None and not dry_run:
                self._log_collected(result, caller)
            return result, error

        done = functools.partial(on_answer, render)

        try:
            if method not in CLUSTER_READS and not self.may_mutate(peer):
                raise PermissionDenied(
                    f"{method} is not allowed for uid {peer.uid} (gid {peer.gid})"
                )
            if method in CLUSTER_METHODS:
                if self.cluster is None:
                    raise InvalidRequest(f"{method}: this host has no [cluster] configuration")
                self.cluster.call(method, params, done)
                return
            mutation = MUTATIONS[method](params)
            if self.cluster is not None and self.cluster.takes(mutation):
                self.cluster.start(mutation, done)
                return
            if isinstance(mutation, CreateNetworkRequest) and mutation.network.is_cluster:
                raise InvalidRequest(
                    f"network {mutation.network.name} has scope cluster, but this host has no"
                    " [cluster] configuration"
                )
            self.writer.submit_nowait(mutation, done)
        except IpamError as e:
            self.mutation_log.record(method, subject, caller, f"{e.name}: {e}")
            self.counters.answered(method, None, e)
            raise

    def _log_collected(self, result: Any, caller: str) -> None:
        """One line per lease a gc released, saying why."""
        for lease in result["released"]:
            subject, ips = stale_line(lease)
            why = "not in gc's valid list"
            if lease["suspect"]:
                why += f"; made in boot {lease['boot']}, an earlier one"
            self.mutation_log.record("gc", subject, caller, f"released {ips}: {why}")

    # -- reads ---------------------------------------------------------------------

    def _snapshot(self, name: Any) -> NetworkSnapshot:
        name = validate_name(name)
        snap = self.committed.network(name)
        if snap is None:
            raise NetworkNotFound(f"could not find network {name!r}")
        return snap

    def ping(self, params: dict[str, Any]) -> Any:
        check_keys(params, set(), "ping")
        return {"version": __version__, "uptime_s": round(time.monotonic() - self.started, 3)}

    def status(self, params: dict[str, Any]) -> Any:
        check_keys(params, set(), "status")
        committed = self.committed.networks
        counters = self.writer.counters
        leases_config = self.config.leases
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "state_dir": str(self.config.state_dir),
            "networks": len(committed),
            "leases": sum(snap.leases for snap in committed.values()),
            "batches": counters.batches,
            "mutations": counters.mutations,
            "mean_batch_size": round(counters.mean_batch_size, 3),
            "failed_writes": counters.failed_writes,
            "connections": self.connections.open,
            "boot": self.boot,
            "suspect": suspect_total(committed),
            "reclaim_after_reboot": leases_config.reclaim_after_reboot_text,
            **({"cluster": self.cluster.status()} if self.cluster is not None else {}),
        }

    def metrics(self, params: dict[str, Any]) -> Any:
        check_keys(params, set(), "metrics")
        return {"text": self.exposition.text()}

    def network_get(self, params: dict[str, Any]) -> Any:
        check_keys(params, {"name"}, "network.get")
        return network_result(self._snapshot(params.get("name")), with_stats=True)

    def network_list(self, params: dict[str, Any]) -> Any:
        check_keys(params, set(), "network.list")
        committed = self.committed.networks
        return [network_result(committed[name], with_stats=False) for name in sorted(committed)]

    def stats(self, params: dict[str, Any]) -> Any:
        check_keys(params, set(), "stats")
        committed = self.committed.networks
        networks = []
        for name in sorted(committed):
            wire = network_result(committed[name], with_stats=True)
            networks.append(
                {
                    "name": name,
                    "leases": wire["leases"],
                    "suspect": wire["suspect"],
                    "subnets": wire["subnets"],
                }
            )
            if self.cluster is not None and committed[name].network.is_cluster:
                networks[-1]["cluster"] = self._cluster_stats(committed[name])
        return {"networks": networks}

    def _cluster_stats(self, snap: NetworkSnapshot) -> dict[str, Any]:
        """Per host and cluster-wide: blocks, used, free in blocks, and the
        share of the network's allocatable addresses leased anywhere."""
        assert self.cluster is not None
        out = self.cluster.network_stats(snap.network.name)
        allocatable = sum(s.allocatable for s in snap.subnets)
        out["utilisation"] = round(out["used"] / allocatable, 6) if allocatable else 1.0
        return out

    def _lease_wire(self, lease: Lease) -> dict[str, Any]:
        return lease.to_wire(self.committed.networks[lease.key.network].network, self.boot)

    def get(self, params: dict[str, Any]) -> Any:
        """The leases of a container. Suspect ones make it a `PendingRead` that
        confirms them first (for a caller allowed to mutate: CNI CHECK runs as root)."""
        result = self._get(params)
        suspects = tuple(
            LeaseKey(lease["network"], lease["container_id"], lease["ifname"])
            for lease in result["leases"]
            if lease["suspect"]
        )
        if not suspects:
            return result
        return PendingRead(functools.partial(self._confirm_then_get, params, suspects, result))

    def _confirm_then_get(
        self,
        params: dict[str, Any],
        suspects: tuple[LeaseKey, ...],
        unconfirmed: Any,
        peer: Peer,
        on_answer: OnAnswer,
    ) -> None:
        on_done = functools.partial(on_answer, ready)

        if not self.may_mutate(peer):
            on_done(unconfirmed, None)  # a reader may look, not keep leases alive
            return

        def confirmed(outcome: Confirmed | None, error: IpamError | None) -> None:
            if error is not None or outcome is None:
                # Still a read: answer it; the lease stays suspect until the next sign.
                log.warning("confirming %d suspect lease(s) failed: %s", len(suspects), error)
                on_done(unconfirmed, None)
                return
            self.mutation_log.record(
                "get",
                _subject(params),
                peer.text,
                f"confirmed {outcome.count} suspect lease(s)",
            )
            try:
                on_done(self._get(params), None)
            except IpamError as e:  # released meanwhile
                on_done(None, e)

        try:
            self.writer.submit_nowait(ConfirmRequest(suspects), confirmed)
        except IpamError as e:
            confirmed(None, e)

    def _get(self, params: dict[str, Any]) -> Any:
        check_keys(params, {"container_id", "networks"}, "get")
        container_id = validate_container_id(params.get("container_id"))
        wanted = _network_filter(params.get("networks"))
        committed = self.committed.networks
        leases = sorted(
            (
                lease
                for lease in self.committed.leases_of(container_id)
                if lease.key.network in committed and (wanted is None or _matches(wanted, lease))
            ),
            key=lambda lease: (lease.key.network, lease.key.ifname),
        )
        if not leases:
            raise LeaseNotFound(f"no lease held by container ID {container_id}")
        first: dict[str, Lease] = {}
        for lease in leases:  # per network, the first ifname in order: "" before "eth0"
            first.setdefault(lease.key.network, lease)
        return {
            "container_id": container_id,
            "networks": attachments(
                (committed[name].network, lease) for name, lease in first.items()
            ),
            "leases": [self._lease_wire(lease) for lease in leases],
        }

    def lease_list(self, params: dict[str, Any]) -> Any:
        check_keys(params, {"network", "after", "limit"}, "lease.list")
        snap = self._snapshot(params.get("network"))
        limit = params.get("limit", LEASE_PAGE_DEFAULT)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= LEASE_PAGE_MAX
        ):
            raise InvalidRequest(f"limit must be an integer in 1..{LEASE_PAGE_MAX}, got {limit!r}")
        after = params.get("after")
        after_address = None if after is None else parse_address(after, "after")
        if not snap.network.subnets:
            return {"leases": []}
        first = snap.network.subnets[0].cidr
        page = self.committed.leases_in_subnet(snap.network.name, first, after_address, limit + 1)
        out: dict[str, Any] = {
            "leases": [lease.to_wire(snap.network, self.boot) for lease in page[:limit]]
        }
        if len(page) > limit:
            out["next"] = str(page[limit - 1].addresses[0])
        return out

    def lease_owner(self, params: dict[str, Any]) -> Any:
        check_keys(params, {"network", "ip"}, "lease.owner")
        address = parse_address(params.get("ip"), "ip")
        committed = self.committed.networks
        if params.get("network") is not None:
            candidates = [self._snapshot(params["network"])]
        else:
            candidates = [committed[name] for name in sorted(committed)]
        for snap in candidates:
            if snap.network.subnet_of(address) is None:
                continue
            owner = self.committed.owner(snap.network.name, address)
            if owner is None:
                continue
            lease = self.committed.lease(owner)
            return {
                "network": owner.network,
                "container_id": owner.container_id,
                "ifname": owner.ifname,
                "created": lease.created if lease is not None else None,
            }
        raise LeaseNotFound(f"no lease holds {address}")


def _network_filter(value: Any) -> dict[str, str | None] | None:
    """`networks` of `get`: a list of names, or a map NAME -> {"ifname"?}."""
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {validate_name(v): None for v in value}
    out: dict[str, str | None] = {}
    for name, options in as_map(value, "networks").items():
        options = as_optional_map(options, f"options of network {name}")
        check_keys(options, {"ifname"}, "network option")
        ifname = options.get("ifname")
        out[validate_name(name)] = None if ifname is None else validate_ifname(ifname)
    return out


def _matches(wanted: dict[str, str | None], lease: Lease) -> bool:
    if lease.key.network not in wanted:
        return False
    ifname = wanted[lease.key.network]
    return ifname is None or ifname == lease.key.ifname


def _subject(params: dict[str, Any]) -> str:
    """What a mutation is about, for the log line."""
    for key in ("container_id", "name", "network"):
        value = params.get(key)
        if type(value) is str:  # msgpack gives exactly str
            return key + "=" + value[:80]
    return ""


def _outcome(method: str, result: Any) -> str:
    """A successful mutation's log text: with the addresses an alloc handed out or a
    release took back, so that grepping the log for an address finds them."""
    if method == "alloc":
        held = []  # loops, not comprehensions: two frames fewer per alloc in CPython 3.11
        for name, attachment in result["networks"].items():
            if attachment["ips"]:
                addresses = []
                for ip in attachment["ips"]:
                    addresses.append(ip["address"])
                held.append(name + " " + " ".join(addresses))
        return "ok: " + "; ".join(held) if held else "ok"
    if method == "release":
        released = [f"{name} {' '.join(ips)}" for name, ips in result["released"].items() if ips]
        return f"ok: released {'; '.join(released)}" if released else "ok: nothing held"
    return "ok"
