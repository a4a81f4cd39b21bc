"""Manifest builders: what the pods, Service and RBAC of an InferenceService look like."""

from __future__ import annotations

import yaml

from graphpilot.operator import resources as res
from graphpilot.operator.spec import ServiceSpec
from graphpilot.runtime.profile import GraphProfile

OWNER = res.Owner("qwen", "ml", "uid-1", generation=3)


def spec(**over: object) -> ServiceSpec:
    body: dict = {"model": {"pvc": {"claimName": "models", "path": "qwen3-0.6b"}}}
    body.update(over)
    return ServiceSpec.from_spec("qwen", body)


def pod(s: ServiceSpec) -> dict:
    return res.deployment(OWNER, s, "img:1")["spec"]["template"]["spec"]


def container(s: ServiceSpec, name: str) -> dict:
    return next(c for c in pod(s)["containers"] if c["name"] == name)


def test_every_owned_object_is_garbage_collected_with_its_service() -> None:
    s = spec()
    objs = [
        res.deployment(OWNER, s, "img"), res.service(OWNER, s), res.service_account(OWNER), res.role(OWNER),
        res.role_binding(OWNER), res.disruption_budget(OWNER, s), res.service_monitor(OWNER, s),
        res.config_map(OWNER, s, s.spec_profile(), "spec"),
    ]  # fmt: skip
    for o in objs:
        (ref,) = o["metadata"]["ownerReferences"]
        assert ref["uid"] == "uid-1" and ref["controller"] is True, o["kind"]
        assert o["metadata"]["namespace"] == "ml"


def test_gpu_pods_request_gpus_and_tolerate_the_gpu_taint() -> None:
    s = spec(resources={"gpus": 2})
    rt = container(s, "runtime")
    assert rt["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert rt["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod(s)["tolerations"]


def test_cpu_pods_neither_request_nor_tolerate_gpus() -> None:
    s = spec(resources={"gpus": 0}, runtime={"graphBackend": "eager"})
    assert "nvidia.com/gpu" not in container(s, "runtime")["resources"]["requests"]
    assert pod(s)["tolerations"] == []


def test_user_tolerations_are_kept_and_gpu_toleration_not_duplicated() -> None:
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    other = {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
    assert pod(spec(tolerations=[other, gpu]))["tolerations"] == [other, gpu]


def test_readiness_waits_for_graph_capture_with_a_generous_startup_probe() -> None:
    rt = container(spec(rollout={"startupTimeoutSeconds": 1200}), "runtime")
    assert rt["startupProbe"]["httpGet"]["path"] == "/ready"
    assert rt["startupProbe"]["periodSeconds"] * rt["startupProbe"]["failureThreshold"] >= 1200
    assert rt["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert rt["livenessProbe"]["httpGet"]["path"] == "/health"


def test_default_rollout_never_needs_a_spare_gpu() -> None:
    strategy = res.deployment(OWNER, spec(), "img")["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxSurge": 0, "maxUnavailable": 1}


def test_runtime_reads_the_mounted_profile_config() -> None:
    rt = container(spec(), "runtime")
    assert rt["command"] == ["graphpilot-runtime"]
    assert rt["args"][:3] == ["serve", "--config", "/etc/graphpilot/runtime.yaml"]
    mounts = {m["name"]: m for m in rt["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/etc/graphpilot"
    assert mounts["model"]["subPath"] == "qwen3-0.6b" and mounts["model"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod(spec())["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "qwen-runtime"


def test_config_map_carries_the_effective_profile_in_runtime_keys() -> None:
    s = spec(runtime={"maxNumBatchedTokens": 512, "graphBackend": "cuda"})
    cm = res.config_map(OWNER, s, GraphProfile((1, 8, 64, 512), 0.9), "autotuner")
    cfg = yaml.safe_load(cm["data"]["runtime.yaml"])
    assert cfg["graph_buckets"] == [1, 8, 64, 512]
    assert cfg["mem_fraction_static"] == 0.9
    assert cfg["max_num_batched_tokens"] == 512 and cfg["model"] == "/mnt/models"
    assert cfg["admin_host"] == "127.0.0.1"
    assert "mixed_step_tokens" not in cfg  # unset: the runtime measures it
    assert "enable_prefix_caching" not in cfg  # unset: the runtime's default


def test_a_mixed_step_budget_reaches_the_runtime_config_and_rolls_the_pods() -> None:
    s = spec(runtime={"mixedStepTokens": 256})
    cfg = yaml.safe_load(
        res.config_map(OWNER, s, GraphProfile((1, 8), 0.9), "autotuner")["data"]["runtime.yaml"]
    )
    assert cfg["mixed_step_tokens"] == 256
    assert res.spec_hash(s) != res.spec_hash(spec())


def test_tuned_profile_does_not_roll_pods_but_a_spec_change_does() -> None:
    s = spec()
    base = res.deployment(OWNER, s, "img")["spec"]["template"]
    # A new tuned profile changes only the ConfigMap, never the pod template.
    assert res.deployment(OWNER, s, "img")["spec"]["template"] == base
    changed = spec(runtime={"graphBuckets": [1, 2, 4]})
    assert res.deployment(OWNER, changed, "img")["spec"]["template"] != base


def test_scaling_does_not_change_the_pod_template() -> None:
    one = res.deployment(OWNER, spec(replicas=1), "img")["spec"]
    four = res.deployment(OWNER, spec(replicas=4), "img")["spec"]
    assert four["replicas"] == 4 and four["template"] == one["template"]


def test_sidecar_gets_its_identity_and_the_autotune_settings() -> None:
    s = spec(
        autotune={
            "intervalSeconds": 30,
            "maxBuckets": 12,
            "memFractionBounds": {"min": 0.6, "max": 0.9},
            "minGain": 0.05,
        }
    )
    sc = container(s, "autotuner")
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in sc["env"]}
    assert env["GRAPHPILOT_SIDECAR_ADMIN_URL"] == "http://127.0.0.1:8001"
    assert env["GRAPHPILOT_SIDECAR_NAME"] == "qwen"
    assert env["GRAPHPILOT_SIDECAR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["GRAPHPILOT_SIDECAR_INTERVAL_SECONDS"] == "30"
    assert env["GRAPHPILOT_SIDECAR_MAX_BUCKETS"] == "12"
    assert (env["GRAPHPILOT_SIDECAR_MEM_FRACTION_MIN"], env["GRAPHPILOT_SIDECAR_MEM_FRACTION_MAX"]) == (
        "0.6",
        "0.9",
    )
    assert env["GRAPHPILOT_SIDECAR_MIN_GAIN_RATIO"] == "0.05"
    assert pod(s)["serviceAccountName"] == "qwen-autotuner"


def test_autotune_disabled_runs_no_sidecar_and_mounts_no_token() -> None:
    s = spec(autotune={"enabled": False})
    assert [c["name"] for c in pod(s)["containers"]] == ["runtime"]
    assert pod(s)["automountServiceAccountToken"] is False


def test_sidecar_role_covers_only_its_own_service() -> None:
    rules = res.role(OWNER)["rules"]
    for rule in rules:
        assert rule["resourceNames"] == ["qwen"]
        assert set(rule["verbs"]) <= {"get", "patch"}
    assert {r for rule in rules for r in rule["resources"]} == {
        "inferenceservices",
        "inferenceservices/status",
    }
    patchable = [r for rule in rules if "patch" in rule["verbs"] for r in rule["resources"]]
    assert patchable == ["inferenceservices/status"]
    binding = res.role_binding(OWNER)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "qwen-autotuner", "namespace": "ml"}]


def test_uri_models_are_downloaded_by_an_init_container() -> None:
    token = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    s = ServiceSpec.from_spec(
        "qwen",
        {"model": {"uri": "hf://Qwen/Qwen3-0.6B", "downloadSize": "10Gi"}, "runtime": {"env": [token]}},
    )
    p = pod(s)
    (init,) = p["initContainers"]
    assert init["args"] == ["--uri", "hf://Qwen/Qwen3-0.6B", "--dest", "/mnt/models"]
    assert init["env"] == [token]  # gated models need the token while downloading
    assert {v["name"]: v for v in p["volumes"]}["model"] == {
        "name": "model",
        "emptyDir": {"sizeLimit": "10Gi"},
    }


def test_host_path_models_are_mounted_read_only() -> None:
    s = ServiceSpec.from_spec("qwen", {"model": {"hostPath": {"path": "/data/qwen"}}})
    assert {v["name"]: v for v in pod(s)["volumes"]}["model"]["hostPath"]["path"] == "/data/qwen"
    assert "initContainers" not in pod(s)


def test_pods_run_as_non_root() -> None:
    p = pod(spec())
    assert p["securityContext"]["runAsNonRoot"] is True
    assert all(c["securityContext"]["allowPrivilegeEscalation"] is False for c in p["containers"])


def test_service_selects_the_pods_and_exposes_the_api() -> None:
    svc = res.service(OWNER, spec(service={"port": 8080}))
    assert svc["spec"]["selector"] == res.selector_labels("qwen")
    assert svc["spec"]["ports"][0] == {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    assert res.service_url(OWNER, spec()) == "http://qwen.ml.svc.cluster.local"
    assert res.selector_string("qwen") == "app.kubernetes.io/instance=qwen,app.kubernetes.io/name=graphpilot"


def test_service_monitor_scrapes_runtime_and_autotuner_metrics() -> None:
    sm = res.service_monitor(OWNER, spec(monitoring={"interval": "15s", "labels": {"release": "prom"}}))
    assert [(e["port"], e["interval"]) for e in sm["spec"]["endpoints"]] == [
        ("http", "15s"),
        ("autotuner", "15s"),
    ]
    assert sm["metadata"]["labels"]["release"] == "prom"


def test_deployment_records_the_generation_it_was_built_from_outside_the_template() -> None:
    dep = res.deployment(OWNER, spec(), "img")
    assert dep["metadata"]["annotations"][res.GENERATION_ANNOTATION] == "3"
    assert res.GENERATION_ANNOTATION not in dep["spec"]["template"]["metadata"]["annotations"]


def test_metrics_carry_the_inferenceservice_label_dashboards_select_on() -> None:
    sm = res.service_monitor(OWNER, spec(monitoring={"interval": "15s"}))
    for endpoint in sm["spec"]["endpoints"]:
        assert {
            "sourceLabels": ["__meta_kubernetes_pod_label_graphpilot_dev_inferenceservice"],
            "targetLabel": "inferenceservice",
        } in endpoint["relabelings"]
    pod = res.pod_template(OWNER, spec(), "img:1")
    assert pod["metadata"]["labels"]["graphpilot.dev/inferenceservice"] == OWNER.name
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8000"
