"""`ipamd-client cluster status|blocks|check|release-host`: cluster mode from the shell.

Kept apart from cli.py (which registers it) so that cluster mode's commands
stay in one place; the calls are the `cluster.*` methods of the protocol.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from ipamd.client.sync import Client


def add_cluster_commands(commands: Any, subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    cluster = subcommand(
        commands,
        "cluster",
        None,
        "cluster mode: hosts, etcd, blocks; retire a dead host",
        "ipamd-client cluster status\nipamd-client cluster blocks podnet\n"
        "ipamd-client cluster check\nipamd-client cluster release-host node7",
    )
    sub = cluster.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    subcommand(
        sub,
        "status",
        cmd_cluster_status,
        "this host, etcd's reachability, and every host with its liveness and blocks",
        "ipamd-client cluster status",
    )
    blocks = subcommand(
        sub,
        "blocks",
        cmd_cluster_blocks,
        "each block of a cluster network: owner, used and free (as the owner last published)",
        "ipamd-client cluster blocks podnet",
    )
    blocks.add_argument("network", metavar="NETWORK")
    subcommand(
        sub,
        "check",
        cmd_cluster_check,
        "ipamd check --cluster on this running host: its leases and blocks against etcd"
        " (exit status 1 when it finds a problem)",
        "ipamd-client cluster check",
    )
    release = subcommand(
        sub,
        "release-host",
        cmd_cluster_release_host,
        "give a dead host's blocks back (refused while the host is alive)",
        "ipamd-client cluster release-host node7",
    )
    release.add_argument("host", metavar="HOST")


def cmd_cluster_status(client: Client, args: argparse.Namespace, out: Any) -> None:
    result = client.call("cluster.status")
    out.result(result, lambda: status_lines(result))


def cmd_cluster_blocks(client: Client, args: argparse.Namespace, out: Any) -> None:
    result = client.call("cluster.blocks", {"network": args.network})
    out.result(result, lambda: block_lines(result))


def cmd_cluster_check(client: Client, args: argparse.Namespace, out: Any) -> None:
    from ipamd.cli import EXIT_UNKNOWN_ERROR, CliError  # (cli.py imports this module)

    result = client.call("cluster.check")
    problems = result.get("problems", [])
    out.result(result, lambda: check_lines(result))
    if problems:
        raise CliError(EXIT_UNKNOWN_ERROR, "cluster_problems", f"{len(problems)} problem(s)")


def check_lines(result: dict[str, Any]) -> Iterable[str]:
    problems = result.get("problems", [])
    yield from problems
    if problems:
        yield f"{len(problems)} cluster problem(s)"
    else:
        yield (
            f"cluster ok: host {result.get('host')}, {result.get('networks')} cluster"
            f" network(s), {result.get('blocks')} block(s) held, {result.get('leases')}"
            " lease(s) in them"
        )


def cmd_cluster_release_host(client: Client, args: argparse.Namespace, out: Any) -> None:
    result = client.call("cluster.release_host", {"host": args.host})
    released = result.get("released", [])
    out.result(
        result,
        lambda: [f"released {len(released)} block(s) of host {args.host}", *released],
    )


def _table(header: list[str], rows: list[list[str]]) -> Iterable[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        yield "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


def status_lines(result: dict[str, Any]) -> Iterable[str]:
    etcd = result.get("etcd", {})
    reach = "reachable" if etcd.get("reachable") else "UNREACHABLE"
    if etcd.get("unreachable_since"):
        reach += f" since {etcd['unreachable_since']} ({etcd.get('error', '')})"
    yield f"host {result.get('host')}: etcd {reach} at {', '.join(etcd.get('endpoints', []))}"
    if not result.get("caught_up", True):
        yield "still catching up with etcd"
    rows = []
    for host in result.get("hosts", []):
        alive = {True: "alive", False: "dead", None: "?"}[host.get("alive")]
        rows.append([str(host.get("name")), alive, str(host.get("blocks"))])
    yield from _table(["HOST", "LIVENESS", "BLOCKS"], rows)


def block_lines(result: dict[str, Any]) -> Iterable[str]:
    rows = [
        [
            str(b.get("block")),
            str(b.get("subnet")),
            str(b.get("host")),
            "?" if b.get("used") is None else str(b["used"]),
            "?" if b.get("free") is None else str(b["free"]),
        ]
        for b in result.get("blocks", [])
    ]
    yield from _table(["BLOCK", "SUBNET", "HOST", "USED", "FREE"], rows)
