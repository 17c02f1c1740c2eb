"""The schema version of the database, and the one migration there is.

Rules it keeps:
- A new database gets the current version; a database with data but no
  version, a newer version, or an older one no migration is known for is
  `CorruptDatabase`.
- Schema 1 -> 2 (boot ids on leases) is migrated explicitly and once, only
  when the daemon opens the database with a boot id; `ipamd check`, which has
  none, refuses an unmigrated database (`SchemaTooOld`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import plyvel

from ipamd.core import keys
from ipamd.storage.failures import CorruptDatabase, SchemaTooOld, StoreUnavailable, reason

log = logging.getLogger("ipamd.store")

# Leases rewritten per synced batch while migrating: bounded memory, and an
# interrupted migration resumes where it stopped (it skips stamped leases).
MIGRATION_BATCH = 10_000


def check_schema(db: plyvel.DB, path: Path, boot: str | None) -> int | None:
    """Check (or set, on a new database) the schema version, migrating schema 1
    with `boot`. The leases the migration stamped; None if it migrated nothing."""
    raw = db.get(keys.SCHEMA_KEY, verify_checksums=True)
    if raw is None:
        if next(db.iterator(include_value=False), None) is not None:
            raise CorruptDatabase(f"database {path} has data but no schema version")
        try:
            db.put(keys.SCHEMA_KEY, keys.schema_value(), sync=True)
        except plyvel.Error as e:
            raise StoreUnavailable(f"cannot initialise database {path}: {reason(e)}") from e
        return None
    version = keys.decode_schema(raw)
    if not isinstance(version, int) or version > keys.SCHEMA_VERSION:
        raise CorruptDatabase(
            f"database {path} has schema version {version!r}, newer than this ipamd"
            f" understands ({keys.SCHEMA_VERSION}); upgrade ipamd or restore a backup"
        )
    if version != keys.SCHEMA_WITHOUT_BOOT and version < keys.SCHEMA_VERSION:
        raise CorruptDatabase(
            f"database {path} has schema version {version}; no migration to"
            f" {keys.SCHEMA_VERSION} is known"
        )
    if version != keys.SCHEMA_WITHOUT_BOOT:
        return None
    if boot is None:
        raise SchemaTooOld(
            f"database {path} has schema version {version}, from before boot ids;"
            f" start ipamd once to migrate it to {keys.SCHEMA_VERSION}"
        )
    return _migrate_boots(db, boot)


def _migrate_boots(db: plyvel.DB, boot: str) -> int:
    """Schema 1 -> 2: give every lease a boot id, the current one.

    The current one, not "unknown": a schema-1 lease may belong to a
    container running now (ipamd upgraded within a boot), and a suspect one
    could be reclaimed automatically. Leases are rewritten in synced
    batches; the schema version moves last, so an interrupted migration is
    resumed at the next open (stamped leases are skipped).
    """
    stamped = 0
    batch = db.write_batch(sync=True)
    pending = 0
    for raw_key, value in db.iterator(prefix=keys.LEASE, verify_checksums=True):
        if keys.has_boot(value):
            continue
        lease = keys.decode_lease(keys.decode_lease_key(raw_key), value)
        batch.put(raw_key, keys.lease_value(lease._replace(boot=boot)))
        stamped += 1
        pending += 1
        if pending >= MIGRATION_BATCH:
            batch.write()
            batch, pending = db.write_batch(sync=True), 0
    batch.put(keys.SCHEMA_KEY, keys.schema_value())
    batch.write()
    log.info(
        "migrated database schema %d -> %d: %d lease(s) stamped with the current boot id %s",
        keys.SCHEMA_WITHOUT_BOOT,
        keys.SCHEMA_VERSION,
        stamped,
        boot,
    )
    return stamped
