"""The command-line side of `ipamd check --cluster` (check.py does the checking)."""

from __future__ import annotations

import sys
from pathlib import Path

from ipamd import exits
from ipamd.cluster.check import check_cluster
from ipamd.cluster.etcd import EtcdError, EtcdUnreachable
from ipamd.config import ConfigError, load_config
from ipamd.storage.store import CorruptDatabase, StoreUnavailable

EXIT_OK = exits.OK
EXIT_PROBLEMS = exits.FAILURE
EXIT_CORRUPT = exits.DATAERR
EXIT_UNAVAILABLE = exits.TEMPFAIL  # locked by a running daemon, or etcd unreachable
EXIT_CONFIG = exits.CONFIG


def run_cluster_check(config_path: Path | None, state_dir: Path) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"ipamd check: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if config.cluster is None:
        print("ipamd check --cluster: the config has no [cluster] section", file=sys.stderr)
        return EXIT_CONFIG
    try:
        report = check_cluster(state_dir, config.cluster)
    except CorruptDatabase as e:
        print(f"ipamd check: {e}", file=sys.stderr)
        return EXIT_CORRUPT
    except StoreUnavailable as e:
        print(f"ipamd check: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (EtcdUnreachable, EtcdError) as e:
        print(f"ipamd check --cluster: etcd: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    for problem in report.problems:
        print(problem)
    if report.problems:
        print(f"{len(report.problems)} cluster problem(s)")
        return EXIT_PROBLEMS
    print(
        f"cluster ok: host {config.cluster.host}, {report.networks} cluster network(s),"
        f" {report.blocks} block(s) held, {report.leases} lease(s) in them"
    )
    return EXIT_OK
