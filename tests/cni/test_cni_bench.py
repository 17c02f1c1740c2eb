"""The ADD/DEL benchmark against host-local still runs; its figures are printed, not judged.

A benchmark is a program that prints figures (STYLE.md): run
`python contrib/bench_cni.py` for real numbers; this only keeps it working.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cni.cni_support import CNI_DIR

BENCH = Path(__file__).resolve().parents[2] / "contrib" / "bench_cni.py"


@pytest.mark.slow
@pytest.mark.skipif(not (CNI_DIR / "host-local").exists(), reason="needs host-local")
def test_bench_compares_add_and_del_with_host_local() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--rounds", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done
    figures = json.loads(done.stdout)
    assert set(figures) == {"host-local", "ipamd-cni"}
    for row in figures.values():
        assert set(row) == {"ADD median", "ADD mean", "DEL median", "DEL mean"}
        assert all(ms > 0 for ms in row.values())
    print(json.dumps(figures, indent=2))
