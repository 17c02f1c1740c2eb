"""contrib/prometheus: the alert rules and the Grafana dashboard, checked by promtool.

- `promtool check rules` accepts the rules, and `promtool test rules` runs
  their unit tests (each alert fires when it should and not before).
- Every dashboard query parses as PromQL (promtool checks it as a recording
  rule, with Grafana's variables filled in), and every metric the rules and
  the dashboard name is one the daemon exposes (tests/daemon/test_metrics.py
  holds that list and checks it against the real daemon).

promtool comes from Debian's prometheus package, which .ci/run installs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon.test_metrics import CLUSTER_TYPES, EXPECTED_TYPES

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "prometheus"
RULES = CONTRIB / "ipamd-alerts.yml"
RULE_TESTS = CONTRIB / "ipamd-alerts.test.yml"
DASHBOARD = CONTRIB / "ipamd-dashboard.json"
PROMTOOL = shutil.which("promtool")
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*", "$network": ".*"}


def promtool(*args: str, cwd: Path = CONTRIB) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is missing: .ci/run installs Debian's prometheus"
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def exposed_series_names() -> set[str]:
    names = set()
    for name, kind in {**EXPECTED_TYPES, **CLUSTER_TYPES}.items():
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(METRIC{...}, LABEL) is Grafana's, not PromQL: check its selector.
            inner = re.fullmatch(r"label_values\((.*), \w+\)", variable["definition"])
            assert inner, variable["definition"]
            queries.append(inner.group(1))
    return queries


def test_alert_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_alert_rules_unit_tests_pass() -> None:
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alerts_cover_what_operators_asked_for() -> None:
    rules = RULES.read_text()
    assert "ipamd_subnet_utilisation_ratio > 0.9" in rules
    assert "ipamd_writer_failed_writes_total" in rules
    assert "ipamd_writer_up == 0" in rules


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, query in enumerate(queries):
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        lines += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(query)}"]
    (tmp_path / "dashboard-rules.yml").write_text("\n".join(lines) + "\n")
    done = promtool("check", "rules", "dashboard-rules.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("source", [RULES, DASHBOARD], ids=lambda p: p.name)
def test_only_metrics_the_daemon_exposes_are_named(source: Path) -> None:
    named = set(re.findall(r"\bipamd_[a-z_]+\b", source.read_text()))
    assert named, source
    assert named <= exposed_series_names(), named - exposed_series_names()
