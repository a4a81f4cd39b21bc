"""Dense decoder (Llama layout): the layer stack is a plain ModuleList; attention is the only break.

Qwen2 (qkv bias) and Qwen3 (per-head q/k RMSNorm, no bias) are the same stack with flags.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graphpilot.runtime.graphs.breaks import break_input
from graphpilot.runtime.kernels import HAS_TRITON, use_triton
from graphpilot.runtime.layers.attention import Attention
from graphpilot.runtime.layers.linear import GemmTable, linear, silu_mul_linear
from graphpilot.runtime.layers.norm import RMSNorm
from graphpilot.runtime.layers.rotary import RotaryEmbedding
from graphpilot.runtime.models.config import ModelConfig

if HAS_TRITON:
    from graphpilot.runtime.kernels.fused import qk_norm_rope_, silu_and_mul


def _linear(n_in: int, n_out: int, bias: bool = False) -> nn.Linear:
    # No init: weights come from a checkpoint or from the dummy loader.
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = n_in, n_out
    layer.weight = nn.Parameter(torch.empty(n_out, n_in))
    layer.bias = nn.Parameter(torch.empty(n_out)) if bias else None
    return layer


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, attn_backend: str, gemm: GemmTable) -> None:
        super().__init__()
        self.gemm = gemm
        h, d = cfg.num_attention_heads, cfg.head_dim
        self.q_size, self.kv_size = h * d, cfg.num_key_value_heads * d
        self.num_heads, self.num_kv_heads, self.head_dim = h, cfg.num_key_value_heads, d
        self.qkv_proj = _linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, cfg.attention_bias)
        o_bias = cfg.attention_bias and cfg.architecture != "Qwen2ForCausalLM"
        self.o_proj = _linear(self.q_size, cfg.hidden_size, o_bias)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.rotary = rotary
        self.attn = Attention(h, cfg.num_key_value_heads, d, attn_backend)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # x: [n, hidden]
        n = x.shape[0]
        # q is the break's input: computing qkv in a break input buffer spares a copy per layer
        qkv = break_input("qkv", n, (self.q_size + 2 * self.kv_size,), x.dtype, x.device)
        linear(x, self.qkv_proj.weight, self.qkv_proj.bias, out=qkv, table=self.gemm)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.attn.backend == "triton":  # one kernel: q/k norm and rotary in place, K/V to the cache
            q_w = self.q_norm.weight if self.q_norm is not None else None
            k_w = self.k_norm.weight if self.k_norm is not None else None
            eps = self.q_norm.eps if self.q_norm is not None else 0.0
            qk_norm_rope_(qkv, positions, self.rotary.cos_sin, self.num_heads, self.num_kv_heads,
                          self.head_dim, q_w, k_w, eps, *self.attn.cache_target(n))  # fmt: skip
            return self._o_proj(self.attn(q))
        q = q.reshape(n, self.num_heads, self.head_dim)
        k = k.reshape(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        q, k = q.reshape(n, self.q_size), k.reshape(n, self.kv_size)
        self.attn.store_kv(k, v)
        return self._o_proj(self.attn(q))

    def _o_proj(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.o_proj.weight, self.o_proj.bias, table=self.gemm)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, gemm: GemmTable) -> None:
        super().__init__()
        self.gemm = gemm
        self.gate_up_proj = _linear(cfg.hidden_size, 2 * cfg.intermediate_size)
        self.down_proj = _linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = silu_mul_linear(x, self.gate_up_proj.weight, self.gemm)  # one kernel where measured faster
        if act is None:
            gate_up = linear(x, self.gate_up_proj.weight, table=self.gemm)
            if use_triton(gate_up):
                act = silu_and_mul(gate_up)
            else:
                gate, up = gate_up.chunk(2, dim=-1)
                act = F.silu(gate) * up
        return linear(act, self.down_proj.weight, table=self.gemm)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, attn_backend: str, gemm: GemmTable) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg, rotary, attn_backend, gemm)
        self.mlp = MLP(cfg, gemm)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaForCausalLM(nn.Module):
    """The breakable-model interface: `forward_stack` is what graphs capture, `compute_logits` never is."""

    def __init__(self, cfg: ModelConfig, attn_backend: str = "sdpa") -> None:
        super().__init__()
        self.config = cfg
        self.gemm = GemmTable()  # empty: cuBLAS everywhere until `gemm.tune` measures the skinny kernel
        rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, rotary, attn_backend, self.gemm) for _ in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else _linear(cfg.hidden_size, cfg.vocab_size)

    def linear_weights(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(weight, bias) of every matrix multiply of a step, the LM head included."""
        mods = [m for m in self.modules() if isinstance(m, nn.Linear)]
        out = [(m.weight, m.bias) for m in mods]
        if self.lm_head is None:
            out.append((self.embed_tokens.weight, None))
        return out

    def gated_weights(self) -> list[torch.Tensor]:
        """The MLPs' [gate | up] weights, whose multiply can take the activation in its epilogue."""
        return [layer.mlp.gate_up_proj.weight for layer in self.layers]

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn.attn for layer in self.layers]

    def forward_stack(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # input_ids, positions: [n] -> final hidden states [n, hidden]
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(positions, x, residual)
        out, _ = self.norm(x, residual)
        return out

    def compute_logits(self, hidden: torch.Tensor, fp32: bool = True) -> torch.Tensor:
        # hidden: [b, hidden] -> logits [b, vocab], in fp32 or (fp32=False, enough for an argmax)
        # in the model's dtype, without the cast's pass over [b, vocab]
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = linear(hidden, weight, table=self.gemm)
        return logits.float() if fp32 else logits
