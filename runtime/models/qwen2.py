"""Qwen2: the Llama stack with bias on q/k/v (set from config.attention_bias)."""

from graphpilot.runtime.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    pass
