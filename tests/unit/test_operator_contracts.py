"""The operator's pods start the real runtime and sidecar: their settings parsers accept what it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from graphpilot.operator import resources as res
from graphpilot.operator.spec import ServiceSpec
from graphpilot.runtime.profile import GraphProfile

OWNER = res.Owner("qwen", "ml", "uid-1")
SPEC = ServiceSpec.from_spec(
    "qwen",
    {
        "model": {"uri": "hf://Qwen/Qwen3-0.6B"},
        "servedModelName": "Qwen/Qwen3-0.6B",
        "runtime": {
            "maxNumBatchedTokens": 1024,
            "graphBackend": "eager",
            "mixedStepTokens": 192,
            "enablePrefixCaching": False,
        },
        "autotune": {
            "intervalSeconds": 30,
            "maxBuckets": 12,
            "memFractionBounds": {"min": 0.6, "max": 0.9},
            "minGain": 0.05,
        },
    },
)


def test_runtime_reads_the_config_map_the_operator_writes(tmp_path: Path) -> None:
    serve = pytest.importorskip("graphpilot.runtime.server.cli")
    from graphpilot.runtime.cli import build_parser

    build_parser()  # registers the serve flags the config file may name
    cm = res.config_map(OWNER, SPEC, GraphProfile((1, 8, 64, 1024), 0.8), "autotuner")
    path = tmp_path / "runtime.yaml"
    path.write_text(cm["data"]["runtime.yaml"])
    args = serve.resolve_settings({"config": str(path)}, environ={})
    assert args.graph_buckets == (1, 8, 64, 1024) and args.mem_fraction_static == 0.8
    assert (args.model, args.served_model_name, args.graph_backend) == (
        "/mnt/models",
        "Qwen/Qwen3-0.6B",
        "eager",
    )
    assert (args.host, args.port, args.admin_host, args.admin_port) == ("0.0.0.0", 8000, "127.0.0.1", 8001)
    assert args.max_num_batched_tokens == 1024 and args.mixed_step_tokens == 192
    assert args.enable_prefix_caching is False


def test_sidecar_reads_the_environment_the_operator_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pytest.importorskip("graphpilot.sidecar.settings")
    pod = res.deployment(OWNER, SPEC, "img")["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "autotuner")
    downward = {"metadata.namespace": "ml", "metadata.name": "qwen-7c9f-abcde"}
    for e in sidecar["env"]:
        value = e["value"] if "value" in e else downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
        monkeypatch.setenv(e["name"], value)
    s = settings.SidecarSettings()
    assert s.admin_url == "http://127.0.0.1:8001"
    # The sidecar must listen where the pod's probe, Service and ServiceMonitor look for it.
    assert (s.host, s.port) == ("0.0.0.0", sidecar["ports"][0]["containerPort"])
    assert (s.namespace, s.name, s.pod_name) == ("ml", "qwen", "qwen-7c9f-abcde")
    assert (s.interval_seconds, s.max_buckets, s.min_gain_ratio) == (30, 12, 0.05)
    assert (s.mem_fraction_min, s.mem_fraction_max) == (0.6, 0.9)
