"""`ipamd check`: verify the database offline, name what is wrong, repair nothing.

It reads the store through its read methods only and writes nothing (LevelDB
itself may flush its log on open). What it checks, entry by entry (DESIGN.md
sections 5 and 6; `Store.load` only compares counts):
- every address of every lease has a reverse entry naming that lease, and every
  reverse entry names a lease that holds that address;
- no address has two owners (two leases listing it on one network);
- every lease address lies inside one of its network's subnets, is not one that
  is never handed out (network, broadcast, gateway, excluded), and a lease holds
  exactly one address per subnet;
- no lease or reverse entry belongs to a network that does not exist;
- every lease carries a boot id (schema 2), first in its value, where the
  daemon's start-up count of suspect leases looks for it. A schema-1 database
  (before boot ids) is not checked: the daemon migrates it at its next start.

Exit status (ipamd/exits.py): 0 clean, 1 problems found (each printed on
stdout), 64 a bad command line, 65 LevelDB reports the database corrupt (it
cannot be opened or a block fails its checksum), 66 there is no database (or
what is there is not one ipamd made: it is left alone), 75 it cannot be opened
for another reason (most often: a running ipamd holds its lock, and the
message names its pid). The default state dir is the daemon's (paths.py).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import NoReturn, TypeVar

from ipamd import exits
from ipamd.core import keys
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import IPAddress, Network
from ipamd.daemon.environment import xdg_warnings
from ipamd.paths import default_state_dir
from ipamd.storage.store import (
    CorruptDatabase,
    NotADatabase,
    SchemaTooOld,
    StateDirLocked,
    Store,
    StoreUnavailable,
)

EXIT_PROBLEMS = exits.FAILURE

T = TypeVar("T")
# An address on a network, as (network, IP version, integer): the unit that has
# at most one owner. Plain ints hash far faster than ipaddress objects.
Slot = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Report:
    problems: list[str]
    networks: int
    leases: int


def check(state_dir: Path) -> list[str]:
    """Every problem in the database under `state_dir`, in a stable order; [] if clean.

    Raises StoreUnavailable when there is no database or it cannot be opened,
    CorruptDatabase when LevelDB finds it corrupt (at open or while scanning).
    """
    return check_report(state_dir).problems


def check_report(state_dir: Path) -> Report:
    """`check`, plus what was counted (for the summary line)."""
    store = Store(state_dir)
    store.open(create=False)
    try:
        checker = _Checker(store)
        problems = checker.run()
        return Report(problems, len(checker.networks), checker.lease_count)
    finally:
        store.close()


class _Checker:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.problems: list[str] = []
        self.networks: dict[str, Network] = {}
        # Who holds each address according to the leases; a second holder goes to `extra`.
        self.holder: dict[Slot, LeaseKey] = {}
        self.extra: dict[Slot, list[LeaseKey]] = defaultdict(list)
        self.lease_count = 0
        self.unread: set[str] = set()  # what could not be read to the end

    def run(self) -> list[str]:
        for network in self._read("networks", self.store.networks()):
            self.networks[network.name] = network
        for lease, value in self._read("leases", self.store.lease_entries()):
            self.lease_count += 1
            self._check_lease_shape(lease.key, lease.addresses)
            self._check_boot(lease, value)
            for address in lease.addresses:
                slot: Slot = (lease.key.network, address.version, int(address))
                if slot in self.holder:
                    self.extra[slot].append(lease.key)
                else:
                    self.holder[slot] = lease.key
        for slot, others in sorted(self.extra.items()):
            owners = ", ".join(_who(k) for k in sorted([self.holder[slot], *others]))
            self.problems.append(
                f"address {_address(slot)} on network {slot[0]} has {len(others) + 1} owners:"
                f" {owners}"
            )
        if self.unread:
            # Without every network and lease, comparing them with the reverse entries misleads.
            self.problems.append("leases and reverse entries were not compared")
            return self.problems
        names = self._try("reverse entries", self.store.reverse_networks, set())
        for name in sorted(names | set(self.networks)):
            self._check_reverse_entries(name)
        if self.unread:
            return self.problems  # some reverse entries were not read: no verdict on the rest
        # Whatever the reverse entries did not account for has no entry at all.
        for slot, key in sorted(self.holder.items()):
            if slot not in self.extra:
                self.problems.append(
                    f"lease {key} holds {_address(slot)} but no reverse entry records it"
                )
        return self.problems

    def _read(self, what: str, entries: Iterator[T]) -> Iterator[T]:
        """The entries, until one cannot be decoded (reported; the rest is skipped)."""
        try:
            yield from entries
        except (CorruptDatabase, StoreUnavailable):
            raise
        except Exception as e:  # a hand-edited or alien entry: report it, don't crash
            self.unread.add(what)
            self.problems.append(f"cannot decode the {what} ({e!r}); the rest were not checked")

    def _try(self, what: str, read: Callable[[], set[str]], default: set[str]) -> set[str]:
        try:
            return read()
        except (CorruptDatabase, StoreUnavailable):
            raise
        except Exception as e:
            self.problems.append(f"cannot decode the {what} ({e!r}); they were not checked")
            return default

    def _check_lease_shape(self, key: LeaseKey, addresses: tuple[IPAddress, ...]) -> None:
        network = self.networks.get(key.network)
        if network is None:
            self.problems.append(f"lease {key}: that network does not exist")
            return
        if not network.allocates:
            if addresses:
                self.problems.append(
                    f"lease {key} holds {', '.join(map(str, addresses))}, but ipamd"
                    f" allocates no address on network {network.name}"
                    f" (driver {network.driver}, {len(network.subnets)} subnet(s))"
                )
            return
        per_subnet: dict[int, list[IPAddress]] = defaultdict(list)
        for address in addresses:
            index = network.subnet_of(address)
            if index is None:
                self.problems.append(
                    f"lease {key} holds {address}, outside every subnet of network"
                    f" {network.name} ({_subnets_text(network)})"
                )
                continue
            per_subnet[index].append(address)
            reason = network.subnets[index].reserved_reason(address)
            if reason is not None:
                self.problems.append(f"lease {key} holds {address}, which is {reason}")
        for index, subnet in enumerate(network.subnets):
            held = per_subnet.get(index, [])
            if not held:
                self.problems.append(f"lease {key} holds no address in subnet {subnet.cidr}")
            elif len(held) > 1:
                self.problems.append(
                    f"lease {key} holds {len(held)} addresses in subnet {subnet.cidr}:"
                    f" {', '.join(map(str, held))} (one per subnet)"
                )

    def _check_boot(self, lease: Lease, value: bytes) -> None:
        if not isinstance(lease.boot, str) or not keys.made_in(value, keys.boot_prefix(lease.boot)):
            self.problems.append(
                f"lease {lease.key} has no boot id first in its value (schema"
                f" {keys.SCHEMA_VERSION} keeps one there; the daemon counts suspect leases by it)"
            )

    def _check_reverse_entries(self, name: str) -> None:
        network = self.networks.get(name)
        orphans = 0
        for address, owner in self._read(
            f"reverse entries of network {name}", self.store.reverse_entries(name)
        ):
            slot: Slot = (name, address.version, int(address))
            if network is None:
                orphans += 1
            holder = self.holder.pop(slot, None)
            if slot in self.extra:
                continue  # reported with its owners
            if holder == owner:
                continue
            if holder is not None:
                self.problems.append(
                    f"address {address} on network {name} is held by {_who(holder)}"
                    f" but its reverse entry names {_who(owner)}"
                )
                continue
            held = self._addresses_of(owner)
            if held is None:
                self.problems.append(
                    f"reverse entry {address} on network {name} names {_who(owner)},"
                    " which has no lease there"
                )
            else:
                shown = ", ".join(map(str, held)) or "no address"
                self.problems.append(
                    f"reverse entry {address} on network {name} names {_who(owner)},"
                    f" whose lease there holds {shown} instead"
                )
            if network is not None and network.subnet_of(address) is None:
                self.problems.append(
                    f"reverse entry {address} on network {name} lies outside every subnet"
                    f" ({_subnets_text(network)})"
                )
        if orphans:
            self.problems.append(
                f"{orphans} reverse entr{'y' if orphans == 1 else 'ies'} on network {name},"
                " which does not exist"
            )

    def _addresses_of(self, key: LeaseKey) -> tuple[IPAddress, ...] | None:
        try:
            lease = self.store.lease(key)
        except (CorruptDatabase, StoreUnavailable):
            raise
        except Exception:  # undecodable: reported by the scan of the leases
            return None
        return None if lease is None else lease.addresses


def _who(key: LeaseKey) -> str:
    """A lease key without its network, for messages that already name it."""
    return f"{key.container_id} ({key.ifname})" if key.ifname else key.container_id


def _address(slot: Slot) -> IPAddress:
    _, version, value = slot
    return IPv4Address(value) if version == 4 else IPv6Address(value)


def _subnets_text(network: Network) -> str:
    return ", ".join(str(s.cidr) for s in network.subnets) or "no subnets"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE), as `ipamd`'s do, rather than 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(exits.USAGE, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="ipamd check",
        description="Verify ipamd's database offline (stop the daemon first); repair nothing.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"the daemon's state directory (default: {default_state_dir()})",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="then check this host's leases and blocks against etcd ([cluster] in --config)",
    )
    parser.add_argument("--config", type=Path, default=None, help="the daemon's TOML config")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (64): a status, not an exit
        return e.code if isinstance(e.code, int) else exits.USAGE
    if args.state_dir is None:
        for warning in xdg_warnings():
            print(f"ipamd check: warning: {warning}", file=sys.stderr)
    state_dir: Path = args.state_dir or default_state_dir()
    if args.cluster:
        # The local check first: blocks are checked on top of a sound database.
        status = main(["--state-dir", str(state_dir)])
        if status == exits.TEMPFAIL:  # e.g. the daemon holds the lock: it can check itself
            print(
                "ipamd check --cluster: on a running host, `ipamd-client cluster check` has"
                " the daemon run the same check",
                file=sys.stderr,
            )
        if status != exits.OK:
            return status
        from ipamd.cluster.check_main import run_cluster_check

        return run_cluster_check(args.config, state_dir)
    store = Store(state_dir)
    if not store.path.exists():
        print(f"ipamd check: no database at {store.path}", file=sys.stderr)
        return exits.NOINPUT
    try:
        report = check_report(state_dir)
    except SchemaTooOld as e:
        print(e)
        print("1 problem(s)")
        return EXIT_PROBLEMS
    except CorruptDatabase as e:
        print(f"ipamd check: {e}", file=sys.stderr)
        return exits.DATAERR
    except StateDirLocked as e:
        print(
            f"ipamd check: {e}: stop it first (systemctl stop ipamd), or check a copy of"
            f" {state_dir} (cp -a {state_dir} COPY; ipamd check --state-dir COPY)",
            file=sys.stderr,
        )
        return exits.TEMPFAIL
    except NotADatabase as e:
        print(f"ipamd check: {e}", file=sys.stderr)
        return exits.NOINPUT
    except StoreUnavailable as e:
        print(f"ipamd check: {e}", file=sys.stderr)
        return exits.TEMPFAIL
    for problem in report.problems:
        print(problem)
    if report.problems:
        print(f"{len(report.problems)} problem(s)")
        return EXIT_PROBLEMS
    print(f"ok: {report.networks} networks, {report.leases} leases")
    return exits.OK


if __name__ == "__main__":
    sys.exit(main())
