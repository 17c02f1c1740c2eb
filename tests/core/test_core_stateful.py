"""The allocator against a plain-set model, driven by random request sequences.

The model knows each subnet only as literal sets written out below (which
offsets a static request may take, which ones dynamic allocation may take, the
lease range text), not through `Subnet`'s arithmetic, so the two are checked
against each other. After every step:

- no address is held twice, and every held address is allocatable;
- the view (and a second view rebuilt only from the returned changes, as a
  store would be) holds exactly the model's leases and reverse entries;
- each subnet's FreeRanges runs are the complement of the used set within the
  allocatable addresses, and its cursor and stats counters are the model's.

Each dynamic allocation must return the model's first free address strictly
after the cursor, wrapping once. The run is derandomized: the same sequences
every time, a few seconds on a small machine.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ipamd.core.allocator import Allocator, SubnetPool, SubnetStats
from ipamd.core.lease import Lease, LeaseKey
from ipamd.core.network import IPAddress, Network
from ipamd.core.requests import AllocRequest, GcRequest, ReleaseRequest
from ipamd.core.view import MemoryLeases, PutLease, SetCursor
from ipamd.errors import (
    AddressInUse,
    AddressNotAllocatable,
    InvalidRequest,
    IpamError,
    NetworkNotFound,
    RangeExhausted,
)

NETWORKS: list[dict[str, Any]] = [
    {
        "name": "dual",
        "subnets": [
            {
                "subnet": "10.0.0.0/28",
                "gateway": "10.0.0.1",
                "exclude": ["10.0.0.6", "10.0.0.9-10.0.0.10"],
            },
            {
                "subnet": "fd00::/124",
                "gateway": "fd00::1",
                "range_start": "fd00::3",
                "range_end": "fd00::c",
            },
        ],
    },
    {
        "name": "small",
        "subnets": [
            {
                "subnet": "192.168.7.0/29",
                "range_start": "192.168.7.2",
                "range_end": "192.168.7.5",
                "exclude": ["192.168.7.4/32"],
            }
        ],
    },
]


@dataclass
class SubnetSpec:
    """What the model knows of a subnet, written out by hand."""

    cidr: str
    static_ok: frozenset[int]  # offsets a static request may take
    dynamic_ok: frozenset[int]  # offsets dynamic allocation may take
    range_text: str

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    def address(self, offset: int) -> IPAddress:
        return self.network.network_address + offset

    def offset(self, address: IPAddress) -> int:
        return int(address) - int(self.network.network_address)


SPECS: dict[str, list[SubnetSpec]] = {
    "dual": [
        # 0 network, 15 broadcast, 1 gateway, 6, 9 and 10 excluded
        SubnetSpec(
            "10.0.0.0/28",
            frozenset({2, 3, 4, 5, 7, 8, 11, 12, 13, 14}),
            frozenset({2, 3, 4, 5, 7, 8, 11, 12, 13, 14}),
            "10.0.0.1 - 10.0.0.14",
        ),
        # 0 network, 1 gateway; no broadcast; lease range 3 - 12
        SubnetSpec(
            "fd00::/124",
            frozenset(range(2, 16)),
            frozenset(range(3, 13)),
            "fd00::3 - fd00::c",
        ),
    ],
    "small": [
        # 0 network, 7 broadcast, 4 excluded; lease range 2 - 5
        SubnetSpec(
            "192.168.7.0/29",
            frozenset({1, 2, 3, 5, 6}),
            frozenset({2, 3, 5}),
            "192.168.7.2 - 192.168.7.5",
        ),
    ],
}
CONTAINERS = [f"c{i}" for i in range(6)]
IFNAMES = ["", "eth1"]
OUTSIDE = ipaddress.ip_address("172.16.0.1")


@dataclass
class SubnetModel:
    spec: SubnetSpec
    used: dict[int, LeaseKey] = field(default_factory=dict)
    cursor: int | None = None

    def next_dynamic(self) -> int | None:
        free = sorted(self.spec.dynamic_ok - set(self.used))
        after = [a for a in free if self.cursor is None or a > self.cursor]
        candidates = after or free  # wrapping once
        return candidates[0] if candidates else None

    def runs(self) -> list[tuple[int, int]]:
        free = sorted(self.spec.static_ok - set(self.used))
        runs: list[tuple[int, int]] = []
        for a in free:
            if runs and runs[-1][1] == a - 1:
                runs[-1] = (runs[-1][0], a)
            else:
                runs.append((a, a))
        return runs


class AllocatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.allocator = Allocator()
        self.view = MemoryLeases()
        self.store = MemoryLeases()  # rebuilt only from the changes decisions return
        self.store_cursors: dict[tuple[str, int], IPAddress] = {}
        self.networks = {raw["name"]: Network.from_wire(raw) for raw in NETWORKS}
        for network in self.networks.values():
            self.allocator.create_network(network)
        self.model = {name: [SubnetModel(spec) for spec in specs] for name, specs in SPECS.items()}
        self.leases: dict[LeaseKey, tuple[IPAddress, ...]] = {}
        self.now = 0

    # -- helpers ---------------------------------------------------------

    def persist(self, changes: list[Any]) -> None:
        for change in changes:
            if isinstance(change, SetCursor):
                self.store_cursors[(change.network, change.subnet)] = change.address
            else:
                self.store.apply(change)

    def expect_network(
        self, name: str, key: LeaseKey, statics: list[IPAddress]
    ) -> tuple[set[type[IpamError]], set[str], list[int | None] | None]:
        """Errors this network may raise (with the messages they may carry), or the offsets."""
        if key in self.leases:
            if set(statics) - set(self.leases[key]):
                return {InvalidRequest}, set(), None
            return set(), set(), None
        subnets = self.model[name]
        by_subnet: dict[int, IPAddress] = {}
        errors: set[type[IpamError]] = set()
        for address in statics:
            index = next(
                (i for i, s in enumerate(subnets) if address in s.spec.network),
                None,
            )
            if index is None:
                errors.add(AddressNotAllocatable)
            elif index in by_subnet:
                errors.add(InvalidRequest)
            else:
                by_subnet[index] = address
        if errors:
            return errors, set(), None
        messages: set[str] = set()
        picked: list[int | None] = []
        for index, subnet in enumerate(subnets):
            if index in by_subnet:
                offset = subnet.spec.offset(by_subnet[index])
                if offset not in subnet.spec.static_ok:
                    errors.add(AddressNotAllocatable)
                elif offset in subnet.used:
                    errors.add(AddressInUse)
                    holder = subnet.used[offset].container_id
                    messages.add(
                        f"requested ip address {by_subnet[index]} is already allocated"
                        f" to container ID {holder}"
                    )
                picked.append(offset)
            else:
                found = subnet.next_dynamic()
                if found is None:
                    errors.add(RangeExhausted)
                    messages.add(f"failed to find free IP in range: {subnet.spec.range_text}")
                picked.append(None)
        return errors, messages, picked

    def do_alloc(self, container_id: str, request: dict[str, dict[str, Any]]) -> None:
        expected_errors: set[type[IpamError]] = set()
        expected_messages: set[str] = set()
        plans: dict[str, list[int | None] | None] = {}
        for name, options in request.items():
            key = LeaseKey(name, container_id, options.get("ifname", ""))
            statics = [ipaddress.ip_address(a) for a in options.get("static_ips", [])]
            errors, messages, plan = self.expect_network(name, key, statics)
            expected_errors |= errors
            expected_messages |= messages
            plans[name] = plan
        self.now += 1
        parsed = AllocRequest.from_wire({"container_id": container_id, "networks": request})
        try:
            leases, changes = self.allocator.alloc(parsed, self.view, self.now)
        except IpamError as error:
            assert type(error) in expected_errors, (error, expected_errors)
            if isinstance(error, AddressInUse | RangeExhausted):
                assert error.message in expected_messages, (error.message, expected_messages)
            return  # the invariants check that nothing changed
        assert not expected_errors, f"expected one of {expected_errors}, got {leases}"
        self.persist(changes)
        assert set(leases) == set(request)
        for name, lease in leases.items():
            key = lease.key
            plan = plans[name]
            if plan is None:  # held already: the same lease back, unchanged
                assert lease.addresses == self.leases[key]
                assert lease.created < self.now
                assert not any(isinstance(c, PutLease) and c.lease.key == key for c in changes)
                continue
            assert lease.created == self.now
            offsets = []
            for subnet, wanted, address in zip(
                self.model[name], plan, lease.addresses, strict=True
            ):
                if wanted is None:
                    # Rule 1: exactly the first free address after the cursor, wrapping once.
                    wanted = subnet.next_dynamic()
                    assert wanted is not None
                    subnet.cursor = wanted
                assert address == subnet.spec.address(wanted), (name, address, wanted)
                offsets.append(wanted)
            for subnet, offset in zip(self.model[name], offsets, strict=True):
                subnet.used[offset] = key
            self.leases[key] = lease.addresses

    def drop(self, key: LeaseKey) -> None:
        for subnet, address in zip(self.model[key.network], self.leases.pop(key), strict=True):
            del subnet.used[subnet.spec.offset(address)]

    # -- rules -----------------------------------------------------------

    @rule(
        container=st.sampled_from(CONTAINERS),
        names=st.lists(st.sampled_from(sorted(SPECS)), min_size=1, max_size=2, unique=True),
        ifname=st.sampled_from(IFNAMES),
    )
    def alloc_dynamic(self, container: str, names: list[str], ifname: str) -> None:
        self.do_alloc(container, {name: {"ifname": ifname} for name in names})

    @rule(
        container=st.sampled_from(CONTAINERS),
        names=st.lists(st.sampled_from(sorted(SPECS)), min_size=1, max_size=2, unique=True),
        ifname=st.sampled_from(IFNAMES),
        data=st.data(),
    )
    def alloc_static(self, container: str, names: list[str], ifname: str, data: Any) -> None:
        request: dict[str, dict[str, Any]] = {}
        for name in names:
            statics: list[str] = []
            for spec in SPECS[name]:
                size = spec.network.num_addresses
                offset = data.draw(st.one_of(st.none(), st.integers(0, size - 1)))
                if offset is not None:
                    statics.append(str(spec.address(offset)))
            extra = data.draw(st.sampled_from(["none"] * 8 + ["outside", "same subnet"]))
            if extra == "outside":
                statics.append(str(OUTSIDE))
            elif extra == "same subnet":
                statics.append(str(SPECS[name][0].address(2)))
                statics.append(str(SPECS[name][0].address(3)))
            request[name] = {"ifname": ifname, "static_ips": statics}
        self.do_alloc(container, request)

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data())
    def alloc_again(self, data: Any) -> None:
        """A retried alloc for a held key, sometimes asking for its own statics."""
        key = data.draw(st.sampled_from(sorted(self.leases)))
        options: dict[str, Any] = {"ifname": key.ifname}
        if data.draw(st.booleans()):
            options["static_ips"] = [str(a) for a in self.leases[key]]
        self.do_alloc(key.container_id, {key.network: options})

    @rule(
        container=st.sampled_from(CONTAINERS),
        which=st.one_of(
            st.none(),
            st.dictionaries(
                st.sampled_from(["dual", "small", "nope"]),
                st.one_of(st.none(), st.sampled_from(IFNAMES)),
                min_size=1,
                max_size=2,
            ),
        ),
    )
    def release(self, container: str, which: dict[str, str | None] | None) -> None:
        params: dict[str, Any] = {"container_id": container}
        if which is not None:
            params["networks"] = {
                name: {} if ifname is None else {"ifname": ifname} for name, ifname in which.items()
            }
        request = ReleaseRequest.from_wire(params)
        if which is not None and "nope" in which:
            try:
                self.allocator.release(request, self.view)
            except NetworkNotFound:
                return
            raise AssertionError("release on an unknown network succeeded")
        gone = [
            key
            for key in self.leases
            if key.container_id == container
            and (
                which is None or (key.network in which and which[key.network] in (None, key.ifname))
            )
        ]
        released, changes = self.allocator.release(request, self.view)
        self.persist(changes)
        expected: dict[str, list[IPAddress]] = {}
        for key in gone:
            expected.setdefault(key.network, []).extend(self.leases[key])
            self.drop(key)
        assert {n: sorted(a, key=str) for n, a in released.items()} == {
            n: sorted(a, key=str) for n, a in expected.items()
        }

    @rule(
        name=st.sampled_from(sorted(SPECS)),
        valid=st.lists(
            st.tuples(st.sampled_from(CONTAINERS), st.one_of(st.none(), st.sampled_from(IFNAMES))),
            max_size=5,
        ),
        dry_run=st.booleans(),
    )
    def gc(self, name: str, valid: list[tuple[str, str | None]], dry_run: bool) -> None:
        wire = [
            {"container_id": c} if ifname is None else {"container_id": c, "ifname": ifname}
            for c, ifname in valid
        ]
        request = GcRequest.from_wire({"network": name, "valid": wire, "dry_run": dry_run})
        stale, changes = self.allocator.gc(request, self.view)
        self.persist(changes)
        keep = set(valid)
        expected = {
            key
            for key in self.leases
            if key.network == name
            and (key.container_id, key.ifname) not in keep
            and (key.container_id, None) not in keep
        }
        assert {lease.key for lease in stale} == expected
        assert all(isinstance(lease, Lease) for lease in stale)
        if dry_run:
            assert changes == []
        else:
            for key in expected:
                self.drop(key)

    @rule()
    def restart(self) -> None:
        """Rebuild every pool from the persisted leases and cursors, as the daemon does at start."""
        rebuilt = Allocator()
        for name, network in self.networks.items():
            rebuilt.create_network(network)
            pools = rebuilt.pool(name).subnets
            for index, subnet in enumerate(network.subnets):
                used = [
                    subnet.offset(address)
                    for lease in self.store.leases_in(name)
                    for address in lease.addresses
                    if address in subnet.cidr
                ]
                cursor = self.store_cursors.get((name, index))
                pools[index] = SubnetPool(
                    subnet, used=used, cursor=None if cursor is None else subnet.offset(cursor)
                )
        self.allocator = rebuilt

    # -- invariants ------------------------------------------------------

    @invariant()
    def nothing_twice_and_everything_allocatable(self) -> None:
        for name, subnets in self.model.items():
            held = [a for lease in self.view.leases_in(name) for a in lease.addresses]
            assert len(held) == len(set(held)), f"{name}: an address is held twice: {held}"
            for address in held:
                spec = next(s.spec for s in subnets if address in s.spec.network)
                assert spec.offset(address) in spec.static_ok, address

    @invariant()
    def views_match_the_model(self) -> None:
        want = {key: addresses for key, addresses in self.leases.items()}
        owners = {(key.network, a): key for key, addresses in want.items() for a in addresses}
        for view in (self.view, self.store):
            assert {k: lease.addresses for k, lease in view.leases.items()} == want
            assert view.owners == owners
        for key, addresses in want.items():
            assert self.view.lease(key) is not None
            for address in addresses:
                assert self.view.owner(key.network, address) == key

    @invariant()
    def pools_match_the_model(self) -> None:
        for name, subnets in self.model.items():
            for index, (pool, model) in enumerate(
                zip(self.allocator.pool(name).subnets, subnets, strict=True)
            ):
                spec = model.spec
                assert list(pool.free.runs()) == model.runs(), (name, index)
                assert pool.cursor == model.cursor, (name, index)
                stored = self.store_cursors.get((name, index))
                assert stored == (None if model.cursor is None else spec.address(model.cursor))
                assert pool.stats() == SubnetStats(
                    size=spec.network.num_addresses,
                    allocatable=len(spec.dynamic_ok),
                    used=len(model.used),
                    free=len(spec.dynamic_ok - set(model.used)),
                ), (name, index)


AllocatorMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAllocatorAgainstModel = AllocatorMachine.TestCase
