"""Engine settings: one dataclass, validated once, never written back at run time."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from graphpilot.runtime.profile import ProfileError, default_buckets, validate_buckets, validate_mem_fraction

GRAPH_BACKENDS = ("cuda", "eager", "off")
DTYPES = ("auto", "float32", "float16", "bfloat16")
LOAD_FORMATS = ("auto", "safetensors", "dummy")


class ConfigError(ValueError):
    """An invalid setting; the message names the setting and what is allowed."""


@dataclass
class EngineConfig:
    model: str
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: the checkpoint's dtype on GPU, float32 on CPU
    load_format: str = "auto"
    seed: int = 0
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    max_num_batched_tokens: int = 2048
    max_running_requests: int = 256
    # token budget of a step that carries decodes; None: measured from the captured buckets on CUDA
    # graphs (profile.mixed_step_knee), no cap elsewhere
    mixed_step_tokens: int | None = None
    mem_fraction_static: float = 0.85  # GPU only: weights + KV cache + graphs
    max_total_tokens: int | None = None  # KV cache size in tokens; required sizing on CPU
    block_size: int = 16
    enable_prefix_caching: bool = True  # reuse the K/V of cached prompt prefixes (`kv_cache`)
    graph_backend: str = "auto"  # auto: cuda on GPU, eager on CPU
    graph_buckets: tuple[int, ...] | None = None  # default ladder up to max_num_batched_tokens
    graph_max_padding_ratio: float = 0.5
    attention_backend: str = "auto"  # auto: triton on CUDA, sdpa elsewhere; reference: plain per request
    async_scheduling: bool | None = None  # prepare step N+1 while the GPU runs step N; None: on CUDA
    gemm_backend: str = "auto"  # auto: the skinny Triton kernel where it measures faster (CUDA); cublas
    progress: bool = True
    buckets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self._check_choice("dtype", DTYPES)
        self._check_choice("load_format", LOAD_FORMATS)
        self._check_choice("graph_backend", (*GRAPH_BACKENDS, "auto"))
        self._check_choice("attention_backend", ("auto", "reference", "sdpa", "triton"))
        self._check_choice("gemm_backend", ("auto", "cublas"))
        if not os.path.isdir(self.model):
            raise ConfigError(f"model directory {self.model!r} does not exist")
        for name in ("max_num_batched_tokens", "max_running_requests", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mixed_step_tokens is not None and self.mixed_step_tokens < 1:
            raise ConfigError(f"mixed_step_tokens must be >= 1, got {self.mixed_step_tokens}")
        if self.max_total_tokens is not None and self.max_total_tokens < self.block_size:
            raise ConfigError(f"max_total_tokens must be >= block_size ({self.block_size})")
        if not 0.0 <= self.graph_max_padding_ratio <= 1.0:
            raise ConfigError("graph_max_padding_ratio must be within 0..1")
        try:
            validate_mem_fraction(self.mem_fraction_static)
            buckets = self.graph_buckets or default_buckets(self.max_num_batched_tokens)
            self.buckets = validate_buckets(list(buckets))
        except ProfileError as e:
            raise ConfigError(str(e)) from e

    def _check_choice(self, name: str, allowed: tuple[str, ...]) -> None:
        if getattr(self, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
