"""Architecture name -> model class."""

from __future__ import annotations

from torch import nn

from graphpilot.runtime.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, ModelError
from graphpilot.runtime.models.llama import LlamaForCausalLM
from graphpilot.runtime.models.qwen2 import Qwen2ForCausalLM
from graphpilot.runtime.models.qwen3 import Qwen3ForCausalLM

MODELS: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}
assert set(MODELS) == set(SUPPORTED_ARCHITECTURES)


def build_model(cfg: ModelConfig, attn_backend: str) -> nn.Module:
    if cfg.architecture not in MODELS:
        raise ModelError(f"unsupported architecture {cfg.architecture!r}")
    return MODELS[cfg.architecture](cfg, attn_backend)
