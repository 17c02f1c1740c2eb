"""Only ipamd/storage/ talks to LevelDB: checked by reading imports, as the purity test does."""

from __future__ import annotations

from pathlib import Path

from tests.core.test_core_purity import ROOT, imported_modules

STORAGE = ROOT / "ipamd" / "storage"


def plyvel_importers() -> set[Path]:
    return {
        path
        for path in (ROOT / "ipamd").rglob("*.py")
        if any(module.split(".")[0] == "plyvel" for _, module in imported_modules(path))
    }


def test_only_the_store_imports_plyvel() -> None:
    outside = sorted(
        str(p.relative_to(ROOT)) for p in plyvel_importers() if STORAGE not in p.parents
    )
    assert not outside, f"plyvel imported outside ipamd/storage/: {outside}"


def test_the_store_modules_are_the_ones_that_do() -> None:
    # The store's own modules; the rest of storage/ (check, import, the committer)
    # goes through `Store`.
    names = {path.name for path in plyvel_importers()}
    assert names == {"store.py", "opening.py", "schema.py", "batches.py", "reads.py", "rebuild.py"}
