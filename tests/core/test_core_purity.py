"""The core does no I/O: checked by reading its imports, not by trusting docstrings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The pure modules: the rules (core/), the wire format (wire/), the log reader and the errors.
PURE_FILES = [
    *sorted((ROOT / "ipamd" / "core").glob("*.py")),
    *sorted((ROOT / "ipamd" / "wire").glob("*.py")),
    ROOT / "ipamd" / "storage" / "leveldb_log.py",
    ROOT / "ipamd" / "errors.py",
]
# I/O, event loops, threads and processes: none of them belongs in the pure core.
FORBIDDEN = {"trio", "plyvel", "socket", "os", "subprocess", "threading", "asyncio"}
# Inside the project a pure module may lean only on other pure modules and the error tree.
ALLOWED_INTERNAL = ("ipamd.core", "ipamd.wire", "ipamd.errors")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports, anywhere in the file (functions and TYPE_CHECKING too)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                package = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                base = ".".join(package)
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Call):
            # Dynamic imports would dodge this check; the core has no reason to use them.
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in ("__import__", "import_module"):
                found.append((node.lineno, "<dynamic import>"))
    return found


def test_the_files_exist() -> None:
    names = {path.name for path in PURE_FILES}
    assert {"freeranges.py", "network.py", "allocator.py", "view.py", "errors.py"} <= names
    assert {"protocol.py", "leveldb_log.py"} <= names


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_io(path: Path) -> None:
    bad = []
    for line, module in imported_modules(path):
        top = module.split(".")[0]
        if top in FORBIDDEN or module == "<dynamic import>":
            bad.append(f"line {line}: {module}")
        elif top == "ipamd" and not module.startswith(ALLOWED_INTERNAL):
            bad.append(f"line {line}: {module} (outside the core)")
    assert not bad, f"{path.name} imports {bad}"


def test_the_checker_sees_what_it_should(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os.path\n"
        "from socket import socket\n"
        "def f():\n"
        "    import trio\n"
        "    return __import__('plyvel')\n"
    )
    modules = [module for _, module in imported_modules(sample)]
    assert modules == ["os.path", "socket", "trio", "<dynamic import>"]
