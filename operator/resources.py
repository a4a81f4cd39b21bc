"""Pure manifest builders: (owner, spec, effective profile) -> the objects an InferenceService owns.

No API access here, so every rule about what a pod looks like is testable without a cluster.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import yaml

from graphpilot.operator.spec import (
    ADMIN_PORT,
    API_VERSION,
    CONFIG_DIR,
    CONFIG_FILE,
    GROUP,
    HTTP_PORT,
    KIND,
    MODEL_DIR,
    PLURAL,
    SIDECAR_PORT,
    STATE_DIR,
    ServiceSpec,
)
from graphpilot.runtime.profile import GraphProfile

Manifest = dict[str, Any]

MANAGED_BY = "graphpilot-operator"
GENERATION_ANNOTATION = f"{GROUP}/generation"
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
NONROOT = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@dataclass(frozen=True)
class Owner:
    """The InferenceService the objects belong to."""

    name: str
    namespace: str
    uid: str
    generation: int = 1


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "graphpilot", "app.kubernetes.io/instance": name}


def selector_string(name: str) -> str:
    """The pod selector as a string (status.selector, read by the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{GROUP}/inferenceservice": name,
    }


def sidecar_account_name(name: str) -> str:
    return f"{name}-autotuner"


def config_map_name(name: str) -> str:
    return f"{name}-runtime"


def _meta(owner: Owner, name: str, kind_labels: dict[str, str] | None = None) -> Manifest:
    ref = {"apiVersion": API_VERSION, "kind": KIND, "name": owner.name, "uid": owner.uid}
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**labels(owner.name), **(kind_labels or {})},
        "ownerReferences": [{**ref, "controller": True, "blockOwnerDeletion": True}],
    }


def runtime_config(spec: ServiceSpec, profile: GraphProfile) -> dict[str, Any]:
    """The runtime's --config file: the same keys as its flags, in snake_case. Optional settings
    appear only when set, so that adding one leaves the config (and its hash) of older specs alone."""
    config = {
        "model": MODEL_DIR,
        "served_model_name": spec.served_model_name,
        "mem_fraction_static": profile.mem_fraction_static,
        "max_num_batched_tokens": spec.max_num_batched_tokens,
        "max_running_requests": spec.max_running_requests,
        "graph_backend": spec.graph_backend,
        "graph_buckets": list(profile.buckets),
        "host": "0.0.0.0",
        "port": HTTP_PORT,
        "admin_host": "127.0.0.1",
        "admin_port": ADMIN_PORT,
        # The live-tuned profile survives a container restart inside the pod (not a new pod).
        "state_file": f"{STATE_DIR}/profile.json",
    }
    if spec.mixed_step_tokens is not None:
        config["mixed_step_tokens"] = spec.mixed_step_tokens
    if spec.enable_prefix_caching is not None:
        config["enable_prefix_caching"] = spec.enable_prefix_caching
    return config


def spec_hash(spec: ServiceSpec) -> str:
    """Hash of the settings the spec puts in the config file; a change rolls the pods, a tuned profile does not."""
    blob = json.dumps(runtime_config(spec, spec.spec_profile()), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_map(owner: Owner, spec: ServiceSpec, profile: GraphProfile, source: str) -> Manifest:
    body = yaml.safe_dump(runtime_config(spec, profile), sort_keys=True)
    meta = _meta(owner, config_map_name(owner.name))
    meta["annotations"] = {f"{GROUP}/profile-source": source}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {CONFIG_FILE: body}}


def _gpu_tolerations(spec: ServiceSpec) -> list[dict[str, Any]]:
    gpu = {"key": spec.gpu_resource_name, "operator": "Exists", "effect": "NoSchedule"}
    tolerations = [dict(t) for t in spec.tolerations]
    return [*tolerations, gpu] if spec.gpus > 0 and gpu not in tolerations else tolerations


def _model_volume(spec: ServiceSpec) -> dict[str, Any]:
    m = spec.model
    if m.pvc_claim:
        return {"name": "model", "persistentVolumeClaim": {"claimName": m.pvc_claim, "readOnly": True}}
    if m.host_path:
        return {"name": "model", "hostPath": {"path": m.host_path, "type": "Directory"}}
    return {"name": "model", "emptyDir": {"sizeLimit": m.download_size}}


def _download_container(spec: ServiceSpec, image: str) -> dict[str, Any]:
    return {
        "name": "model-download",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["graphpilot-operator", "fetch-model"],
        "args": ["--uri", str(spec.model.uri), "--dest", MODEL_DIR],
        "env": [dict(e) for e in spec.env],  # e.g. HF_TOKEN from a Secret, for gated models
        "volumeMounts": [{"name": "model", "mountPath": MODEL_DIR}],
        "securityContext": NONROOT,
    }


def _runtime_resources(spec: ServiceSpec) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, Any] = {"memory": spec.memory}
    if spec.gpus > 0:
        requests[spec.gpu_resource_name] = limits[spec.gpu_resource_name] = str(spec.gpus)
    return {"requests": requests, "limits": limits}


def _runtime_container(spec: ServiceSpec, image: str) -> dict[str, Any]:
    model_mount: dict[str, Any] = {
        "name": "model",
        "mountPath": MODEL_DIR,
        "readOnly": spec.model.uri is None,
    }
    if spec.model.pvc_claim and spec.model.pvc_path:
        model_mount["subPath"] = spec.model.pvc_path
    ready = {"httpGet": {"path": "/ready", "port": "http"}}
    return {
        "name": "runtime",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["graphpilot-runtime"],
        "args": ["serve", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}", *spec.extra_args],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": [dict(e) for e in spec.env],
        "resources": _runtime_resources(spec),
        # Loading weights and capturing graphs can take minutes: only the startup probe waits that long.
        "startupProbe": {
            **ready,
            "periodSeconds": 10,
            "failureThreshold": math.ceil(spec.startup_timeout_seconds / 10),
        },
        "readinessProbe": {**ready, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "volumeMounts": [
            model_mount,
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": NONROOT,
    }


def _sidecar_container(owner: Owner, spec: ServiceSpec, image: str) -> dict[str, Any]:
    def field_env(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = {
        "GRAPHPILOT_SIDECAR_ADMIN_URL": f"http://127.0.0.1:{ADMIN_PORT}",
        "GRAPHPILOT_SIDECAR_HOST": "0.0.0.0",
        "GRAPHPILOT_SIDECAR_PORT": str(SIDECAR_PORT),
        "GRAPHPILOT_SIDECAR_NAME": owner.name,
        "GRAPHPILOT_SIDECAR_INTERVAL_SECONDS": str(spec.autotune_interval_seconds),
        "GRAPHPILOT_SIDECAR_MAX_BUCKETS": str(spec.autotune_max_buckets),
        "GRAPHPILOT_SIDECAR_MEM_FRACTION_MIN": str(spec.mem_fraction_min),
        "GRAPHPILOT_SIDECAR_MEM_FRACTION_MAX": str(spec.mem_fraction_max),
        "GRAPHPILOT_SIDECAR_MIN_GAIN_RATIO": str(spec.autotune_min_gain),
    }
    return {
        "name": "autotuner",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["graphpilot-sidecar"],
        "ports": [{"name": "autotuner", "containerPort": SIDECAR_PORT, "protocol": "TCP"}],
        "env": [
            field_env("GRAPHPILOT_SIDECAR_NAMESPACE", "metadata.namespace"),
            field_env("GRAPHPILOT_SIDECAR_POD_NAME", "metadata.name"),
            *({"name": k, "value": v} for k, v in env.items()),
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "autotuner"}, "periodSeconds": 10},
        "securityContext": NONROOT,
    }


def pod_template(owner: Owner, spec: ServiceSpec, image: str) -> Manifest:
    containers = [_runtime_container(spec, image)]
    if spec.autotune:
        containers.append(_sidecar_container(owner, spec, image))
    pod: dict[str, Any] = {
        "serviceAccountName": sidecar_account_name(owner.name),
        "automountServiceAccountToken": spec.autotune,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "terminationGracePeriodSeconds": 60,
        "containers": containers,
        "volumes": [
            _model_volume(spec),
            {"name": "config", "configMap": {"name": config_map_name(owner.name)}},
            {"name": "state", "emptyDir": {"sizeLimit": "16Mi"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shared_memory}},
        ],
        "tolerations": _gpu_tolerations(spec),
    }
    if spec.model.uri:
        pod["initContainers"] = [_download_container(spec, image)]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.affinity:
        pod["affinity"] = dict(spec.affinity)
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    annotations = {
        SPEC_HASH_ANNOTATION: spec_hash(spec),
        # for Prometheus setups without the Prometheus Operator: the runtime's metrics port
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
    }
    return {"metadata": {"labels": labels(owner.name), "annotations": annotations}, "spec": pod}


def deployment(owner: Owner, spec: ServiceSpec, image: str) -> Manifest:
    meta = _meta(owner, owner.name)
    meta["annotations"] = {GENERATION_ANNOTATION: str(owner.generation)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner.name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": spec.max_surge, "maxUnavailable": spec.max_unavailable},
            },
            "progressDeadlineSeconds": spec.progress_deadline_seconds,
            "revisionHistoryLimit": 3,
            "template": pod_template(owner, spec, image),
        },
    }


def service(owner: Owner, spec: ServiceSpec) -> Manifest:
    ports = [
        {"name": "http", "port": spec.service_port, "targetPort": "http", "protocol": "TCP"},
        {"name": "autotuner", "port": SIDECAR_PORT, "targetPort": "autotuner", "protocol": "TCP"},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, owner.name),
        "spec": {"type": spec.service_type, "selector": selector_labels(owner.name), "ports": ports},
    }


def service_account(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(owner, sidecar_account_name(owner.name)),
    }


def role(owner: Owner) -> Manifest:
    """The autotuner may read its own InferenceService and patch its own status, nothing else."""
    rules = [
        {"apiGroups": [GROUP], "resources": [PLURAL], "resourceNames": [owner.name], "verbs": ["get"]},
        {
            "apiGroups": [GROUP],
            "resources": [f"{PLURAL}/status"],
            "resourceNames": [owner.name],
            "verbs": ["get", "patch"],
        },
    ]
    meta = _meta(owner, sidecar_account_name(owner.name))
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": rules}


def role_binding(owner: Owner) -> Manifest:
    name = sidecar_account_name(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def disruption_budget(owner: Owner, spec: ServiceSpec) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner, owner.name),
        "spec": {
            "maxUnavailable": spec.pdb_max_unavailable,
            "selector": {"matchLabels": selector_labels(owner.name)},
        },
    }


def service_monitor(owner: Owner, spec: ServiceSpec) -> Manifest:
    # dashboards and alerts select by an `inferenceservice` target label, taken from the pod's label
    relabel = {
        "sourceLabels": ["__meta_kubernetes_pod_label_graphpilot_dev_inferenceservice"],
        "targetLabel": "inferenceservice",
    }
    endpoints = [
        {"port": port, "path": "/metrics", "interval": spec.scrape_interval, "relabelings": [relabel]}
        for port in ("http", "autotuner")
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(owner, owner.name, spec.monitor_labels),
        "spec": {"selector": {"matchLabels": labels(owner.name)}, "endpoints": endpoints},
    }


def service_url(owner: Owner, spec: ServiceSpec, cluster_domain: str = "cluster.local") -> str:
    port = "" if spec.service_port == 80 else f":{spec.service_port}"
    return f"http://{owner.name}.{owner.namespace}.svc.{cluster_domain}{port}"
