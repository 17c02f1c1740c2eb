"""`ipamd-client` as a subprocess against the real daemon: every subcommand, human and --json.

Also: exit statuses, one-line errors on stderr, the exact layout of the
`network inspect` and `stats` tables, and `leases` paging through many leases.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ipamd import cli
from ipamd.client import Client, TrioClient, render
from ipamd.errors import ERRORS_BY_CODE, IpamError
from tests.client.fakes import FakePeer
from tests.support import Daemon

Names = Callable[[str], str]
CLI = [sys.executable, "-m", "ipamd.cli"]


def run(sock: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--socket", str(sock), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def ok(sock: Path, *args: str, stdin: str | None = None) -> str:
    done = run(sock, *args, stdin=stdin)
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def ok_json(sock: Path, *args: str, stdin: str | None = None) -> Any:
    return json.loads(ok(sock, "--json", *args, stdin=stdin))


def fails(sock: Path, *args: str) -> tuple[int, str]:
    done = run(sock, *args)
    if "--json" in args:  # a daemon error is JSON on stdout as well
        error = json.loads(done.stdout)["error"]
        assert done.returncode == 10 + error["code"], (done.returncode, error)
    else:
        assert done.stdout == ""
    return done.returncode, done.stderr


def test_every_subcommand_human_and_json(
    shared_daemon: Daemon, name: Names, tmp_path: Path
) -> None:
    sock = shared_daemon.socket
    net, from_json, from_toml = name("net"), name("json"), name("toml")
    c1, c2 = name("c1"), name("c2")

    assert ok(sock, "ping").startswith(f"ipamd 0.1.0 at {sock}: up ")
    assert set(ok_json(sock, "ping")) == {"version", "uptime_s"}
    assert ok(sock, "status").splitlines()[0].split() == ["version", "0.1.0"]
    assert {"networks", "leases", "connections"} <= set(ok_json(sock, "status"))

    # network create, from flags and from files
    create = ["network", "create", net, "--subnet", "10.90.0.0/24", "--gateway", "10.90.0.1"]
    create += ["--range", "10.90.0.10-10.90.0.20", "--exclude", "10.90.0.15", "--exclude"]
    create += ["10.90.0.16-10.90.0.17", "--subnet", "fd90::/64"]
    summary = f"network {net} (host-local): 10.90.0.0/24 gateway 10.90.0.1, fd90::/64\n"
    assert ok(sock, *create) == summary
    assert ok_json(sock, *create) == {
        "name": net,
        "driver": "host-local",
        "subnets": [
            {
                "subnet": "10.90.0.0/24",
                "gateway": "10.90.0.1",
                "range_start": "10.90.0.10",
                "range_end": "10.90.0.20",
                "exclude": ["10.90.0.15", "10.90.0.16-10.90.0.17"],
            },
            {"subnet": "fd90::/64"},
        ],
    }
    json_file = tmp_path / "net.json"
    json_file.write_text(json.dumps({"name": from_json, "subnets": [{"subnet": "10.93.0.0/24"}]}))
    assert ok(sock, "network", "create", "--file", str(json_file)).startswith(
        f"network {from_json} (host-local): 10.93.0.0/24"
    )
    toml_file = tmp_path / "net.toml"
    toml_file.write_text('driver = "macvlan"\n[[subnets]]\nsubnet = "10.94.0.0/24"\n')
    assert ok_json(sock, "network", "create", from_toml, "--file", str(toml_file)) == {
        "name": from_toml,
        "driver": "macvlan",
        "subnets": [{"subnet": "10.94.0.0/24"}],
    }

    # network ls / inspect / stats
    rows = {line.split()[0]: line.split() for line in ok(sock, "network", "ls").splitlines()}
    assert rows["NAME"] == ["NAME", "DRIVER", "SUBNETS", "LEASES"]
    assert rows[net] == [net, "host-local", "10.90.0.0/24,", "fd90::/64", "0"]
    assert rows[from_toml] == [from_toml, "macvlan", "10.94.0.0/24", "0"]
    assert {n["name"] for n in ok_json(sock, "network", "ls")} >= {net, from_json, from_toml}
    assert ok(sock, "network", "inspect", net).startswith(f"Name:    {net}\n")
    inspected = ok_json(sock, "network", "inspect", net)
    assert inspected["subnets"][1]["size"] == str(2**64)
    stats_rows = [line.split() for line in ok(sock, "stats").splitlines()]
    assert stats_rows[0] == ["NETWORK", "SUBNET", *render.SUBNET_STATS_HEADERS]
    assert [net, "10.90.0.0/24", "256", "8", "0", "8"] in [r[:6] for r in stats_rows]
    assert net in {n["name"] for n in ok_json(sock, "stats")["networks"]}

    # alloc / get
    alloc = ok(sock, "alloc", c1, "--network", net, "--ifname", "eth0", "--attr", "pod=web")
    width = max(len("NETWORK"), len(net))
    assert alloc.splitlines() == [
        f"{'NETWORK':<{width}}  IFNAME  ADDRESS        GATEWAY",
        f"{net:<{width}}  eth0    10.90.0.10/24  10.90.0.1",
        f"{net:<{width}}  eth0    fd90::1/64     -",
    ]
    result = ok_json(
        sock, "alloc", c2, "--network", net, "--ip", "10.90.0.50", "--network", from_json
    )
    assert result["networks"][net]["ips"][0]["address"] == "10.90.0.50/24"
    assert result["networks"][from_json]["ips"][0]["address"] == "10.93.0.1/24"
    got = ok(sock, "get", c1).splitlines()
    assert got[0].split() == ["NETWORK", "IFNAME", "ADDRESS", "GATEWAY", "CREATED"]
    assert got[1].split()[:4] == [net, "eth0", "10.90.0.10/24", "10.90.0.1"]
    assert ok_json(sock, "get", c2, "--network", from_json)["networks"].keys() == {from_json}

    # leases / who-has
    leases = [line.split() for line in ok(sock, "leases", net).splitlines()]
    assert leases[0] == ["ADDRESSES", "IFNAME", "CREATED", "SUSPECT", "CONTAINER", "ATTRIBUTES"]
    assert [(row[0], row[1], row[3], row[4], row[5:]) for row in leases[1:]] == [
        ("10.90.0.10/24,fd90::1/64", "eth0", "-", c1, ["pod=web"]),
        ("10.90.0.50/24,fd90::2/64", "-", "-", c2, []),
    ]
    assert [x["container_id"] for x in ok_json(sock, "leases", net)] == [c1, c2]
    assert ok_json(sock, "leases", from_toml) == []
    who = ok(sock, "who-has", "10.90.0.50").splitlines()
    assert who[1].split()[:4] == ["10.90.0.50", net, c2, "-"]
    owner = ok_json(sock, "who-has", "fd90::1", "--network", net)
    assert (owner["container_id"], owner["ifname"]) == (c1, "eth0")

    # gc
    dry = ok(sock, "gc", net, "--valid", f"{c1}:eth0", "--dry-run").splitlines()
    assert dry[0] == f"would release 1 lease(s) on {net}"
    assert dry[2].split()[4] == c2
    dry_json = ok_json(sock, "gc", net, "--valid", c1, "--dry-run")
    assert [x["container_id"] for x in dry_json["released"]] == [c2]
    valid = tmp_path / "valid.txt"
    valid.write_text(f"# containers podman knows\n{c1}\n\n")
    assert ok(sock, "gc", net, "--valid-from", str(valid)).startswith(
        f"released 1 lease(s) on {net}\n"
    )
    assert ok_json(sock, "gc", net, "--valid-from", "-", stdin=f"{c1}:eth0\n")["released"] == []

    # release
    assert ok(sock, "release", c1, "--network", net, "--ifname", "eth0") == (
        f"released on {net}: 10.90.0.10, fd90::1\n"
    )
    assert ok(sock, "release", c1) == f"{c1} held nothing to release\n"
    assert ok_json(sock, "release", c2) == {"released": {from_json: ["10.93.0.1"]}}

    # network rm
    ok(sock, "alloc", c1, "--network", net)
    removed = ok(sock, "network", "rm", net, "--force")
    assert removed == f"deleted network {net}; released 1 lease(s)\n"
    assert ok_json(sock, "network", "rm", from_json) == {"name": from_json, "released": 0}
    assert ok_json(sock, "network", "rm", from_toml) == {"name": from_toml, "released": 0}


def test_network_inspect_table_layout(shared_daemon: Daemon, name: Names) -> None:
    sock, net = shared_daemon.socket, name("golden")
    with Client(sock) as client:
        v4 = {"subnet": "10.91.0.0/24", "gateway": "10.91.0.1", "exclude": ["10.91.0.15"]}
        v4 |= {"range_start": "10.91.0.10", "range_end": "10.91.0.20"}
        client.network_create(net, [v4, {"subnet": "fd91::/64"}])
        client.alloc(name("a"), {net: {}})
        client.alloc(name("b"), {net: {"static_ips": ["10.91.0.50"]}})
    assert ok(sock, "network", "inspect", net) == (
        f"Name:    {net}\n"
        "Driver:  host-local\n"
        "Leases:  2\n"
        "\n"
        "SUBNET        GATEWAY    RANGE                      SIZE  ALLOCATABLE  USED      FREE  UTILISATION\n"  # noqa: E501
        "10.91.0.0/24  10.91.0.1  10.91.0.10-10.91.0.20       256           10     2         9  [##..................]  10.0%\n"  # noqa: E501
        "fd91::/64     -          -                      1.84e+19     1.84e+19     2  1.84e+19  [....................]  <0.1%\n"  # noqa: E501
        "\n"
        "Excluded:\n"
        "  10.91.0.0/24: 10.91.0.15\n"
    )
    ok(sock, "network", "rm", net, "--force")


def test_stats_table_layout(daemon: Daemon) -> None:
    sock = daemon.socket
    with Client(sock) as client:
        client.network_create("podman", [{"subnet": "10.88.0.0/24", "gateway": "10.88.0.1"}])
        client.network_create("tiny", [{"subnet": "192.168.7.0/30"}])
        client.network_create("outside", [], driver="macvlan")
        for container in ("c1", "c2", "c3"):
            client.alloc(container, {"podman": {}})
        for container in ("t1", "t2"):
            client.alloc(container, {"tiny": {}})
    assert ok(sock, "stats") == (
        "NETWORK  SUBNET          SIZE  ALLOCATABLE  USED  FREE  UTILISATION\n"
        "outside  -                  -            -     -     -  -\n"
        "podman   10.88.0.0/24     256          253     3   250  [....................]   1.2%\n"
        "tiny     192.168.7.0/30     4            2     2     0  [####################] 100.0%\n"
    )


def test_leases_pages_through_many(shared_daemon: Daemon, name: Names) -> None:
    sock, net = shared_daemon.socket, name("many")
    count = 1234

    async def fill() -> None:
        async with TrioClient.connect(sock) as client:
            await client.network_create(net, [{"subnet": "10.95.0.0/20"}])
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(client.alloc, name(f"c{i}"), {net: {}})

    trio.run(fill)
    human = ok(sock, "leases", net, "--page-size", "500").splitlines()
    assert len(human) == 1 + count
    addresses = [line.split()[0] for line in human[1:]]
    assert addresses[:2] == ["10.95.0.1/20", "10.95.0.2/20"]
    assert len(set(addresses)) == count
    as_json = ok_json(sock, "leases", net, "--page-size", "500")
    assert [x["ips"][0]["address"] for x in as_json] == addresses
    ok(sock, "network", "rm", net, "--force")


# -- errors and exit statuses ----------------------------------------------------------------


def test_exit_status_per_error_code(shared_daemon: Daemon, name: Names) -> None:
    sock, net, tiny = shared_daemon.socket, name("net"), name("tiny")
    with Client(sock) as client:
        client.network_create(net, [{"subnet": "10.96.0.0/24"}])
        client.network_create(tiny, [{"subnet": "10.97.0.0/30"}])
        client.alloc(name("t1"), {tiny: {}})
        client.alloc(name("t2"), {tiny: {}})
        client.alloc(name("s1"), {net: {"static_ips": ["10.96.0.7"]}})

    assert fails(sock, "alloc", name("t3"), "--network", tiny) == (
        17,
        "ipamd-client: range_exhausted: failed to find free IP in range: 10.97.0.1 - 10.97.0.2\n",
    )
    status, stderr = fails(sock, "network", "inspect", "bad name!")
    assert status == 11 and stderr.startswith("ipamd-client: invalid_request: invalid network name")
    assert fails(sock, "network", "inspect", name("absent"))[0] == 13
    assert fails(sock, "network", "create", net, "--subnet", "10.98.0.0/24")[0] == 14
    status, stderr = fails(sock, "alloc", name("s2"), "--network", net, "--ip", "10.96.0.7")
    assert status == 15 and "is already allocated to container ID" in stderr
    assert fails(sock, "alloc", name("s3"), "--network", net, "--ip", "10.96.0.0")[0] == 16
    assert fails(sock, "get", name("nobody"))[0] == 18
    assert fails(sock, "--json", "who-has", "10.96.0.99")[0] == 18
    assert fails(sock, "network", "rm", net)[0] == 19
    status, stderr = fails(sock, "--json", "alloc", name("t3"), "--network", tiny)
    assert status == 17 and stderr.count("\n") == 1  # errors stay one line with --json
    with Client(sock) as client:
        client.network_delete(net, force=True)
        client.network_delete(tiny, force=True)


def test_exit_status_table() -> None:
    for code, cls in ERRORS_BY_CODE.items():
        assert cli.exit_status(cls("x")) == 10 + code
    unknown = IpamError("from a newer daemon")
    unknown.code = 99  # type: ignore[misc]
    assert cli.exit_status(unknown) == 1
    assert cli.exit_status(ERRORS_BY_CODE[13]("x")) == 23
    # The table names every daemon error with its status.
    for code, cls in ERRORS_BY_CODE.items():
        assert f"{10 + code}   {cls.name}" in cli.EXIT_STATUS_HELP


def run_in_process(
    capsys: pytest.CaptureFixture[str], sock: Path, *args: str
) -> tuple[int, str, str]:
    """`cli.main` in this process: for errors found before any connection is made."""
    try:
        status = cli.main(["--socket", str(sock), *args])
    except SystemExit as e:  # argparse's own errors exit from inside
        status = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_usage_errors_exit_64(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "unused.sock"
    cases = [
        ("alloc", "c1"),  # no --network
        ("alloc", "c1", "--ip", "10.0.0.1", "--network", "n"),  # --ip before its --network
        ("network", "create", "n", "--gateway", "10.0.0.1"),  # no --subnet to apply it to
        ("network", "create", "n", "--subnet", "10.0.0.0/24", "--range", "10.0.0.9"),
        ("network", "create"),
        ("gc", "n"),  # neither --valid nor --valid-from
        ("alloc", "c1", "--network", "n", "--network", "n"),
        ("release", "c1", "--ifname", "eth0"),
        ("network",),
        ("frobnicate",),
        ("--timeout", "0", "ping"),
    ]
    for args in cases:
        status, out, err = run_in_process(capsys, sock, *args)
        assert (status, out) == (64, ""), (args, err)
        assert "error" in err and err.endswith("\n")
    # and as a program, argparse's errors too
    assert fails(sock, "frobnicate")[0] == 64


def test_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "unused.sock"
    status, _, err = run_in_process(
        capsys, sock, "network", "create", "--file", str(tmp_path / "absent.toml")
    )
    assert status == 66 and err.startswith("ipamd-client: file: cannot read")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert run_in_process(capsys, sock, "network", "create", "--file", str(bad))[0] == 65
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[[subnets]\n")
    assert run_in_process(capsys, sock, "network", "create", "--file", str(bad_toml))[0] == 65
    named = tmp_path / "named.json"
    named.write_text('{"name": "a", "subnets": []}')
    assert run_in_process(capsys, sock, "network", "create", "b", "--file", str(named))[0] == 64
    absent = str(tmp_path / "absent")
    assert run_in_process(capsys, sock, "gc", "n", "--valid-from", absent)[0] == 66


def test_connection_failures(tmp_path: Path, fake_peer: Callable[[str], FakePeer]) -> None:
    missing = tmp_path / "absent.sock"
    assert fails(missing, "ping") == (
        69,
        f"ipamd-client: connection_failed: cannot connect to ipamd at {missing}: "
        f"No such file or directory; {cli.CONNECT_HINT}\n",
    )
    silent = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(silent))
        listener.listen(1)
        assert fails(silent, "--timeout", "0.3", "stats") == (
            75,
            f"ipamd-client: timeout: ipamd at {silent} did not answer within 0.3s\n",
        )
    hangup = fake_peer("hangup")
    status, stderr = fails(hangup.path, "alloc", "c1", "--network", "n")
    assert status == 69 and "closed the connection with 1 call(s) unanswered" in stderr
    garbage = fake_peer("garbage")
    status, stderr = fails(garbage.path, "ping")
    assert status == 76 and stderr.startswith("ipamd-client: protocol_error: ")


def test_env_socket(shared_daemon: Daemon) -> None:
    done = subprocess.run(
        [*CLI, "--json", "ping"],
        capture_output=True,
        text=True,
        env={"IPAMD_SOCKET": str(shared_daemon.socket), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["version"], done


# -- help --------------------------------------------------------------------------------------

SUBCOMMANDS = [
    ["ping"],
    ["status"],
    ["stats"],
    ["network"],
    ["network", "create"],
    ["network", "ls"],
    ["network", "inspect"],
    ["network", "rm"],
    ["alloc"],
    ["release"],
    ["get"],
    ["leases"],
    ["who-has"],
    ["gc"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_help_for_every_subcommand_has_an_example(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args([*words, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "example:\n  ipamd-client " in text


def test_top_level_help_lists_exit_statuses(tmp_path: Path) -> None:
    text = ok(tmp_path / "unused.sock", "--help")
    assert cli.EXIT_STATUS_HELP in text
    for command in ("ping", "stats", "network", "alloc", "release", "leases", "who-has", "gc"):
        assert command in text
