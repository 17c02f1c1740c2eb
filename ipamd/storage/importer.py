"""`ipamd import host-local DIR --network NAME`: take over CNI host-local's
reservations, offline, on a stopped daemon's state directory.

Offline, not online through the daemon (DESIGN.md section 7 allows either):
an import is the one-time switch of a host from host-local to ipamd, done
while no runtime allocates (host-local's lock is held throughout anyway);
offline, every lease and every cursor goes into ONE synced batch (all or
nothing), LevelDB's own lock keeps a running daemon out, and the cursors
need no RPC of their own (the protocol has none).

Rules it keeps:
- The same leases: key (network, container ID, ifname), the same addresses,
  `created` from the file's time. An old-format file (no ifname) gets
  `--ifname` (default "eth0": CNI always passes an ifname, and that is what
  runtimes used when host-local wrote no ifname down).
- Never overwritten, only reported and skipped: an address outside the
  network's subnets or one it never hands out, an address ipamd already holds
  for another key, a key that already holds other addresses in ipamd.
- Idempotent: a lease already there as host-local has it is left alone, and
  cursors move only in a run that creates leases (or where ipamd has none
  yet), so importing twice changes nothing the second time.
- Boot epochs: a reservation written during this boot is stamped with the
  current boot; one written before it (host-local's state outlives reboots,
  its leaks too) is suspect, like any lease from an earlier boot, until a
  runtime re-ADDs, CHECKs or gc-lists it.
- `--dry-run` prints the same plan and writes nothing. The host-local
  directory is only read.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ipamd.client.runtimes import SourceError, boot_time
from ipamd.config import ConfigError, load_config
from ipamd.core.allocator import Allocator, NetworkPool
from ipamd.core.lease import LeaseKey, validate_container_id, validate_ifname
from ipamd.core.network import IPAddress
from ipamd.core.requests import AllocRequest, Attachment
from ipamd.core.view import Change, PendingLeases, SetCursor
from ipamd.daemon.boot import BootIdError, read_boot_id
from ipamd.errors import IpamError
from ipamd.storage.host_local import HostLocalError, Reservation, StateDir, locked_state_dir
from ipamd.storage.store import CorruptDatabase, Store, StoreUnavailable

EXIT_OK = 0
EXIT_SKIPPED = 1  # imported what could be; some reservations were skipped (listed)
EXIT_USAGE = 64
EXIT_CORRUPT = 65
EXIT_NOINPUT = 66
EXIT_TEMPFAIL = 75  # the database is locked: the daemon is running
EXIT_CONFIG = 78
# What an imported lease carries, for people reading `ipamd-client leases`.
IMPORTED_ATTRIBUTE = ("imported_from", "host-local")
# The boot stamped on reservations made before this boot: no real boot id.
BEFORE_THIS_BOOT = "host-local, before this boot"


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    created: int = 0
    present: int = 0
    skipped: int = 0

    def skip(self, what: str, why: str) -> None:
        self.skipped += 1
        self.lines.append(f"skip    {what}: {why}")


def plan_import(
    state: StateDir,
    pool: NetworkPool,
    allocator: Allocator,
    view: PendingLeases,
    default_ifname: str,
    booted_at: float,
) -> Plan:
    """Decide the import of `state` into `pool`'s network (pools and view
    change as the writer's would); the changes to write, and a line per decision."""
    plan = Plan()
    network = pool.network
    for skipped in state.skipped:
        plan.skip(skipped.name, skipped.reason)
    groups: dict[LeaseKey, list[Reservation]] = defaultdict(list)
    for reservation in state.reservations:
        ifname = default_ifname if reservation.ifname is None else reservation.ifname
        what = f"{reservation.address} ({reservation.container_id})"
        try:
            key = LeaseKey(
                network.name,
                validate_container_id(reservation.container_id),
                validate_ifname(ifname),
            )
        except IpamError as e:
            plan.skip(what, str(e))
            continue
        groups[key].append(reservation)
    touched: set[int] = set()
    for key, reservations in sorted(groups.items()):
        addresses = _importable(plan, key, reservations, pool, view)
        if addresses:
            before = plan.created
            _import_lease(plan, key, addresses, reservations, allocator, view, booted_at)
            if plan.created > before:
                touched.update(i for a in addresses if (i := network.subnet_of(a)) is not None)
    for name, address in sorted(state.last_reserved.items()):
        index = network.subnet_of(address)
        if index is None:
            plan.skip(name, f"{address} is outside every subnet of network {network.name}")
            continue
        subnet_pool = pool.subnets[index]
        offset = subnet_pool.subnet.offset(address)
        if subnet_pool.cursor == offset or (
            subnet_pool.cursor is not None and index not in touched
        ):
            continue  # already there, or ipamd's own cursor since: left alone
        plan.changes.append(SetCursor(network.name, index, address, subnet_pool.cursor))
        subnet_pool.cursor = offset
        plan.lines.append(f"cursor  {subnet_pool.subnet.cidr}: after {address} (from {name})")
    return plan


def _importable(
    plan: Plan,
    key: LeaseKey,
    reservations: list[Reservation],
    pool: NetworkPool,
    view: PendingLeases,
) -> list[IPAddress]:
    """The addresses of `key` that may be imported; the others are reported."""
    network = pool.network
    who = f"{key.container_id} ({key.ifname})" if key.ifname else key.container_id
    by_subnet: dict[int, IPAddress] = {}
    for reservation in sorted(reservations, key=lambda r: (r.address.version, r.address)):
        address = reservation.address
        index = network.subnet_of(address)
        if index is None:
            cidrs = ", ".join(str(s.cidr) for s in network.subnets) or "no subnets"
            plan.skip(f"{address} -> {who}", f"outside every subnet of {network.name} ({cidrs})")
            continue
        reason = network.subnets[index].reserved_reason(address)
        if reason is not None:
            plan.skip(f"{address} -> {who}", f"{address} is {reason} in ipamd")
            continue
        if index in by_subnet:
            plan.skip(
                f"{address} -> {who}",
                f"{who} also holds {by_subnet[index]} in subnet {network.subnets[index].cidr};"
                " an ipamd lease holds one address per subnet",
            )
            continue
        holder = view.owner(network.name, address)
        if holder is not None and holder != key:
            plan.skip(
                f"{address} -> {who}",
                f"already held in ipamd by {holder.container_id}"
                + (f" ({holder.ifname})" if holder.ifname else ""),
            )
            continue
        by_subnet[index] = address
    return [by_subnet[i] for i in sorted(by_subnet)]


def _import_lease(
    plan: Plan,
    key: LeaseKey,
    addresses: list[IPAddress],
    reservations: list[Reservation],
    allocator: Allocator,
    view: PendingLeases,
    booted_at: float,
) -> None:
    shown = ", ".join(map(str, addresses))
    who = f"{key.container_id} ({key.ifname})" if key.ifname else key.container_id
    existing = view.lease(key)
    if existing is not None:
        if set(addresses) <= set(existing.addresses):
            plan.present += 1
            plan.lines.append(f"present {shown} -> {who}")
        else:
            held = ", ".join(map(str, existing.addresses)) or "no address"
            plan.skip(f"{shown} -> {who}", f"{who} already holds {held} in ipamd")
        return
    created = min(r.mtime for r in reservations)
    before_boot = max(r.mtime for r in reservations) < booted_at
    attachment = Attachment(key.ifname, tuple(addresses), dict([IMPORTED_ATTRIBUTE]))
    current = allocator.boot
    if before_boot:  # made in an earlier boot: suspect, as it would be in ipamd
        allocator.boot = BEFORE_THIS_BOOT
    try:
        leases, changes = allocator.alloc(
            AllocRequest(key.container_id, {key.network: attachment}), view, int(created)
        )
    except IpamError as e:
        plan.skip(f"{shown} -> {who}", str(e))
        return
    finally:
        allocator.boot = current
    if before_boot:
        allocator.pools[key.network].suspect += 1
    plan.changes += changes
    plan.created += 1
    lease = leases[key.network]
    extra = [a for a in lease.addresses if a not in addresses]
    note = f" (and {', '.join(map(str, extra))}: host-local held none there)" if extra else ""
    suspect = "; suspect: reserved before this boot" if before_boot else ""
    plan.lines.append(f"import  {shown} -> {who}{note}{suspect}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ipamd import",
        description="Import another IPAM's state into ipamd's database (daemon stopped).",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    host_local = sources.add_parser(
        "host-local",
        help="CNI host-local's state directory",
        description="Create ipamd leases for every address CNI host-local reserved in DIR"
        " (/var/lib/cni/networks/NET), with the same keys and addresses, and the cursors"
        " from last_reserved_ip.N. Offline: stop ipamd first. DIR is only read, under"
        " host-local's lock.",
    )
    host_local.add_argument("dir", type=Path, metavar="DIR")
    host_local.add_argument("--network", required=True, metavar="NAME", help="ipamd network")
    host_local.add_argument("--state-dir", type=Path, help="ipamd's state directory")
    host_local.add_argument(
        "--socket",
        type=Path,
        help="not supported: the import is offline (stop the daemon, give --state-dir)",
    )
    host_local.add_argument("--config", type=Path, help="ipamd's TOML config ([leases])")
    host_local.add_argument(
        "--ifname",
        default="eth0",
        help="interface name for old host-local files that hold none (default eth0)",
    )
    host_local.add_argument("--dry-run", action="store_true", help="print the plan only")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    if args.socket is not None:
        return _fail(
            EXIT_USAGE,
            "the import is offline: stop ipamd and pass --state-dir (see `ipamd import --help`)",
        )
    try:
        config = load_config(args.config, state_dir=args.state_dir)
        boot = read_boot_id(config.leases.boot_id_path)
        booted_at = boot_time()
        validate_ifname(args.ifname)
    except (ConfigError, BootIdError, SourceError, IpamError) as e:
        return _fail(EXIT_CONFIG, str(e))
    store = Store(config.state_dir, boot)
    if not store.path.exists():
        return _fail(EXIT_NOINPUT, f"no database at {store.path}: start ipamd once to create it")
    try:
        with locked_state_dir(args.dir) as state:
            store.open(create=False)
            try:
                return _run(args, store, state, booted_at)
            finally:
                store.close()
    except HostLocalError as e:
        return _fail(EXIT_NOINPUT, str(e))
    except CorruptDatabase as e:
        return _fail(EXIT_CORRUPT, str(e))
    except StoreUnavailable as e:
        return _fail(EXIT_TEMPFAIL, f"{e} (is ipamd running? stop it first)")


def _run(args: argparse.Namespace, store: Store, state: StateDir, booted_at: float) -> int:
    allocator = store.load()
    pool = allocator.pools.get(args.network)
    if pool is None:
        return _fail(
            EXIT_CONFIG,
            f"ipamd has no network {args.network!r}: create it first, as the CNI config's"
            " ipam ranges define it (ipamd-cni creates it at its first ADD)",
        )
    plan = plan_import(state, pool, allocator, PendingLeases(store), args.ifname, booted_at)
    if not state.locked:
        print(f"note: {state.path} has no host-local lock file; read without locking")
    for line in plan.lines:
        print(line)
    summary = (
        f"{plan.created} lease(s) to create, {plan.present} already there,"
        f" {plan.skipped} skipped, network {args.network}"
    )
    if args.dry_run:
        print(f"dry run: {summary}; nothing written")
    elif plan.changes:
        store.write(plan.changes)
        print(f"imported: {summary}")
    else:
        print(f"nothing to change: {summary}")
    return EXIT_SKIPPED if plan.skipped else EXIT_OK


def _fail(status: int, message: str) -> int:
    print(f"ipamd import: {message}", file=sys.stderr)
    return status
