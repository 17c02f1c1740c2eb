"""CI smoke check: every benchmark runs with --quick --json and reports every figure.

A benchmark is a program that prints figures, not a test with a time limit
(STYLE.md): this checks only that each one runs to the end as a separate
process and that its JSON line carries the promised keys as positive numbers.
It never asserts on speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
HOST_LOCAL = Path("/usr/lib/cni/host-local")
# --quick is meant to take under a minute; this only stops a hung run.
RUN_TIMEOUT_S = 600


def run_quick(script: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=ROOT,
        env={**os.environ, "IPAMD_BENCH_DIR": str(tmp_path)},
        check=False,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing"
    figures = json.loads(lines[-1])
    assert isinstance(figures, dict), lines[-1]
    return figures


def assert_positive(figures: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert key in figures, f"missing {key}"
        value = figures[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)


@pytest.mark.slow
def test_bench_daemon_quick_reports_every_figure(tmp_path: Path) -> None:
    figures = run_quick("bench_daemon.py", tmp_path)
    assert figures["quick"] is True
    assert_positive(
        figures,
        "ipamd_allocs_per_s_64",
        "echo_rps_64",
        "ratio_vs_echo_64",
        "ratio_vs_seed_style",
        "p99_ms_64",
        "mean_batch_64",
        "scrape_vs_none_64",
        "scrapes",
    )
    assert figures["scrape_failures"] == 0
    for clients in (1, 8, 64, 256):
        assert_positive(figures, f"ipamd_allocs_per_s_{clients}", f"echo_rps_{clients}")
    # host-local is skipped (null figures) only where it is not installed; CI installs it.
    if HOST_LOCAL.exists():
        assert_positive(figures, "ratio_vs_hostlocal")
    else:
        assert "ratio_vs_hostlocal" in figures
    # ipamd-cni reports null, and says why on stdout, when it cannot be run.
    assert "cni_vs_hostlocal_exec_ratio" in figures
    if figures["ipamd_cni_available"] and HOST_LOCAL.exists():
        assert_positive(figures, "cni_vs_hostlocal_exec_ratio")


@pytest.mark.slow
def test_bench_startup_quick_reports_every_figure(tmp_path: Path) -> None:
    figures = run_quick("bench_startup.py", tmp_path)
    assert figures["quick"] is True
    assert figures["leases_measured"] == 100_000
    assert_positive(figures, "ready_1m_s", "rss_1m_mb", "ready_100k_s", "rss_100k_mb")


@pytest.mark.slow
def test_bench_allocator_quick_reports_every_figure(tmp_path: Path) -> None:
    figures = run_quick("bench_allocator.py", tmp_path)
    assert figures["quick"] is True
    assert_positive(
        figures,
        "fill_last_first_ratio",
        "full16_alloc_us",
        "v6_64_vs_v4_24_ratio",
        "bytes_per_lease",
    )


@pytest.mark.slow
def test_bench_writer_quick_reports_every_figure(tmp_path: Path) -> None:
    figures = run_quick("bench_writer.py", tmp_path)
    assert figures["quick"] is True
    assert_positive(
        figures,
        "group_vs_single_ratio_64",
        "allocs_per_s_64",
        "rebuild_1m_s",
        "rss_1m_mb",
        "absent_lookup_us",
        "absent_lookup_no_filter_us",
    )


def test_bench_protocol_quick_reports_every_figure(tmp_path: Path) -> None:
    figures = run_quick("bench_protocol.py", tmp_path)
    assert figures["quick"] is True
    assert_positive(
        figures,
        "parse_1_us",
        "parse_32_us",
        "encode_us",
        "encode_error_us",
        "parse_1_vs_msgpack_ratio",
        "parse_32_vs_msgpack_ratio",
        "encode_vs_packb_ratio",
    )


def test_bench_metrics_quick_reports_every_figure(tmp_path: Path) -> None:
    figures = run_quick("bench_metrics.py", tmp_path)
    assert figures["quick"] is True
    assert_positive(
        figures,
        "observe_us",
        "prom_observe_us",
        "count_us",
        "prom_count_us",
        "answered_us",
        "render_us_1",
        "render_us_100",
        "render_bytes_100",
    )


@pytest.mark.slow
def test_bench_cluster_quick_reports_every_figure(tmp_path: Path) -> None:
    figures = run_quick("bench_cluster.py", tmp_path)
    assert figures["quick"] is True
    assert figures["errors"] == 0
    assert_positive(
        figures,
        "cluster_vs_local_64",
        "first_alloc_fresh_host_ms",
        "claims_per_s",
        "etcd_keys_per_10k_leases",
        "local_allocs_per_s_64",
        "cluster_allocs_per_s_64",
    )


@pytest.mark.slow
def test_bench_checkouts_quick_compares_two_trees(tmp_path: Path) -> None:
    # This tree against itself: the figures exist and are positive; their ratio is noise.
    figures = run_quick("bench_checkouts.py", tmp_path, str(ROOT), str(ROOT))
    assert figures["quick"] is True
    assert_positive(
        figures,
        "old_alloc_per_s",
        "new_alloc_per_s",
        "old_release_per_s",
        "new_release_per_s",
        "old_alloc_p99_ms",
        "new_alloc_p99_ms",
        "new_vs_old_64",
        "p99_new_vs_old_64",
        "release_new_vs_old_64",
    )


def test_bench_checkouts_refuses_a_directory_without_ipamd(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_checkouts.py"), str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode != 0
    assert f"{tmp_path}: not an ipamd checkout" in proc.stderr
