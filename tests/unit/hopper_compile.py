"""Compile every Triton kernel of the GPU path for sm_90 (H100, H200) on a machine without a GPU.

The layers' launch wrappers run on CPU tensors with the launch itself recorded instead of run, so
each kernel is compiled with the arguments and constexprs the model launches it with (bf16,
head_dim 128, every attention path, the sampler's logits), and with programmatic dependent launch
on, as on Hopper.
Prints the names of the kernels compiled, as JSON, on its last line. Run by
`test_kernels.test_every_kernel_compiles_for_hopper`, without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from graphpilot.runtime.engine.context import build_attention_metadata
from graphpilot.runtime.kernels.fused import qk_norm_rope_, rms_norm, silu_and_mul
from graphpilot.runtime.kernels.gemm import skinny_mm
from graphpilot.runtime.kernels.launch import FastKernel
from graphpilot.runtime.kernels.paged_attention import paged_attention
from graphpilot.runtime.kernels.sampling import sample_rows
from graphpilot.runtime.layers.rotary import RotaryEmbedding

HOPPER = GPUTarget("cuda", 90, 32)
POINTER = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64", torch.int32: "*i32",
           torch.int64: "*i64"}  # fmt: skip


def record_launches() -> list[tuple[FastKernel, tuple[Any, ...], dict[str, Any]]]:
    """The launches a decode, mixed and prefill step's layers make, recorded, not run."""
    launches: list[tuple[FastKernel, tuple[Any, ...], dict[str, Any]]] = []

    def record(self: FastKernel, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
        launches.append((self, args, meta))

    FastKernel.__call__ = record  # type: ignore[method-assign]
    bf16 = torch.bfloat16
    x, res, w = (
        torch.randn(3, 1024, dtype=bf16),
        torch.randn(3, 1024, dtype=bf16),
        torch.ones(1024, dtype=bf16),
    )
    rms_norm(x, w, 1e-6)
    rms_norm(x, w, 1e-6, res)
    silu_and_mul(torch.randn(3, 2 * 3072, dtype=bf16))
    for rows in (1, 32):  # 16- and 32-row tiles
        xr = torch.randn(rows, 1024, dtype=bf16)
        skinny_mm(xr, torch.randn(4096, 1024, dtype=bf16), torch.randn(4096, dtype=bf16))
        skinny_mm(xr, torch.randn(2 * 3072, 1024, dtype=bf16), gated=True)
    heads, kv_heads, d, page = 16, 8, 128, 16
    cos_sin = RotaryEmbedding(d, 1024, 1e6).cos_sin
    # decode split, decode over many requests, a mixed step, a prefill
    for query_lens, context_lens in (
        ([1], [700]),
        ([1] * 40, [300] * 40),
        ([1, 20, 1], [9, 45, 2]),
        ([300], [300]),
    ):
        pages = sum(-(-c // page) for c in context_lens) + 1
        k_cache, v_cache = (torch.zeros(pages * page, kv_heads, d, dtype=bf16) for _ in range(2))
        tables, first = [], 1
        for c in context_lens:
            tables.append(list(range(first, first + -(-c // page))))
            first += len(tables[-1])
        meta = build_attention_metadata(
            query_lens, context_lens, tables, page, torch.device("cpu"), paged_group=heads // kv_heads
        )
        n = sum(query_lens)
        qkv = torch.randn(n, (heads + 2 * kv_heads) * d, dtype=bf16)
        positions = torch.tensor(
            [c - q + i for q, c in zip(query_lens, context_lens, strict=True) for i in range(q)]
        )
        qk_norm_rope_(
            qkv,
            positions,
            cos_sin,
            heads,
            kv_heads,
            d,
            w[:d],
            w[:d],
            1e-6,
            meta.slot_mapping,
            k_cache,
            v_cache,
        )
        paged_attention(
            qkv[:, : heads * d].view(n, heads, d), k_cache, v_cache, meta.block_tables, meta.query_start_loc,
            meta.seq_lens, meta.block_req, meta.block_q0, meta.block_q, page, d**-0.5,
            max_seq_len=meta.max_seq_len,
        )  # fmt: skip
    params = torch.tensor([[0.7, 50, 0.9, 1]] * 32, dtype=torch.float64)
    for dtype in (bf16, torch.float32):  # the model's logits, or fp32 after penalties
        sample_rows(torch.randn(32, 151936, dtype=dtype), params)
    return launches


def compile_for_hopper(kernel: FastKernel, args: tuple[Any, ...], meta: dict[str, Any]) -> None:
    fn = kernel.fn
    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}
    constexprs = {k: meta.get(k, defaults.get(k)) for k in kernel.constexpr_names}
    if "PDL" in constexprs:
        constexprs["PDL"] = True
    runtime = [name for name in fn.arg_names if name not in constexprs]
    signature = {
        name: POINTER[a.dtype] if isinstance(a, torch.Tensor) else "fp32" if isinstance(a, float) else "i32"
        for name, a in zip(runtime, args, strict=True)
    }
    signature.update(dict.fromkeys(constexprs, "constexpr"))
    options = {k: meta[k] for k in ("num_warps", "num_stages") if k in meta}
    src = ASTSource(fn, signature, {(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    binary = compile(src, target=HOPPER, options=options)
    assert binary.asm["cubin"], fn.__name__


def main() -> None:
    done: dict[tuple[Any, ...], str] = {}
    for kernel, args, meta in record_launches():
        key = (kernel.fn.__name__, *sorted((k, v) for k, v in meta.items() if k != "launch_pdl"))
        if key not in done:
            compile_for_hopper(kernel, args, meta)
            done[key] = kernel.fn.__name__
    print(json.dumps(sorted(set(done.values()))))


if __name__ == "__main__":
    main()
