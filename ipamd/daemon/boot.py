"""Boot epochs: which boot of the host this is, and the `[leases]` config.

Every lease records the boot id it was made or last confirmed in; a lease
from another boot is suspect (its container may be gone). The boot id is read
once, at start, from `[leases] boot_id_path` (the kernel's random boot id by
default: a new UUID at every boot, the same for the whole boot, so a crash or
restart of ipamd itself changes nothing). Tests point the path at a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
# The kernel's is a 36-character UUID; more than this is not a boot id.
MAX_BOOT_ID_LEN = 128
_BOOT_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_BOOT_ID_LEN}}}")
# "10m", "90s", "1h30m", "1.5h", "2d": what `[leases] reclaim_after_reboot` takes.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class BootIdError(Exception):
    """The boot id cannot be read, or is not one (the daemon exits 78)."""


@dataclass(frozen=True, slots=True)
class LeasesConfig:
    boot_id_path: Path = DEFAULT_BOOT_ID_PATH
    # Seconds after start at which suspect leases are released; None: never
    # automatically (only a `gc` that does not list them releases them).
    reclaim_after_reboot_s: float | None = None
    # As written in the config, for messages ("10m").
    reclaim_after_reboot_text: str | None = None


def read_boot_id(path: Path) -> str:
    """The boot id in `path` (one line, surrounding whitespace dropped)."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError as e:
        raise BootIdError(f"cannot read the boot id from {path}: {e.strerror}") from e
    if not _BOOT_ID.fullmatch(text):
        raise BootIdError(
            f"{path} holds {text[:80]!r}, not a boot id (want 1-{MAX_BOOT_ID_LEN}"
            " printable characters without spaces)"
        )
    return text


def parse_duration(value: Any, what: str) -> float:
    """Seconds in a duration such as "10m" or "1h30m"; ValueError naming `what` if not one."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'{what} must be a duration such as "10m", got {value!r}')
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    if position != len(value) or total <= 0:
        raise ValueError(
            f'{what} {value!r} is not a positive duration such as "90s", "10m" or "1h30m"'
        )
    return total


def leases_config_from_toml(table: dict[str, Any]) -> LeasesConfig:
    """The `[leases]` table, validated; ValueError naming the bad key and value."""
    unknown = set(table) - {"boot_id_path", "reclaim_after_reboot"}
    if unknown:
        raise ValueError(f"unknown key(s) in [leases]: {sorted(unknown)}")
    path = table.get("boot_id_path", str(DEFAULT_BOOT_ID_PATH))
    if not isinstance(path, str) or not path:
        raise ValueError(f"leases.boot_id_path must be a file path, got {path!r}")
    raw_grace = table.get("reclaim_after_reboot")
    grace = None if raw_grace is None else parse_duration(raw_grace, "leases.reclaim_after_reboot")
    return LeasesConfig(Path(path), grace, raw_grace)
