"""Sidecar settings: environment variables GRAPHPILOT_SIDECAR_<FIELD>, or CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1 << 30


class SidecarSettings(BaseSettings):
    """Everything the autotuner reads at start; validated once, never written at run time."""

    model_config = SettingsConfigDict(env_prefix="GRAPHPILOT_SIDECAR_", extra="ignore")

    # where the runtime's admin API is, and how to authenticate
    admin_url: str = Field(
        default="http://127.0.0.1:8001", description="Base URL of the runtime's admin API."
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for the admin API, if it has one."
    )
    request_timeout_seconds: float = Field(default=5.0, gt=0, description="Timeout of one admin API read.")
    apply_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Timeout of PUT /admin/profile, which returns after the capture."
    )

    # the sidecar's own HTTP server
    host: str = Field(
        default="127.0.0.1", description="Address the sidecar's /health, /metrics, /status listen on."
    )
    port: int = Field(default=8002, ge=1, le=65535, description="Port of the sidecar's HTTP server.")
    log_level: str = Field(default="warning", description="Python log level (quiet by default).")

    # the tuning loop
    interval_seconds: float = Field(
        default=10.0, gt=0, description="Seconds between two reads of /admin/stats."
    )
    decay: float = Field(
        default=0.7, gt=0, le=1, description="Weight kept by older intervals at each new one."
    )
    min_weight: float = Field(
        default=0.05, ge=0, description="Sizes below this decayed forward count are forgotten."
    )
    max_buckets: int = Field(default=32, ge=1, le=256, description="At most this many buckets (K).")
    graph_memory_budget_bytes: int = Field(
        default=4 * GiB, ge=0, description="Modelled graph memory the buckets may use; 0 means unlimited."
    )
    coverage_quantile: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="The largest bucket covers this quantile of num_tokens (1: the max).",
    )
    coverage_headroom: float = Field(
        default=0.25, ge=0, description="The largest bucket sits this share above the coverage target."
    )
    insurance_share: float = Field(
        default=0.002,
        ge=0,
        le=0.1,
        description="Share of the window's forwards added at each power of two up to the largest bucket, "
        "so a set with room keeps a bucket every doubling for sizes that come back (0: off).",
    )
    padding_weight: float = Field(
        default=0.5,
        ge=0,
        description="A padded token costs this share of the average forward time per token (0: only measured time).",
    )
    max_padding_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="The runtime's padding limit, if its profile does not report one.",
    )
    eager_overhead_ratio: float = Field(
        default=4.0, ge=0, description="Prior eager overhead per forward, in smallest-bucket replay times."
    )

    # memory fraction
    mem_fraction_min: float = Field(
        default=0.5, ge=0.05, le=0.98, description="Lowest mem_fraction_static to set."
    )
    mem_fraction_max: float = Field(
        default=0.92, ge=0.05, le=0.98, description="Highest mem_fraction_static to set."
    )
    mem_fraction_step: float = Field(
        default=0.02, gt=0, le=0.2, description="Largest change of one decision."
    )

    # safety
    min_gain_ratio: float = Field(
        default=0.03, ge=0, description="Apply only when modelled cost falls by this much."
    )
    max_payback_seconds: float = Field(
        default=300.0, gt=0, description="Capture time of new buckets must be won back within this time."
    )
    cooldown_seconds: float = Field(default=60.0, ge=0, description="Seconds between two applies.")
    eval_intervals: int = Field(
        default=2, ge=1, description="Intervals an applied bucket set is measured before keeping it."
    )
    eval_min_forwards: int = Field(default=50, ge=1, description="Forwards needed before judging an apply.")
    regression_tolerance: float = Field(
        default=0.10, ge=0, description="Roll back when forward time per window is worse than this share."
    )
    max_traffic_shift: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="An apply is judged only if traffic before and after differs less than this (total variation).",
    )
    hold_seconds: float = Field(
        default=1800.0, ge=0, description="How long a rolled-back bucket set is not proposed."
    )
    backoff_max_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait between retries of an unreachable runtime."
    )

    # persistence
    state_file: Path | None = Field(
        default=None, description="Local JSON file of the tuned profile (outside a cluster)."
    )
    namespace: str | None = Field(
        default=None, description="Namespace of this pod's InferenceService (in a cluster)."
    )
    name: str | None = Field(default=None, description="Name of this pod's InferenceService (in a cluster).")
    pod_name: str | None = Field(
        default=None, description="This pod's name, recorded with the tuned profile."
    )
    kube_api_url: str | None = Field(
        default=None, description="API server URL; default from KUBERNETES_SERVICE_HOST."
    )
    service_account_dir: Path = Field(
        default=Path("/var/run/secrets/kubernetes.io/serviceaccount"), description="Token and CA of the pod."
    )

    dry_run: bool = Field(default=False, description="Propose and report, never apply.")

    @model_validator(mode="after")
    def _check_bounds(self) -> SidecarSettings:
        if self.mem_fraction_min > self.mem_fraction_max:
            raise ValueError(
                f"mem_fraction_min {self.mem_fraction_min} must not exceed mem_fraction_max {self.mem_fraction_max}"
            )
        if (self.namespace is None) != (self.name is None):
            raise ValueError("set both namespace and name of the InferenceService, or neither")
        return self

    @property
    def memory_budget(self) -> float:
        return float(self.graph_memory_budget_bytes) if self.graph_memory_budget_bytes else float("inf")
