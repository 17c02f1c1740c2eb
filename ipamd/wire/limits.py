"""Every bound ipamd puts on what a peer may cost it, defined once.

The `[limits]` table of the config file (ipamd/config.py) sets some of them
(`CONFIGURABLE`); the rest are fixed here. `RpcConnection` (protocol.py) reads
the bounds on one frame, the server's connections (connection.py) the bounds
on one client, and the writer `max_batch`. A `Limits` is checked when it is
built, so everything after trusts it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final


@dataclass(frozen=True, slots=True)
class Limits:
    # -- what decoding one frame may cost ----------------------------------------------------
    # A request naming 64 networks with attributes is a few KiB, a page of leases tens of
    # KiB: 1 MiB is generous.
    max_frame_bytes: int = 1 << 20
    # Names, container ids, addresses and error messages are short; refuse a fat string outright.
    max_str_len: int = 64 * 1024
    # Nothing on this wire is bin, but a stray one should fail a method's type check, not the link.
    max_bin_len: int = 64 * 1024
    # msgpack preallocates min(n, 10000) slots at each array header, nested up to 1024 deep
    # before max_depth can be checked: 4096 caps that at 32 MiB where 10000 would allow 80 MiB.
    max_array_len: int = 4096
    # Maps are not preallocated; this only refuses an absurd header early.
    max_map_len: int = 64 * 1024
    # Our deepest message (an alloc result: frame, result, networks, NAME, ips, ip) nests 6.
    max_depth: int = 32

    # -- what one client may hold --------------------------------------------------------------
    # Each connection costs a file descriptor and its buffers.
    max_connections: int = 1024
    # Pipelining beyond this only queues in our memory instead of the client's.
    max_in_flight: int = 64
    # An idle runtime reconnects in microseconds; a leaked client should not pin an fd forever.
    idle_timeout_s: float = 300.0

    # -- the writer ----------------------------------------------------------------------------
    # Mutations decided against one synced batch, at most.
    max_batch: int = 256

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "idle_timeout_s":
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ValueError(f"Limits.idle_timeout_s must be > 0, got {value!r}")
                continue
            least = 0 if field.name in _MAY_BE_ZERO else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"Limits.{field.name} must be an int >= {least}, got {value!r}")


# Zero is a usable bound for these (no str, bin, array or map longer than nothing).
_MAY_BE_ZERO: Final = frozenset({"max_str_len", "max_bin_len", "max_array_len", "max_map_len"})

# The fields the config file's [limits] table may set.
CONFIGURABLE: Final = (
    "max_frame_bytes",
    "max_array_len",
    "max_connections",
    "max_in_flight",
    "idle_timeout_s",
    "max_batch",
)

DEFAULT_LIMITS: Final = Limits()
