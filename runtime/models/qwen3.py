"""Qwen3: the Llama stack with per-head q/k RMSNorm before rotary (config.qk_norm)."""

from graphpilot.runtime.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    pass
