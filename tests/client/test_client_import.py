"""The blocking client starts fast: it (and `ipamd-client`) never imports trio.

The CNI plugin is exec'd once per container start and uses `Client`, so its
import cost is paid on every container start. The figures are printed (a
benchmark prints, it does not assert a time); what is asserted is what is
imported.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import pytest

PROBE = """
import json, sys, time
started = time.perf_counter()
import ipamd.client
from ipamd.client import Client, ConnectionFailed, discover_socket
client_done = time.perf_counter()
import ipamd.cli
cli_done = time.perf_counter()
Client("/nonexistent/ipamd.sock")  # an explicit path needs nothing more
print(json.dumps({
    "client_ms": (client_done - started) * 1000,
    "cli_ms": (cli_done - client_done) * 1000,
    "trio": sorted(m for m in sys.modules if m == "trio" or m.startswith("trio.")),
    "config": "ipamd.config" in sys.modules,
}))
from ipamd.client import TrioClient  # now, and only now, trio comes in
print("trio" in sys.modules, TrioClient.__module__)
"""


def _wall_ms(code: str, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def test_blocking_client_and_cli_leave_trio_out(capsys: pytest.CaptureFixture[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    first, second = done.stdout.splitlines()
    figures = json.loads(first)
    assert figures["trio"] == []
    assert figures["config"] is False
    assert second == "True ipamd.client.trio_client"

    bare = _wall_ms("pass")
    with_client = _wall_ms("from ipamd.client import Client")
    with capsys.disabled():
        print(
            f"\nimport ipamd.client: {figures['client_ms']:.1f} ms in-process, "
            f"then ipamd.cli: +{figures['cli_ms']:.1f} ms; "
            f"process start: {bare:.0f} ms bare, {with_client:.0f} ms with Client "
            f"(+{with_client - bare:.0f} ms)"
        )
