"""The STATUS= text that `systemctl status ipamd` shows (ipamd/daemon/status_line.py)."""

from __future__ import annotations

from ipamd.daemon.status_line import status_text

STATUS = {"networks": 2, "leases": 41, "connections": 3, "mutations": 57, "failed_writes": 0}


def test_the_counts_an_operator_checks_first() -> None:
    assert status_text(STATUS) == (
        "41 lease(s) on 2 network(s), 3 client(s) connected, 57 change(s) since start"
    )


def test_failed_writes_show_only_when_there_were_some() -> None:
    assert status_text({**STATUS, "failed_writes": 4}).endswith(
        "57 change(s) since start; 4 failed write(s) since start"
    )
