"""Triton kernels against the torch path they replace.

On the GPU they run compiled, in bf16 (marked `gpu`); elsewhere Triton's interpreter runs the same
kernel code on the CPU in fp16/fp32 (the interpreter has no bf16), which tests the indexing, masking
and rounding logic without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from graphpilot.runtime.engine.context import ForwardContext, build_attention_metadata, forward_context
from graphpilot.runtime.kernels.fused import qk_norm_rope_, rms_norm, silu_and_mul
from graphpilot.runtime.kernels.gemm import skinny_mm
from graphpilot.runtime.kernels.paged_attention import paged_attention
from graphpilot.runtime.layers.attention import Attention
from graphpilot.runtime.layers.linear import GemmTable, cold_copies, linear, silu_mul_linear
from graphpilot.runtime.layers.norm import RMSNorm
from graphpilot.runtime.layers.rotary import RotaryEmbedding

CASES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cpu", torch.float16, id="cpu-fp16"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.gpu),
]


def _ulps(dtype: torch.dtype) -> float:
    return {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, ulps: int = 1) -> None:
    # within `ulps` units of the dtype's rounding at the tensor's scale
    tol = ulps * _ulps(dtype) * max(1.0, b.float().abs().max().item())
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= tol, f"max abs diff {diff} > {tol}"


@pytest.mark.parametrize(("device", "dtype"), CASES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_torch(device: str, dtype: torch.dtype, with_residual: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 96, generator=g).to(device, dtype)
    res = torch.randn(7, 96, generator=g).to(device, dtype) if with_residual else None
    norm = RMSNorm(96, 1e-6).to(device, dtype)
    norm.weight.data = torch.randn(96, generator=g).to(device, dtype)
    out, new_res = rms_norm(x, norm.weight, norm.eps, res)
    if res is None:
        _close(out, norm._norm(x), dtype)
        assert new_res is None
    else:
        assert new_res is not None
        torch.testing.assert_close(new_res, x + res, rtol=0, atol=0)  # the residual sum is exact
        _close(out, norm._norm(x + res), dtype)


@pytest.mark.parametrize(("device", "dtype"), CASES)
@pytest.mark.parametrize("qk_norm", [False, True])
def test_qk_norm_rope_matches_torch(device: str, dtype: torch.dtype, qk_norm: bool) -> None:
    heads, kv_heads, d, n = 4, 2, 32, 6
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * d, generator=g).to(device, dtype)
    pos = torch.tensor([0, 3, 7, 100, 5, 9], device=device)
    rot = RotaryEmbedding(d, 256, 10000.0).to(device)
    qn, kn = RMSNorm(d, 1e-6).to(device, dtype), RMSNorm(d, 1e-6).to(device, dtype)
    qn.weight.data = torch.randn(d, generator=g).to(device, dtype)
    kn.weight.data = torch.randn(d, generator=g).to(device, dtype)
    q, k, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
    q, k = q.reshape(n, heads, d), k.reshape(n, kv_heads, d)
    if qk_norm:
        q, k = qn(q), kn(k)
    q_ref, k_ref = rot(pos, q, k)
    fused = qkv.clone()
    qk_norm_rope_(fused, pos, rot.cos_sin, heads, kv_heads, d,
                  qn.weight if qk_norm else None, kn.weight if qk_norm else None, 1e-6)  # fmt: skip
    # the torch path rounds after each rotary term, the kernel once: a few ulps apart
    _close(fused[:, : heads * d], q_ref.reshape(n, -1), dtype, ulps=4)
    _close(fused[:, heads * d : (heads + kv_heads) * d], k_ref.reshape(n, -1), dtype, ulps=4)
    assert torch.equal(fused[:, (heads + kv_heads) * d :], v)  # v untouched


@pytest.mark.parametrize(("device", "dtype"), CASES)
def test_silu_and_mul_matches_torch(device: str, dtype: torch.dtype) -> None:
    x = torch.randn(5, 2 * 1500, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    gate, up = x.chunk(2, dim=-1)
    _close(silu_and_mul(x), F.silu(gate) * up, dtype)


def _batch(device: str, dtype: torch.dtype, query_lens: list[int], context_lens: list[int]):
    heads, kv_heads, d, page = 8, 2, 32, 4
    g = torch.Generator().manual_seed(3)
    num_pages = sum(-(-c // page) for c in context_lens) + 1
    k_cache = torch.randn(num_pages * page, kv_heads, d, generator=g).to(device, dtype)
    v_cache = torch.randn(num_pages * page, kv_heads, d, generator=g).to(device, dtype)
    perm = (torch.randperm(num_pages - 1, generator=g) + 1).tolist()  # scattered pages, none is 0
    tables = []
    for c in context_lens:
        tables.append(perm[: -(-c // page)])
        perm = perm[-(-c // page) :]
    n = sum(query_lens)
    q = torch.randn(n, heads * d, generator=g).to(device, dtype)
    k = torch.randn(n, kv_heads * d, generator=g).to(device, dtype)
    v = torch.randn(n, kv_heads * d, generator=g).to(device, dtype)
    return heads, kv_heads, d, page, k_cache, v_cache, tables, q, k, v


@pytest.mark.parametrize(("device", "dtype"), CASES)
@pytest.mark.parametrize(
    ("query_lens", "context_lens"),
    [
        pytest.param([1, 1, 1], [7, 1, 70], id="decode-split"),
        pytest.param([1], [700], id="decode-split-long"),
        pytest.param([1] * 20, [5 + 13 * i for i in range(20)], id="decode-wide"),
        pytest.param([1] * 18, [700 - 39 * i for i in range(18)], id="decode-wide-page-windows"),
        pytest.param([37], [37], id="prefill"),
        pytest.param([1, 20, 1, 5], [9, 45, 2, 5], id="mixed-with-prefixes"),
    ],
)
def test_rope_kv_store_and_paged_attention_match_reference(
    device: str, dtype: torch.dtype, query_lens: list[int], context_lens: list[int]
) -> None:
    heads, kv_heads, d, page, k_cache, v_cache, tables, q, k, v = _batch(
        device, dtype, query_lens, context_lens
    )
    dev, n = torch.device(device), q.shape[0]
    positions = torch.tensor(
        [c - ql + i for ql, c in zip(query_lens, context_lens, strict=True) for i in range(ql)], device=dev
    )
    rot = RotaryEmbedding(d, 1024, 10000.0).to(device)
    paged = build_attention_metadata(
        query_lens, context_lens, tables, page, dev, paged_group=heads // kv_heads
    )
    plain = build_attention_metadata(query_lens, context_lens, tables, page, dev)
    assert torch.equal(paged.slot_mapping, plain.slot_mapping)

    # the fused kernel: rotary in place on q and k, and the rotated K plus V into the cache slots
    qkv = torch.cat([q, k, v], dim=-1)
    kc, vc = k_cache.clone(), v_cache.clone()
    qk_norm_rope_(
        qkv, positions, rot.cos_sin, heads, kv_heads, d, None, None, 0.0, paged.slot_mapping, kc, vc
    )
    q, k_rot, v_out = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
    assert torch.equal(v_out, v)  # v untouched in qkv
    ref = Attention(heads, kv_heads, d, "reference")
    ref.bind_cache(k_cache.clone(), v_cache.clone())
    with forward_context(ForwardContext(n, plain)):
        ref.store_kv(k_rot, v)
        expected = ref(q)
    assert torch.equal(kc, ref.k_cache) and torch.equal(vc, ref.v_cache)

    for _ in range(2):  # the second call takes the cached launch path on a GPU, and finds the split
        # path's arrival counters reset by the first: every row is written again
        out = torch.full((n, heads, d), float("nan"), dtype=dtype, device=dev)
        paged_attention(
            q.view(n, heads, d), kc, vc, paged.block_tables, paged.query_start_loc, paged.seq_lens,
            paged.block_req, paged.block_q0, paged.block_q, page, d**-0.5, out=out,
            max_seq_len=paged.max_seq_len,
        )  # fmt: skip
        _close(out.view(n, -1), expected, dtype, ulps=2)


def test_decodes_beside_small_prefill_chunks_take_small_query_tiles() -> None:
    from graphpilot.runtime.engine.context import SMALL_TILE_TOKENS, query_block_size

    assert query_block_size(1, 32, group=4, num_tokens=32) == 1  # decode only: a program per token
    assert query_block_size(96, 32, group=4, num_tokens=128) == 4  # 32 decodes + a chunk: 16-row tiles
    assert query_block_size(96, 32, group=2, num_tokens=128) == 8
    assert query_block_size(96, 4, group=4, num_tokens=100) == 4
    assert query_block_size(480, 8, group=4, num_tokens=488) == 16  # few decodes, a long chunk: 64 rows
    assert query_block_size(2048, 0, group=4, num_tokens=2048) == 16  # prefill only: 64-row tiles
    assert query_block_size(100, 0, group=4, num_tokens=100) == 16
    assert query_block_size(100, 30, group=4, num_tokens=SMALL_TILE_TOKENS + 1) == 16  # a big step


@pytest.mark.parametrize(("device", "dtype"), CASES)
def test_mixed_step_query_tiles_give_the_same_attention(
    device: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graphpilot.runtime.engine import context

    query_lens, context_lens = [1, 20, 1, 5, 1], [9, 45, 2, 5, 30]  # 3 decodes, 25 prefill tokens
    heads, kv_heads, d, page, k_cache, v_cache, tables, q, _, _ = _batch(
        device, dtype, query_lens, context_lens
    )
    outs = {}
    for limit in (0, 512):  # 0: 64-row tiles whatever the step
        monkeypatch.setattr(context, "SMALL_TILE_TOKENS", limit)
        meta = build_attention_metadata(
            query_lens, context_lens, tables, page, torch.device(device), heads // kv_heads
        )
        assert meta.block_q == (64 if limit == 0 else 16) // (heads // kv_heads)
        outs[limit] = paged_attention(
            q.view(-1, heads, d), k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
            meta.block_req, meta.block_q0, meta.block_q, page, d**-0.5,
        )  # fmt: skip
    _close(outs[512], outs[0], dtype, ulps=2)


def test_small_decode_batches_split_the_context_to_fill_the_gpu() -> None:
    from graphpilot.runtime.kernels.paged_attention import decode_splits

    assert decode_splits(num_reqs=1, kv_heads=8, max_seq_len=512, num_sms=132) == 8  # one key tile each
    assert decode_splits(num_reqs=1, kv_heads=8, max_seq_len=4096, num_sms=132) == 32  # at most 32
    assert decode_splits(num_reqs=4, kv_heads=8, max_seq_len=4096, num_sms=132) == 17  # 544 programs
    assert decode_splits(num_reqs=32, kv_heads=8, max_seq_len=4096, num_sms=132) == 1  # a program per SM
    assert decode_splits(num_reqs=128, kv_heads=8, max_seq_len=4096, num_sms=132) == 1  # 4 per SM already
    assert decode_splits(num_reqs=1, kv_heads=8, max_seq_len=40, num_sms=132) == 1  # one key tile


@pytest.mark.parametrize(("device", "dtype"), CASES)
@pytest.mark.parametrize(
    ("rows", "n", "k", "bias"),
    [(1, 200, 96, False), (5, 72, 320, True), (16, 40, 64, False), (27, 48, 64, True)],
)
def test_skinny_mm_matches_torch(
    device: str, dtype: torch.dtype, rows: int, n: int, k: int, bias: bool
) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(rows, k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    for block_n, block_k in ((16, 64), (64, 128)):  # tiles that divide the shape and tiles that do not
        out = skinny_mm(x, w, b, block_n=block_n, block_k=block_k)
        _close(out, F.linear(x.float(), w.float(), None if b is None else b.float()), dtype, ulps=2)


@pytest.mark.parametrize(("device", "dtype"), CASES)
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 200, 96), (5, 72, 320), (27, 48, 64)])
def test_gated_skinny_mm_applies_the_mlp_activation(
    device: str, dtype: torch.dtype, rows: int, n: int, k: int
) -> None:
    """The gated kernel gives what the MLP's multiply then activation give: silu(x @ gate.T) * (x @ up.T)
    for weight = [gate | up], with each half's rows read from their own place in the weight."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(rows, k, generator=g).to(device, dtype)
    w = (torch.randn(2 * n, k, generator=g) / k**0.5).to(device, dtype)
    gate, up = F.linear(x.float(), w.float()).chunk(2, dim=-1)
    for block_n, block_k in ((16, 64), (64, 128)):  # tiles that divide the shape and tiles that do not
        out = skinny_mm(x, w, block_n=block_n, block_k=block_k, gated=True)
        assert out.shape == (rows, n)
        _close(out, F.silu(gate) * up, dtype, ulps=3)
        _close(out, silu_and_mul(skinny_mm(x, w, block_n=2 * block_n, block_k=block_k)), dtype, ulps=1)


@pytest.mark.gpu
def test_repeated_launches_compute_on_each_calls_own_tensors() -> None:
    """After a call site's first launch (compiled through Triton) the next ones hand the launcher the
    device addresses of their own arguments: each call must read and write its own tensors."""
    w = torch.randn(256, dtype=torch.bfloat16, device="cuda")
    norm = RMSNorm(256, 1e-6).to("cuda", torch.bfloat16)
    norm.weight.data = w
    weight = torch.randn(64, 256, dtype=torch.bfloat16, device="cuda") / 16
    alive = []  # every call's tensors stay allocated, so no two calls share an address
    for _ in range(3):  # the first call compiles, the others take the cached path
        x = torch.randn(5, 256, dtype=torch.bfloat16, device="cuda")
        res = torch.randn(5, 256, dtype=torch.bfloat16, device="cuda")
        out, new_res = rms_norm(x, w, 1e-6, res)
        assert new_res is not None
        torch.testing.assert_close(new_res, x + res, rtol=0, atol=0)
        _close(out, norm._norm(x + res), torch.bfloat16)
        y = skinny_mm(out, weight)
        _close(y, F.linear(out.float(), weight.float()), torch.bfloat16, ulps=2)
        alive += [x, res, out, new_res, y]


@pytest.mark.gpu
def test_gemm_table_routes_measured_shapes_to_the_skinny_kernel() -> None:
    w = torch.randn(1024, 2048, dtype=torch.bfloat16, device="cuda") / 45
    table = GemmTable()
    table.tune([(w, None)])
    assert len(table.measured) == 6 and {m["rows"] for m in table.measured} == {1, 2, 4, 8, 16, 32}
    x = torch.randn(3, 2048, dtype=torch.bfloat16, device="cuda")
    chosen = table.lookup(x, w, None)
    assert (chosen is not None) == ((1024, 2048, False, 4) in table.skinny)
    assert table.lookup(torch.randn(33, 2048, device="cuda"), w, None) is None  # beyond the row tile: cuBLAS
    # timed cold: the copies a measurement cycles through are more than the L2 cache holds
    copies = cold_copies(w)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    assert copies[0] is w and sum(c.numel() * c.element_size() for c in copies) > l2
    assert all(torch.equal(c, w) for c in copies)
    _close(linear(x, w, table=table), F.linear(x, w), torch.bfloat16, ulps=2)


@pytest.mark.gpu
def test_gemm_table_times_the_gated_mlp_kernel_against_the_pair() -> None:
    """An MLP's [gate | up] weight is timed both ways at every row count; where the gated kernel won,
    `silu_mul_linear` runs it, elsewhere it returns None and the model runs the pair."""
    w = torch.randn(2 * 3072, 1024, dtype=torch.bfloat16, device="cuda") / 32
    table = GemmTable()
    table.tune([(w, None)], gated=[w])
    gated = [m for m in table.measured if m.get("gated")]
    assert {m["rows"] for m in gated} == {1, 2, 4, 8, 16, 32}
    assert all(m["pair_us"] > 0 and m["gated_us"] > 0 for m in gated)
    for m in gated:
        assert ((2 * 3072, 1024, m["rows"]) in table.gated) == (m["gated_us"] < m["pair_us"])
    x = torch.randn(3, 1024, dtype=torch.bfloat16, device="cuda")
    act = silu_mul_linear(x, w, table)
    assert (act is not None) == ((2 * 3072, 1024, 4) in table.gated)
    gate, up = F.linear(x.float(), w.float()).chunk(2, dim=-1)
    if act is not None:
        _close(act, F.silu(gate) * up, torch.bfloat16, ulps=3)
    assert silu_mul_linear(torch.randn(33, 1024, dtype=torch.bfloat16, device="cuda"), w, table) is None


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("query_lens", "context_lens"),
    [pytest.param([1], [700], id="decode-split"), pytest.param([1, 20, 1, 5], [9, 45, 2, 5], id="mixed")],
)
def test_step_plan_replays_the_first_layers_launch_with_each_layers_cache(
    query_lens: list[int], context_lens: list[int]
) -> None:
    heads, kv_heads, d, page, k_cache, v_cache, tables, q, _, _ = _batch(
        "cuda", torch.bfloat16, query_lens, context_lens
    )
    meta = build_attention_metadata(
        query_lens, context_lens, tables, page, torch.device("cuda"), paged_group=heads // kv_heads
    )
    layers = [(k_cache, v_cache), (k_cache.flip(0).contiguous(), v_cache.flip(0).contiguous())]
    n = q.shape[0]

    def run(kc: torch.Tensor, vc: torch.Tensor, plan: dict | None) -> torch.Tensor:
        out = torch.zeros(n, heads, d, dtype=q.dtype, device="cuda")
        paged_attention(
            q.view(n, heads, d), kc, vc, meta.block_tables, meta.query_start_loc, meta.seq_lens, meta.block_req,
            meta.block_q0, meta.block_q, page, d**-0.5, out=out, max_seq_len=meta.max_seq_len, plan=plan,
        )  # fmt: skip
        return out

    first = run(*layers[0], None)
    plan: dict = {}
    out = torch.zeros(n, heads, d, dtype=q.dtype, device="cuda")
    for kc, vc in layers:  # same q/out buffers for every layer, as between graph segments
        paged_attention(
            q.view(n, heads, d), kc, vc, meta.block_tables, meta.query_start_loc, meta.seq_lens, meta.block_req,
            meta.block_q0, meta.block_q, page, d**-0.5, out=out, max_seq_len=meta.max_seq_len, plan=plan,
        )  # fmt: skip
        assert torch.equal(out, run(kc, vc, None))
    assert len(plan) == 1  # bound once, replayed for the second layer
    assert not torch.equal(first, out)  # the second layer really read its own cache


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 32])
def test_dependent_launch_gives_the_same_layers_in_a_graph(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels launched with programmatic dependent launch start while the previous one finishes;
    each must still see its input complete. A captured chain of decode-layer kernels (norm with
    residual, skinny multiplies, activation) gives the same bits with it as without it."""
    from graphpilot.runtime.kernels import launch

    assert launch.dependent_launch(torch.device("cuda")) == (torch.cuda.get_device_capability()[0] >= 9)
    g = torch.Generator(device="cuda").manual_seed(7)
    hidden, inter = 1024, 3072
    layers = [
        [torch.randn(*s, generator=g, device="cuda", dtype=torch.bfloat16) * 0.03
         for s in ((hidden,), (2 * inter, hidden), (hidden, inter))]
        for _ in range(6)
    ]  # fmt: skip
    x0 = torch.randn(rows, hidden, generator=g, device="cuda", dtype=torch.bfloat16)

    def stack() -> torch.Tensor:
        x, res = x0, None
        for norm_w, gate_up, down in layers:
            h, res = rms_norm(x, norm_w + 1, 1e-6, res if res is not None else x)
            x = skinny_mm(silu_and_mul(skinny_mm(h, gate_up)), down)
        return x

    def replayed() -> torch.Tensor:
        stack()  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = stack()
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        return out.clone()

    with_pdl = replayed()
    monkeypatch.setattr(launch, "DEPENDENT_LAUNCH", False)
    assert not launch.dependent_launch(torch.device("cuda"))
    without = replayed()
    assert torch.equal(with_pdl, without)
    assert with_pdl.abs().max().item() > 0


def test_every_kernel_compiles_for_hopper() -> None:
    """Each Triton kernel of the GPU path, with the arguments and constexprs the layers launch it
    with (bf16, head_dim 128, PDL on, every attention path), compiles for sm_90 (H100, H200): a
    kernel that only the interpreter can run fails here, without a GPU. (Compiled in a process of
    its own: this one's kernels are the interpreter's.)"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "hopper_compile.py")
    done = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(json.loads(done.stdout.splitlines()[-1])) == {
        "_rms_norm_kernel", "_silu_and_mul_kernel", "_skinny_mm_kernel", "_qk_norm_rope_kernel",
        "_paged_attention_kernel", "_decode_split_kernel", "_sample_kernel",
    }  # fmt: skip


SAMPLE_CASES = [
    pytest.param("cpu", torch.float32, 160, id="cpu-fp32"),
    pytest.param("cuda", torch.bfloat16, 4096, id="cuda-bf16", marks=pytest.mark.gpu),
]


def _sample_table(rows: list[tuple[float, int, float, int]], device: str) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, device=device)


@pytest.mark.parametrize(("device", "dtype", "draws"), SAMPLE_CASES)
@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.8, 0, 0.75), (0.7, 6, 1.0), (1.3, 8, 0.9)])
@pytest.mark.parametrize("candidates", [16, 4096], ids=["row-bisection", "registers"])
def test_sampling_kernel_draws_from_the_torch_filters_distribution(
    device: str, dtype: torch.dtype, draws: int, temperature: float, top_k: int, top_p: float, candidates: int
) -> None:
    """Many draws of one row (a seed each): every token is in the set the sorting filter keeps, and
    their frequencies are its renormalised probabilities (a draw without noise, or from the unfiltered
    row, is far off). With 16 candidates the bisection first halves over the whole row."""
    from graphpilot.runtime.engine.request import SamplingParams
    from graphpilot.runtime.kernels.sampling import sample_rows
    from graphpilot.runtime.layers.sampler import Sampler

    vocab = 96
    logits = (torch.randn(vocab, generator=torch.Generator().manual_seed(7)) * 2).to(dtype)
    logits[[3, 50]] = float("-inf")  # masked, as `min_tokens` masks the end tokens
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    kept = Sampler._filter(logits.float()[None] / temperature, [params])[0].softmax(-1)
    assert 2 <= int((kept > 0).sum()) <= 12  # a few tokens: a sharp test of the frequencies
    k = top_k or vocab
    table = _sample_table([(temperature, k, top_p, 1000 + i) for i in range(draws)], device)
    tokens = sample_rows(logits.to(device).expand(draws, vocab).contiguous(), table, candidates).cpu()
    assert set(tokens.tolist()) <= set(torch.nonzero(kept).flatten().tolist())
    freq = torch.bincount(tokens, minlength=vocab).float() / draws
    tvd = 0.5 * (freq - kept).abs().sum().item()
    assert tvd < (0.15 if draws < 1000 else 0.05), f"total variation {tvd} from the filtered distribution"


@pytest.mark.parametrize(("device", "dtype", "draws"), SAMPLE_CASES)
def test_sampling_kernel_greedy_rows_and_seeds(device: str, dtype: torch.dtype, draws: int) -> None:
    """Temperature 0 is the argmax (the first of tied maxima, as torch's), top_k 1 and a tiny top_p
    keep only the argmax, and a seeded row draws the same token at any position of any batch."""
    from graphpilot.runtime.kernels.sampling import sample_rows

    vocab = 3000  # more than one block of the kernel's loop
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, vocab, generator=g).to(dtype)
    logits[1, 2500] = logits[1, 40] = logits[1].max() + 1  # a tie across blocks
    top = logits.float().argmax(-1)
    assert top[1] == 40
    greedy = _sample_table(
        [(0.0, vocab, 1.0, 1), (0.0, vocab, 1.0, 2), (2.0, 1, 1.0, 3), (2.0, vocab, 1e-9, 4)], device
    )
    assert sample_rows(logits.to(device), greedy).cpu().tolist() == top.tolist()

    row = logits[0:1].to(device)
    seeded = [(1.0, vocab, 1.0, 12345)]
    alone = sample_rows(row, _sample_table(seeded, device)).item()
    others = [(1.0, vocab, 1.0, s) for s in range(1, 4)]
    batch = torch.cat([logits[1:].to(device), row])
    assert sample_rows(batch, _sample_table(others + seeded, device))[-1].item() == alone
    tokens = {sample_rows(row, _sample_table([(1.0, vocab, 1.0, s)], device)).item() for s in range(12)}
    assert len(tokens) > 6, "other seeds draw other tokens from a near-flat row"


@pytest.mark.gpu
def test_the_samplers_seeded_draws_are_the_same_alone_and_in_a_batch() -> None:
    """`Sampler` on a GPU (the kernel's path): a seeded request's i-th draw takes the same seed alone
    and in a batch of others, step after step, so on the same logits it gets the same tokens; its
    draws are not all one token; a request whose id comes back after `forget` starts over."""
    from graphpilot.runtime.engine.request import SamplingParams
    from graphpilot.runtime.layers.sampler import Sampler

    device = torch.device("cuda")
    vocab = 151936
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(11)).to(device, torch.bfloat16)
    seeded = SamplingParams(temperature=1.0, top_p=0.95, top_k=0, seed=42)
    others = [SamplingParams(temperature=0.8), SamplingParams(temperature=0.0), SamplingParams(top_k=20)]

    solo, crowd = Sampler(device, seed=0), Sampler(device, seed=1)
    alone = [solo(logits[:1], [seeded], ["a"]).item() for _ in range(8)]
    batch = torch.cat([logits[3:], logits[:1]])
    together = [crowd(batch, [*others, seeded], ["x", "y", "z", "a"])[-1].item() for _ in range(8)]
    assert together == alone
    assert len(set(alone)) > 4, "each draw has a seed of its own"
    solo.forget("a")
    assert [solo(logits[:1], [seeded], ["a"]).item() for _ in range(8)] == alone


@pytest.mark.gpu
def test_the_sampling_kernel_reads_bf16_and_fp32_logits_alike() -> None:
    """One call site, two dtypes: the sampler hands the kernel bf16 logits, or fp32 ones where a row
    has a logit bias or a `min_tokens` mask. The same values with the same seeds draw the same tokens
    in either dtype, whichever the cached launch was compiled for first (the cache once reused the
    bf16 kernel for fp32 logits, which then read other rows' bytes)."""
    from graphpilot.runtime.kernels.sampling import sample_rows

    vocab = 151936
    logits = torch.randn(8, vocab, generator=torch.Generator().manual_seed(13)).to("cuda", torch.bfloat16)
    table = _sample_table([(1.0, 50, 0.9, 100 + i) for i in range(8)], "cuda")
    first = sample_rows(logits, table)
    again = sample_rows(logits.float(), table)
    assert again.tolist() == first.tolist()
    assert sample_rows(logits, table).tolist() == first.tolist()
