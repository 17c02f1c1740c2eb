"""What a CNI runtime hands ipamd-cni, read and validated once (CNI spec 1.1).

`read_invocation()` turns the environment and the network config on stdin into a
frozen `Invocation`, or raises `CniError` carrying the spec's code: 4 for the
environment, 6 for undecodable JSON, 1 for a cniVersion this plugin does not
speak, 7 for an invalid config, 2 for a config ipamd cannot express. Past that,
the plugin trusts what it holds, as host-local trusts a canonicalised `Range`.

The `ipam` section takes host-local's keys. Each range set becomes one ipamd
subnet (ipamd holds one address per subnet), so a range set must hold exactly
one range; the gateway defaults to the subnet's first address, as host-local's.
No sockets here: the only I/O is reading `resolvConf`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]

# The spec's well-known error codes.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
STATUS_UNAVAILABLE = 50
STATUS_LIMITED = 51

# Which variables each command needs; libcni's skel asks for the same ones.
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
# The first cniVersion that defines each command.
SINCE_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Runtimes note these in CNI_ARGS; ipamd keeps them on the lease for people debugging.
POD_ARGS = ("K8S_POD_NAMESPACE", "K8S_POD_NAME")
MAX_ATTRIBUTE_LEN = 256  # ipamd's limit per attribute value
# host-local's range keys and ipamd's subnet keys.
RANGE_KEYS = (("gateway", "gateway"), ("rangeStart", "range_start"), ("rangeEnd", "range_end"))


class CniError(Exception):
    """A failure as the spec reports it: `{"cniVersion", "code", "msg", "details"}`."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class Invocation(NamedTuple):
    """What one exec of the plugin was asked to do. A NamedTuple, not a frozen
    dataclass: importing `dataclasses` (and `inspect`) cost each exec about 10 ms.
    Its maps are never mutated, so the shared defaults are safe."""

    command: str
    cni_version: str
    network: str
    container_id: str = ""
    ifname: str = ""
    netns: str = ""
    # ipamd's `network.create` subnets, one per range set, in config order.
    subnets: tuple[dict[str, str], ...] = ()
    routes: tuple[dict[str, Any], ...] = ()
    dns: dict[str, Any] = {}  # noqa: RUF012 -- never mutated, see above
    socket: str | None = None
    static_ips: tuple[str, ...] = ()
    attributes: dict[str, str] = {}  # noqa: RUF012 -- never mutated, see above
    prev_result: dict[str, Any] | None = None
    # GC only: ipamd's `gc` valid list, from `cni.dev/valid-attachments`.
    valid_attachments: tuple[dict[str, str], ...] = ()

    @property
    def legacy_result(self) -> bool:
        """Results before 1.0.0 carry each IP's "version"."""
        return version_tuple(self.cni_version) < (1, 0, 0)


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()


def read_command(environ: Mapping[str, str]) -> str:
    command = environ.get("CNI_COMMAND", "")
    if command not in REQUIRED_ENV:
        known = ", ".join(REQUIRED_ENV)
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND must be one of {known}, got {command!r}")
    return command


def decode(stdin: bytes) -> dict[str, Any]:
    try:
        config = json.loads(stdin)
    except (UnicodeDecodeError, ValueError) as e:
        raise CniError(DECODE_FAILURE, f"cannot decode the network config: {e}") from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "the network config must be a JSON object")
    return config


def requested_version(config: Mapping[str, Any]) -> str:
    version = config.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported",
            f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return str(version)


def read_invocation(command: str, environ: Mapping[str, str], stdin: bytes) -> Invocation:
    """The validated call; REQUIRES: command from `read_command`, not VERSION."""
    missing = [name for name in REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"required env variables {missing} missing")
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id and not CONTAINER_ID.fullmatch(container_id):
        raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_CONTAINERID {container_id!r}")
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and not _valid_ifname(ifname):
        raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_IFNAME {ifname!r}")
    cni_args = _cni_args(environ.get("CNI_ARGS", ""))

    config = decode(stdin)
    version = requested_version(config)
    since = SINCE_VERSION.get(command)
    if since is not None and version_tuple(version) < version_tuple(since):
        raise CniError(
            INCOMPATIBLE_VERSION, f"cniVersion {version} does not define {command} (from {since})"
        )
    network = config.get("name")
    if not isinstance(network, str) or not NETWORK_NAME.fullmatch(network):
        raise CniError(INVALID_CONFIG, f"invalid network name {network!r}")
    ipam = config.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(INVALID_CONFIG, "the network config has no ipam section")
    socket = ipam.get("socket")
    if socket is not None and (not isinstance(socket, str) or not socket):
        raise CniError(INVALID_CONFIG, f"ipam socket must be a path, got {socket!r}")
    prev_result = config.get("prevResult")
    if prev_result is not None and not isinstance(prev_result, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be an object")

    netns = environ.get("CNI_NETNS", "")
    attributes = {"netns": netns[:MAX_ATTRIBUTE_LEN]} if netns else {}
    if all(cni_args.get(key) for key in POD_ARGS):
        pod = f"{cni_args['K8S_POD_NAMESPACE']}/{cni_args['K8S_POD_NAME']}"
        attributes["pod"] = pod[:MAX_ATTRIBUTE_LEN]
    return Invocation(
        command=command,
        cni_version=version,
        network=network,
        container_id=container_id,
        ifname=ifname,
        netns=netns,
        subnets=_subnets(ipam),
        routes=_routes(ipam),
        dns=_dns(ipam),
        socket=socket,
        static_ips=_static_ips(config, cni_args) if command == "ADD" else (),
        attributes=attributes,
        prev_result=prev_result,
        valid_attachments=_valid_attachments(config) if command == "GC" else (),
    )


# -- the pieces ----------------------------------------------------------------------------------


def _valid_ifname(name: str) -> bool:
    """The spec's rule: under 16 bytes, not "." or "..", no '/', ':' or whitespace."""
    return (
        len(name.encode()) < 16
        and name not in (".", "..")
        and not any(c in "/:" or c.isspace() for c in name)
    )


def _cni_args(raw: str) -> dict[str, str]:
    """`CNI_ARGS` "K1=V1;K2=V2"; keys this plugin does not use are ignored."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: invalid pair {pair!r}, want KEY=VALUE")
        out[key] = value
    return out


def _subnets(ipam: dict[str, Any]) -> tuple[dict[str, str], ...]:
    range_sets = ipam.get("ranges")
    if range_sets is None:
        range_sets = []
    if not isinstance(range_sets, list):
        raise CniError(INVALID_CONFIG, "ipam ranges must be a list of range sets")
    if "subnet" in ipam:  # host-local's older single-range form, first as there
        legacy = {k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}
        range_sets = [[legacy], *range_sets]
    if not range_sets:
        raise CniError(INVALID_CONFIG, "ipam needs ranges: a list of range sets")
    subnets = []
    for index, range_set in enumerate(range_sets):
        if not isinstance(range_set, list) or not range_set:
            raise CniError(INVALID_CONFIG, f"range set {index} must be a non-empty list of ranges")
        if len(range_set) > 1:
            raise CniError(
                UNSUPPORTED_FIELD,
                f"range set {index} has {len(range_set)} ranges; ipamd-cni takes one range per"
                " range set (ipamd holds one address per subnet)",
            )
        subnets.append(_subnet(range_set[0], index))
    return tuple(subnets)


def _subnet(rng: Any, index: int) -> dict[str, str]:
    """One host-local range as an ipamd subnet."""
    where = f"range set {index}"
    if not isinstance(rng, dict):
        raise CniError(INVALID_CONFIG, f"{where}: a range must be an object")
    text = rng.get("subnet")
    try:
        if not isinstance(text, str) or "/" not in text:
            raise ValueError
        cidr = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise CniError(INVALID_CONFIG, f"{where}: subnet {text!r} is not a CIDR") from None
    subnet = {"subnet": str(cidr)}
    for key, wire_key in RANGE_KEYS:
        value = rng.get(key)
        if value is None:
            continue
        try:
            address = ipaddress.ip_address(value) if isinstance(value, str) else None
        except ValueError:
            address = None
        if address is None or address not in cidr:
            raise CniError(INVALID_CONFIG, f"{where}: {key} {value!r} is not an address in {cidr}")
        subnet[wire_key] = str(address)
    if "gateway" not in subnet and cidr.num_addresses > 2:
        subnet["gateway"] = str(cidr.network_address + 1)  # host-local's default ".1"
    return subnet


def _routes(ipam: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    routes = ipam.get("routes") or []
    if not isinstance(routes, list):
        raise CniError(INVALID_CONFIG, "ipam routes must be a list")
    for route in routes:
        try:
            if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
                raise ValueError
            ipaddress.ip_network(route["dst"], strict=False)
            if route.get("gw") is not None:
                ipaddress.ip_address(route["gw"])
        except ValueError:
            raise CniError(INVALID_CONFIG, f"invalid route {route!r}: want dst, gw?") from None
    return tuple(routes)


def _dns(ipam: dict[str, Any]) -> dict[str, Any]:
    """`dns` as given, else what `resolvConf` names; `{}` when neither is set."""
    dns = ipam.get("dns")
    if dns is not None:
        if not isinstance(dns, dict):
            raise CniError(INVALID_CONFIG, "ipam dns must be an object")
        return dns
    path = ipam.get("resolvConf")
    if path is None:
        return {}
    if not isinstance(path, str):
        raise CniError(INVALID_CONFIG, f"ipam resolvConf must be a path, got {path!r}")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_resolv_conf(f.read())
    except OSError as e:
        raise CniError(IO_FAILURE, f"cannot read resolvConf {path}: {e.strerror}") from None


def parse_resolv_conf(text: str) -> dict[str, Any]:
    """resolv.conf's nameserver, domain, search and options lines, as host-local reads them."""
    dns: dict[str, Any] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith(("#", ";")):
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver":
            dns.setdefault("nameservers", []).append(values[0])
        elif key == "domain":
            dns["domain"] = values[0]
        elif key == "search":
            dns["search"] = values
        elif key == "options":
            dns.setdefault("options", []).extend(values)
    return dns


def _static_ips(config: dict[str, Any], cni_args: dict[str, str]) -> tuple[str, ...]:
    """Requested addresses from CNI_ARGS IP=, args.cni.ips and runtimeConfig.ips, in that order."""
    requested: list[Any] = [ip for ip in cni_args.get("IP", "").split(",") if ip]
    for source, value in (
        ("args.cni.ips", _dig(config, "args", "cni", "ips")),
        ("runtimeConfig.ips", _dig(config, "runtimeConfig", "ips")),
    ):
        if value is None:
            continue
        if not isinstance(value, list):
            raise CniError(INVALID_CONFIG, f"{source} must be a list of addresses")
        requested += value
    out: list[str] = []
    for ip in requested:
        try:
            if not isinstance(ip, str):
                raise ValueError
            address = str(ipaddress.ip_interface(ip.strip()).ip)  # "10.1.0.5/24" names 10.1.0.5
        except ValueError:
            raise CniError(INVALID_CONFIG, f"requested IP {ip!r} is not an address") from None
        if address not in out:
            out.append(address)
    return tuple(out)


def _valid_attachments(config: dict[str, Any]) -> tuple[dict[str, str], ...]:
    """GC's keep list; required, so that a missing key never releases every lease."""
    raw = config.get("cni.dev/valid-attachments")
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments: a list")
    out = []
    for entry in raw:
        cid = entry.get("containerID") if isinstance(entry, dict) else None
        ifname = entry.get("ifname") if isinstance(entry, dict) else None
        if not isinstance(cid, str) or not CONTAINER_ID.fullmatch(cid):
            raise CniError(INVALID_CONFIG, f"invalid valid-attachments entry {entry!r}")
        if ifname is not None and not (isinstance(ifname, str) and _valid_ifname(ifname)):
            raise CniError(INVALID_CONFIG, f"invalid ifname in valid-attachments entry {entry!r}")
        out.append({"container_id": cid, **({} if ifname is None else {"ifname": ifname})})
    return tuple(out)


def _dig(config: dict[str, Any], *keys: str) -> Any:
    value: Any = config
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
