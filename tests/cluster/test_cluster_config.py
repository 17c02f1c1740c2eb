"""`[cluster]` in the config: validated once, each bad value named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ipamd.config import ConfigError, load_config


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "ipamd.toml"
    path.write_text(text)
    return load_config(path)


def test_a_full_cluster_table_parses_with_durations(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[cluster]\nendpoints = ["https://10.0.0.1:2379"]\nhost = "node7"\nprefix = "/x"\n'
        'ca = "/etc/ca.pem"\ncert = "/etc/c.pem"\nkey = "/etc/k.pem"\nlease_ttl = "1m"\n'
        'sync_interval = 2\nreturn_empty_after = "1h"\n',
    ).cluster
    assert config is not None
    assert (config.host, config.prefix, config.lease_ttl) == ("node7", "/x", 60)
    assert (config.sync_interval, config.return_empty_after) == (2.0, 3600.0)
    assert load(tmp_path, "").cluster is None


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("endpoints = []", "cluster.endpoints"),
        ('endpoints = ["10.0.0.1:2379"]', "cluster.endpoints"),
        ('endpoints = ["http://e:2379"]\nhost = "no spaces"', "cluster.host 'no spaces'"),
        ('endpoints = ["http://e:2379"]\nprefix = "ipamd"', "cluster.prefix 'ipamd'"),
        ('endpoints = ["http://e:2379"]\ncert = "/c.pem"', "cluster.cert and cluster.key"),
        ('endpoints = ["http://e:2379"]\nca = "ca.pem"', "cluster.ca"),
        ('endpoints = ["http://e:2379"]\nlease_ttl = "soon"', "cluster.lease_ttl"),
        ('endpoints = ["http://e:2379"]\nlease_ttl = 1', "at least 2 seconds"),
        ('endpoints = ["http://e:2379"]\nleader = true', "unknown key(s) in [cluster]"),
    ],
)
def test_bad_cluster_values_are_refused_naming_them(tmp_path: Path, body: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load(tmp_path, f"[cluster]\n{body}\n")


def test_a_cluster_network_in_the_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a cluster network is defined once"):
        load(
            tmp_path,
            '[[networks]]\nname = "c"\nscope = "cluster"\n[[networks.subnets]]\n'
            'subnet = "10.0.0.0/24"\n',
        )
