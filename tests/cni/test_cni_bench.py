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
        [sys.executable, str(BENCH), "--ops", "3", "--reps", "1", "--leases", "0", "50", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done
    figures = json.loads(done.stdout.splitlines()[-1])
    for suffix in ("", "_50"):
        assert figures[f"cni_vs_hostlocal_exec_ratio{suffix}"] > 0
        for plugin in ("ipamd_cni", "hostlocal_cni"):
            assert figures[f"{plugin}_pairs_per_s{suffix}"] > 0
            for name in ("add_p50_ms", "add_p99_ms", "del_p50_ms", "del_p99_ms"):
                assert figures[f"{plugin}_{name}{suffix}"] > 0
    for command in ("add", "del"):
        split = figures[f"ipamd_cni_{command}_split_ms"]
        assert set(split) == {"start", "parse", "connect", "rpc", "exit"}
        assert all(ms > 0 for ms in split.values())
    print(json.dumps(figures, indent=2))
