"""The Grafana dashboard and the chart's monitoring objects: what a Grafana/Prometheus user gets."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from test_chart import HELM, by_kind, needs_helm
from test_rules import CONTRACT, metric_names

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "graphpilot"
DASHBOARD = CHART / "dashboards" / "graphpilot.json"
SELECTOR = '{namespace="$namespace", inferenceservice="$inferenceservice", pod=~"$pod"'
PROM_OPERATOR = ["monitoring.coreos.com/v1/PrometheusRule", "monitoring.coreos.com/v1/PodMonitor"]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_is_templated_by_namespace_inferenceservice_and_pod() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert "inferenceservice" in variables["inferenceservice"]["definition"]
    assert variables["pod"]["multi"] and variables["pod"]["allValue"] == ".*"
    for p in panels():
        for t in p["targets"]:
            # every graphpilot_ series is filtered by the three variables, so no panel leaks other services
            for m in re.finditer(r"graphpilot_[a-z0-9_]+", t["expr"]):
                assert t["expr"][m.end() :].startswith(SELECTOR), (p["title"], t["expr"])


def test_every_panel_queries_contract_metrics() -> None:
    used: set[str] = set()
    for p in panels():
        assert p["targets"] and p.get("description"), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            used |= metric_names(t["expr"])
    assert used <= CONTRACT
    # the whole runtime and sidecar contract is on screen
    assert CONTRACT - used == set()


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def render(*args: str) -> list[dict[str, Any]]:
    cmd = [str(HELM), "template", "gp", str(CHART), "--namespace", "ops", "--kube-version", "1.35.0", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@needs_helm
def test_monitoring_objects_are_off_by_default() -> None:
    kinds = {d["kind"] for d in render(*(f"--api-versions={v}" for v in PROM_OPERATOR))}
    assert not kinds & {"ConfigMap", "PrometheusRule", "PodMonitor"}


@needs_helm
def test_dashboard_configmap_is_found_by_grafanas_sidecar() -> None:
    docs = render(
        "--set", "monitoring.dashboards.enabled=true", "--set", "monitoring.dashboards.namespace=grafana"
    )
    (cm,) = by_kind(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "grafana"
    assert json.loads(cm["data"]["graphpilot.json"]) == dashboard()


@needs_helm
def test_alerts_are_a_prometheusrule_with_the_operator_and_a_rule_file_without() -> None:
    plain = yaml.safe_load((CHART / "rules" / "graphpilot-rules.yaml").read_text())
    on = ["--set", "monitoring.rules.enabled=true", "--set", "monitoring.rules.labels.release=kps"]
    (rule,) = by_kind(render(*on, *(f"--api-versions={v}" for v in PROM_OPERATOR)), "PrometheusRule")
    assert rule["spec"] == plain and rule["metadata"]["labels"]["release"] == "kps"
    (cm,) = by_kind(render(*on), "ConfigMap")
    assert yaml.safe_load(cm["data"]["graphpilot-rules.yaml"]) == plain


@needs_helm
def test_podmonitor_scrapes_both_containers_with_the_inferenceservice_label() -> None:
    on = ["--set", "monitoring.podMonitor.enabled=true"]
    assert by_kind(render(*on), "PodMonitor") == []  # no Prometheus Operator, no PodMonitor
    docs = render(*on, "--set", "watchNamespaces={ml}", *(f"--api-versions={v}" for v in PROM_OPERATOR))
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "graphpilot-operator"}
    endpoints = pm["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["http", "autotuner"]
    for e in endpoints:
        (relabel,) = e["relabelings"]
        assert relabel["targetLabel"] == "inferenceservice"
        assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_graphpilot_dev_inferenceservice"]


def test_podmonitor_selects_what_the_operator_puts_on_pods() -> None:
    from graphpilot.operator import resources as res
    from graphpilot.operator.spec import ServiceSpec

    spec = ServiceSpec.from_spec("chat", {"model": {"pvc": {"claimName": "models"}}})
    template = res.deployment(res.Owner("chat", "ml", "uid"), spec, "img:1")["spec"]["template"]
    labels = template["metadata"]["labels"]
    # Prometheus exposes the pod label graphpilot.dev/inferenceservice as the meta label the PodMonitor reads
    assert labels["app.kubernetes.io/managed-by"] == "graphpilot-operator"
    assert labels["graphpilot.dev/inferenceservice"] == "chat"
    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert ports >= {"http", "autotuner"}
