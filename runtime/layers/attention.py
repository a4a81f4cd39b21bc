"""Attention over the paged KV cache: the op that depends on the live batch, hence a graph break."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graphpilot.runtime.engine.context import AttentionMetadata, get_forward_context
from graphpilot.runtime.graphs.breaks import graph_break
from graphpilot.runtime.kernels import HAS_TRITON

if HAS_TRITON:
    from graphpilot.runtime.kernels.paged_attention import paged_attention, replay_bound


class Attention(nn.Module):
    """Paged attention. The K/V store runs inside graph segments (slots depend on num_tokens only:
    padded rows write the scratch block): `store_kv` here, or fused into the q/k-norm + rotary kernel
    on the triton backend (`cache_target`); `forward` is the break.

    Backends: `triton` (one paged kernel per call, GPU), `sdpa` (torch ops: batched decode matmuls
    and per-request SDPA prefill), `reference` (plain per-request math).
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, backend: str = "sdpa") -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5
        self.backend = backend
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def bind_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        # k_cache, v_cache: [num_slots, num_kv_heads, head_dim]
        self.k_cache, self.v_cache = k_cache, v_cache

    def cache_target(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(slot_mapping, k_cache, v_cache) for a kernel that stores this layer's K/V itself."""
        return get_forward_context().attn.slot_mapping[:n], self.k_cache, self.v_cache

    def store_kv(self, k: torch.Tensor, v: torch.Tensor) -> None:
        # k, v: [n, kv_heads * head_dim]
        n = k.shape[0]
        slots = get_forward_context().attn.slot_mapping[:n]
        self.k_cache.index_copy_(0, slots, k.reshape(n, self.num_kv_heads, self.head_dim))
        self.v_cache.index_copy_(0, slots, v.reshape(n, self.num_kv_heads, self.head_dim))

    @graph_break
    def forward(self, q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        # q: [n, heads * head_dim] -> [n, heads * head_dim]; this layer's K/V are already stored
        meta = get_forward_context().attn
        # a caller-owned output (the graph runner's boundary buffer) is the same every layer: its
        # launches are bound once per step (the step's `plan`); a fresh one is never bound
        plan = meta.plan if out is not None else None
        # a launch bound earlier in the step runs before any view is made
        if (
            plan is not None
            and self.backend == "triton"
            and q.is_cuda
            and replay_bound(plan, q, out, self.k_cache, self.v_cache)
        ):
            return out
        n = q.shape[0]
        q = q.view(n, self.num_heads, self.head_dim)
        if out is None:
            out = torch.empty(n, self.num_heads * self.head_dim, dtype=q.dtype, device=q.device)
        out3 = out.view(n, self.num_heads, self.head_dim)
        if self.backend == "triton":
            assert meta.block_req is not None, "the triton backend needs paged metadata"
            paged_attention(
                q, self.k_cache, self.v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
                meta.block_req, meta.block_q0, meta.block_q, meta.page_size, self.scale, out=out3,
                max_seq_len=meta.max_seq_len, plan=plan,
            )  # fmt: skip
        elif self.backend == "reference":
            self._reference(q, meta, out3)
        else:
            self._decode_batch(q, meta, out3)
            self._prefill_each(q, meta, out3)
        return out

    def _decode_batch(self, q: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor) -> None:
        # Grouped-query decode as plain batched matmuls: a handful of kernels per layer whatever the
        # batch, where SDPA's dispatch would pick a per-shape plan (cuDNN) or repeat K/V (math).
        assert meta.decode_rows is not None and meta.decode_kv_slots is not None
        if meta.decode_rows.numel() == 0:
            return
        b, group = meta.decode_rows.numel(), self.num_heads // self.num_kv_heads
        qd = (q[meta.decode_rows] * self.scale).view(b, self.num_kv_heads, group, self.head_dim)
        k = self.k_cache[meta.decode_kv_slots].permute(0, 2, 3, 1)  # [b, kv_heads, d, max_kv]
        scores = torch.matmul(qd, k).float()  # [b, kv_heads, group, max_kv]
        scores.masked_fill_(~meta.decode_mask, float("-inf"))
        probs = scores.softmax(dim=-1).to(q.dtype)
        v = self.v_cache[meta.decode_kv_slots].transpose(1, 2)  # [b, kv_heads, max_kv, d]
        out[meta.decode_rows] = torch.matmul(probs, v).view(b, self.num_heads, self.head_dim)

    def _prefill_each(self, q: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor) -> None:
        for i, mask in zip(meta.prefill_reqs, meta.prefill_masks, strict=True):
            s, ql = meta.query_start[i], meta.query_lens[i]
            qi = q[s : s + ql].transpose(0, 1)  # [heads, q, d]
            ki = self.k_cache[meta.kv_slots[i]].transpose(0, 1)  # [kv_heads, context, d]
            vi = self.v_cache[meta.kv_slots[i]].transpose(0, 1)
            o = F.scaled_dot_product_attention(
                qi, ki, vi, attn_mask=mask, is_causal=mask is None, scale=self.scale, enable_gqa=True
            )
            out[s : s + ql] = o.transpose(0, 1)

    def _reference(self, q: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor) -> None:
        group = self.num_heads // self.num_kv_heads
        for i, (s, ql, c) in enumerate(
            zip(meta.query_start, meta.query_lens, meta.context_lens, strict=True)
        ):
            k = self.k_cache[meta.kv_slots[i]].repeat_interleave(group, dim=1).float()  # [c, heads, d]
            v = self.v_cache[meta.kv_slots[i]].repeat_interleave(group, dim=1).float()
            scores = torch.einsum("qhd,khd->hqk", q[s : s + ql].float(), k) * self.scale
            allowed = (
                torch.arange(c, device=q.device)[None, :] <= torch.arange(c - ql, c, device=q.device)[:, None]
            )
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[s : s + ql] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(out.dtype)
