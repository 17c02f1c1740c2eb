"""`ipamd check --cluster`: this host's database against etcd. Repairs nothing.

Offline (`check_cluster`: the daemon stopped, after the local check), or on a
running host through the daemon (`cluster.check`, `ipamd-client cluster
check`: the daemon holds the database's lock, so it reads its own state). It
reads the local leases and the blocks this host holds, and etcd's networks and
block owners, and reports, each as a line an operator can act on:
- a cluster network whose local definition differs from etcd's, or that etcd
  does not define;
- a block held here that etcd gives to another host, or to nobody, or under
  another fencing token (create revision);
- a lease with an address outside every block this host holds and owns in etcd
  (its address may be handed out by another host);
- two blocks in etcd that overlap (two owners for one address), or a block
  that does not fit its network's block prefix.
`find_problems` is the checking itself, on what both ways read.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass
from pathlib import Path

from ipamd.cluster import keys as ekeys
from ipamd.cluster.blocks import BlockSpace
from ipamd.cluster.etcd import EtcdSession, KeyValue
from ipamd.cluster.local import OwnedBlock
from ipamd.config import ClusterConfig
from ipamd.core import keys
from ipamd.core.lease import Lease
from ipamd.core.network import IPNetwork, Network
from ipamd.storage.store import Store


@dataclass(frozen=True, slots=True)
class ClusterReport:
    problems: list[str]
    networks: int
    blocks: int
    leases: int


@dataclass(frozen=True, slots=True)
class LocalState:
    """What the check reads of this host: its cluster networks, the blocks it
    holds (by (network, block)), and the leases on those networks."""

    networks: dict[str, Network]
    held: dict[tuple[str, IPNetwork], OwnedBlock]
    leases: list[Lease]


@dataclass(frozen=True, slots=True)
class EtcdState:
    """What the check reads of etcd: the definitions (raw values by network)
    and every block's owner and create revision."""

    defined: dict[str, bytes]
    blocks: dict[tuple[str, IPNetwork], tuple[str, int]]


def read_local(store: Store) -> LocalState:
    networks = {n.name: n for n in store.networks() if n.is_cluster}
    held: dict[tuple[str, IPNetwork], OwnedBlock] = {}
    for raw_key, raw_value in store.entries(keys.BLOCK):
        raw_name, _, cidr = raw_key[1:].partition(keys.SEP)
        value = keys.unpack(raw_value)
        block = ipaddress.ip_network(cidr.decode())
        held[(raw_name.decode(), block)] = OwnedBlock(
            raw_name.decode(), int(value["subnet"]), block, int(value["revision"])
        )
    leases = [lease for lease in store.all_leases() if lease.key.network in networks]
    return LocalState(networks, held, leases)


def read_etcd(layout: ekeys.Layout, networks: list[KeyValue], blocks: list[KeyValue]) -> EtcdState:
    """From the key-values under `layout.networks` and `layout.blocks`."""
    defined = {kv.key.removeprefix(layout.networks): kv.value for kv in networks}
    owners: dict[tuple[str, IPNetwork], tuple[str, int]] = {}
    for kv in blocks:
        parsed = layout.parse_block(kv.key)
        if parsed is not None:
            owners[parsed] = (ekeys.owner_of(kv.value), kv.create_revision)
    return EtcdState(defined, owners)


def check_cluster(state_dir: Path, config: ClusterConfig) -> ClusterReport:
    """Offline. Raises StoreUnavailable/CorruptDatabase as `ipamd check` does,
    and EtcdUnreachable when no endpoint answers."""
    store = Store(state_dir)
    store.open(create=False)
    try:
        local = read_local(store)
    finally:
        store.close()
    layout = ekeys.Layout(config.prefix)
    session = EtcdSession(config.endpoints, ca=config.ca, cert=config.cert, key=config.key)
    etcd = read_etcd(layout, session.get_prefix(layout.networks), session.get_prefix(layout.blocks))
    return find_problems(local, etcd, config.host)


def find_problems(local: LocalState, etcd: EtcdState, me: str) -> ClusterReport:
    networks, held, leases = local.networks, local.held, local.leases
    defined, in_etcd = etcd.defined, etcd.blocks
    problems: list[str] = []
    for name, network in sorted(networks.items()):
        definition = defined.get(name)
        if definition is None:
            problems.append(f"network {name}: a cluster network here, but etcd does not define it")
            continue
        try:
            theirs = Network.from_wire(ekeys.decode(definition))
        except Exception:
            theirs = None
        if theirs != network:
            problems.append(f"network {name}: its definition here differs from etcd's")
    for (name, block), owned in sorted(held.items(), key=lambda item: str(item[0])):
        found = in_etcd.get((name, block))
        if found is None:
            problems.append(
                f"block {block} of network {name}: held here (token {owned.revision}) but free in"
                " etcd; start ipamd to claim it back"
            )
        elif found[0] != me:
            problems.append(
                f"block {block} of network {name}: held here but owned by host {found[0]} in"
                f" etcd; move this host's containers with addresses in {block}"
            )
        elif found[1] != owned.revision:
            problems.append(
                f"block {block} of network {name}: held here under token {owned.revision}, etcd"
                f" has {found[1]}; start ipamd to adopt it"
            )
    mine = {key for key, (owner, _) in in_etcd.items() if owner == me}
    for lease in leases:
        network = networks[lease.key.network]
        for address in lease.addresses:
            index = network.subnet_of(address)
            if index is None:
                continue  # the local check reports it
            space = BlockSpace(network.subnets[index])
            block = space.cidr(space.index_of(address))
            key = (network.name, block)
            if key in held and key in mine:
                continue
            owner = in_etcd.get(key, ("nobody",))[0]
            problems.append(
                f"lease {lease.key.container_id}/{lease.key.ifname or '-'} on {network.name}:"
                f" {address} lies in block {block}, which this host does not own"
                f" (etcd: {owner}); release it and restart that container"
            )
    for name, network in sorted(networks.items()):
        blocks = sorted(
            (block for (net, block) in in_etcd if net == name),
            key=lambda b: (b.version, int(b.network_address)),
        )
        for a, b in itertools.pairwise(blocks):
            if a.version == b.version and a.overlaps(b):  # type: ignore[arg-type,unused-ignore]
                problems.append(
                    f"network {name}: blocks {a} and {b} overlap in etcd: two owners for"
                    " one address"
                )
        for block in blocks:
            index = network.subnet_of(block.network_address)
            if index is None or BlockSpace(network.subnets[index]).index_of_cidr(block) is None:
                problems.append(
                    f"network {name}: block {block} in etcd is not a block of its subnets"
                )
    return ClusterReport(problems, len(networks), len(held), len(leases))
