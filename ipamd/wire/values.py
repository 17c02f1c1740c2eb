"""Reading the values a peer sent: maps that may arrive as empty arrays, and short
descriptions of bad values for error messages.

Both the framing (params, a response's error) and the request parsers
(`ipamd.core.requests`, the service's read methods) read maps out of what a peer
sent; they share these so a map means the same thing everywhere (DESIGN.md
section 4: wherever a map is expected an empty array counts as an empty map,
since Lua's encoder cannot tell the two apart). Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from ipamd.errors import InvalidRequest


def as_map(value: Any, what: str) -> dict[str, Any]:
    """`value` as a map with str keys, an empty array counting as an empty map.

    Raises `InvalidRequest` naming `what`; nil is not a map (see `as_optional_map`).
    """
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise InvalidRequest(f"{what} keys must be strings, got {describe(key)}")
        return value
    if isinstance(value, list) and not value:
        return {}
    raise InvalidRequest(f"{what} must be a map, got {describe(value)}")


def as_optional_map(value: Any, what: str) -> dict[str, Any]:
    """`as_map`, where nil (an argument left out) also counts as an empty map."""
    return {} if value is None else as_map(value, what)


# Containers are described by their size alone: their contents may be anything.
_SIZED = {bytes: "bin of {} bytes", list: "an array of {} items", dict: "a map of {} entries"}


def describe(value: Any) -> str:
    """A short, bounded description of a value a peer sent, for error messages."""
    if value is None:
        return "nil"
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{'integer' if isinstance(value, int) else 'float'} {value!r}"
    if isinstance(value, str):
        return f"string {value[:40]!r}{'...' if len(value) > 40 else ''}"
    for kind, template in _SIZED.items():
        if isinstance(value, kind):
            return template.format(len(value))
    return type(value).__name__  # ExtType, Timestamp
