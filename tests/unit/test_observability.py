"""The SLO rules and the dashboard of observability/: promtool checks and unit-tests the rules, every PromQL
expression of the dashboard parses, and every metric they name is one the services export (or a rule
records). promtool is Debian's `prometheus` package (CI installs it); without it these tests are skipped."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "observability" / "rules" / "athena-slo.yaml"
RULE_TESTS = RULES.with_name("athena-slo.test.yaml")
DASHBOARD = ROOT / "observability" / "grafana" / "turn-path.json"
METRIC_MODULES = (
    "mesh.interceptors",
    "mesh.events",
    "mesh.envelope",
    "webhooks.endpoints",
    "orchestrator.metrics",
    "memory.recall",
)
"""Every module declaring metrics the rules or the dashboard use."""
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
GRAFANA_VARIABLES = {"$__rate_interval": "5m"}

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool not installed (apt-get install prometheus)"
)


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


def exported_metrics() -> set[str]:
    """The sample names of every metric the services declare (histograms with their series)."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return {
        family.name + suffix for family in REGISTRY.collect() for suffix in SUFFIXES.get(family.type, ("",))
    }


def rules() -> list[dict[str, str]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable, value in GRAFANA_VARIABLES.items():
        expressions = [expression.replace(variable, value) for expression in expressions]
    return expressions


def named_metrics(expression: str) -> set[str]:
    """The metric names in a PromQL expression: what is left of its identifiers without label matchers,
    ranges, groupings, functions (a name before "("), keywords and numbers."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expression)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", bare))
    return names - {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@needs_promtool
def test_the_rules_are_valid() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_rules_unit_tests_pass_with_cases_that_fire_and_that_stay_silent() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    checks = [check for test in tests for check in test.get("alert_rule_test", [])]
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert {check["alertname"] for check in checks if check["exp_alerts"]} == alerts, "an alert never fires"
    assert {check["alertname"] for check in checks if not check["exp_alerts"]} == alerts, (
        "one never stays silent"
    )


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    checked = tmp_path / "dashboard-rules.yaml"
    checked.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:panel:{index}", "expr": expression}
                            for index, expression in enumerate(dashboard_expressions())
                        ],
                    }
                ]
            }
        )
    )
    result = run_promtool("check", "rules", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_and_the_dashboard_name_only_metrics_that_exist() -> None:
    known = exported_metrics() | recorded()
    expressions = [rule["expr"] for rule in rules()] + dashboard_expressions()
    named = set().union(*(named_metrics(expression) for expression in expressions))
    assert "athena_chat_time_to_first_token_seconds_bucket" in named  # the parsing finds names
    assert "athena:chat_turn_errors:ratio_rate1h" in named
    assert named - known == set()


def test_the_first_token_objective_is_a_bucket_bound_of_the_histogram() -> None:
    from orchestrator.metrics import FIRST_TOKEN_SLO_SECONDS, TIME_TO_FIRST_TOKEN

    assert FIRST_TOKEN_SLO_SECONDS in TIME_TO_FIRST_TOKEN._upper_bounds
    assert f'le="{FIRST_TOKEN_SLO_SECONDS}"' in RULES.read_text()
