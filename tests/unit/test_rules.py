"""Alerting rules: promtool accepts them, and its unit tests show every alert firing and staying quiet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "graphpilot" / "rules" / "graphpilot-rules.yaml"
RULE_TESTS = ROOT / "charts" / "graphpilot" / "rules" / "tests" / "graphpilot-rules.test.yaml"

# The metric contract (ARCHITECTURE.md), plus what the runtime exports beyond it.
CONTRACT = {
    "graph_replays_total", "graph_rejects_total", "forward_tokens_total", "graph_padded_tokens_total",
    "forward_num_tokens", "graph_buckets", "graph_max_bucket_tokens", "graph_memory_bytes",
    "graph_capture_seconds", "graph_recaptures_total", "kv_cache_usage_ratio", "kv_cache_capacity_tokens",
    "mem_fraction_static", "requests_total", "time_to_first_token_seconds", "inter_token_latency_seconds",
    "e2e_request_latency_seconds", "prompt_tokens_total", "generation_tokens_total", "num_requests_running",
    "num_requests_waiting", "num_preemptions_total", "graph_capturing", "mixed_step_tokens",
    "autotune_decisions_total", "autotune_padding_waste_ratio", "autotune_expected_gain_ratio",
    "autotune_rollbacks_total", "autotune_last_apply_timestamp_seconds",
    "prefix_cache_queries_total", "prefix_cache_hits_total",
}  # fmt: skip
HISTOGRAMS = {"forward_num_tokens", "time_to_first_token_seconds", "inter_token_latency_seconds",
              "e2e_request_latency_seconds"}  # fmt: skip


def metric_names(text: str) -> set[str]:
    """graphpilot_* names in PromQL, with histogram series suffixes folded back to the family."""
    names = set()
    for name in re.findall(r"graphpilot_([a-z0-9_]+)", text):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: `make system-deps` (Debian package `prometheus`) provides it")
    return path


def test_promtool_accepts_the_rule_file(promtool: str) -> None:
    proc = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    proc = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for rule in alerts():
        name = rule["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"no test case where {name} fires"
        assert any(not c.get("exp_alerts") for c in mine), f"no test case where {name} stays quiet"


def test_alerts_route_by_severity_and_say_what_to_do() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80, rule["alert"]
        assert rule["alert"].startswith("GraphPilot")


def test_alerts_use_only_contract_metrics_and_group_by_inferenceservice() -> None:
    for rule in alerts():
        assert metric_names(rule["expr"]) <= CONTRACT, rule["alert"]
        assert "inferenceservice" in rule["expr"], f"{rule['alert']} loses the InferenceService"


def test_every_alert_is_documented() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    for rule in alerts():
        assert rule["alert"] in doc, f"{rule['alert']} is not in docs/observability.md"
