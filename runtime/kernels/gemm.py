"""Skinny GEMM for decode-sized batches: y = x @ w.T (+ bias) for x of a few rows.

A decode step of a dense model is a few large weight matrices read once for a handful of rows, so
the time is the weight read. cuBLAS picks tiles for compute and, on small matrices, leaves most SMs
idle or splits K with a second reduction kernel. Here each program owns BLOCK_N output columns for
all rows and streams its [BLOCK_N, K] slice of the weight once, with enough programs to cover the
SMs; the row tile is padded to 16 (or 32) so that the multiply-accumulate runs on tensor cores, in fp32.
`skinny_mm` is used only where `GemmTable.tune` measured it faster on this GPU for this shape.

With `gated`, the weight is an MLP's [gate | up] and the output silu(x @ gate.T) * (x @ up.T): each
program streams the gate rows and the up rows of its output columns and applies the activation to
its tile, so the [m, 2n] product and the activation kernel that would read it back are not needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from graphpilot.runtime.kernels.launch import FastKernel, dependent_launch, num_sms

MAX_ROWS = 32  # rows in one tile (16 or 32); beyond this cuBLAS is used


@triton.jit
def _skinny_mm_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, m, n, k, stride_x, stride_w, stride_out,
    HAS_BIAS: tl.constexpr, GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    if PDL:  # `launch.dependent_launch`: x is the previous kernel's output
        gdc_wait()
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < m
    col_ok = cols < n
    x_ptrs = x_ptr + rows[:, None].to(tl.int64) * stride_x + ks[None, :]
    w_ptrs = w_ptr + cols[:, None].to(tl.int64) * stride_w + ks[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # GATED: the up half's columns
    for k0 in range(0, k, BLOCK_K):
        k_ok = (k0 + ks) < k
        x = tl.load(x_ptrs + k0, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs + k0, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
        if GATED:  # the up row of each gate row is n rows further down the weight
            w_up = tl.load(w_ptrs + n * stride_w + k0, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            up = tl.dot(x, tl.trans(w_up), up)
    if PDL:  # the next kernel may launch once every program is here (earlier, it competes for SMs)
        gdc_launch_dependents()
    if GATED:  # rounded as the unfused pair rounds: products stored, silu stored, then the multiply
        dtype = out_ptr.dtype.element_ty
        gate = acc.to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        acc = act * up.to(dtype).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_out + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_skinny_mm = FastKernel(_skinny_mm_kernel)


def skinny_mm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    block_n: int | None = None,
    block_k: int = 512,
    num_stages: int = 3,
    gated: bool = False,
) -> torch.Tensor:
    """x @ weight.T (+ bias): x [m, k] with m <= MAX_ROWS, weight [n, k] -> [m, n]. With `gated`,
    weight is [gate | up] ([2 * n, k]) and the result silu(x @ gate.T) * (x @ up.T) ([m, n]); then
    `block_n` counts output columns, so a program reads 2 * block_n weight rows. Without `block_n`
    the tiles come from `skinny_config`."""
    m, k = x.shape
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    assert m <= MAX_ROWS, f"skinny_mm takes at most {MAX_ROWS} rows, got {m}"
    assert x.stride(1) == 1 and weight.stride(1) == 1 and weight.shape[1] == k
    assert not gated or (bias is None and weight.shape[0] == 2 * n), "gated: [gate | up], no bias"
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    if block_n is None:
        block_n, block_k, num_stages = skinny_config(weight.shape[0], num_sms(x.device))
        block_n = max(16, block_n // 2) if gated else block_n
    pdl = dependent_launch(x.device)
    _skinny_mm((triton.cdiv(n, block_n),),
        x, weight, bias if bias is not None else weight, out, m, n, k,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, GATED=gated, BLOCK_M=16 if m <= 16 else 32, BLOCK_N=block_n, BLOCK_K=block_k,
        PDL=pdl, num_warps=4, num_stages=num_stages, launch_pdl=pdl,
    )  # fmt: skip
    return out


def skinny_config(n: int, num_sms: int) -> tuple[int, int, int]:
    """(block_n, block_k, num_stages) for an [n, k] weight, from a sweep on an H200
    (`bench/bench_gemm.py --sweep`): about one program per SM for narrow outputs, which then stream
    long K tiles; wide outputs (gate_up, lm_head) get more, shorter programs."""
    block_n = 16
    for block in (128, 64, 32):
        if triton.cdiv(n, block) >= num_sms * 0.7:
            block_n = block
            break
    if triton.cdiv(n, block_n) >= 2 * num_sms:
        return block_n, 128, 3
    if block_n <= 32:
        return block_n, 512, 4 if block_n == 16 else 3
    return block_n, 256, 3


def skinny_candidates(n: int, num_sms: int) -> list[tuple[int, int, int]]:
    """Tile configurations `linear.GemmTable.tune` times for an [n, k] weight on this GPU: the rule's,
    its BLOCK_N with other K tiles and depths, and half its BLOCK_N (the sweep's best per shape,
    `bench/results/gemm-sweep.json`, was one of these; which one depends on the shape and the rows)."""
    rule = skinny_config(n, num_sms)
    out = [rule]
    narrower = (max(16, rule[0] // 2), rule[1], rule[2])
    for cfg in ((rule[0], 512, 3), (rule[0], 512, 4), (rule[0], 256, 4), narrower):
        if cfg not in out:
            out.append(cfg)
    return out
