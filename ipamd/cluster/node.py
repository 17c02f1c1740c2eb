"""This host as a member of the cluster: claims, catch-up, liveness, returns.

The service hands it the requests that touch cluster networks; allocation
itself stays in the writer (through `LocalBlocks`, local.py). etcd is only
asked when a block must change hands:

- alloc: submitted to the writer at once. Only when it fails for want of an
  owned block (range_exhausted in a cluster subnet with no free owned
  address), or names a static address in a block this host does not own, or a
  network this host has not seen yet, does a task claim (or look up) what it
  needs and submit it again. That task waits; the writer and every other
  network's mutations go on meanwhile.
- claims ahead of need: after each group with allocs, a subnet whose free
  addresses in owned blocks fell below its low-water mark gets a claim in the
  background, sized by the pace of its allocations (LEAD_S, COVER_S). That
  check, once per group, is most of what the cluster adds to an alloc.
- a claim is one create-if-absent transaction on the block's key; the answer's
  revision (the key's create revision) is the fencing token. Concurrent needs
  of one subnet share one claim.
- catch-up (at start, then every sync_interval, and before cluster.status):
  networks defined elsewhere are created here; blocks etcd says this host owns
  are adopted; blocks this host thought it owned and another host now owns are
  dropped at once and reported loudly; this host's summary is published.
- liveness: a key under an etcd lease, kept alive at a third of its TTL. Blocks
  are never tied to it: a host cut off from etcd keeps allocating from its
  blocks and fails only what needs a new one (`unavailable`, since when).
- empty blocks go back to etcd after return_empty_after (one per subnet kept):
  dropped locally first (the writer checks it is empty), then deleted in etcd
  compared on the fencing token.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from ipamd.cluster import keys as ekeys
from ipamd.cluster.blocks import BlockSpace
from ipamd.cluster.check import LocalState, find_problems, read_etcd
from ipamd.cluster.etcd import EtcdError, EtcdSession, EtcdUnreachable, EtcdWorker, KeyValue
from ipamd.cluster.local import ClaimBlock, DropBlock, LocalBlocks, OwnedBlock
from ipamd.config import ClusterConfig
from ipamd.core.lease import LeaseKey
from ipamd.core.network import IPAddress, IPNetwork, Network
from ipamd.core.requests import AllocRequest, CreateNetworkRequest
from ipamd.core.snapshot import NetworkSnapshot, Snapshot
from ipamd.daemon.writer import OnDone, Writer
from ipamd.errors import (
    AddressInUse,
    InvalidRequest,
    IpamError,
    NetworkExists,
    NetworkNotFound,
    RangeExhausted,
    Unavailable,
)

log = logging.getLogger("ipamd.cluster")

# An alloc goes round (claim, submit) at most this often: each round either
# gets a block or fails; more rounds only happen when other requests keep
# taking the new block's addresses first.
MAX_ALLOC_ROUNDS = 16
# Transactions tried by one claim before it reports the subnet exhausted.
MAX_CLAIM_TRIES = 64
# Claims ahead of need are sized by how fast the subnet's addresses went since
# the claim before: a claim starts once the free addresses in owned blocks
# would last less than LEAD_S at that pace (an etcd transaction takes a few
# milliseconds, tens under load), and takes blocks for COVER_S of it, between
# one and MAX_BLOCKS_PER_CLAIM in one transaction. A host allocating 20,000 a
# second fills a /26 in 3 ms: it claims about 128 blocks twice a second; a
# host starting a container a minute claims one block when the last runs low.
# etcd's CPU per block claimed falls with the transaction's size (on the
# README's machine about 86 µs a block in transactions of 64, 55 in
# transactions of 128 without a failure branch); 128 is etcd's default
# --max-txn-ops, the most one transaction may put.
# The pace is the larger of the one measured since the claim before and the
# one before that, decayed with this time constant: a burst that resumes after
# a pause of a second or two (the measured pace then spans the pause) is met
# at its old pace, not with one block.
LEAD_S = 0.05
COVER_S = 0.5
PACE_MEMORY_S = 10.0
MAX_BLOCKS_PER_CLAIM = 128
# and at most 1/FAIR_SHARE_DIVISOR of the subnet's blocks (a /24 of /28s: 2).
FAIR_SHARE_DIVISOR = 8


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


class ClusterNode:
    def __init__(self, config: ClusterConfig, writer: Writer, local: LocalBlocks) -> None:
        self.config = config
        self.host = config.host
        self.writer = writer
        self.local = local
        self.layout = ekeys.Layout(config.prefix)
        self.etcd = EtcdWorker(
            EtcdSession(config.endpoints, ca=config.ca, cert=config.cert, key=config.key)
        )
        self.caught_up = False  # the first catch-up with etcd is done
        self.alive_lease: int | None = None
        self.claims = 0  # blocks claimed
        self._nursery: trio.Nursery | None = None
        self._claiming: dict[tuple[str, int], trio.Event] = {}
        self._ahead: set[tuple[str, int]] = set()  # claims ahead spawned, not yet done
        # Per network: the definition they were computed for, and each subnet's
        # low-water mark (free addresses in owned blocks below which to claim).
        self._low_water: dict[str, tuple[Network, list[int]]] = {}
        # The committed snapshot the low-water marks were last checked against:
        # the check is once per published group, not once per alloc.
        self._checked: Snapshot | None = None
        # Blocks known taken (by anyone), per (network, subnet): from scans and failed claims.
        self._taken: dict[tuple[str, int], set[int]] = {}
        self._exhausted: dict[tuple[str, int], float] = {}  # monotonic time a claim found none
        # Per (network, subnet): when the last claim started, the subnet's
        # leases then and the pace it was sized by (monotonic time, used, per s).
        self._pace: dict[tuple[str, int], tuple[float, int, float]] = {}
        self._empty_since: dict[tuple[str, IPNetwork], float] = {}
        self._published: bytes | None = None
        # From the last catch-up, for `stats`: each block's owner, and the
        # used/free counts other hosts published, by (network, block text).
        self._owners: dict[str, dict[str, str]] = {}
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}
        self._published_by: dict[tuple[str, str, str], int] = {}  # (host, network, block) -> used
        self._dead_since: dict[str, float] = {}  # host -> monotonic time first seen dead
        self._sync_lock = trio.Lock()
        self._wake_sync = trio.Event()

    # -- running -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Started at once: READY never waits for etcd."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._liveness_loop)
                nursery.start_soon(self._sync_loop)
                task_status.started()
        finally:
            self._nursery = None
            self.etcd.close()

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `fn(*args)` in the node's nursery; a bug in it is logged, never fatal."""
        if self._nursery is None:
            raise Unavailable("ipamd is shutting down")

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception:
                log.exception("cluster task %s failed", getattr(fn, "__name__", fn))

        self._nursery.start_soon(guarded)

    async def _liveness_loop(self) -> None:
        ttl = self.config.lease_ttl
        value = ekeys.encode({"host": self.host, "pid": os.getpid(), "since": _iso(time.time())})
        while True:
            try:
                if self.alive_lease is None:
                    lease = await self.etcd.call(self.etcd.session.grant, ttl)
                    await self.etcd.call(
                        self.etcd.session.put, self.layout.host(self.host), value, lease
                    )
                    self.alive_lease = lease
                    log.info("cluster: host %s is alive in etcd (lease %x)", self.host, lease)
                else:
                    left = await self.etcd.call(self.etcd.session.keepalive, self.alive_lease)
                    if left <= 0:
                        # Our liveness key is gone: to etcd we were dead, and an
                        # operator may have released our blocks. Check them now.
                        log.warning(
                            "cluster: the liveness lease of host %s expired; re-checking its"
                            " blocks",
                            self.host,
                        )
                        self.alive_lease = None
                        self._wake_sync.set()
                        continue
            except EtcdUnreachable:
                pass  # etcd.unreachable_since says since when; blocks stay ours
            except EtcdError as e:
                log.warning("cluster: liveness: %s", e)
                self.alive_lease = None
            await trio.sleep(ttl / 3)

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self.sync()
            except (EtcdUnreachable, EtcdError) as e:
                log.debug("cluster: sync: %s", e)
            except IpamError as e:
                log.warning("cluster: sync: %s", e)
            with trio.move_on_after(self.config.sync_interval):
                await self._wake_sync.wait()
            self._wake_sync = trio.Event()

    # -- allocations ----------------------------------------------------------------------

    def start_alloc(self, request: AllocRequest, done: OnDone) -> None:
        """Queue an alloc touching cluster networks (or unknown ones); `done` as the writer's."""
        if self._needs_lookup(request):
            self.spawn(self._alloc_round, request, done, 0)
        else:
            self.writer.submit_nowait(request, partial(self._alloc_answered, request, done, 0))

    def _needs_lookup(self, request: AllocRequest) -> bool:
        """Whether etcd must be asked first: a static address outside owned blocks."""
        for name, attachment in request.networks.items():
            if not attachment.static_ips:
                continue  # the common case: nothing to look up
            snap = self.writer.committed.get(name)
            if snap is None or not snap.network.is_cluster:
                continue
            for address in attachment.static_ips:
                block = self._block_of(snap.network, address)
                if block is not None and self.local.owns(name, block[1]) is None:
                    return True
        return False

    def _alloc_answered(
        self,
        request: AllocRequest,
        done: OnDone,
        rounds: int,
        result: Any,
        error: IpamError | None,
    ) -> None:
        if error is None:
            committed = self.writer.committed
            if committed is not self._checked:  # the first answer of its group
                self._checked = committed
                self._claim_ahead(committed)
            for name in request.networks:
                if name not in self._low_water:
                    self._watch_new(committed, name)
        elif (
            isinstance(error, RangeExhausted | NetworkNotFound)
            and rounds < MAX_ALLOC_ROUNDS
            and self._nursery is not None
        ):
            self.spawn(self._alloc_round, request, done, rounds + 1)
            return
        done(result, error)

    async def _alloc_round(self, request: AllocRequest, done: OnDone, rounds: int) -> None:
        """Get what the request needs from etcd, then submit it again."""
        try:
            needed = False
            for name, attachment in request.networks.items():
                needed |= await self._prepare(request.container_id, name, attachment)
        except IpamError as e:
            done(None, e)
            return
        final = rounds if needed else MAX_ALLOC_ROUNDS  # nothing more to get: answer as it is
        try:
            self.writer.submit_nowait(request, partial(self._alloc_answered, request, done, final))
        except IpamError as e:
            done(None, e)

    async def _prepare(self, container_id: str, name: str, attachment: Any) -> bool:
        """Claim (or look up) what allocating on `name` needs; whether anything was."""
        snap = self.writer.committed.get(name)
        fetched = snap is None
        if snap is None:
            await self._fetch_network(name)
            snap = self.writer.committed.get(name)
            if snap is None:  # created and deleted again meanwhile: let the writer say so
                return True
        network = snap.network
        if not network.is_cluster or not network.allocates:
            return fetched
        if self.writer.store.lease(LeaseKey(name, container_id, attachment.ifname)) is not None:
            return fetched  # an idempotent retry: nothing new is handed out
        static_subnets: set[int] = set()
        needed = fetched
        for address in attachment.static_ips:
            found = self._block_of(network, address)
            if found is None:
                continue  # outside every subnet: the allocator says why
            index, block = found
            static_subnets.add(index)
            if self.local.owns(name, block) is None:
                await self._claim_static(network, index, block, address)
                needed = True
        for index, stats in enumerate(snap.subnets):
            if index not in static_subnets and stats.free == 0:
                await self._claim_dynamic(network, index)
                needed = True
        return needed

    def _block_of(self, network: Network, address: IPAddress) -> tuple[int, IPNetwork] | None:
        index = network.subnet_of(address)
        if index is None:
            return None
        space = BlockSpace(network.subnets[index])
        return index, space.cidr(space.index_of(address))

    def _claim_ahead(self, committed: Snapshot) -> None:
        """After a group with allocs: a subnet whose free addresses in owned
        blocks fell below its low-water mark gets one more claim, in the
        background. Once per group, so the cost is one comparison per subnet of
        each network allocated from so far: the free counts are the writer's
        (kept as addresses are taken and given), the marks change only when a
        claim starts."""
        for name, (network, marks) in list(self._low_water.items()):
            snap = committed.get(name)
            if snap is None:
                del self._low_water[name]  # deleted
                continue
            if snap.network is not network:
                network, marks = self._watch(snap.network)
            self._claim_below_marks(network, marks, snap)

    def _watch_new(self, committed: Snapshot, name: str) -> None:
        """A network allocated from for the first time: watched from now on,
        and checked at once (its group's check may have run before it)."""
        snap = committed.get(name)
        if snap is not None:
            self._claim_below_marks(*self._watch(snap.network), snap)

    def _claim_below_marks(self, network: Network, marks: list[int], snap: NetworkSnapshot) -> None:
        for index, stats in enumerate(snap.subnets):
            if stats.free < marks[index]:
                self._claim_soon(network, index)

    def _watch(self, network: Network) -> tuple[Network, list[int]]:
        """The low-water marks of a network's subnets (0, never crossed: local
        ones), until the first claim sets them: half a block."""
        marks = [0] * len(network.subnets)
        if network.is_cluster and network.allocates:
            for index, subnet in enumerate(network.subnets):
                marks[index] = BlockSpace(subnet).block_size // 2
        self._low_water[network.name] = watched = (network, marks)
        return watched

    def _claim_soon(self, network: Network, index: int) -> None:
        key = (network.name, index)
        if key in self._ahead or key in self._claiming or self.etcd.reachable is False:
            return
        if self._nursery is None:
            return  # shutting down
        if time.monotonic() - self._exhausted.get(key, -1e9) <= self.config.sync_interval:
            return  # etcd had no free block a moment ago
        self._ahead.add(key)
        self.spawn(self._claim_quietly, network, index)

    async def _claim_quietly(self, network: Network, index: int) -> None:
        try:
            await self._claim_dynamic(network, index)
        except IpamError as e:
            log.debug("cluster: claiming ahead in %s: %s", network.name, e)
        finally:
            self._ahead.discard((network.name, index))

    # -- claims ----------------------------------------------------------------------------

    async def _claim_dynamic(self, network: Network, index: int) -> None:
        """Own one more block with room for dynamic allocation in subnet `index`.
        Raises RangeExhausted when etcd has none left, Unavailable when etcd is
        unreachable."""
        key = (network.name, index)
        running = self._claiming.get(key)
        if running is not None:
            await running.wait()  # its block serves us too (or we try again)
            return
        self._claiming[key] = event = trio.Event()
        try:
            await self._claim_one(network, index)
        finally:
            del self._claiming[key]
            event.set()

    async def _claim_one(self, network: Network, index: int) -> None:
        subnet = network.subnets[index]
        space = BlockSpace(subnet)
        key = (network.name, index)
        want = self._plan_claim(network, index)
        taken = self._taken.setdefault(key, set())
        rescanned = False
        for _ in range(MAX_CLAIM_TRIES):
            candidates = list(
                itertools.islice(space.candidates(self.host, network.name, taken), want)
            )
            if not candidates:
                if rescanned:
                    break
                await self._rescan(network)  # blocks may have been returned since
                taken = self._taken.setdefault(key, set())
                rescanned = True
                continue
            blocks = [space.cidr(c) for c in candidates]
            value = ekeys.block_value(self.host, subnet.cidr)
            items = [(self.layout.block(network.name, b), value) for b in blocks]
            try:
                created, revision, existing = await self.etcd.call(
                    self.etcd.session.create_all, items
                )
            except EtcdUnreachable:
                raise Unavailable(
                    f"{self.etcd.unreachable_text()}: cannot claim a block of network"
                    f" {network.name} ({subnet.cidr})"
                ) from None
            except EtcdError as e:
                if "too many operations" in str(e) and want > 1:
                    want //= 2  # an etcd run with a --max-txn-ops below ours
                    continue
                raise Unavailable(f"etcd refused a claim in network {network.name}: {e}") from None
            taken.update(candidates)
            if created:
                # Held in one writer group: one sync for all of them.
                await self._hold([(network.name, index, b, revision) for b in blocks])
                self.claims += len(blocks)
                self._exhausted.pop(key, None)
                return
            # Some were taken: they are known now. Ours (a claim answered just
            # before a crash) are held; then try again with the rest.
            mine: list[tuple[str, int, IPNetwork, int]] = []
            for kv in existing:
                parsed = self.layout.parse_block(kv.key)
                if (
                    parsed is not None
                    and ekeys.owner_of(kv.value) == self.host
                    and self.local.owns(network.name, parsed[1]) is None
                ):
                    mine.append((network.name, index, parsed[1], kv.create_revision))
            if mine:
                await self._hold(mine)
                return
            taken.difference_update(candidates)
            for kv in existing:
                parsed = self.layout.parse_block(kv.key)
                position = space.index_of_cidr(parsed[1]) if parsed is not None else None
                if position is not None:
                    taken.add(position)
            want = 1  # contended: one at a time
        self._exhausted[key] = time.monotonic()
        raise RangeExhausted(f"failed to find free IP in range: {subnet.range_text}")

    def _plan_claim(self, network: Network, index: int) -> int:
        """How many blocks a claim of subnet `index` starting now takes, and the
        low-water mark from now on, from the pace of its leases (see LEAD_S).
        The first claim, or one after a long quiet spell: one block, and half a
        block as the mark."""
        key = (network.name, index)
        now = time.monotonic()
        snap = self.writer.committed.get(network.name)
        used = snap.subnets[index].used if snap is not None else 0
        rate = 0.0
        last = self._pace.get(key)
        if last is not None:
            since, used_then, rate_then = last
            elapsed = now - since
            measured = max(0, used - used_then) / elapsed if elapsed > 0 else 0.0
            rate = max(measured, rate_then * math.exp(-elapsed / PACE_MEMORY_S))
        self._pace[key] = (now, used, rate)
        space = BlockSpace(network.subnets[index])
        size = space.block_size
        watched = self._low_water.get(network.name)
        if watched is not None and watched[0] is network:
            watched[1][index] = max(size // 2, math.ceil(rate * LEAD_S))
        # Never a large share of the subnet at once, however fast this host goes:
        # a small subnet is shared by hosts, not taken by the first busy one.
        fair = max(1, space.count // FAIR_SHARE_DIVISOR)
        return min(MAX_BLOCKS_PER_CLAIM, fair, max(1, math.ceil(rate * COVER_S / size)))

    async def _hold(self, blocks: list[tuple[str, int, IPNetwork, int]]) -> None:
        """Submit a ClaimBlock per block at once (one writer group) and wait for all."""
        left = len(blocks)
        done = trio.Event()
        errors: list[IpamError] = []

        def answered(result: Any, error: IpamError | None) -> None:
            nonlocal left
            left -= 1
            if error is not None:
                errors.append(error)
            if left == 0:
                done.set()

        for name, index, block, revision in blocks:
            self.writer.submit_nowait(ClaimBlock(name, index, block, revision), answered)
        await done.wait()
        if errors:
            raise errors[0]

    async def _claim_static(
        self, network: Network, index: int, block: IPNetwork, address: IPAddress
    ) -> None:
        created, kv = await self._create_block(network, index, block)
        assert kv is not None
        owner = self.host if created else ekeys.owner_of(kv.value)
        if owner != self.host:
            raise AddressInUse(
                f"requested ip address {address} is in block {block}, owned by host {owner}"
            )
        await self.writer.submit(ClaimBlock(network.name, index, block, kv.create_revision))
        self.claims += int(created)

    async def _create_block(
        self, network: Network, index: int, block: IPNetwork
    ) -> tuple[bool, KeyValue | None]:
        value = ekeys.block_value(self.host, network.subnets[index].cidr)
        try:
            return await self.etcd.call(
                self.etcd.session.create, self.layout.block(network.name, block), value
            )
        except EtcdUnreachable:
            raise Unavailable(
                f"{self.etcd.unreachable_text()}: cannot claim block {block} of network"
                f" {network.name}"
            ) from None
        except EtcdError as e:
            raise Unavailable(f"etcd refused the claim of block {block}: {e}") from None

    # -- networks ----------------------------------------------------------------------------

    async def create_network(self, network: Network) -> Any:
        """network.create of a cluster network: defined in etcd first (the same
        definition again: success; another: network_exists), then here."""
        key = self.layout.network(network.name)
        wire = network.to_wire()
        try:
            created, kv = await self.etcd.call(self.etcd.session.create, key, ekeys.encode(wire))
        except EtcdUnreachable:
            raise Unavailable(
                f"{self.etcd.unreachable_text()}: cannot define cluster network {network.name}"
            ) from None
        if not created:
            assert kv is not None
            existing = _network_from_etcd(kv.value)
            if existing != network:
                raise NetworkExists(
                    f"network {network.name} already exists in the cluster with a different"
                    " definition"
                )
        return await self.writer.submit(CreateNetworkRequest(network))

    async def refuse_delete(self, name: str) -> Any:
        """network.delete of a cluster network: not supported (other hosts may
        hold blocks and leases in it, and would claim more). Refused, naming
        the hosts that hold blocks of it, so the operator knows where to look."""
        try:
            kvs = await self.etcd.call(self.etcd.session.get_prefix, self.layout.blocks_of(name))
        except (EtcdUnreachable, EtcdError):
            holders = "(etcd is unreachable: not known)"
        else:
            owners = sorted({ekeys.owner_of(kv.value) for kv in kvs})
            holders = ", ".join(owners) if owners else "none"
        raise InvalidRequest(
            f"network {name} is a cluster network: deleting one is not supported; hosts"
            f" holding blocks of it: {holders} (ipamd-client cluster blocks {name})"
        )

    async def _fetch_network(self, name: str) -> None:
        """Create here a cluster network defined elsewhere; NetworkNotFound if none is."""
        try:
            kv = await self.etcd.call(self.etcd.session.get, self.layout.network(name))
        except EtcdUnreachable:
            raise NetworkNotFound(
                f"could not find network {name!r} (and {self.etcd.unreachable_text()})"
            ) from None
        network = _network_from_etcd(kv.value) if kv is not None else None
        if network is None:
            raise NetworkNotFound(f"could not find network {name!r}")
        await self._adopt_network(network)

    async def _adopt_network(self, network: Network) -> None:
        try:
            await self.writer.submit(CreateNetworkRequest(network))
        except NetworkExists:
            log.error(
                "cluster: network %s is defined in etcd differently from the local network of"
                " that name; this host will not use the cluster's",
                network.name,
            )

    async def sync_networks(self) -> None:
        kvs = await self.etcd.call(self.etcd.session.get_prefix, self.layout.networks)
        for kv in kvs:
            network = _network_from_etcd(kv.value)
            if network is not None and network.name not in self.writer.committed:
                await self._adopt_network(network)

    # -- catch-up --------------------------------------------------------------------------

    async def sync(self) -> list[KeyValue]:
        """One catch-up pass with etcd (see the module's docstring); the block keys read."""
        async with self._sync_lock:
            await self.sync_networks()
            blocks = await self._rescan(None)
            await self._reconcile(blocks)
            await self._publish()
            await self._read_summaries(blocks)
            await self._reclaim_dead(blocks)
            await self._return_empty()
            if not self.caught_up:
                self.caught_up = True
                log.info("cluster: caught up with etcd as host %s", self.host)
            return blocks

    async def _rescan(self, network: Network | None) -> list[KeyValue]:
        prefix = self.layout.blocks if network is None else self.layout.blocks_of(network.name)
        kvs = await self.etcd.call(self.etcd.session.get_prefix, prefix)
        taken: dict[tuple[str, int], set[int]] = {}
        committed = self.writer.committed
        for kv in kvs:
            parsed = self.layout.parse_block(kv.key)
            if parsed is None or parsed[0] not in committed:
                continue
            name, block = parsed
            snap = committed[name]
            index = snap.network.subnet_of(block.network_address)
            if index is None:
                continue
            position = BlockSpace(snap.network.subnets[index]).index_of_cidr(block)
            if position is not None:
                taken.setdefault((name, index), set()).add(position)
        if network is None:
            self._taken = taken
        else:
            for key in [k for k in self._taken if k[0] == network.name]:
                del self._taken[key]
            self._taken.update(taken)
        return kvs

    async def _reconcile(self, kvs: list[KeyValue]) -> None:
        """Make the owned blocks agree with etcd's owners."""
        in_etcd: dict[tuple[str, IPNetwork], KeyValue] = {}
        for kv in kvs:
            parsed = self.layout.parse_block(kv.key)
            if parsed is not None:
                in_etcd[parsed] = kv
        committed = self.writer.committed
        # Blocks etcd gives us that we do not hold yet (a claim answered just
        # before a crash, or a network first seen now).
        for (name, block), kv in in_etcd.items():
            snap = committed.get(name)
            if snap is None or not snap.network.is_cluster:
                continue
            if ekeys.owner_of(kv.value) != self.host:
                continue
            owned = self.local.owns(name, block)
            if owned is None or owned.revision != kv.create_revision:
                index = snap.network.subnet_of(block.network_address)
                if index is not None:
                    await self.writer.submit(ClaimBlock(name, index, block, kv.create_revision))
        # Blocks we hold that etcd gives to someone else, or to nobody.
        for name in list(self.local.owned):
            snap = committed.get(name)
            for owned in self.local.blocks_of(name):
                found: KeyValue | None = in_etcd.get((name, owned.block))
                if found is not None and ekeys.owner_of(found.value) == self.host:
                    continue
                if found is None and snap is not None:
                    # Released (by an operator, or reclaimed) and free again:
                    # this host still holds it, so it claims it back.
                    created, again = await self._create_block(
                        snap.network, owned.subnet, owned.block
                    )
                    if again is not None and (created or ekeys.owner_of(again.value) == self.host):
                        if created:  # (else: claimed just after our read of etcd)
                            log.warning(
                                "cluster: block %s of network %s was released in etcd while"
                                " this host held it; claimed it back",
                                owned.block,
                                name,
                            )
                        await self.writer.submit(
                            ClaimBlock(name, owned.subnet, owned.block, again.create_revision)
                        )
                        continue
                    found = again
                await self._lost(owned, found)

    async def _lost(self, owned: OwnedBlock, holder: KeyValue | None) -> None:
        other = ekeys.owner_of(holder.value) if holder is not None else "(nobody)"
        result = await self.writer.submit(DropBlock(owned.network, owned.block, lost=True))
        log.error(
            "cluster: BLOCK LOST: block %s of network %s, which this host (%s) owned with"
            " fencing token %d, is now owned by host %s; no address of it is handed out here"
            " any more; %d lease(s) of this host lie in it and may be duplicated on %s:"
            " move those containers",
            owned.block,
            owned.network,
            self.host,
            owned.revision,
            other,
            result.get("used", 0),
            other,
        )

    def summary(self) -> dict[str, dict[str, list[int]]]:
        out: dict[str, dict[str, list[int]]] = {}
        for name in sorted(self.local.owned):
            if name not in self.writer.committed:
                continue
            out[name] = {
                str(owned.block): list(self.local.usage(owned))
                for owned in self.local.blocks_of(name)
            }
        return out

    async def _publish(self) -> None:
        value = ekeys.encode({"host": self.host, "at": _iso(time.time()), "blocks": self.summary()})
        # Only when it changed: one key write per sync at most, none when idle.
        body = ekeys.encode(self.summary())
        if body == self._published:
            return
        await self.etcd.call(self.etcd.session.put, self.layout.summary(self.host), value)
        self._published = body

    async def _read_summaries(self, blocks: list[KeyValue]) -> None:
        owners: dict[str, dict[str, str]] = {}
        for kv in blocks:
            parsed = self.layout.parse_block(kv.key)
            if parsed is not None:
                owners.setdefault(parsed[0], {})[str(parsed[1])] = ekeys.owner_of(kv.value)
        counts: dict[tuple[str, str], tuple[int, int]] = {}
        published_by: dict[tuple[str, str, str], int] = {}
        for kv in await self.etcd.call(self.etcd.session.get_prefix, self.layout.summaries):
            value = ekeys.decode(kv.value)
            if not isinstance(value, dict) or not isinstance(value.get("blocks"), dict):
                continue
            host = str(value.get("host"))
            for network, per_block in value["blocks"].items():
                if isinstance(per_block, dict):
                    for block, pair in per_block.items():
                        if isinstance(pair, list) and len(pair) == 2:
                            counts[(network, block)] = (int(pair[0]), int(pair[1]))
                            published_by[(host, network, block)] = int(pair[0])
        self._owners, self._counts, self._published_by = owners, counts, published_by

    async def _reclaim_dead(self, blocks: list[KeyValue]) -> None:
        """With reclaim_dead_after set: release the blocks of hosts dead that
        long whose last summary showed them empty. Each delete is compared on
        the block's create revision and on the host's liveness key being
        absent, so a host that comes back keeps its blocks."""
        after = self.config.reclaim_dead_after
        if after is None:
            return
        kvs = await self.etcd.call(self.etcd.session.get_prefix, self.layout.hosts)
        alive = {kv.key.removeprefix(self.layout.hosts) for kv in kvs}
        now = time.monotonic()
        for host in [h for h in self._dead_since if h in alive]:
            del self._dead_since[host]
        for kv in blocks:
            owner = ekeys.owner_of(kv.value)
            parsed = self.layout.parse_block(kv.key)
            if owner == self.host or owner in alive or parsed is None:
                continue
            since = self._dead_since.setdefault(owner, now)
            if now - since < after:
                continue
            if self._published_by.get((owner, parsed[0], str(parsed[1]))) != 0:
                continue  # not known to be empty: only an operator may release it
            if await self.etcd.call(
                self.etcd.session.delete_if_created,
                kv.key,
                kv.create_revision,
                self.layout.host(owner),
            ):
                log.warning(
                    "cluster: reclaimed empty block %s of network %s from host %s, whose"
                    " liveness key has been gone for %.0f s",
                    parsed[1],
                    parsed[0],
                    owner,
                    now - since,
                )

    def network_stats(self, name: str) -> dict[str, Any]:
        """A cluster network's blocks and use per host and cluster-wide: this
        host's live, the others' as they last published (at the last catch-up)."""
        hosts: dict[str, dict[str, int]] = {}
        mine = {str(b.block): b for b in self.local.blocks_of(name)}
        owners = dict(self._owners.get(name, {}))
        owners.update({block: self.host for block in mine})
        for block, owner in owners.items():
            entry = hosts.setdefault(owner, {"blocks": 0, "used": 0, "free": 0})
            entry["blocks"] += 1
            if owner == self.host and block in mine:
                used, free = self.local.usage(mine[block])
            else:
                used, free = self._counts.get((name, block), (0, 0))
            entry["used"] += used
            entry["free"] += free
        return {
            "blocks": sum(h["blocks"] for h in hosts.values()),
            "used": sum(h["used"] for h in hosts.values()),
            "free_in_blocks": sum(h["free"] for h in hosts.values()),
            "hosts": [{"name": n, **hosts[n]} for n in sorted(hosts)],
        }

    async def _return_empty(self) -> None:
        now = time.monotonic()
        for name in list(self.local.owned):
            blocks = self.local.blocks_of(name)
            per_subnet: dict[int, int] = {}
            for owned in blocks:
                per_subnet[owned.subnet] = per_subnet.get(owned.subnet, 0) + 1
            for owned in blocks:
                key = (name, owned.block)
                used, _ = self.local.usage(owned)
                if used:
                    self._empty_since.pop(key, None)
                    continue
                since = self._empty_since.setdefault(key, now)
                if now - since < self.config.return_empty_after or per_subnet[owned.subnet] < 2:
                    continue
                result = await self.writer.submit(DropBlock(name, owned.block, lost=False))
                if not result.get("dropped"):
                    continue
                per_subnet[owned.subnet] -= 1
                self._empty_since.pop(key, None)
                await self.release_block(owned)

    async def release_block(self, owned: OwnedBlock) -> bool:
        """Delete the block's key in etcd, compared on our fencing token.
        REQUIRES: already dropped locally."""
        key = self.layout.block(owned.network, owned.block)
        released = await self.etcd.call(self.etcd.session.delete_if_created, key, owned.revision)
        if released:
            log.info("cluster: returned empty block %s of network %s", owned.block, owned.network)
        else:
            log.error(
                "cluster: block %s of network %s is no longer the one this host claimed"
                " (fencing token %d): another host holds it now; not releasing it",
                owned.block,
                owned.network,
                owned.revision,
            )
        return released

    # -- the cluster.* methods ---------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        etcd: dict[str, Any] = {"endpoints": list(self.config.endpoints)}
        hosts: dict[str, dict[str, Any]] = {}
        try:
            blocks = await self.sync()
            alive = await self.etcd.call(self.etcd.session.get_prefix, self.layout.hosts)
        except (EtcdUnreachable, EtcdError):
            blocks, alive = [], []
            hosts[self.host] = {"name": self.host, "alive": None, "blocks": self._owned_count()}
        else:
            for kv in alive:
                name = kv.key.removeprefix(self.layout.hosts)
                hosts[name] = {"name": name, "alive": True, "blocks": 0}
            for kv in blocks:
                owner = ekeys.owner_of(kv.value)
                entry = hosts.setdefault(owner, {"name": owner, "alive": False, "blocks": 0})
                entry["blocks"] += 1
        etcd["reachable"] = bool(self.etcd.reachable)
        if self.etcd.unreachable_since is not None:
            etcd["unreachable_since"] = _iso(self.etcd.unreachable_since)
            etcd["error"] = self.etcd.last_error
        return {
            "host": self.host,
            "caught_up": self.caught_up,
            "etcd": etcd,
            "hosts": [hosts[name] for name in sorted(hosts)],
        }

    async def check(self) -> dict[str, Any]:
        """`cluster.check`: `ipamd check --cluster` on this running host. The
        leases are read first (what is synced), then the blocks held (decided,
        so every synced lease's block is among them), then etcd (where a block
        is claimed before it is held): nothing in flight shows as a problem."""
        committed = self.writer.committed
        networks = {
            name: snap.network for name, snap in committed.items() if snap.network.is_cluster
        }
        leases = [
            lease for lease in self.writer.store.all_leases() if lease.key.network in networks
        ]
        held = {
            (owned.network, owned.block): owned
            for name in networks
            for owned in self.local.blocks_of(name)
        }
        try:
            defined = await self.etcd.call(self.etcd.session.get_prefix, self.layout.networks)
            blocks = await self.etcd.call(self.etcd.session.get_prefix, self.layout.blocks)
        except EtcdUnreachable:
            raise Unavailable(f"{self.etcd.unreachable_text()}: cannot check") from None
        report = find_problems(
            LocalState(networks, held, leases), read_etcd(self.layout, defined, blocks), self.host
        )
        return {
            "host": self.host,
            "problems": report.problems,
            "networks": report.networks,
            "blocks": report.blocks,
            "leases": report.leases,
        }

    def _owned_count(self) -> int:
        return sum(len(blocks) for blocks in self.local.owned.values())

    async def blocks(self, name: str) -> dict[str, Any]:
        snap = self.writer.committed.get(name)
        if snap is None:
            await self._fetch_network(name)
            snap = self.writer.committed[name]
        if not snap.network.is_cluster:
            raise InvalidRequest(f"network {name} is not a cluster network")
        try:
            kvs = await self.etcd.call(self.etcd.session.get_prefix, self.layout.blocks_of(name))
            summaries = await self.etcd.call(self.etcd.session.get_prefix, self.layout.summaries)
        except EtcdUnreachable:
            raise Unavailable(f"{self.etcd.unreachable_text()}: cannot list the blocks") from None
        published: dict[tuple[str, str], list[int]] = {}
        for kv in summaries:
            value = ekeys.decode(kv.value)
            if isinstance(value, dict) and isinstance(value.get("blocks"), dict):
                for block, counts in value["blocks"].get(name, {}).items():
                    published[(str(value.get("host")), block)] = counts
        out: list[dict[str, Any]] = []
        for kv in kvs:
            parsed = self.layout.parse_block(kv.key)
            if parsed is None:
                continue
            block = parsed[1]
            owner = ekeys.owner_of(kv.value)
            owned = self.local.owns(name, block) if owner == self.host else None
            used: int | None = None
            free: int | None = None
            if owned is not None:
                used, free = self.local.usage(owned)
            else:
                counts = published.get((owner, str(block)))
                if counts:
                    used, free = counts[0], counts[1]
            index = snap.network.subnet_of(block.network_address)
            out.append(
                {
                    "block": str(block),
                    "subnet": str(snap.network.subnets[index].cidr) if index is not None else None,
                    "host": owner,
                    "used": used,
                    "free": free,
                    "revision": kv.create_revision,
                }
            )
        out.sort(key=lambda b: (b["subnet"] or "", ipaddress_key(b["block"])))
        return {"network": name, "blocks": out}

    async def release_host(self, host: str) -> dict[str, Any]:
        """Give every block of a dead host back to etcd. Each delete is one
        transaction compared on the block's create revision and on the host's
        liveness key being absent: a host that comes back meanwhile keeps them."""
        if host == self.host:
            raise InvalidRequest(f"host {host} is this host, and alive: release-host refused")
        try:
            alive = await self.etcd.call(self.etcd.session.get, self.layout.host(host))
            if alive is not None:
                raise InvalidRequest(
                    f"host {host} is alive (its liveness key {self.layout.host(host)} exists):"
                    " release-host refused; stop it first and wait out its lease"
                )
            kvs = await self.etcd.call(self.etcd.session.get_prefix, self.layout.blocks)
            released: list[str] = []
            for kv in kvs:
                if ekeys.owner_of(kv.value) != host:
                    continue
                if await self.etcd.call(
                    self.etcd.session.delete_if_created,
                    kv.key,
                    kv.create_revision,
                    self.layout.host(host),
                ):
                    released.append(kv.key.removeprefix(self.layout.blocks))
        except EtcdUnreachable:
            reason = self.etcd.unreachable_text()
            raise Unavailable(f"{reason}: cannot release host {host}") from None
        log.warning("cluster: released %d block(s) of host %s", len(released), host)
        return {"host": host, "released": released}


def ipaddress_key(block: str) -> tuple[int, int]:
    net = ipaddress.ip_network(block)
    return net.version, int(net.network_address)


def _network_from_etcd(raw: bytes) -> Network | None:
    value = ekeys.decode(raw)
    try:
        return Network.from_wire(value)
    except IpamError:
        return None
