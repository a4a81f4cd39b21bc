"""Varlen attention over the paged KV cache: prefill, decode and mixed batches in one launch.

One program handles `BLOCK_Q` consecutive query tokens of one request for one KV head, i.e. a tile
of `BLOCK_Q * group` query rows that share the same keys (grouped-query attention reads each key
once per group). It walks the request's context in tiles of `BLOCK_N` keys through the block table
with an online softmax, masking causally by absolute position, so a cached prefix (chunked prefill,
decode) needs no separate path. The host lays out which (request, first query) each program takes,
once per step (`engine.context.schedule_query_blocks`), so the grid has no empty programs; in a
decode-only batch program i is request i's one token, so the kernel reads no schedule before its
first keys.

Decode-only batches too small to fill the GPU (a few requests x KV heads programs) split each
request's context across programs instead (flash-decoding): each writes a partial softmax state,
and the last split of each (request, KV head) to finish (an atomic arrival counter) combines them
in the same kernel, so a decode break is one launch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from graphpilot.runtime.kernels.launch import FastKernel, num_sms

LOG2E = 1.4426950408889634
MAX_SPLITS = 32
SPLIT_WAVES = 4  # decode programs per SM to aim for (bench/bench_attention.py)
# decode tiles (one query token per request), set from `bench/bench_attention.py --sweep-tiles`:
# the split path (a few programs per SM at most: no pipelining, so more of them fit) and the
# unsplit path of batches that fill the GPU
SPLIT_TILE = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 1}
DECODE_TILE = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
# pages whose numbers an unsplit decode program reads ahead of its key loop (`_attend_windowed`;
# `experiment-attention-window.json`: 2-15 % faster than looking each tile's pages up one tile ahead)
DECODE_PAGE_WINDOW = 64
MIXED_TILE = {"BLOCK_N": 128, "num_warps": 4, "num_stages": 2}  # the 16-row query tiles of mixed steps
DECODE_HEADS_FIRST = True  # decode-only grid (KV heads, requests); False: (requests, KV heads)


@triton.jit
def _attend(
    q, q_pos, table, max_pages, k_cache_ptr, v_cache_ptr, stride_slot, head_off, lo, hi, scale_log2,
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
):  # fmt: skip
    """Online softmax of q's rows over keys [lo, hi) of one request and KV head: (acc, m, l).

    Few programs run per SM in decode, so each key tile's latency is paid in full: the tile's page
    numbers are read one tile ahead (the first tile's bounded by the table's width, not by `hi`, so
    they load while the context length does), and its V gather is issued with its K gather."""
    dims = tl.arange(0, HEAD_DIM)
    offs = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    page = tl.load(table + (lo + offs) // PAGE, mask=(lo + offs) // PAGE < max_pages, other=0)
    for start in range(lo, hi, BLOCK_N):
        k_pos = start + offs
        k_ok = k_pos < hi
        slot = page.to(tl.int64) * PAGE + k_pos % PAGE
        k = tl.load(k_cache_ptr + slot[None, :] * stride_slot + head_off + dims[:, None],
                    mask=k_ok[None, :], other=0.0)  # fmt: skip
        v = tl.load(v_cache_ptr + slot[:, None] * stride_slot + head_off + dims[None, :],
                    mask=k_ok[:, None], other=0.0)  # fmt: skip
        page = tl.load(table + (k_pos + BLOCK_N) // PAGE, mask=k_pos + BLOCK_N < hi, other=0)
        acc, m_i, l_i = _softmax_step(q, q_pos, k, v, k_pos, k_ok, acc, m_i, l_i, scale_log2, CAUSAL)
    return acc, m_i, l_i


@triton.jit
def _attend_windowed(
    q, q_pos, table, max_pages, k_cache_ptr, v_cache_ptr, stride_slot, head_off, hi, scale_log2,
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
    WINDOW: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    """`_attend` over keys [0, hi) with the page numbers read WINDOW pages at a time, before the key
    loop over them, and picked per key tile from registers: no key load waits on a page lookup.
    (BLOCK_N divides WINDOW * PAGE, so a tile never straddles two windows.)"""
    dims = tl.arange(0, HEAD_DIM)
    offs = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    span: tl.constexpr = WINDOW * PAGE
    for w_lo in range(0, hi, span):
        first = w_lo // PAGE
        w = first + tl.arange(0, WINDOW)
        pages = tl.load(table + w, mask=w < max_pages, other=0)
        for start in range(w_lo, tl.minimum(hi, w_lo + span), BLOCK_N):
            k_pos = start + offs
            k_ok = k_pos < hi
            page = tl.gather(pages, tl.minimum(k_pos // PAGE - first, WINDOW - 1), 0)
            slot = page.to(tl.int64) * PAGE + k_pos % PAGE
            k = tl.load(k_cache_ptr + slot[None, :] * stride_slot + head_off + dims[:, None],
                        mask=k_ok[None, :], other=0.0)  # fmt: skip
            v = tl.load(v_cache_ptr + slot[:, None] * stride_slot + head_off + dims[None, :],
                        mask=k_ok[:, None], other=0.0)  # fmt: skip
            acc, m_i, l_i = _softmax_step(q, q_pos, k, v, k_pos, k_ok, acc, m_i, l_i, scale_log2, CAUSAL)
    return acc, m_i, l_i


@triton.jit
def _softmax_step(q, q_pos, k, v, k_pos, k_ok, acc, m_i, l_i, scale_log2, CAUSAL: tl.constexpr):
    """One key tile of the online softmax: q [BLOCK_M, D] against k [D, BLOCK_N] and v [BLOCK_N, D]."""
    s = tl.dot(q, k) * scale_log2  # [BLOCK_M, BLOCK_N], log2 domain
    visible = k_ok[None, :]
    if CAUSAL:
        visible = visible & (k_pos[None, :] <= q_pos[:, None])
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit(do_not_specialize=["stride_table", "max_pages"])
def _paged_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
    block_tables_ptr, query_start_ptr, seq_lens_ptr, block_req_ptr, block_q0_ptr,
    stride_q, stride_out, stride_table, max_pages, stride_slot, scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEADS_FIRST: tl.constexpr,
    PAGE_WINDOW: tl.constexpr,
):  # fmt: skip
    if HEADS_FIRST:  # a request's KV heads are neighbouring programs (`paged_attention`)
        kv_head = tl.program_id(0)
        pid = tl.program_id(1)
    else:
        pid = tl.program_id(0)
        kv_head = tl.program_id(1)
    if BLOCK_Q == 1:  # decode only: program i is request i's one token, no schedule to read first
        req = pid
        q0 = 0
        q_start = pid
        q_len = 1
    else:
        req = tl.load(block_req_ptr + pid)
        q0 = tl.load(block_q0_ptr + pid)
        q_start = tl.load(query_start_ptr + req)
        q_len = tl.load(query_start_ptr + req + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + req)
    prefix = seq_len - q_len  # absolute position of the request's first query token

    rows = tl.arange(0, BLOCK_M)
    q_idx = q0 + rows // GROUP  # query token within the request
    head = kv_head * GROUP + rows % GROUP
    row_ok = (rows < BLOCK_Q * GROUP) & (q_idx < q_len)
    q_pos = prefix + q_idx
    dims = tl.arange(0, HEAD_DIM)
    tok = (q_start + q_idx).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_q + head[:, None] * HEAD_DIM + dims[None, :],
                mask=row_ok[:, None], other=0.0)  # fmt: skip

    # keys this tile can see: up to the position of its last query token
    kv_end = tl.minimum(seq_len, prefix + q0 + BLOCK_Q)
    table = block_tables_ptr + req.to(tl.int64) * stride_table
    if PAGE_WINDOW > 0:  # decode: page numbers ahead of the key loop
        acc, _, l_i = _attend_windowed(q, q_pos, table, max_pages, k_cache_ptr, v_cache_ptr, stride_slot, kv_head * HEAD_DIM,
                                       kv_end, scale_log2, BLOCK_M, HEAD_DIM, PAGE, BLOCK_N, PAGE_WINDOW, CAUSAL=True)  # fmt: skip
    else:
        acc, _, l_i = _attend(q, q_pos, table, max_pages, k_cache_ptr, v_cache_ptr, stride_slot, kv_head * HEAD_DIM, 0, kv_end,
                              scale_log2, BLOCK_M, HEAD_DIM, PAGE, BLOCK_N, CAUSAL=True)  # fmt: skip
    out = acc / l_i[:, None]
    tl.store(out_ptr + tok[:, None] * stride_out + head[:, None] * HEAD_DIM + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])  # fmt: skip


_paged_attention = FastKernel(_paged_attention_kernel)


@triton.jit(do_not_specialize=["stride_table", "max_pages", "split_len", "num_splits"])
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_acc_ptr, part_ml_ptr, arrived_ptr,
    block_tables_ptr, seq_lens_ptr,
    stride_q, stride_out, stride_table, max_pages, stride_slot, split_len, num_splits, scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, GROUP_P2: tl.constexpr, COMBINE_UNROLL: tl.constexpr,
):  # fmt: skip
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    tok = req.to(tl.int64)  # decode only: request i's one token is row i
    seq_len = tl.load(seq_lens_ptr + req)
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP
    head = kv_head * GROUP + rows
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_ptr + tok * stride_q + head[:, None] * HEAD_DIM + dims[None, :], mask=row_ok[:, None], other=0.0
    )
    table = block_tables_ptr + req.to(tl.int64) * stride_table
    lo = split * split_len
    hi = tl.minimum(seq_len, lo + split_len)
    acc, m_i, l_i = _attend(q, rows, table, max_pages, k_cache_ptr, v_cache_ptr, stride_slot, kv_head * HEAD_DIM, lo, hi,
                            scale_log2, BLOCK_M, HEAD_DIM, PAGE, BLOCK_N, CAUSAL=False)  # fmt: skip
    # partial state per (request, head, split); an empty split leaves m = -inf, l = 0
    first = (req * tl.num_programs(1) * GROUP + head).to(tl.int64) * num_splits
    tl.store(part_acc_ptr + (first + split)[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])
    tl.store(part_ml_ptr + (first + split) * 2, m_i, mask=row_ok)
    tl.store(part_ml_ptr + (first + split) * 2 + 1, l_i, mask=row_ok)
    # the last split of this (request, KV head) to arrive combines them all: no second kernel
    tl.debug_barrier()  # every thread's partial stores come before the release below
    arrived = arrived_ptr + req * tl.num_programs(1) + kv_head
    if tl.atomic_add(arrived, 1, sem="acq_rel") == num_splits - 1:
        # COMBINE_UNROLL splits at a time, unrolled, so their loads are in flight together
        g = tl.arange(0, GROUP_P2)
        g_ok = g < GROUP
        c_head = kv_head * GROUP + g
        c_first = (req * tl.num_programs(1) * GROUP + c_head).to(tl.int64) * num_splits
        m_run = tl.full([GROUP_P2], float("-inf"), dtype=tl.float32)
        l_run = tl.zeros([GROUP_P2], dtype=tl.float32)
        c_acc = tl.zeros([GROUP_P2, HEAD_DIM], dtype=tl.float32)
        for s0 in range(0, num_splits, COMBINE_UNROLL):
            for i in tl.static_range(COMBINE_UNROLL):
                s = s0 + i
                live = g_ok & (g * 0 + s < num_splits)  # a tensor compare, also in the interpreter
                m_s = tl.load(
                    part_ml_ptr + (c_first + s) * 2, mask=live, other=float("-inf"), cache_modifier=".cg"
                )
                l_s = tl.load(part_ml_ptr + (c_first + s) * 2 + 1, mask=live, other=0.0, cache_modifier=".cg")
                a_s = tl.load(part_acc_ptr + (c_first + s)[:, None] * HEAD_DIM + dims[None, :],
                              mask=live[:, None], other=0.0, cache_modifier=".cg")  # fmt: skip
                m_new = tl.maximum(m_run, m_s)
                m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # both empty so far: weights 0, not NaN
                alpha = tl.math.exp2(m_run - m_ref)
                beta = tl.math.exp2(m_s - m_ref)
                c_acc = c_acc * alpha[:, None] + a_s * beta[:, None]
                l_run = l_run * alpha + l_s * beta
                m_run = m_new
        out = c_acc / tl.where(g_ok, l_run, 1.0)[:, None]
        tl.store(out_ptr + tok * stride_out + c_head[:, None] * HEAD_DIM + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None])  # fmt: skip
        tl.atomic_xchg(arrived, 0)  # ready for the next call


_decode_split = FastKernel(_decode_split_kernel)


_SCRATCH: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _split_scratch(
    rows: int, head_dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partial-softmax buffers and per-(request, KV head) arrival counters of the split path, grown
    on demand and reused (no per-call allocation). The counters are zero between calls: the last
    split to arrive resets its own."""
    key = (device, head_dim)
    got = _SCRATCH.get(key)
    if got is None or got[0].shape[0] < rows:
        acc = torch.empty(max(rows, 4096), head_dim, dtype=torch.float32, device=device)
        ml = torch.empty(acc.shape[0], 2, dtype=torch.float32, device=device)
        arrived = torch.zeros(acc.shape[0], dtype=torch.int32, device=device)
        got = _SCRATCH[key] = (acc, ml, arrived)
    return got


def decode_splits(num_reqs: int, kv_heads: int, max_seq_len: int, num_sms: int, block_n: int = 64) -> int:
    """Context splits per (request, KV head): enough programs for a few per SM (measured on an H200,
    `bench/bench_attention.py`: a batch-1 decode at 1024 tokens takes 6.4 us in 16 splits against
    16.7 us unsplit); a batch with a program per SM or more is not split (32 requests at 1024 tokens:
    37.8 us unsplit, 39.4 in two)."""
    programs = num_reqs * kv_heads
    if programs >= num_sms:
        return 1
    target = SPLIT_WAVES * num_sms
    return max(1, min(-(-target // programs), -(-max_seq_len // block_n), MAX_SPLITS))


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start: torch.Tensor,
    seq_lens: torch.Tensor,
    block_req: torch.Tensor,
    block_q0: torch.Tensor,
    block_q: int,
    page_size: int,
    scale: float,
    out: torch.Tensor | None = None,
    max_seq_len: int = 0,
    splits: int | None = None,
    plan: dict[tuple[int, ...], Callable[[torch.Tensor, torch.Tensor], bool]] | None = None,
) -> torch.Tensor:
    """Attention of every query row over its request's cached context (its own K/V already stored).

    q: [n, heads, head_dim]; caches: [num_slots, kv_heads, head_dim]; block_tables: [reqs, max_pages];
    query_start: [reqs + 1]; seq_lens: [reqs] (context length after this forward);
    block_req, block_q0: [programs] from `context.schedule_query_blocks`; max_seq_len (host-known)
    enables the split path for small decode batches (`splits` overrides the choice). Returns [n, heads, head_dim].

    `plan`: a dict that lives for one step (the step's metadata). The first call binds its launches
    there; the next layers' calls with the same q/out buffers only swap in their caches.
    """
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    if out is None:
        out = torch.empty_like(q)
    programs = block_req.shape[0]
    if programs == 0:
        return out
    key = None
    if plan is not None and q.is_cuda:
        if replay_bound(plan, q, out, k_cache, v_cache, splits):
            return out
        key = plan_key(q, out, splits)
    num_reqs = seq_lens.shape[0]
    if splits is None:
        splits = decode_splits(num_reqs, kv_heads, max_seq_len, num_sms(q.device)) if block_q == 1 else 1
    if splits > 1:
        assert block_q == 1, "context splits are for decode-only batches"
        tile = SPLIT_TILE["BLOCK_N"]
        split_len = triton.cdiv(triton.cdiv(max_seq_len, splits), tile) * tile
        splits = triton.cdiv(max_seq_len, split_len)
        assert splits <= MAX_SPLITS, f"at most {MAX_SPLITS} context splits, got {splits}"
        part_acc, part_ml, arrived = _split_scratch(num_reqs * heads * splits, head_dim, q.device)
        grid = (num_reqs, kv_heads, splits)
        args = (
            q, k_cache, v_cache, out, part_acc, part_ml, arrived, block_tables, seq_lens,
            q.stride(0), out.stride(0), block_tables.stride(0), block_tables.shape[1], k_cache.stride(0),
            split_len, splits, scale * LOG2E,
        )  # fmt: skip
        meta = dict(GROUP=group, HEAD_DIM=head_dim, PAGE=page_size, BLOCK_M=max(16, triton.next_power_of_2(group)),
                    **SPLIT_TILE, GROUP_P2=triton.next_power_of_2(group), COMBINE_UNROLL=8)  # fmt: skip
        return _launch(_decode_split, grid, args, meta, plan, key)
    block_m = max(16, triton.next_power_of_2(block_q * group))
    window = 0
    if block_q == 1:  # decodes
        tile, window = DECODE_TILE, DECODE_PAGE_WINDOW
        assert window * page_size % tile["BLOCK_N"] == 0, "a key tile must not straddle two page windows"
    elif block_m <= 16:  # decodes beside small prefill chunks
        tile = MIXED_TILE
    else:
        tile = {"BLOCK_N": 32 if head_dim > 128 else 64, "num_warps": 4, "num_stages": 2}
    args = (
        q, k_cache, v_cache, out, block_tables, query_start, seq_lens, block_req, block_q0,
        q.stride(0), out.stride(0), block_tables.stride(0), block_tables.shape[1], k_cache.stride(0),
        scale * LOG2E,
    )  # fmt: skip
    # decode-only: a request's KV heads launch side by side, so the scheduler's longest-first order
    # (`Scheduler.longest_first`) is the launch order and neighbouring programs read the same pages
    heads_first = block_q == 1 and DECODE_HEADS_FIRST
    meta = dict(GROUP=group, HEAD_DIM=head_dim, PAGE=page_size, BLOCK_Q=block_q, BLOCK_M=block_m, **tile,
                HEADS_FIRST=heads_first, PAGE_WINDOW=window)  # fmt: skip
    grid = (kv_heads, programs) if heads_first else (programs, kv_heads)
    return _launch(_paged_attention, grid, args, meta, plan, key)


def replay_bound(
    plan: dict[tuple[int, ...], Callable[[torch.Tensor, torch.Tensor], bool]],
    q: torch.Tensor,
    out: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    splits: int | None = None,
) -> bool:
    """Launch what the step's `plan` bound for these query and output buffers with this layer's
    caches; False (nothing launched) when nothing is bound or the caches do not fit it."""
    bound = plan.get(plan_key(q, out, splits))
    return bound is not None and bound(k_cache, v_cache)


def plan_key(q: torch.Tensor, out: torch.Tensor, splits: int | None = None) -> tuple[int, ...]:
    """The key of a launch bound in a step's `plan`: the same query and output buffers, rows, stream
    and split choice (the first layer's call binds it, the next layers' find it)."""
    stream = torch._C._cuda_getCurrentRawStream(q.device.index)
    return (q.data_ptr(), out.data_ptr(), q.shape[0], stream, splits or 0)


def _launch(
    kernel: FastKernel,
    grid: tuple[int, ...],
    args: tuple[Any, ...],
    meta: dict[str, Any],
    plan: dict[tuple[int, ...], Callable[[torch.Tensor, torch.Tensor], bool]] | None,
    key: tuple[int, ...] | None,
) -> torch.Tensor:
    """Launch, and bind the launch into the step's plan (the layer caches, args 1 and 2, swapped in
    by the next layers); returns the output tensor (args 3)."""
    kernel(grid, *args, **meta)
    if key is not None and plan is not None:
        launch = kernel.bind(grid, (1, 2), *args, **meta)
        if launch is not None:
            plan[key] = launch
    return args[3]
