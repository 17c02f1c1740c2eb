"""The one error tree clients can see (DESIGN.md section 4).

Every error a client may receive derives from `IpamError` and carries a stable
`code` and `name`; clients switch on those, people read `message`. Library
exceptions (plyvel, msgpack, OSError) are translated into this tree at the seam
where they enter, never deeper. Pure: no I/O imports.
"""

from __future__ import annotations

from typing import Any, ClassVar


class IpamError(Exception):
    """Base of every error that crosses the wire."""

    code: ClassVar[int] = 0
    name: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "message": self.message}

    def __str__(self) -> str:
        return self.message


class InvalidRequest(IpamError):
    code = 1
    name = "invalid_request"


class UnknownMethod(IpamError):
    code = 2
    name = "unknown_method"


class NetworkNotFound(IpamError):
    code = 3
    name = "network_not_found"


class NetworkExists(IpamError):
    code = 4
    name = "network_exists"


class AddressInUse(IpamError):
    code = 5
    name = "address_in_use"


class AddressNotAllocatable(IpamError):
    code = 6
    name = "address_not_allocatable"


class RangeExhausted(IpamError):
    code = 7
    name = "range_exhausted"


class LeaseNotFound(IpamError):
    code = 8
    name = "lease_not_found"


class NetworkInUse(IpamError):
    code = 9
    name = "network_in_use"


class PermissionDenied(IpamError):
    code = 10
    name = "permission_denied"


class Unavailable(IpamError):
    code = 11
    name = "unavailable"


class StorageError(IpamError):
    code = 12
    name = "storage_error"


class RequestTooLarge(IpamError):
    code = 13
    name = "request_too_large"


ERRORS_BY_CODE: dict[int, type[IpamError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        UnknownMethod,
        NetworkNotFound,
        NetworkExists,
        AddressInUse,
        AddressNotAllocatable,
        RangeExhausted,
        LeaseNotFound,
        NetworkInUse,
        PermissionDenied,
        Unavailable,
        StorageError,
        RequestTooLarge,
    )
}
ERRORS_BY_NAME: dict[str, type[IpamError]] = {cls.name: cls for cls in ERRORS_BY_CODE.values()}


def error_from_wire(error: Any) -> IpamError:
    """Rebuild the error a peer sent as `{"code", "name", "message"}`.

    An unknown name or code still becomes an `IpamError` carrying them, so a newer
    daemon's error is shown to an older client instead of crashing it.
    """
    if not isinstance(error, dict):
        return IpamError(f"malformed error from peer: {error!r}")
    message = str(error.get("message", ""))
    cls = ERRORS_BY_NAME.get(str(error.get("name"))) or ERRORS_BY_CODE.get(error.get("code", -1))
    if cls is not None:
        return cls(message)
    unknown = IpamError(message)
    if isinstance(error.get("code"), int):
        unknown.code = error["code"]  # type: ignore[misc]
    if isinstance(error.get("name"), str):
        unknown.name = error["name"]  # type: ignore[misc]
    return unknown
