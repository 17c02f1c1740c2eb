"""ipamd-cni: the CNI IPAM plugin that gets its addresses from the ipamd daemon.

A runtime execs this once per command (CNI spec 1.1) with the call in the
environment and the network config on stdin. Each command is one or two RPCs
on the blocking client: the CNI network `name` is the ipamd network, and the
lease key is (network, CNI_CONTAINERID, CNI_IFNAME).

Rules it keeps:
- Fast start: nothing here imports trio; one process does one call and exits.
- Every failure is the spec's error JSON on stdout and exit status 1. ipamd's
  errors keep their names: CNI code 100 + ipamd's code (contrib/README.md),
  except `unavailable`, which is the spec's 11 (try again later), as is a
  daemon that cannot be reached.
- ADD ensures the network first (`network.create` of an identical definition
  is a no-op), so a config that no longer matches the daemon fails loudly.
- DEL and GC succeed for what is already gone, the network included.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import IO, Any, NoReturn

from ipamd.client import Client, ConnectionFailed
from ipamd.errors import IpamError, NetworkExists, NetworkNotFound, Unavailable
from ipamd_cni.config import (
    INVALID_CONFIG,
    LATEST_VERSION,
    STATUS_LIMITED,
    STATUS_UNAVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    CniError,
    Invocation,
    decode,
    read_command,
    read_invocation,
)

IPAMD_ERROR_BASE = 100  # CNI code = 100 + ipamd's error code
CHECK_MISMATCH = 150  # ipamd-cni's own: the lease is not what prevResult says
INTERNAL = 999  # libcni's code for a failure with no better one (a bug, here)


def main() -> NoReturn:
    sys.exit(run(os.environ, sys.stdin.buffer.read, sys.stdout))


def run(environ: Mapping[str, str], read_stdin: Callable[[], bytes], out: IO[str]) -> int:
    """Carry out one CNI call; the exit status. Writes the result or error JSON to `out`."""
    version = LATEST_VERSION
    try:
        command = read_command(environ)
        if command == "VERSION":
            result: dict[str, Any] | None = version_info(read_stdin())
        else:
            invocation = read_invocation(command, environ, read_stdin())
            version = invocation.cni_version
            result = COMMANDS[command](invocation)
    except CniError as e:
        return _fail(e, version, out)
    except Exception as e:  # a bug still owes the runtime an error it can read
        return _fail(CniError(INTERNAL, f"ipamd-cni failed: {e!r}"), version, out)
    if result is not None:
        json.dump(result, out, indent=4)
        out.write("\n")
    return 0


def _fail(error: CniError, version: str, out: IO[str]) -> int:
    json.dump(error.to_json(version), out, indent=4)
    out.write("\n")
    return 1


# -- commands --------------------------------------------------------------------------------------


def add(call: Invocation) -> dict[str, Any]:
    attachment: dict[str, Any] = {"ifname": call.ifname}
    if call.static_ips:
        attachment["static_ips"] = list(call.static_ips)
    if call.attributes:
        attachment["attributes"] = call.attributes
    with connected(call) as client:
        try:
            client.network_create(call.network, list(call.subnets))
        except NetworkExists as e:
            raise CniError(
                IPAMD_ERROR_BASE + e.code,
                f"ipamd already has a network {call.network} defined otherwise than by this"
                " config's ipam ranges; rename this network, or delete the old one from ipamd",
                f"{e.name}: {e.message}",
            ) from None
        leased = client.alloc(call.container_id, {call.network: attachment})
    return ipam_result(call, leased["networks"][call.network]["ips"])


def delete(call: Invocation) -> None:
    # Nothing can be held on a network the daemon does not know.
    with connected(call) as client, suppress(NetworkNotFound):
        client.release(call.container_id, {call.network: {"ifname": call.ifname}})


def check(call: Invocation) -> None:
    if call.prev_result is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult, the result of the ADD")
    with connected(call) as client:
        held = client.get(call.container_id, {call.network: {"ifname": call.ifname}})
    held_ips = held["networks"][call.network]["ips"]
    addresses = {_interface(ip["address"]) for ip in held_ips}
    prev_ips = call.prev_result.get("ips")
    expected = {
        _interface(ip.get("address") if isinstance(ip, dict) else None)
        for ip in (prev_ips if isinstance(prev_ips, list) else [])
    }
    missing = sorted(map(str, addresses - expected))
    if missing:
        listed = ", ".join(sorted(str(ip) for ip in expected if ip is not None)) or "none"
        raise CniError(
            CHECK_MISMATCH,
            f"container {call.container_id} ({call.ifname}) holds {', '.join(missing)} on network"
            f" {call.network}, which prevResult does not list (it lists {listed})",
        )


def gc(call: Invocation) -> None:
    with connected(call) as client, suppress(NetworkNotFound):  # no network, no leases
        client.gc(call.network, valid=list(call.valid_attachments))


def status(call: Invocation) -> None:
    try:
        with connected(call) as client:
            try:
                network = client.network_get(call.network)
            except NetworkNotFound:
                return  # ADD will create it
    except CniError as e:
        if e.code != TRY_AGAIN_LATER:
            raise
        raise CniError(STATUS_UNAVAILABLE, e.msg, e.details) from None
    for subnet in network["subnets"]:
        if int(subnet["free"]) <= 0:
            raise CniError(
                STATUS_LIMITED,
                f"network {call.network} has no free address left in subnet {subnet['subnet']}",
                f"{subnet['used']} of {subnet['allocatable']} allocatable addresses in use",
            )


def version_info(stdin: bytes) -> dict[str, Any]:
    """VERSION: the versions this plugin speaks, in the caller's cniVersion if it is one of them.

    A caller that speaks none of them still learns which ones would do.
    """
    asked = decode(stdin).get("cniVersion") if stdin.strip() else None
    version = asked if asked in SUPPORTED_VERSIONS else LATEST_VERSION
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


COMMANDS: dict[str, Callable[[Invocation], dict[str, Any] | None]] = {
    "ADD": add,
    "DEL": delete,
    "CHECK": check,
    "GC": gc,
    "STATUS": status,
}


# -- talking to ipamd ------------------------------------------------------------------------------


@contextmanager
def connected(call: Invocation) -> Iterator[Client]:
    """A client on the daemon's socket; ipamd's errors leave as `CniError`."""
    try:
        with Client(call.socket) as client:
            yield client
    except ConnectionFailed as e:  # its message names the socket
        raise CniError(TRY_AGAIN_LATER, str(e), "is the ipamd daemon running?") from None
    except IpamError as e:
        raise cni_error(e) from None


def cni_error(error: IpamError) -> CniError:
    details = f"ipamd error {error.name} ({error.code})"
    if isinstance(error, Unavailable):
        return CniError(TRY_AGAIN_LATER, error.message, details)
    return CniError(IPAMD_ERROR_BASE + max(error.code, 0), error.message, details)


def ipam_result(call: Invocation, ips: list[dict[str, Any]]) -> dict[str, Any]:
    """The IPAM result in the requested version's format (no interfaces: the caller adds them)."""
    out_ips = []
    for ip in ips:
        entry: dict[str, Any] = {}
        if call.legacy_result:
            entry["version"] = str(ipaddress.ip_interface(ip["address"]).version)
        entry["address"] = ip["address"]
        if ip.get("gateway"):
            entry["gateway"] = ip["gateway"]
        out_ips.append(entry)
    result: dict[str, Any] = {"cniVersion": call.cni_version, "ips": out_ips}
    if call.routes:
        result["routes"] = list(call.routes)
    result["dns"] = call.dns
    return result


def _interface(address: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    try:
        return ipaddress.ip_interface(address)
    except ValueError:
        return None


if __name__ == "__main__":
    main()
