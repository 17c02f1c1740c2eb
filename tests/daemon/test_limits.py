"""`[limits] max_array_len` bounds request arrays, gc's `valid` list among them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.e2e import write_config
from tests.support import Daemon

VALID = [{"container_id": f"keep{i:05d}"} for i in range(5000)]


def gc_with_5000_valid(daemon: Daemon) -> dict[str, object]:
    with daemon.client() as client:
        client.call("network.create", {"name": "big", "subnets": [{"subnet": "10.7.0.0/24"}]})
        client.call("alloc", {"container_id": "stale", "networks": {"big": {}}})
        client.call("alloc", {"container_id": "keep00007", "networks": {"big": {}}})
        return client.call("gc", {"network": "big", "valid": VALID})  # type: ignore[no-any-return]


def test_the_default_refuses_a_longer_array(daemon: Daemon) -> None:
    with daemon.client() as client:
        client.send("gc", {"network": "big", "valid": VALID})
        # No request can own an undecodable frame: msgid 0, then the connection closes.
        assert client.receive() == [
            1,
            0,
            {
                "code": 1,
                "name": "invalid_request",
                "message": "undecodable frame: 5000 exceeds max_array_len(4096)",
            },
            None,
        ]
        with pytest.raises(ConnectionError):
            client.receive()


def test_a_raised_limit_lets_gc_see_every_valid_attachment(tmp_path: Path) -> None:
    config = write_config(tmp_path / "ipamd.toml", "[limits]\nmax_array_len = 8192\n")
    daemon = Daemon(tmp_path / "state", tmp_path / "ipamd.sock", config=config).start()
    try:
        result = gc_with_5000_valid(daemon)
    finally:
        daemon.stop()
    released = result["released"]
    assert isinstance(released, list)
    assert [lease["container_id"] for lease in released] == ["stale"]
