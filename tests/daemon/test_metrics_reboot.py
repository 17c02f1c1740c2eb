"""Suspect leases in the metrics, through a reboot of the real daemon.

The boot id comes from a file the test controls, as in test_boot_epochs.py:
a new id there and a restart is a reboot. After it, the suspect gauge must
follow `stats` as leases are confirmed, and the reclaim counter count what
`[leases] reclaim_after_reboot` released. Waiting is on STATUS= lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.metrics_support import free_port, parse, scrape
from tests.daemon.test_boot_epochs import NET, alloc, first_boot, make_host, next_status
from tests.daemon.test_boot_epochs import notify_socket as notify_receiver

pytestmark = pytest.mark.slow


def suspect_in_stats(stats: dict[str, list[dict[str, int]]]) -> int:
    (network,) = [n for n in stats["networks"] if n["name"] == NET]
    return network["suspect"]


def test_suspect_leases_and_reclaims_follow_a_reboot(tmp_path: Path) -> None:
    port = free_port()
    host = make_host(
        tmp_path,
        extra_config=f'[metrics]\nlisten = "127.0.0.1:{port}"\n',
        leases_config='reclaim_after_reboot = "2s"\n',
    )
    try:
        first_boot(host)  # three leases in boot one
        host.reboot("boot-two")
        with notify_receiver(tmp_path / "notify") as notes:
            host.start(NOTIFY_SOCKET=str(tmp_path / "notify"))
            assert "3 suspect" in next_status(notes)
            with host.client() as client:
                families = parse(scrape(port))
                assert suspect_in_stats(client.call("stats")) == 3
                suspect = families["ipamd_network_suspect_leases"]
                assert suspect.value("ipamd_network_suspect_leases", network=NET) == 3

                alloc(client, "a")  # re-ADDed within the grace: confirmed
                families = parse(scrape(port))
                assert suspect_in_stats(client.call("stats")) == 2
                suspect = families["ipamd_network_suspect_leases"]
                assert suspect.value("ipamd_network_suspect_leases", network=NET) == 2
                assert not families["ipamd_reclaimed_leases"].samples

                status = next_status(notes)
                while "suspect" in status:  # the grace ends: b and c are reclaimed
                    status = next_status(notes)
                families = parse(scrape(port))
                assert suspect_in_stats(client.call("stats")) == 0
        suspect = families["ipamd_network_suspect_leases"]
        assert suspect.value("ipamd_network_suspect_leases", network=NET) == 0
        reclaimed = families["ipamd_reclaimed_leases"]
        assert reclaimed.value("ipamd_reclaimed_leases_total", network=NET) == 2
        leases = families["ipamd_network_leases"]
        assert leases.value("ipamd_network_leases", network=NET) == 1
        host.stop()
    finally:
        if host.daemon is not None:
            host.daemon.close()
