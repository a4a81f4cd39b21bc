"""The InferenceService spec as typed, defaulted values (the CRD schema validates; this only reads)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphpilot.runtime.profile import GraphProfile, default_buckets

GROUP = "graphpilot.dev"
VERSION = "v1alpha1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
API_VERSION = f"{GROUP}/{VERSION}"

MODEL_DIR = "/mnt/models"
CONFIG_DIR = "/etc/graphpilot"
CONFIG_FILE = "runtime.yaml"
STATE_DIR = "/var/lib/graphpilot"
HTTP_PORT = 8000
ADMIN_PORT = 8001
SIDECAR_PORT = 8080


def _get(d: Mapping[str, Any] | None, key: str, default: Any) -> Any:
    value = (d or {}).get(key)
    return default if value is None else value


@dataclass(frozen=True)
class ModelSource:
    uri: str | None = None
    pvc_claim: str | None = None
    pvc_path: str = ""
    host_path: str | None = None
    download_size: str = "64Gi"

    @classmethod
    def from_spec(cls, m: Mapping[str, Any]) -> ModelSource:
        pvc, host = m.get("pvc") or {}, m.get("hostPath") or {}
        return cls(
            uri=m.get("uri"),
            pvc_claim=pvc.get("claimName"),
            pvc_path=_get(pvc, "path", ""),
            host_path=host.get("path"),
            download_size=str(_get(m, "downloadSize", "64Gi")),
        )


@dataclass(frozen=True)
class ServiceSpec:
    """Every field the operator reads, with the CRD's defaults."""

    model: ModelSource
    served_model_name: str
    replicas: int = 1
    image: str = ""
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    gpus: int = 1
    gpu_resource_name: str = "nvidia.com/gpu"
    cpu: str = "4"
    memory: str = "32Gi"
    shared_memory: str = "2Gi"
    mem_fraction_static: float = 0.85
    max_num_batched_tokens: int = 2048
    max_running_requests: int = 256
    mixed_step_tokens: int | None = None  # None: the runtime measures it
    enable_prefix_caching: bool | None = None  # None: the runtime's default (on)
    graph_backend: str = "cuda"
    graph_buckets: tuple[int, ...] = ()
    extra_args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    autotune: bool = True
    autotune_interval_seconds: int = 60
    autotune_max_buckets: int = 32
    mem_fraction_min: float = 0.5
    mem_fraction_max: float = 0.95
    autotune_min_gain: float = 0.02
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = field(default_factory=dict)
    max_surge: int = 0
    max_unavailable: int = 1
    startup_timeout_seconds: int = 1800
    progress_deadline_seconds: int = 3600
    pdb_enabled: bool = True
    pdb_max_unavailable: int = 1
    service_type: str = "ClusterIP"
    service_port: int = 80
    service_monitor: bool = True
    scrape_interval: str = "30s"
    monitor_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> ServiceSpec:
        res, rt, at = spec.get("resources") or {}, spec.get("runtime") or {}, spec.get("autotune") or {}
        bounds, roll = at.get("memFractionBounds") or {}, spec.get("rollout") or {}
        pdb, svc, mon = (
            spec.get("disruptionBudget") or {},
            spec.get("service") or {},
            spec.get("monitoring") or {},
        )
        return cls(
            model=ModelSource.from_spec(spec.get("model") or {}),
            served_model_name=_get(spec, "servedModelName", name),
            replicas=int(_get(spec, "replicas", 1)),
            image=_get(spec, "image", ""),
            image_pull_policy=_get(spec, "imagePullPolicy", "IfNotPresent"),
            image_pull_secrets=tuple(s["name"] for s in spec.get("imagePullSecrets") or ()),
            gpus=int(_get(res, "gpus", 1)),
            gpu_resource_name=_get(res, "gpuResourceName", "nvidia.com/gpu"),
            cpu=str(_get(res, "cpu", "4")),
            memory=str(_get(res, "memory", "32Gi")),
            shared_memory=str(_get(res, "sharedMemory", "2Gi")),
            mem_fraction_static=float(_get(rt, "memFractionStatic", 0.85)),
            max_num_batched_tokens=int(_get(rt, "maxNumBatchedTokens", 2048)),
            max_running_requests=int(_get(rt, "maxRunningRequests", 256)),
            mixed_step_tokens=None if rt.get("mixedStepTokens") is None else int(rt["mixedStepTokens"]),
            enable_prefix_caching=None
            if rt.get("enablePrefixCaching") is None
            else bool(rt["enablePrefixCaching"]),
            graph_backend=_get(rt, "graphBackend", "cuda"),
            graph_buckets=tuple(int(b) for b in rt.get("graphBuckets") or ()),
            extra_args=tuple(rt.get("extraArgs") or ()),
            env=tuple(dict(e) for e in rt.get("env") or ()),
            autotune=bool(_get(at, "enabled", True)),
            autotune_interval_seconds=int(_get(at, "intervalSeconds", 60)),
            autotune_max_buckets=int(_get(at, "maxBuckets", 32)),
            mem_fraction_min=float(_get(bounds, "min", 0.5)),
            mem_fraction_max=float(_get(bounds, "max", 0.95)),
            autotune_min_gain=float(_get(at, "minGain", 0.02)),
            node_selector=dict(spec.get("nodeSelector") or {}),
            tolerations=tuple(dict(t) for t in spec.get("tolerations") or ()),
            affinity=dict(spec.get("affinity") or {}),
            max_surge=int(_get(roll, "maxSurge", 0)),
            max_unavailable=int(_get(roll, "maxUnavailable", 1)),
            startup_timeout_seconds=int(_get(roll, "startupTimeoutSeconds", 1800)),
            progress_deadline_seconds=int(_get(roll, "progressDeadlineSeconds", 3600)),
            pdb_enabled=bool(_get(pdb, "enabled", True)),
            pdb_max_unavailable=int(_get(pdb, "maxUnavailable", 1)),
            service_type=_get(svc, "type", "ClusterIP"),
            service_port=int(_get(svc, "port", 80)),
            service_monitor=bool(_get(mon, "serviceMonitor", True)),
            scrape_interval=_get(mon, "interval", "30s"),
            monitor_labels=dict(mon.get("labels") or {}),
        )

    def spec_profile(self) -> GraphProfile:
        """The profile the spec asks for (default ladder when graphBuckets is empty)."""
        buckets = self.graph_buckets or default_buckets(self.max_num_batched_tokens)
        return GraphProfile(buckets=buckets, mem_fraction_static=self.mem_fraction_static)
