"""The daemon's configuration: defaults, the optional TOML file, command-line overrides.

Validated once, here; everything after trusts a frozen `Config`. A bad value is
a `ConfigError` naming the key and the value (the daemon exits 78).
"""

from __future__ import annotations

import grp
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipamd.core.network import NAME_PATTERN, Network
from ipamd.daemon.boot import LeasesConfig, leases_config_from_toml
from ipamd.errors import IpamError
from ipamd.paths import default_socket_path, default_state_dir
from ipamd.wire.limits import CONFIGURABLE, DEFAULT_LIMITS, Limits


class ConfigError(Exception):
    """The configuration cannot be used (exit status 78)."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """`[cluster]`: how this host reaches etcd and names itself there."""

    endpoints: tuple[str, ...]
    host: str  # unique and stable: the blocks this host owns carry it
    prefix: str = "/ipamd"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    # The liveness key's lease: a host silent this long counts as dead.
    lease_ttl: int = 10
    # How often etcd is read for networks and block owners, and the summary published.
    sync_interval: float = 5.0
    # A block empty this long goes back to etcd (one per subnet is always kept).
    return_empty_after: float = 600.0
    # Blocks of a host whose liveness key has been gone this long, and whose
    # last published summary showed them empty, are released; None: never
    # (only `cluster.release_host` does).
    reclaim_dead_after: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    socket: Path = field(default_factory=default_socket_path)
    state_dir: Path = field(default_factory=default_state_dir)
    log_level: str = "info"
    socket_mode: int = 0o660
    socket_gid: int | None = None
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()
    limits: Limits = field(default_factory=Limits)
    networks: tuple[Network, ...] = ()
    # [metrics] listen: (IP address, port) of the HTTP endpoint to bind; None: none.
    metrics_listen: tuple[str, int] | None = None
    leases: LeasesConfig = field(default_factory=LeasesConfig)
    cluster: ClusterConfig | None = None


TOP_KEYS = {
    "cluster",
    "socket",
    "state_dir",
    "log_level",
    "socket_mode",
    "socket_group",
    "auth",
    "limits",
    "metrics",
    "leases",
}
LOG_LEVELS = ("debug", "info", "warning", "error")


def load_config(
    path: Path | None, *, socket: Path | None = None, state_dir: Path | None = None
) -> Config:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config {path} is not valid TOML: {e}") from e
    try:
        return _parse(raw, socket, state_dir)
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e}") from e


def _parse(raw: dict[str, Any], socket: Path | None, state_dir: Path | None) -> Config:
    unknown = set(raw) - TOP_KEYS - {"networks"}
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}")
    defaults = Config()
    log_level = _typed(raw, "log_level", str, defaults.log_level)
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    mode_text = _typed(raw, "socket_mode", str, "0660")
    try:
        socket_mode = int(mode_text, 8)
    except ValueError:
        raise ConfigError(f'socket_mode {mode_text!r} is not an octal mode like "0660"') from None
    if not 0 <= socket_mode <= 0o777:
        raise ConfigError(f"socket_mode {mode_text!r} is out of range")
    auth = _table(raw, "auth", {"allow_uids", "allow_gids"})
    limits_raw = _table(raw, "limits", set(CONFIGURABLE))
    try:
        limits = Limits(
            **{key: _number(limits_raw, key, getattr(DEFAULT_LIMITS, key)) for key in CONFIGURABLE}
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        leases = leases_config_from_toml(
            _table(raw, "leases", {"boot_id_path", "reclaim_after_reboot"})
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return Config(
        # Absolute from here on: the log, `status` and every message name the
        # same file whatever directory the daemon was started in.
        socket=(socket or Path(_typed(raw, "socket", str, str(defaults.socket)))).absolute(),
        state_dir=(
            state_dir or Path(_typed(raw, "state_dir", str, str(defaults.state_dir)))
        ).absolute(),
        log_level=log_level,
        socket_mode=socket_mode,
        socket_gid=_group(raw.get("socket_group")),
        allow_uids=frozenset(_ids(auth, "allow_uids")),
        allow_gids=frozenset(_ids(auth, "allow_gids")),
        limits=limits,
        networks=_networks(raw.get("networks", [])),
        metrics_listen=_listen_address(_table(raw, "metrics", {"listen"}).get("listen")),
        leases=leases,
        cluster=_cluster(raw),
    )


CLUSTER_KEYS = {
    "endpoints",
    "host",
    "prefix",
    "ca",
    "cert",
    "key",
    "lease_ttl",
    "sync_interval",
    "return_empty_after",
    "reclaim_dead_after",
}
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _cluster(raw: dict[str, Any]) -> ClusterConfig | None:
    if "cluster" not in raw:
        return None
    table = _table(raw, "cluster", CLUSTER_KEYS)
    endpoints = table.get("endpoints")
    if (
        not isinstance(endpoints, list)
        or not endpoints
        or not all(isinstance(e, str) and e.startswith(("http://", "https://")) for e in endpoints)
    ):
        raise ConfigError(
            'cluster.endpoints must be a list of etcd client URLs like "https://10.0.0.1:2379",'
            f" got {endpoints!r}"
        )
    host = table.get("host", socket.gethostname())
    if not isinstance(host, str) or not NAME_PATTERN.fullmatch(host):
        raise ConfigError(
            f"cluster.host {host!r} is not a usable host name: want 1-64 characters of"
            " [A-Za-z0-9_.-], unique and stable for this host"
        )
    prefix = _typed(table, "prefix", str, "/ipamd")
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError(f'cluster.prefix {prefix!r} must start with "/" and not end with one')
    tls = {name: table.get(name) for name in ("ca", "cert", "key")}
    for name, value in tls.items():
        if value is not None and (not isinstance(value, str) or not os.path.isabs(value)):
            raise ConfigError(f"cluster.{name} must be an absolute path, got {value!r}")
    if (tls["cert"] is None) != (tls["key"] is None):
        raise ConfigError("cluster.cert and cluster.key go together: give both or neither")
    lease_ttl = _duration(table, "lease_ttl", 10.0)
    if lease_ttl < 2:
        raise ConfigError(f"cluster.lease_ttl must be at least 2 seconds, got {lease_ttl:g}")
    return ClusterConfig(
        endpoints=tuple(endpoints),
        host=host,
        prefix=prefix,
        ca=tls["ca"],
        cert=tls["cert"],
        key=tls["key"],
        lease_ttl=int(lease_ttl),
        sync_interval=_duration(table, "sync_interval", 5.0),
        return_empty_after=_duration(table, "return_empty_after", 600.0),
        reclaim_dead_after=(
            _duration(table, "reclaim_dead_after", 0.0) if "reclaim_dead_after" in table else None
        ),
    )


def _duration(table: dict[str, Any], key: str, default: float) -> float:
    """Seconds, from a number or a text like "30s", "10m", "1h"."""
    value = table.get(key, default)
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value[-1:] in _DURATION_UNITS:
        try:
            seconds = float(value[:-1]) * _DURATION_UNITS[value[-1]]
        except ValueError:
            seconds = None
    if seconds is None or seconds <= 0:
        raise ConfigError(
            f'cluster.{key} must be a positive duration like "30s", "10m" or "1h", got {value!r}'
        )
    return seconds


def _typed(raw: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = raw.get(key, default)
    if not isinstance(value, kind):
        raise ConfigError(f"{key} must be a {kind.__name__}, got {value!r}")
    return value


def _table(raw: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{key}] must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"unknown key(s) in [{key}]: {sorted(unknown)}")
    return table


def _number(table: dict[str, Any], key: str, default: float) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"limits.{key} must be a positive number, got {value!r}")
    return type(default)(value)


def _ids(table: dict[str, Any], key: str) -> list[int]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ConfigError(f"auth.{key} must be a list of numeric ids, got {value!r}")
    return value


def _group(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        try:
            return grp.getgrnam(value).gr_gid
        except KeyError:
            raise ConfigError(f"socket_group {value!r}: no such group") from None
    raise ConfigError(f"socket_group must be a group name or gid, got {value!r}")


def _listen_address(value: Any) -> tuple[str, int] | None:
    """`[metrics] listen`: "IPv4:PORT" or "[IPv6]:PORT", an address literal (no name lookup)."""
    if value is None:
        return None
    example = 'like "127.0.0.1:9388" or "[::1]:9388"'
    if not isinstance(value, str):
        raise ConfigError(f"metrics.listen must be a string {example}, got {value!r}")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"metrics.listen {value!r} is not an IP address and port {example}"
        ) from None
    if address.version == 6 and not value.startswith("["):
        raise ConfigError(f"metrics.listen {value!r}: write an IPv6 address in brackets, {example}")
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ConfigError(f"metrics.listen {value!r}: the port must be 1-65535, {example}")
    return str(address), int(port_text)


def _networks(value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise ConfigError("networks must be an array of tables ([[networks]])")
    networks: list[Network] = []
    for entry in value:
        try:
            network = Network.from_wire(entry)
        except IpamError as e:
            raise ConfigError(f"network {entry.get('name', '?')!r}: {e}") from None
        if network.is_cluster:  # defined in etcd, which start-up does not wait for
            raise ConfigError(
                f"network {network.name!r}: a cluster network is defined once, with"
                " `ipamd-client network create --scope cluster`, not in the config"
            )
        networks.append(network)
    names = [n.name for n in networks]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ConfigError(f"network(s) declared twice: {sorted(duplicates)}")
    return tuple(networks)
