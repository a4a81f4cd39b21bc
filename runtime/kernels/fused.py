"""Fused elementwise chains of a decoder layer, one kernel each.

Each kernel rounds where the torch reference (and transformers) rounds, so outputs match the torch
path to within one bf16 ulp: the residual sum and the normalised activations are rounded to the
activation dtype before the weight multiply, statistics stay in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from graphpilot.runtime.kernels.launch import FastKernel, dependent_launch


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    stride_x, stride_res, stride_out, stride_res_out, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    if PDL:  # `launch.dependent_launch`
        gdc_wait()
        gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(res_out_ptr + row * stride_res_out + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = (xf * inv).to(x.dtype).to(tl.float32) * w
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


_rms_norm = FastKernel(_rms_norm_kernel)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of `x` (of `x + residual` when given); returns (normed, new residual or None)."""
    # x, residual: [n, hidden]
    n, hidden = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else None
    if n == 0:
        return out, res_out
    block = triton.next_power_of_2(hidden)
    pdl = dependent_launch(x.device)
    res = residual if residual is not None else x
    ro = res_out if res_out is not None else out
    _rms_norm((n,),
        x, res, weight, out, ro, x.stride(0), res.stride(0), out.stride(0), ro.stride(0), hidden, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, PDL=pdl,
        num_warps=min(16, max(4, block // 256)), launch_pdl=pdl,
    )  # fmt: skip
    return out, res_out


@triton.jit
def _qk_norm_rope_kernel(
    qkv_ptr, pos_ptr, cos_sin_ptr, q_w_ptr, k_w_ptr, slot_ptr, k_cache_ptr, v_cache_ptr,
    stride_tok, stride_slot, num_q_heads, num_kv_heads, eps,
    HEAD_DIM: tl.constexpr, QK_NORM: tl.constexpr, STORE_KV: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    if PDL:  # `launch.dependent_launch`
        gdc_wait()
        gdc_launch_dependents()
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    half: tl.constexpr = HEAD_DIM // 2
    offs = tl.arange(0, half)
    base = qkv_ptr + tok * stride_tok + head * HEAD_DIM
    x1 = tl.load(base + offs)
    x2 = tl.load(base + half + offs)
    dtype = x1.dtype
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    if QK_NORM:
        inv = tl.rsqrt((tl.sum(a * a, axis=0) + tl.sum(b * b, axis=0)) / HEAD_DIM + eps)
        if head < num_q_heads:
            w1 = tl.load(q_w_ptr + offs).to(tl.float32)
            w2 = tl.load(q_w_ptr + half + offs).to(tl.float32)
        else:
            w1 = tl.load(k_w_ptr + offs).to(tl.float32)
            w2 = tl.load(k_w_ptr + half + offs).to(tl.float32)
        a = ((a * inv).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
        b = ((b * inv).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    pos = tl.load(pos_ptr + tok)
    cos = tl.load(cos_sin_ptr + pos * HEAD_DIM + offs).to(dtype).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * HEAD_DIM + half + offs).to(dtype).to(tl.float32)
    y1 = (a * cos - b * sin).to(dtype)
    y2 = (b * cos + a * sin).to(dtype)
    tl.store(base + offs, y1)
    tl.store(base + half + offs, y2)
    if STORE_KV:  # noqa: SIM102 (a constexpr branch, compiled out without the store)
        if head >= num_q_heads:  # a K head: it and its V head go to the token's cache slot
            slot = tl.load(slot_ptr + tok).to(tl.int64)
            dst = slot * stride_slot + (head - num_q_heads) * HEAD_DIM
            tl.store(k_cache_ptr + dst + offs, y1)
            tl.store(k_cache_ptr + dst + half + offs, y2)
            v = base + num_kv_heads * HEAD_DIM
            tl.store(v_cache_ptr + dst + offs, tl.load(v + offs))
            tl.store(v_cache_ptr + dst + half + offs, tl.load(v + half + offs))


_qk_norm_rope = FastKernel(_qk_norm_rope_kernel)


def qk_norm_rope_(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    eps: float,
    slot_mapping: torch.Tensor | None = None,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
) -> None:
    """In place on the q and k heads of `qkv`: optional per-head RMSNorm, then rotary embedding;
    with `slot_mapping` and the caches, each token's (rotated) K and its V also go to its cache slot."""
    # qkv: [n, (q_heads + 2 * kv_heads) * head_dim]; positions, slot_mapping: [n];
    # cos_sin: [max_pos, head_dim] fp32; caches: [num_slots, kv_heads, head_dim]
    n = qkv.shape[0]
    if n == 0:
        return
    assert qkv.stride(1) == 1, "qkv rows must be contiguous"
    qk_norm = q_weight is not None and k_weight is not None
    store = slot_mapping is not None and k_cache is not None and v_cache is not None
    if store:
        assert (
            k_cache.is_contiguous()
            and v_cache.is_contiguous()
            and k_cache.shape[1:] == (num_kv_heads, head_dim)
        )
    pdl = dependent_launch(qkv.device)
    _qk_norm_rope((n, num_q_heads + num_kv_heads),
        qkv, positions, cos_sin, q_weight if qk_norm else cos_sin, k_weight if qk_norm else cos_sin,
        slot_mapping if store else positions, k_cache if store else qkv, v_cache if store else qkv,
        qkv.stride(0), k_cache.stride(0) if store else 0, num_q_heads, num_kv_heads, eps,
        HEAD_DIM=head_dim, QK_NORM=qk_norm, STORE_KV=store, PDL=pdl, num_warps=1, launch_pdl=pdl,
    )  # fmt: skip


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, width, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # `launch.dependent_launch`
        gdc_wait()
        gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + width + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (act * up.to(tl.float32)).to(gate.dtype), mask=mask)


_silu_and_mul = FastKernel(_silu_and_mul_kernel)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for x = [gate | up]: [n, 2 * width] -> [n, width]."""
    n, width = x.shape[0], x.shape[1] // 2
    out = torch.empty(n, width, dtype=x.dtype, device=x.device)
    if n == 0:
        return out
    block = 1024
    pdl = dependent_launch(x.device)
    _silu_and_mul((n, triton.cdiv(width, block)),
        x, out, x.stride(0), out.stride(0), width, BLOCK=block, PDL=pdl, num_warps=4, launch_pdl=pdl,
    )  # fmt: skip
    return out
