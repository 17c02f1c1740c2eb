"""`ipamd check`: a clean database passes; every kind of damage a hand edit, a
buggy tool or a bad disk can leave is named; the exit status says which case.

Damage is done by hand through the store's plyvel handle (as a person with a
LevelDB tool would), never through the allocator.
"""

from __future__ import annotations

import os
from ipaddress import ip_address
from pathlib import Path

import pytest

from ipamd.core import keys
from ipamd.core.lease import Lease, LeaseKey
from ipamd.storage import check as check_module
from ipamd.storage.check import check, default_state_dir, main
from ipamd.storage.store import CorruptDatabase, Store, StoreUnavailable
from tests.storage.storage_helpers import (
    NET,
    V4,
    V6,
    alloc,
    decide_and_write,
    network,
    open_store,
    put_raw_lease,
)


def populated(state_dir: Path) -> Store:
    """A dual-stack network with leases c0..c2 and a single-stack one with d0."""
    store, allocator = open_store(state_dir)
    store.write(allocator.create_network(network(NET, V4, V6, gateway="10.88.0.1"))[1])
    store.write(allocator.create_network(network("single", "10.99.0.0/24"))[1])
    for i in range(3):
        decide_and_write(store, allocator, alloc(f"c{i}"))
    decide_and_write(store, allocator, alloc("d0", "single"))
    return store


def lease_of(store: Store, container_id: str, net: str = NET) -> Lease:
    lease = store.lease(LeaseKey(net, container_id))
    assert lease is not None
    return lease


def problems_after(store: Store) -> list[str]:
    store.close()
    found = check(store.state_dir)
    print("\n".join(found))
    return found


def test_a_clean_database_passes(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populated(state_dir).close()
    assert check(state_dir) == []
    assert main(["--state-dir", str(state_dir)]) == 0
    assert capsys.readouterr().out == "ok: 2 networks, 4 leases\n"


def test_a_lease_whose_reverse_entry_was_deleted(state_dir: Path) -> None:
    store = populated(state_dir)
    store.db.delete(keys.reverse_key(NET, ip_address("fd88::1")))
    assert problems_after(store) == [
        "lease c0 on network net holds fd88::1 but no reverse entry records it"
    ]


def test_a_reverse_entry_without_lease(state_dir: Path) -> None:
    store = populated(state_dir)
    store.db.delete(keys.lease_key(LeaseKey(NET, "c1")))
    assert problems_after(store) == [
        "reverse entry 10.88.0.3 on network net names c1, which has no lease there",
        "reverse entry fd88::2 on network net names c1, which has no lease there",
    ]


def test_a_reverse_entry_naming_a_lease_that_holds_another_address(state_dir: Path) -> None:
    store = populated(state_dir)
    store.db.put(
        keys.reverse_key(NET, ip_address("10.88.0.77")), keys.reverse_value(LeaseKey(NET, "c2"))
    )
    assert problems_after(store) == [
        "reverse entry 10.88.0.77 on network net names c2,"
        " whose lease there holds 10.88.0.4, fd88::3 instead"
    ]


def test_an_address_with_two_owners(state_dir: Path) -> None:
    store = populated(state_dir)
    taken = lease_of(store, "c0")
    # A second lease over the same addresses; its reverse entries overwrite c0's.
    put_raw_lease(store, Lease(LeaseKey(NET, "intruder", "eth1"), taken.addresses, 0))
    assert problems_after(store) == [
        "address 10.88.0.2 on network net has 2 owners: c0, intruder (eth1)",
        "address fd88::1 on network net has 2 owners: c0, intruder (eth1)",
    ]


def test_an_address_outside_its_subnets(state_dir: Path) -> None:
    store = populated(state_dir)
    outside = Lease(LeaseKey("single", "stray"), (ip_address("192.168.1.5"),), 0)
    put_raw_lease(store, outside)
    assert problems_after(store) == [
        "lease stray on network single holds 192.168.1.5, outside every subnet of network"
        " single (10.99.0.0/24)",
        "lease stray on network single holds no address in subnet 10.99.0.0/24",
    ]


def test_a_reverse_entry_naming_another_holder(state_dir: Path) -> None:
    store = populated(state_dir)
    store.db.put(
        keys.reverse_key(NET, ip_address("10.88.0.2")), keys.reverse_value(LeaseKey(NET, "c1"))
    )
    assert problems_after(store) == [
        "address 10.88.0.2 on network net is held by c0 but its reverse entry names c1"
    ]


def test_one_address_per_subnet(state_dir: Path) -> None:
    store = populated(state_dir)
    put_raw_lease(store, Lease(LeaseKey(NET, "v4only"), (ip_address("10.88.1.1"),), 0))
    two = (ip_address("10.88.1.2"), ip_address("10.88.1.3"), ip_address("fd88::1:2"))
    put_raw_lease(store, Lease(LeaseKey(NET, "greedy"), two, 0))
    assert problems_after(store) == [
        "lease greedy on network net holds 2 addresses in subnet 10.88.0.0/16:"
        " 10.88.1.2, 10.88.1.3 (one per subnet)",
        "lease v4only on network net holds no address in subnet fd88::/64",
    ]


def test_addresses_that_are_never_handed_out(state_dir: Path) -> None:
    store = populated(state_dir)
    for name, v4 in [("gw", "10.88.0.1"), ("netaddr", "10.88.0.0"), ("bcast", "10.88.255.255")]:
        put_raw_lease(
            store,
            Lease(LeaseKey(NET, name), (ip_address(v4), ip_address(f"fd88::a:{len(name)}")), 0),
        )
    assert problems_after(store) == [
        "lease bcast on network net holds 10.88.255.255, which is the broadcast address of"
        " subnet 10.88.0.0/16",
        "lease gw on network net holds 10.88.0.1, which is the gateway of subnet 10.88.0.0/16",
        "lease netaddr on network net holds 10.88.0.0, which is the network address of subnet"
        " 10.88.0.0/16",
    ]


def test_leases_and_reverse_entries_of_a_network_that_does_not_exist(state_dir: Path) -> None:
    store = populated(state_dir)
    store.db.delete(keys.network_key("single"))
    assert problems_after(store) == [
        "lease d0 on network single: that network does not exist",
        "1 reverse entry on network single, which does not exist",
    ]


def test_an_entry_that_cannot_be_decoded_is_reported(state_dir: Path) -> None:
    store = populated(state_dir)
    store.db.put(keys.lease_key(LeaseKey(NET, "c1")), b"\x93not a lease")
    found = problems_after(store)
    assert len(found) == 2
    assert found[0].startswith("cannot decode the leases (ExtraData(")
    assert found[1] == "leases and reverse entries were not compared"


def test_main_reports_problems_with_status_1(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = populated(state_dir)
    store.db.delete(keys.reverse_key(NET, ip_address("10.88.0.2")))
    store.db.delete(keys.lease_key(LeaseKey("single", "d0")))
    store.close()
    assert main(["--state-dir", str(state_dir)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[-1] == "2 problem(s)"


def test_main_without_a_database_is_66(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(state_dir)]) == 66
    assert "no database" in capsys.readouterr().err
    assert not state_dir.exists()  # check never creates one
    with pytest.raises(StoreUnavailable):
        check(state_dir)


def test_main_on_a_corrupt_database_is_65(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    populated(state_dir).close()
    (state_dir / "leases.ldb" / "CURRENT").unlink()
    assert main(["--state-dir", str(state_dir)]) == 65
    assert "CURRENT" in capsys.readouterr().err
    with pytest.raises(CorruptDatabase):
        check(state_dir)


def test_main_while_the_daemon_holds_the_database_is_75(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = populated(state_dir)
    try:
        assert main(["--state-dir", str(state_dir)]) == 75
    finally:
        store.close()
    assert "lock" in capsys.readouterr().err.lower()


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/ipamd")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "ipamd"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "ipamd"
    assert check_module.default_state_dir is default_state_dir


def test_an_undecodable_reverse_entry_is_reported(state_dir: Path) -> None:
    store = populated(state_dir)
    store.db.put(keys.reverse_network_prefix(NET) + b"\x04\x0a\x58", b"\x92\xa1x\xa0")
    found = problems_after(store)
    assert len(found) == 1
    assert found[0].startswith("cannot decode the reverse entries of network net")
