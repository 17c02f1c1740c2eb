"""Where container runtimes keep the attachments they hold: `gc`'s valid list
taken from the host instead of the command line (`ipamd-client gc --from-...`).

Each source is read only, and a source that cannot be read is an error naming
it, never an empty list: an empty valid list releases every lease on the
network.

- libcni's cache (`/var/lib/cni/results`): libcni (podman's CNI backend,
  CRI-O's and containerd's go-cni, cnitool) writes one JSON file per
  attachment after a successful ADD and removes it after DEL:
  `<network>-<containerID>-<ifname>`, holding `{"kind": "cniCacheV1",
  "containerId", "ifName", "networkName", "config", "result", ...}`. The
  file name cannot be split safely (every part may hold '-'), so the JSON
  decides. The cache is on disk and outlives a reboot, so a file last
  written before the current boot shows no live attachment and is left out
  (`Attachments.stale` names them); a runtime re-attaching a container after
  the reboot rewrites its file.
- podman: `podman ps --all --quiet --no-trunc`, every container it knows,
  stopped ones too (a container's leases are kept while podman knows it).
- crictl (CRI-O, containerd): `crictl pods --quiet --no-trunc`, every pod
  sandbox: CRI runtimes call CNI with the sandbox ID as the container ID.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

CNI_CACHE_KIND = "cniCacheV1"
# A runtime that does not answer within this is hung; gc waits for no one.
TOOL_TIMEOUT_S = 60.0
PROC_STAT = Path("/proc/stat")


class SourceError(Exception):
    """A source of valid attachments cannot be read; nothing was collected."""


@dataclass
class Attachments:
    """Valid (container_id, ifname) pairs; ifname None keeps every attachment."""

    valid: set[tuple[str, str | None]] = field(default_factory=set)
    # What each source contributed, for people: "12 from libcni's cache /var/lib/cni/results".
    notes: list[str] = field(default_factory=list)
    # Cache files left out because they were written before this boot.
    stale: list[Path] = field(default_factory=list)


def boot_time(proc_stat: Path = PROC_STAT) -> float:
    """When the host booted, in Unix seconds (the kernel's `btime`)."""
    try:
        for line in proc_stat.read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot read the boot time from {proc_stat}: {e}") from e
    raise SourceError(f"{proc_stat} has no btime line")


def results_dir(path: Path) -> Path:
    """libcni's results directory: `path` itself, or `path/results` when given
    libcni's cache dir (/var/lib/cni)."""
    return path / "results" if (path / "results").is_dir() else path


def from_cni_cache(
    path: Path, network: str, into: Attachments, booted_at: float | None = None
) -> None:
    """Add the attachments libcni's cache under `path` holds on `network`."""
    directory = results_dir(path)
    booted = boot_time() if booted_at is None else booted_at
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as e:
        raise SourceError(f"cannot read libcni's cache {directory}: {e.strerror}") from e
    found = 0
    for file in files:
        if not file.name.startswith(f"{network}-"):
            continue  # another network's (a cheap filter; the JSON decides)
        try:
            cached = json.loads(file.read_bytes())
            mtime = file.stat().st_mtime
        except (OSError, ValueError) as e:
            raise SourceError(f"cannot read libcni cache file {file}: {e}") from e
        if not isinstance(cached, dict) or cached.get("kind") != CNI_CACHE_KIND:
            raise SourceError(
                f"{file} is not a libcni {CNI_CACHE_KIND} cache file (kind"
                f" {cached.get('kind') if isinstance(cached, dict) else None!r}): an older libcni"
                " wrote it, and its name cannot tell the container from the interface;"
                " pass that attachment with --valid"
            )
        if cached.get("networkName") != network:
            continue
        container_id, ifname = cached.get("containerId"), cached.get("ifName")
        if not isinstance(container_id, str) or not container_id or not isinstance(ifname, str):
            raise SourceError(f"{file} names no containerId and ifName")
        if mtime < booted:
            into.stale.append(file)
            continue
        into.valid.add((container_id, ifname))
        found += 1
    note = f"{found} attachment(s) from libcni's cache {directory}"
    if into.stale:
        note += f" ({len(into.stale)} file(s) from before this boot left out)"
    into.notes.append(note)


def _run_tool(argv: list[str]) -> list[str]:
    """The lines `argv` prints; SourceError when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        raise SourceError(f"{argv[0]} is not installed (not found on PATH)")
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SourceError(f"cannot run {' '.join(argv)}: {e}") from e
    if done.returncode != 0:
        raise SourceError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:500]}")
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def from_podman(into: Attachments) -> None:
    ids = _run_tool(["podman", "ps", "--all", "--quiet", "--no-trunc"])
    into.valid.update((container_id, None) for container_id in ids)
    into.notes.append(f"{len(ids)} container(s) from podman ps --all")


def from_crictl(into: Attachments) -> None:
    ids = _run_tool(["crictl", "pods", "--quiet", "--no-trunc"])
    into.valid.update((pod_id, None) for pod_id in ids)
    into.notes.append(f"{len(ids)} pod sandbox(es) from crictl pods")
