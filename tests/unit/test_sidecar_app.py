"""The sidecar's HTTP surface, its persistence in the cluster, and its command line."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sidecar_fakes import cost_table, settings

from graphpilot.runtime.profile import GraphProfile
from graphpilot.sidecar import cli
from graphpilot.sidecar.actuator import ClusterStore
from graphpilot.sidecar.app import create_app
from graphpilot.sidecar.simulator import SimRuntime

METRICS = {
    "graphpilot_autotune_decisions",
    "graphpilot_autotune_padding_waste_ratio",
    "graphpilot_autotune_expected_gain_ratio",
    "graphpilot_autotune_rollbacks",
    "graphpilot_autotune_last_apply_timestamp_seconds",
}


def test_status_metrics_and_health_show_the_tuning() -> None:
    sim = SimRuntime(cost_table(), (1, 2, 4, 8))
    sim.serve({3: 100, 700: 20})  # 700 is above the largest bucket: eager
    app = create_app(settings(interval_seconds=0.05), api=sim)
    with TestClient(app) as client:
        deadline = time.time() + 10
        while sim.applies == 0 and time.time() < deadline:
            time.sleep(0.02)
        assert client.get("/health").json() == {"status": "ok", "runtime_reachable": True}
        status = client.get("/status").json()
        metrics = client.get("/metrics").text
    assert sim.buckets[-1] >= 700
    assert status["window"]["num_tokens"] == {"3": 100.0, "700": 20.0}
    assert status["current"]["buckets"] == list(sim.buckets)
    decision = next(d for d in status["decisions"] if d["result"] == "applied")
    assert decision["action"] == "retune" and decision["predicted_gain"] > 0
    assert status["proposed"]["coverage_target"] == 700
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert set(families) >= METRICS
    applied = [
        s for s in families["graphpilot_autotune_decisions"].samples if s.labels.get("result") == "applied"
    ]
    assert applied and applied[0].labels["action"] == "retune" and applied[0].value == 1
    assert families["graphpilot_autotune_last_apply_timestamp_seconds"].samples[0].value > 0


def fake_apiserver(seen: list[dict[str, Any]]) -> FastAPI:
    """Just enough of the API server: the status subresource of one InferenceService."""
    app = FastAPI()
    obj: dict[str, Any] = {"metadata": {"name": "svc"}, "status": {}}
    path = "/apis/graphpilot.dev/v1alpha1/namespaces/ns/inferenceservices/svc/status"

    @app.get(path)
    async def get() -> dict[str, Any]:
        return obj

    @app.patch(path)
    async def patch(request: Request) -> dict[str, Any]:
        body = json.loads(await request.body())
        seen.append({"headers": dict(request.headers), "body": body})
        obj["status"].update(body["status"])
        return obj

    return app


def test_cluster_store_merge_patches_only_its_own_status(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token\n")
    seen: list[dict[str, Any]] = []
    s = settings(namespace="ns", name="svc", pod_name="svc-abc", service_account_dir=tmp_path,
                 kube_api_url="https://apiserver")  # fmt: skip
    store = ClusterStore(s, transport=httpx.ASGITransport(app=fake_apiserver(seen)))
    assert asyncio.run(store.load()) is None
    asyncio.run(store.save(GraphProfile((1, 8, 64), 0.8)))
    (request,) = seen
    assert request["headers"]["content-type"] == "application/merge-patch+json"
    assert request["headers"]["authorization"] == "Bearer sa-token"
    record = request["body"]["status"]["autotuner"]
    assert set(request["body"]) == {"status"} and set(request["body"]["status"]) == {"autotuner"}
    assert record["profile"] == {"buckets": [1, 8, 64], "mem_fraction_static": 0.8}
    assert record["pod"] == "svc-abc" and record["updatedAt"].endswith("Z")
    assert asyncio.run(store.load()) == GraphProfile((1, 8, 64), 0.8)


def test_cli_rejects_inconsistent_settings_with_a_message(capsys: Any) -> None:
    assert cli.main(["--namespace", "ns"]) == 2
    assert "name" in capsys.readouterr().err
    s = cli.parse_args(["--max-buckets", "12", "--admin-url", "http://10.0.0.1:8001", "--dry-run"])
    assert (s.max_buckets, s.admin_url, s.dry_run) == (12, "http://10.0.0.1:8001", True)


def test_every_decision_series_exists_from_the_start() -> None:
    from prometheus_client import generate_latest

    from graphpilot.sidecar.metrics import TunerMetrics

    text = generate_latest(TunerMetrics().registry).decode()
    assert 'graphpilot_autotune_decisions_total{action="retune",result="applied"} 0.0' in text
    assert 'graphpilot_autotune_decisions_total{action="rollback",result="applied"} 0.0' in text
