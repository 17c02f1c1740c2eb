"""`ipamd-client`: every ipamd method from the shell (DESIGN.md section 6).

    ipamd-client [--socket PATH] [--json] [--timeout S] COMMAND ...

Human output by default (aligned tables; `stats` and `network inspect` draw a
utilisation bar per subnet); `--json` prints the daemon's result as one JSON
document with sorted keys, for scripts (`leases` prints one JSON array, one
lease per line, as it pages through them); `--json` may come before or after
the command. Errors go to stderr as one line, `ipamd-client: NAME: MESSAGE`,
and set the exit status; with `--json` a daemon error is printed on stdout
too, as `{"error": {"code", "name", "message"}}`.

Exit statuses: 0 on success, 10 + the daemon's error code for a daemon error
(11 invalid_request ... 23 request_too_large), sysexits for the rest; the
whole table is EXIT_STATUS_HELP below, which `--help` prints.

Choices written down here:

* `network create NAME --subnet CIDR [--gateway IP] [--range A-B] [--exclude X]...`:
  `--gateway`, `--range` and `--exclude` apply to the `--subnet` before them;
  repeat `--subnet` for dual stack. With `--file`, NAME may be left out (the
  file's `name` is used); given both, they must agree.
* `alloc CONTAINER --network NET [--ifname IF] [--ip IP]... [--attr K=V]...`:
  likewise, `--ifname`, `--ip` and `--attr` apply to the `--network` before
  them (no guessing from subnets, so a typo in an address is the daemon's
  `address_not_allocatable`, not a silent move to another network). Several
  `--network`s make one all-or-nothing request.
* `gc NET --valid CONTAINER[:IFNAME]...`: CONTAINER alone keeps every
  attachment of that container; `CONTAINER:` keeps only its unnamed one.
  `--valid-from FILE` reads one entry a line (`-`: stdin); an empty file keeps
  nothing, which releases every lease on NET. `--from-cni-cache DIR`,
  `--from-podman` and `--from-crictl` add what the runtimes themselves hold
  (see ipamd/client/runtimes.py); each is read only, and one that cannot be
  read fails the command (exit 69) instead of keeping nothing.
* Counts of 10**15 or more (IPv6 subnets) print as `1.84e+19` in tables; `--json`
  keeps the daemon's exact value (a decimal string above 2**63-1).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from inspect import cleandoc
from pathlib import Path
from typing import IO, Any, Final, NoReturn, TypeAlias

from ipamd import __version__, exits
from ipamd.client import Client, ConnectionFailed, ProtocolError, RequestTimeout, render
from ipamd.client.cluster_cli import add_cluster_commands
from ipamd.errors import ERRORS_BY_CODE, IpamError, NetworkInUse

PROG: Final = "ipamd-client"

# The sysexits statuses are ipamd/exits.py's, shared with `ipamd` and `ipamd check`.
EXIT_OK: Final = exits.OK
EXIT_UNKNOWN_ERROR: Final = exits.FAILURE
# A daemon error exits with this plus its code: invalid_request (1) -> 11 ... request_too_large
# (13) -> 23; unknown codes keep clear of the sysexits range below.
EXIT_ERROR_BASE: Final = 10
EXIT_USAGE: Final = exits.USAGE
EXIT_DATAERR: Final = exits.DATAERR
EXIT_NOINPUT: Final = exits.NOINPUT
EXIT_UNAVAILABLE: Final = exits.UNAVAILABLE
EXIT_TEMPFAIL: Final = exits.TEMPFAIL
EXIT_PROTOCOL: Final = exits.PROTOCOL
EXIT_INTERRUPTED: Final = exits.INTERRUPTED
# Said after "cannot connect": how to point the client at the daemon it should reach.
CONNECT_HINT: Final = (
    "is ipamd running? Point ipamd-client at its socket with --socket PATH or IPAMD_SOCKET=PATH"
)

EXIT_STATUS_HELP: Final = """\
exit status:
  0    success
  11   invalid_request          (a daemon error: 10 + its code)
  12   unknown_method
  13   network_not_found
  14   network_exists
  15   address_in_use
  16   address_not_allocatable
  17   range_exhausted
  18   lease_not_found
  19   network_in_use
  20   permission_denied
  21   unavailable
  22   storage_error
  23   request_too_large
  1    a daemon error code this client does not know (from a newer daemon)
  64   usage: bad arguments (EX_USAGE)
  65   --file is not valid JSON or TOML (EX_DATAERR)
  66   --file or --valid-from cannot be read (EX_NOINPUT)
  69   cannot connect to ipamd, or it went away mid-call (EX_UNAVAILABLE)
  75   ipamd did not answer within --timeout; a mutation's outcome is unknown (EX_TEMPFAIL)
  76   the socket's peer broke the protocol: not an ipamd? (EX_PROTOCOL)
  130  interrupted
"""

LEASE_PAGE: Final = 1000
JSON_HELP: Final = (
    "print the daemon's result as JSON, for scripts (a daemon error too, on stdout:"
    ' {"error": {"code", "name", "message"}}); before or after the command'
)


def exit_status(error: IpamError) -> int:
    """10 + the error's code for the codes DESIGN.md section 4 defines; 1 for others."""
    if error.code in ERRORS_BY_CODE:
        return EXIT_ERROR_BASE + error.code
    return EXIT_UNKNOWN_ERROR


class CliError(Exception):
    """A problem on our side of the socket (an unreadable --file), with its exit status."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.name = name


# -- argument parsing ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE) rather than 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _last(namespace: argparse.Namespace, dest: str) -> dict[str, Any] | None:
    items: list[dict[str, Any]] | None = getattr(namespace, dest, None)
    return items[-1] if items else None


class _ItemOption(argparse.Action):
    """An option taking one value that builds the list of subnets or networks."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, str)  # one value: no nargs
        self.take(parser, namespace, values, option_string)

    def take(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: str, flag: Any
    ) -> None:
        raise NotImplementedError


class _StartItem(_ItemOption):
    """`--subnet CIDR` / `--network NET`: start a new item that later options refine."""

    metavar_key = "name"

    def take(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: str, flag: Any
    ) -> None:
        items: list[dict[str, Any]] = list(getattr(namespace, self.dest, None) or [])
        items.append({self.metavar_key: value})
        setattr(namespace, self.dest, items)


class _StartSubnet(_StartItem):
    metavar_key = "subnet"


# Changes the item an option refines, or says what is wrong with the value.
Refinement: TypeAlias = "Callable[[dict[str, Any], str], str | None]"


class _RefineSubnet(_ItemOption):
    """An option that applies to the last `--subnet` before it, by its `refine`."""

    target = "subnets"
    starter = "--subnet"

    def __init__(self, *args: Any, refine: Refinement, **kwargs: Any) -> None:
        # It writes into the item it refines, never a namespace attribute of its own.
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(*args, **kwargs)
        self.refine = refine

    def take(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: str, flag: Any
    ) -> None:
        item = _last(namespace, self.target)
        if item is None:
            parser.error(f"{flag} must follow the {self.starter} it applies to")
        problem = self.refine(item, value)
        if problem:
            parser.error(f"{flag} {value}: {problem}")


class _RefineNetwork(_RefineSubnet):
    """An option that applies to the last `--network` before it, by its `refine`."""

    target = "networks"
    starter = "--network"


def _gateway(subnet: dict[str, Any], value: str) -> str | None:
    if "gateway" in subnet:
        return f"subnet {subnet['subnet']} already has gateway {subnet['gateway']}"
    subnet["gateway"] = value
    return None


def _lease_range(subnet: dict[str, Any], value: str) -> str | None:
    start, sep, end = value.partition("-")
    if not sep or not start.strip() or not end.strip():
        return "want a range FIRST-LAST, e.g. 10.88.0.10-10.88.0.200"
    if "range_start" in subnet:
        return f"subnet {subnet['subnet']} already has a range"
    subnet["range_start"], subnet["range_end"] = start.strip(), end.strip()
    return None


def _block_prefix(subnet: dict[str, Any], value: str) -> str | None:
    if not value.isdigit():
        return "want a prefix length, e.g. 26"
    subnet["block_prefix"] = int(value)
    return None


def _attribute(network: dict[str, Any], value: str) -> str | None:
    key, sep, text = value.partition("=")
    if not sep or not key:
        return "want KEY=VALUE"
    network.setdefault("attributes", {})[key] = text
    return None


def _ifname(network: dict[str, Any], value: str) -> str | None:
    if "ifname" in network:
        return f"network {network['name']} already has ifname {network['ifname']!r}"
    network["ifname"] = value
    return None


def _appending(key: str) -> Refinement:
    """A refinement that adds its value to the item's list `key` (a repeatable option)."""

    def append(item: dict[str, Any], value: str) -> None:
        item.setdefault(key, []).append(value)

    return append


# The options that refine the last --subnet / --network: flag, refinement, metavar, help.
RefiningOption: TypeAlias = "tuple[str, Refinement, str, str | None]"
SUBNET_OPTIONS: list[RefiningOption] = [
    ("--gateway", _gateway, "IP", "never leased"),
    ("--range", _lease_range, "A-B", "the lease range (default: the whole subnet)"),
    ("--exclude", _appending("exclude"), "ADDR|CIDR|A-B", "never leased; repeatable"),
    (
        "--block-prefix",
        _block_prefix,
        "N",
        "cluster networks: the prefix length of the subnet's blocks (default 26 / 122)",
    ),
]
IFNAME_OPTION: RefiningOption = ("--ifname", _ifname, "IF", None)
NETWORK_OPTIONS: list[RefiningOption] = [
    IFNAME_OPTION,
    ("--ip", _appending("static_ips"), "IP", "a static address (one per subnet); repeatable"),
    (
        "--attr",
        _attribute,
        "KEY=VALUE",
        "an attribute for people debugging, e.g. pod=web; repeatable",
    ),
]


def _add_refinements(
    parser: argparse.ArgumentParser, action: type[_RefineSubnet], options: list[RefiningOption]
) -> None:
    for flag, refine, metavar, text in options:
        parser.add_argument(flag, action=action, refine=refine, metavar=metavar, help=text)


# What `add_subparsers` returns: the commands (or a command's subcommands) being built.
Commands: TypeAlias = "argparse._SubParsersAction[Any]"


def _subcommand(
    commands: Commands,
    name: str,
    handler: Callable[[Client, argparse.Namespace, Output], None] | None,
    summary: str | None = None,
    example: str | None = None,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """Add command `name`, run by `handler`. Its help is the handler's docstring
    (a one-line summary, then example command lines) unless given here."""
    if summary is None or example is None:
        assert handler is not None and handler.__doc__, f"{name}: no help to show"
        summary, _, example = cleandoc(handler.__doc__).partition("\n\n")
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        aliases=list(aliases),
        help=summary,
        description=summary,
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if handler is not None:
        parser.set_defaults(handler=handler)
    # --json after the subcommand too (`ipamd-client stats --json`). SUPPRESS: when it
    # is not given here, the value from before the subcommand stands.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the global options, then one builder per command."""
    parser = _Parser(
        prog=PROG,
        description="Talk to ipamd, the IP address manager daemon, over its Unix socket.",
        epilog=EXIT_STATUS_HELP
        + "\nexample:\n  ipamd-client network create podman --subnet 10.88.0.0/16"
        " --gateway 10.88.0.1\n  ipamd-client alloc 3f2a9c --network podman\n"
        "  ipamd-client --json get 3f2a9c",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the daemon's socket (default: $IPAMD_SOCKET, else /run/ipamd/ipamd.sock as root, "
        "else $XDG_RUNTIME_DIR/ipamd/ipamd.sock or /tmp/ipamd-UID/ipamd.sock)",
    )
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=30.0,
        help="give up on a call after this long (default 30)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_daemon_commands(commands)
    _add_network_commands(commands)
    add_cluster_commands(commands, _subcommand)
    _add_alloc(commands)
    _add_release(commands)
    _add_get(commands)
    _add_leases(commands)
    _add_who_has(commands)
    _add_gc(commands)
    return parser


def _add_daemon_commands(commands: Commands) -> None:
    """The questions about the daemon itself: ping, status, stats, metrics."""
    _subcommand(commands, "ping", cmd_ping)
    _subcommand(commands, "status", cmd_status)
    _subcommand(commands, "stats", cmd_stats)
    _subcommand(commands, "metrics", cmd_metrics)


def _add_network_commands(commands: Commands) -> None:
    network = _subcommand(
        commands,
        "network",
        None,
        "create, list, inspect and remove networks",
        "ipamd-client network ls",
    )
    network_commands = network.add_subparsers(
        dest="network_command", metavar="SUBCOMMAND", required=True
    )
    _add_network_create(network_commands)
    _subcommand(network_commands, "ls", cmd_network_ls, aliases=["list"])  # people type both
    inspect = _subcommand(network_commands, "inspect", cmd_network_inspect)
    inspect.add_argument("name", metavar="NAME")
    rm = _subcommand(network_commands, "rm", cmd_network_rm)
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--force", action="store_true", help="release its leases first")


def _add_network_create(network_commands: Commands) -> None:
    create = _subcommand(network_commands, "create", cmd_network_create)
    create.add_argument("name", metavar="NAME", nargs="?", help="network name")
    create.add_argument(
        "--subnet",
        dest="subnets",
        action=_StartSubnet,
        metavar="CIDR",
        help="a subnet; repeat for dual stack; the options below apply to the last one",
    )
    _add_refinements(create, _RefineSubnet, SUBNET_OPTIONS)
    create.add_argument("--driver", help="network driver (default host-local)")
    create.add_argument(
        "--scope",
        choices=("local", "cluster"),
        help="local (this host, the default) or cluster (defined in etcd, shared by hosts)",
    )
    create.add_argument(
        "--file", type=Path, metavar="FILE", help="the network as JSON or TOML (network.create)"
    )


def _container_command(
    commands: Commands,
    name: str,
    handler: Callable[[Client, argparse.Namespace, Output], None],
) -> argparse.ArgumentParser:
    """A command about one container, named first: `ipamd-client NAME CONTAINER ...`."""
    parser = _subcommand(commands, name, handler)
    parser.add_argument("container", metavar="CONTAINER")
    return parser


def _add_alloc(commands: Commands) -> None:
    alloc = _container_command(commands, "alloc", cmd_alloc)
    alloc.add_argument(
        "--network",
        dest="networks",
        action=_StartItem,
        required=True,
        metavar="NET",
        help="a network; repeatable; the options below apply to the last one",
    )
    _add_refinements(alloc, _RefineNetwork, NETWORK_OPTIONS)


def _add_release(commands: Commands) -> None:
    release = _container_command(commands, "release", cmd_release)
    release.add_argument(
        "--network", dest="networks", action=_StartItem, metavar="NET", help="repeatable"
    )
    _add_refinements(release, _RefineNetwork, [IFNAME_OPTION])


def _add_get(commands: Commands) -> None:
    get = _container_command(commands, "get", cmd_get)
    get.add_argument(
        "--network",
        dest="network_names",
        action="append",
        metavar="NET",
        help="only this network; repeatable",
    )


def _add_leases(commands: Commands) -> None:
    leases = _subcommand(commands, "leases", cmd_leases)
    leases.add_argument("network", metavar="NET")
    leases.add_argument(
        "--page-size",
        type=int,
        default=LEASE_PAGE,
        metavar="N",
        help=f"leases per request (default {LEASE_PAGE})",
    )


def _add_who_has(commands: Commands) -> None:
    who = _subcommand(commands, "who-has", cmd_who_has)
    who.add_argument("ip", metavar="IP")
    who.add_argument("--network", metavar="NET", help="look only here")


def _add_gc(commands: Commands) -> None:
    gc = _subcommand(commands, "gc", cmd_gc)
    gc.add_argument("network", metavar="NET")
    gc.add_argument(
        "--valid",
        action="append",
        default=[],
        metavar="CONTAINER[:IFNAME]",
        help="keep this container's leases (all of them, or only IFNAME); repeatable",
    )
    gc.add_argument(
        "--valid-from", metavar="FILE", help="read CONTAINER[:IFNAME] lines from FILE ('-': stdin)"
    )
    gc.add_argument(
        "--from-cni-cache",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="keep the attachments libcni's cache lists on NET (/var/lib/cni/results;"
        " files from before this boot do not count); repeatable",
    )
    gc.add_argument(
        "--from-podman", action="store_true", help="keep every container `podman ps --all` lists"
    )
    gc.add_argument(
        "--from-crictl",
        action="store_true",
        help="keep every pod sandbox `crictl pods` lists (CRI-O, containerd)",
    )
    gc.add_argument(
        "--suspect-only",
        action="store_true",
        help="release only leases from an earlier boot (safe while the runtime starts containers)",
    )
    gc.add_argument("--dry-run", action="store_true", help="only show what would be released")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


# -- commands --------------------------------------------------------------------------------


class Output:
    """Where results go: JSON documents or human lines, on stdout."""

    def __init__(self, as_json: bool, stream: IO[str]) -> None:
        self.as_json = as_json
        self.stream = stream

    def result(self, value: Any, human: Callable[[], Iterable[str]]) -> None:
        """`value` as JSON with --json, else the lines `human()` renders."""
        if self.as_json:
            self.stream.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
        else:
            self.lines(human())

    def lines(self, lines: Iterable[str]) -> None:
        self.stream.write("".join(line + "\n" for line in lines))


def cmd_ping(client: Client, args: argparse.Namespace, out: Output) -> None:
    """check that the daemon answers

    ipamd-client ping
    """
    result = client.ping()
    out.result(
        result,
        lambda: [
            f"ipamd {result.get('version', '?')} at {client.socket_path}: "
            f"up {result.get('uptime_s', '?')}s"
        ],
    )


def cmd_status(client: Client, args: argparse.Namespace, out: Output) -> None:
    """daemon facts: version, counts, batches

    ipamd-client status
    """
    result = client.status()
    width = max((len(key) for key in result), default=0)
    out.result(result, lambda: [f"{key.ljust(width)}  {value}" for key, value in result.items()])


def cmd_stats(client: Client, args: argparse.Namespace, out: Output) -> None:
    """per network and subnet: size, allocatable, used, free, utilisation

    ipamd-client stats
    """
    result = client.stats()
    out.result(result, lambda: render.stats_lines(result))


def cmd_metrics(client: Client, args: argparse.Namespace, out: Output) -> None:
    """the daemon's Prometheus metrics, in the text exposition format

    ipamd-client metrics > /var/lib/prometheus/node-exporter/ipamd.prom.tmp
    mv /var/lib/prometheus/node-exporter/ipamd.prom.tmp /var/lib/prometheus/node-exporter/ipamd.prom
    """
    text = client.metrics()
    if out.as_json:
        out.result({"text": text}, lambda: [])
    else:
        out.stream.write(text)  # already one metric a line, newline-terminated


def cmd_network_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    """create a network (again with the same definition: a no-op)

    ipamd-client network create podman --subnet 10.88.0.0/16 --gateway 10.88.0.1
    ipamd-client network create dual --subnet 10.89.0.0/24 --range 10.89.0.10-10.89.0.200 \\
        --exclude 10.89.0.100 --subnet fd00:89::/64 --gateway fd00:89::1
    ipamd-client network create --file podman.toml    # or .json: {"name", "subnets", "driver"?}
    """
    if args.file is not None:
        if args.subnets or args.driver:
            raise _usage("--file holds the whole network; leave out --subnet and --driver")
        definition = _read_network_file(args.file)
        name = definition.get("name", args.name)
        if args.name is not None and name != args.name:
            raise _usage(f"{args.file} defines network {name!r}, not {args.name!r}")
        if not isinstance(name, str):
            raise _usage(f"{args.file} names no network: give NAME")
        unknown = set(definition) - {"name", "subnets", "driver", "scope"}
        if unknown:
            raise CliError(
                EXIT_DATAERR, "file", f"{args.file}: unknown key(s) {', '.join(sorted(unknown))}"
            )
        subnets, driver = definition.get("subnets", []), definition.get("driver")
        scope = definition.get("scope", args.scope)
    else:
        if args.name is None:
            raise _usage("network create needs NAME (or --file)")
        name, subnets, driver = args.name, args.subnets or [], args.driver
        scope = args.scope
    result = client.network_create(name, subnets, driver, scope=scope)
    out.result(result, lambda: [render.network_summary(result)])


def _read_network_file(path: Path) -> dict[str, Any]:
    """A network definition, JSON (by suffix, or when it starts with "{") or else TOML."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(EXIT_NOINPUT, "file", f"cannot read {path}: {e}") from None
    try:
        if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            value = json.loads(text)
        else:
            import tomllib  # only here: every other command starts without it

            value = tomllib.loads(text)
    except ValueError as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError both are
        raise CliError(EXIT_DATAERR, "file", f"{path} is not valid JSON or TOML: {e}") from None
    if not isinstance(value, dict):
        raise CliError(EXIT_DATAERR, "file", f"{path} must hold one network (a map)")
    return value


def cmd_network_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    """list networks

    ipamd-client network ls
    """
    result = client.network_list()
    out.result(result, lambda: render.network_list_lines(result))


def cmd_network_inspect(client: Client, args: argparse.Namespace, out: Output) -> None:
    """a network's definition and per-subnet utilisation

    ipamd-client network inspect podman
    """
    result = client.network_get(args.name)
    out.result(result, lambda: render.network_lines(result))


def cmd_network_rm(client: Client, args: argparse.Namespace, out: Output) -> None:
    """remove a network (with --force, releasing its leases)

    ipamd-client network rm podman --force
    """
    try:
        result = client.network_delete(args.name, force=args.force)
    except NetworkInUse as e:
        raise NetworkInUse(
            f"{e.message} (`ipamd-client network rm {args.name} --force` releases them)"
        ) from None
    out.result(
        result,
        lambda: [
            f"deleted network {result.get('name', args.name)}; "
            f"released {result.get('released', 0)} lease(s)"
        ],
    )


def _by_network(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The `--network NET [options]` groups as NAME -> options."""
    networks: dict[str, dict[str, Any]] = {}
    for item in items:
        options = dict(item)
        name = options.pop("name")
        if name in networks:
            raise _usage(f"--network {name} given twice")
        networks[name] = options
    return networks


def cmd_alloc(client: Client, args: argparse.Namespace, out: Output) -> None:
    """allocate addresses for a container on one or more networks (all or nothing)

    ipamd-client alloc 3f2a9c --network podman
    ipamd-client alloc 3f2a9c --network podman --ifname eth0 --ip 10.88.0.5 --attr pod=web \\
        --network backend --ifname eth1
    """
    result = client.alloc(args.container, _by_network(args.networks))
    out.result(result, lambda: render.alloc_lines(result))


def cmd_release(client: Client, args: argparse.Namespace, out: Output) -> None:
    """release a container's addresses (every network unless --network)

    ipamd-client release 3f2a9c
    ipamd-client release 3f2a9c --network podman --ifname eth0
    """
    networks = _by_network(args.networks) if args.networks else None
    result = client.release(args.container, networks)
    out.result(result, lambda: render.release_lines(args.container, result))


def cmd_get(client: Client, args: argparse.Namespace, out: Output) -> None:
    """the addresses a container holds

    ipamd-client get 3f2a9c
    ipamd-client --json get 3f2a9c --network podman
    """
    result = client.get(args.container, args.network_names)
    out.result(result, lambda: render.get_lines(result))


def cmd_leases(client: Client, args: argparse.Namespace, out: Output) -> None:
    """every lease on a network, in address order (paged: fine for 100,000)

    ipamd-client leases podman
    ipamd-client --json leases podman | jq -r '.[].container_id'
    """
    if args.page_size < 1:
        raise _usage("--page-size must be at least 1")
    leases = client.iter_leases(args.network, page_size=args.page_size)
    if out.as_json:
        # One JSON array, one lease a line, written as the pages arrive.
        separator = "\n"
        out.stream.write("[")
        for lease in leases:
            out.stream.write(separator + json.dumps(lease, sort_keys=True))
            separator = ",\n"
        out.stream.write("]\n" if separator == "\n" else "\n]\n")
        return
    # A page at a time: columns are as wide as the first page needs, and widen (never
    # narrow) when a later page needs more.
    widths = [len(h) for h in render.LEASE_HEADERS]
    header_done = False
    for page in _chunks(leases, args.page_size):
        rows = [render.lease_row(lease) for lease in page]
        widths = render.widen(widths, rows)
        if not header_done:
            out.lines(render.render_rows([render.LEASE_HEADERS], widths))
            header_done = True
        out.lines(render.render_rows(rows, widths))
    if not header_done:
        out.lines(render.render_rows([render.LEASE_HEADERS], widths))


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cmd_who_has(client: Client, args: argparse.Namespace, out: Output) -> None:
    """which container holds an address

    ipamd-client who-has 10.88.0.5
    ipamd-client who-has 10.88.0.5 --network podman
    """
    result = client.lease_owner(args.ip, args.network)
    out.result(result, lambda: render.owner_lines(args.ip, result))


def _valid_entry(text: str) -> dict[str, Any]:
    container, sep, ifname = text.strip().partition(":")
    if not container:
        raise _usage(f"--valid {text!r}: want CONTAINER[:IFNAME]")
    return {"container_id": container, "ifname": ifname} if sep else {"container_id": container}


def cmd_gc(client: Client, args: argparse.Namespace, out: Output) -> None:
    """release every lease on a network that no valid container holds

    ipamd-client gc podman --valid 3f2a9c --valid 77b1e0:eth0 --dry-run
    podman ps -aq --no-trunc | ipamd-client gc podman --valid-from -
    ipamd-client gc podman --from-podman --from-cni-cache /var/lib/cni/results --dry-run
    """
    entries: list[str] = list(args.valid)
    if args.valid_from is not None:
        try:
            source = sys.stdin if args.valid_from == "-" else None
            text = source.read() if source else Path(args.valid_from).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(EXIT_NOINPUT, "file", f"cannot read {args.valid_from}: {e}") from None
        entries += [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    elif not entries and not _runtime_sources(args):
        raise _usage(
            "gc needs --valid CONTAINER[:IFNAME] (or --valid-from FILE, or --from-cni-cache DIR,"
            " --from-podman, --from-crictl; an empty file keeps nothing and releases every lease)"
        )
    valid = [_valid_entry(entry) for entry in entries]
    notes: list[str] = []
    if _runtime_sources(args):
        runtime_valid, notes = _from_runtimes(args)
        valid += runtime_valid
    result = client.gc(args.network, valid, dry_run=args.dry_run, suspect_only=args.suspect_only)
    out.result(result, lambda: notes + render.gc_lines(args.network, result, args.dry_run))


def _runtime_sources(args: argparse.Namespace) -> bool:
    return bool(args.from_cni_cache or args.from_podman or args.from_crictl)


def _from_runtimes(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """gc's valid entries from the runtimes' own records (ipamd/client/runtimes.py),
    and a line per source saying what it gave."""
    from ipamd.client import runtimes  # only gc needs it: keeps the client's start fast

    found = runtimes.Attachments()
    try:
        for directory in args.from_cni_cache:
            runtimes.from_cni_cache(directory, args.network, found)
        if args.from_podman:
            runtimes.from_podman(found)
        if args.from_crictl:
            runtimes.from_crictl(found)
    except runtimes.SourceError as e:
        raise CliError(EXIT_UNAVAILABLE, "source", str(e)) from None
    for stale in found.stale:
        print(f"ipamd-client: left out {stale}: written before this boot", file=sys.stderr)
    valid = [
        {"container_id": cid} if ifname is None else {"container_id": cid, "ifname": ifname}
        for cid, ifname in sorted(found.valid, key=lambda pair: (pair[0], pair[1] or ""))
    ]
    return valid, [f"valid: {note}" for note in found.notes]


def _usage(message: str) -> CliError:
    return CliError(EXIT_USAGE, "usage", message)


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ipamd-client` with `argv` (default: the command line); its exit status."""
    if argv is None:
        # As the program (not when called from Python), die quietly when stdout's reader goes
        # away (`ipamd-client leases net | head`), as Unix tools do. The client sends with
        # MSG_NOSIGNAL, so a daemon that hangs up is still an error, not a silent death.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    out = Output(args.json, sys.stdout)
    try:
        with Client(args.socket, timeout=args.timeout) as client:
            args.handler(client, args, out)
        sys.stdout.flush()
    except IpamError as e:
        if args.json:  # scripts read the error where they read results
            sys.stdout.write(json.dumps({"error": e.to_wire()}, indent=2, sort_keys=True) + "\n")
        return _fail(exit_status(e), e.name, e.message)
    except RequestTimeout as e:
        return _fail(EXIT_TEMPFAIL, "timeout", e.message)
    except ProtocolError as e:
        return _fail(EXIT_PROTOCOL, "protocol_error", e.message)
    except render.BadResult as e:
        return _fail(EXIT_PROTOCOL, "protocol_error", str(e))
    except ConnectionFailed as e:
        return _fail(EXIT_UNAVAILABLE, "connection_failed", f"{e.message}; {CONNECT_HINT}")
    except CliError as e:
        if e.status == EXIT_USAGE:
            return _fail(e.status, "error", str(e))
        return _fail(e.status, e.name, str(e))
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted", "stopped by SIGINT")
    return EXIT_OK


def _fail(status: int, name: str, message: str) -> int:
    # One line, whatever the message holds: scripts and logs read it line by line.
    sys.stderr.write(f"{PROG}: {name}: {' '.join(message.split())}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
