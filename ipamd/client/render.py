"""Human text for the daemon's results: aligned tables, counts and utilisation bars.

`ipamd-client` prints these unless `--json` is given. Pure: results in, lines out.

Rules it keeps:

* Columns are two spaces apart; numbers are right-aligned; an empty value is "-".
* Counts arrive as ints, or as decimal strings when over 2**63-1 (an IPv6 /64
  has 2**64 addresses): both are read exactly, and counts of 10**15 or more
  print as `1.84e+19`, since nobody reads 20 digits.
* Utilisation is the daemon's: the share of the lease range in use,
  `(allocatable - free) / allocatable`, and full when nothing is allocatable.
  A small non-zero share prints as `<0.1%`, never as a reassuring `0.0%`.
* Times are UTC, ISO 8601: `2026-11-29T10:14:10Z`.
"""

from __future__ import annotations

import time
from collections.abc import Container, Iterable, Sequence
from typing import Any, Final

# Width of the utilisation bar, in characters between the brackets.
BAR_WIDTH: Final = 20
EXACT_COUNT_MAX: Final = 10**15

SUBNET_STATS_HEADERS: Final = ("SIZE", "ALLOCATABLE", "USED", "FREE", "UTILISATION")
# SUSPECT: "yes" for a lease from an earlier boot of the host, not confirmed since.
LEASE_HEADERS: Final = ("ADDRESSES", "IFNAME", "CREATED", "SUSPECT", "CONTAINER", "ATTRIBUTES")
ADDRESS_HEADERS: Final = ("NETWORK", "IFNAME", "ADDRESS", "GATEWAY")


class BadResult(ValueError):
    """A result that does not have the shape DESIGN.md section 4 gives it."""


# -- tables ------------------------------------------------------------------------------------


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int] = ()
) -> list[str]:
    """Aligned columns under `headers`; the columns numbered in `right` are right-aligned."""
    widths = widen([len(h) for h in headers], rows)
    return render_rows([headers, *rows], widths, set(right))


def widen(widths: Sequence[int], rows: Iterable[Sequence[str]]) -> list[int]:
    """`widths`, widened to fit `rows`."""
    out = list(widths)
    for row in rows:
        out = [max(w, len(cell)) for w, cell in zip(out, row, strict=True)]
    return out


def render_rows(
    rows: Iterable[Sequence[str]], widths: Sequence[int], right: Container[int] = ()
) -> list[str]:
    out = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


# -- values ------------------------------------------------------------------------------------


def count(value: Any) -> int:
    """A count from the daemon: an int, or a decimal string when over 2**63-1."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise BadResult(f"ipamd sent {value!r} where a count belongs")


def show_count(n: int) -> str:
    return str(n) if n < EXACT_COUNT_MAX else f"{n:.2e}"


def utilisation(allocatable: int, free: int) -> str:
    """`[####................]  20.0%`: the share of the lease range in use."""
    taken = allocatable - free
    if allocatable <= 0:
        fraction, percent = 1.0, "100.0%"
    else:
        fraction = taken / allocatable
        percent = f"{100 * fraction:.1f}%"
        if taken > 0 and percent == "0.0%":
            percent = "<0.1%"
        elif taken < allocatable and percent == "100.0%":
            percent = ">99.9%"
    filled = min(BAR_WIDTH, max(0, round(fraction * BAR_WIDTH)))
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {percent:>6}"


def or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def timestamp(created: Any) -> str:
    if not isinstance(created, int | float) or isinstance(created, bool):
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


def _addresses(ips: Any) -> str:
    if not isinstance(ips, list) or not ips:
        return "-"
    return ",".join(str(ip.get("address", "?")) for ip in ips if isinstance(ip, dict))


def _attributes(attributes: Any) -> str:
    if not isinstance(attributes, dict) or not attributes:
        return ""
    return ",".join(f"{k}={v}" for k, v in sorted(attributes.items()))


def _range(subnet: dict[str, Any]) -> str:
    start, end = subnet.get("range_start"), subnet.get("range_end")
    if start is None and end is None:
        return "-"
    return f"{start or '*'}-{end or '*'}"


def _subnet_stats(subnet: dict[str, Any]) -> list[str]:
    size, allocatable = count(subnet.get("size")), count(subnet.get("allocatable"))
    used, free = count(subnet.get("used")), count(subnet.get("free"))
    return [
        show_count(size),
        show_count(allocatable),
        show_count(used),
        show_count(free),
        utilisation(allocatable, free),
    ]


# -- results -----------------------------------------------------------------------------------


def stats_lines(result: dict[str, Any]) -> list[str]:
    """`stats`: one row per subnet of every network; a SUSPECT column (per
    network) only while some network has suspect leases."""
    networks = result.get("networks") or []
    with_suspect = any(count(network.get("suspect") or 0) for network in networks)
    rows: list[list[str]] = []
    for network in networks:
        name = str(network.get("name", "?"))
        subnets = network.get("subnets") or []
        tail = [str(network.get("suspect", "-"))] if with_suspect else []
        if not subnets:
            rows.append([name, "-", "-", "-", "-", "-", "-", *tail])
        rows += [[name, str(s.get("subnet", "?")), *_subnet_stats(s), *tail] for s in subnets]
    headers = ["NETWORK", "SUBNET", *SUBNET_STATS_HEADERS, *(["SUSPECT"] if with_suspect else [])]
    return table(headers, rows, right=[2, 3, 4, 5, 7])


def network_lines(network: dict[str, Any]) -> list[str]:
    """`network.get`: the definition, then a row per subnet with its utilisation."""
    lines = [
        f"Name:    {network.get('name', '?')}",
        f"Driver:  {network.get('driver', '?')}",
        f"Leases:  {network.get('leases', '-')}",
    ]
    if count(network.get("suspect") or 0):
        lines.append(f"Suspect: {network['suspect']} (from an earlier boot, not confirmed since)")
    lines += [
        "",
    ]
    subnets = network.get("subnets") or []
    if not subnets:
        return [*lines, "no subnets: ipamd allocates nothing here"]
    rows = [
        [str(s.get("subnet", "?")), or_dash(s.get("gateway")), _range(s), *_subnet_stats(s)]
        for s in subnets
    ]
    lines += table(["SUBNET", "GATEWAY", "RANGE", *SUBNET_STATS_HEADERS], rows, right=range(3, 7))
    excluded = [s for s in subnets if s.get("exclude")]
    if excluded:
        lines += ["", "Excluded:"]
        lines += [f"  {s['subnet']}: {', '.join(map(str, s['exclude']))}" for s in excluded]
    return lines


def network_list_lines(networks: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            str(network.get("name", "?")),
            str(network.get("driver", "?")),
            ", ".join(str(s.get("subnet", "?")) for s in network.get("subnets") or []) or "-",
            str(network.get("leases", "-")),
        ]
        for network in networks
    ]
    return table(["NAME", "DRIVER", "SUBNETS", "LEASES"], rows, right=[3])


def network_summary(network: dict[str, Any]) -> str:
    """`network.create`: one line."""
    parts = [
        str(s.get("subnet", "?")) + (f" gateway {s['gateway']}" if s.get("gateway") else "")
        for s in network.get("subnets") or []
    ]
    return f"network {network.get('name', '?')} ({network.get('driver', '?')}): " + (
        ", ".join(parts) or "no subnets"
    )


def _address_rows(
    network: str, ifname: Any, ips: Any, extra: Sequence[str] = ()
) -> list[list[str]]:
    if not isinstance(ips, list) or not ips:
        return [[network, or_dash(ifname), "-", "-", *extra]]
    return [
        [network, or_dash(ifname), str(ip.get("address", "?")), or_dash(ip.get("gateway")), *extra]
        for ip in ips
    ]


def alloc_lines(result: dict[str, Any]) -> list[str]:
    """`alloc`: a row per address."""
    rows: list[list[str]] = []
    for name, attachment in (result.get("networks") or {}).items():
        rows += _address_rows(name, attachment.get("ifname"), attachment.get("ips"))
    return table(ADDRESS_HEADERS, rows)


def get_lines(result: dict[str, Any]) -> list[str]:
    """`get`: a row per address of every attachment, with its creation time."""
    rows: list[list[str]] = []
    if isinstance(result.get("leases"), list):
        for lease in result["leases"]:
            rows += _address_rows(
                str(lease.get("network", "?")),
                lease.get("ifname"),
                lease.get("ips"),
                [timestamp(lease.get("created"))],
            )
    else:  # a daemon without the leases list: the first attachment per network
        for name, attachment in (result.get("networks") or {}).items():
            rows += _address_rows(name, attachment.get("ifname"), attachment.get("ips"), ["-"])
    return table([*ADDRESS_HEADERS, "CREATED"], rows)


def release_lines(container_id: str, result: dict[str, Any]) -> list[str]:
    released = result.get("released") or {}
    if not released:
        return [f"{container_id} held nothing to release"]
    return [
        f"released on {name}: {', '.join(map(str, addresses))}"
        for name, addresses in released.items()
    ]


def lease_row(lease: dict[str, Any]) -> list[str]:
    """One lease under `LEASE_HEADERS`."""
    return [
        _addresses(lease.get("ips")),
        or_dash(lease.get("ifname")),
        timestamp(lease.get("created")),
        "yes" if lease.get("suspect") else "-",
        str(lease.get("container_id", "?")),
        _attributes(lease.get("attributes")),
    ]


def owner_lines(ip: str, owner: dict[str, Any]) -> list[str]:
    row = [
        ip,
        str(owner.get("network", "?")),
        str(owner.get("container_id", "?")),
        or_dash(owner.get("ifname")),
        timestamp(owner.get("created")),
    ]
    return table(["ADDRESS", "NETWORK", "CONTAINER", "IFNAME", "CREATED"], [row])


def gc_lines(network: str, result: dict[str, Any], dry_run: bool) -> list[str]:
    released = result.get("released") or []
    verb = "would release" if dry_run else "released"
    lines = [f"{verb} {len(released)} lease(s) on {network}"]
    if result.get("confirmed"):
        lines.append(f"confirmed {result['confirmed']} suspect lease(s) listed as valid")
    if released:
        lines += table(LEASE_HEADERS, [lease_row(lease) for lease in released])
    return lines
