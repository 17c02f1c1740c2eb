"""What opening, reading or migrating the store can fail with, and how a
LevelDB error reads for people.

Write failures are not here: they are `StorageError` (ipamd.errors), which a
client sees; these are the daemon's and `ipamd check`'s own.
"""

from __future__ import annotations

from pathlib import Path


class CorruptDatabase(Exception):
    """The database cannot be trusted; restarting will not help (exit status 65)."""


class StoreUnavailable(Exception):
    """The database could not be opened for a reason other than corruption."""


class SchemaTooOld(StoreUnavailable):
    """An older schema, opened without a boot id to migrate it with (`ipamd check`)."""


class NotADatabase(StoreUnavailable):
    """What is at the database path is no ipamd database (and is left alone)."""


class StateDirLocked(StoreUnavailable):
    """Another process (another ipamd, or `ipamd check`) has the database open."""

    def __init__(self, state_dir: Path, holder: int | None) -> None:
        who = "another ipamd" if holder is None else f"another ipamd (pid {holder})"
        super().__init__(f"{who} holds the lock on state directory {state_dir}")
        self.state_dir = state_dir
        self.holder = holder


def reason(error: Exception) -> str:
    """An error's message for people: plyvel's carry LevelDB's status as bytes."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if error.args and isinstance(error.args[0], bytes):
        return error.args[0].decode(errors="replace")
    return str(error)
