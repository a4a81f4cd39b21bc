"""Per-forward metadata that live-batch ops (attention) read, so model.forward stays (ids, positions).

The host prepares one step's inputs with numpy and ships them to the device in a single copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np
import torch

# a step of decodes and prefill chunks up to this many tokens may take 16-row query tiles
# (`query_block_size`; measured on an H200, `bench/bench_attention.py --mixed`)
SMALL_TILE_TOKENS = 512


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] KV slot each token writes
    query_start: list[int]  # per request: first row of its query tokens
    query_lens: list[int]  # per request: tokens in this forward
    context_lens: list[int]  # per request: KV length after this forward
    # paged kernel (GPU): device tensors, filled when built with `paged_group`
    block_tables: torch.Tensor | None = None  # [num_reqs, max_pages]
    query_start_loc: torch.Tensor | None = None  # [num_reqs + 1]
    seq_lens: torch.Tensor | None = None  # [num_reqs]
    block_req: torch.Tensor | None = None  # [programs] request of each kernel program
    block_q0: torch.Tensor | None = None  # [programs] its first query token
    block_q: int = 1
    page_size: int = 16
    max_seq_len: int = 0
    plan: dict[Any, Any] = field(default_factory=dict)  # the step's bound kernel launches (paged_attention)
    # torch path (CPU, reference): per-request tensors
    kv_slots: list[torch.Tensor] = field(default_factory=list)  # per request: [context_len] slots
    prefill_reqs: list[int] = field(default_factory=list)  # requests with > 1 query token
    prefill_masks: list[torch.Tensor | None] = field(default_factory=list)  # [q, context] or None
    decode_rows: torch.Tensor | None = None  # [num_decode] rows of single-token requests
    decode_kv_slots: torch.Tensor | None = None  # [num_decode, max_kv] their context slots, 0-padded
    decode_mask: torch.Tensor | None = None  # [num_decode, 1, 1, max_kv] True on real keys


@dataclass
class ForwardContext:
    num_tokens: int  # real tokens of the live batch (graph buckets may pad above this)
    attn: AttentionMetadata


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    sample_rows: torch.Tensor  # [num_sampled] rows whose hidden state is sampled
    attn: AttentionMetadata


_context: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    assert _context is not None, "attention ran outside a forward context"
    return _context


@contextmanager
def forward_context(ctx: ForwardContext) -> Iterator[ForwardContext]:
    global _context
    prev, _context = _context, ctx
    try:
        yield ctx
    finally:
        _context = prev


def build_step_inputs(
    token_ids: Sequence[int] | None,
    query_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device,
    paged_group: int | None = None,
    sample_rows: Sequence[int] = (),
) -> StepInputs:
    """Device inputs of one forward; request i computes its last query_lens[i] of context_lens[i] positions.

    `paged_group` (query heads per KV head) selects the paged kernel's metadata; None builds the
    torch path's per-request tensors instead. Everything small travels in one host-to-device copy.
    """  # fmt: skip
    num_reqs = len(query_lens)
    ql = np.asarray(query_lens, dtype=np.int64)
    cl = np.asarray(context_lens, dtype=np.int64)
    max_pages = max(1, max(len(b) for b in block_tables))
    tables = np.zeros((num_reqs, max_pages), dtype=np.int64)
    for i, bt in enumerate(block_tables):
        tables[i, : len(bt)] = bt
    num_tokens = sum(query_lens)
    decode_only = max(query_lens) == 1  # every request one token: row i is request i's
    if decode_only:
        starts = np.arange(num_reqs, dtype=np.int64)
        req_of, positions = starts, cl - 1
    else:
        starts = np.cumsum(ql) - ql
        req_of = np.repeat(np.arange(num_reqs), ql)
        positions = (cl - ql)[req_of] + np.arange(num_tokens) - starts[req_of]
    slots = tables[req_of, positions // block_size] * block_size + positions % block_size
    ids = np.zeros(num_tokens, dtype=np.int64) if token_ids is None else np.asarray(token_ids, dtype=np.int64)
    parts = [ids, positions, slots, np.asarray(sample_rows, dtype=np.int64), tables.reshape(-1)]
    block_q = 1
    if paged_group is not None:
        query_start = np.append(starts, num_tokens)
        if decode_only:  # a program per request, at its one token
            parts += [query_start, cl, starts, np.zeros(num_reqs, dtype=np.int64)]
        else:
            block_q = query_block_size(int(ql.max()), int((ql == 1).sum()), paged_group, num_tokens)
            block_req, block_q0 = schedule_query_blocks(query_lens, block_q)
            parts += [query_start, cl, np.asarray(block_req, np.int64), np.asarray(block_q0, np.int64)]
    # each part starts on a 16-byte boundary: Triton specialises kernels on pointer alignment, and
    # misaligned views would compile a new variant whenever a part's offset changes
    sizes = [n for part in parts for n in (len(part), len(part) % 2)]  # each part, then its padding
    host = np.zeros(sum(sizes), dtype=np.int64)
    for part, at in zip(parts, list(accumulate(sizes, initial=0))[:-1:2], strict=True):  # part offsets
        host[at : at + len(part)] = part
    packed = torch.from_numpy(host).to(device, non_blocking=True)
    views = packed.split_with_sizes(sizes)[::2]
    meta = AttentionMetadata(
        slot_mapping=views[2],
        query_start=starts.tolist(),
        query_lens=list(query_lens),
        context_lens=list(context_lens),
        block_tables=views[4].view(num_reqs, max_pages),
        block_q=block_q,
        page_size=block_size,
        max_seq_len=int(max(context_lens)),
    )
    if paged_group is not None:
        meta.query_start_loc, meta.seq_lens, meta.block_req, meta.block_q0 = views[5:9]
    else:
        _add_torch_metadata(meta, views[4].view(num_reqs, max_pages), device)
    return StepInputs(input_ids=views[0], positions=views[1], sample_rows=views[3], attn=meta)


def query_block_size(max_query_len: int, decodes: int, group: int, num_tokens: int) -> int:
    """Query tokens per program: one in a decode-only batch; a 64-row tile of query rows in a
    prefill batch. Each decode request of a mixed step fills a tile of its own, mostly empty in a
    64-row one, so a step of at most `SMALL_TILE_TOKENS` tokens with at least one decode per 32
    prefill tokens takes 16-row tiles (the prefill chunks then take 4x the programs, each cheaper)."""
    if max_query_len == 1:
        return 1
    small = decodes > 0 and 32 * decodes >= num_tokens - decodes and num_tokens <= SMALL_TILE_TOKENS
    return max(1, (16 if small else 64) // group)


def schedule_query_blocks(query_lens: list[int], block_q: int) -> tuple[list[int], list[int]]:
    """(request, first query token) of every program, in order."""
    reqs: list[int] = []
    firsts: list[int] = []
    for r, n in enumerate(query_lens):
        for q0 in range(0, n, block_q):
            reqs.append(r)
            firsts.append(q0)
    return reqs, firsts


def build_attention_metadata(
    query_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device,
    paged_group: int | None = None,
) -> AttentionMetadata:
    """The attention part of `build_step_inputs` (tests, benchmarks, graph capture)."""
    return build_step_inputs(
        None, query_lens, context_lens, block_tables, block_size, device, paged_group
    ).attn


def _add_torch_metadata(meta: AttentionMetadata, tables: torch.Tensor, device: torch.device) -> None:
    bs, query_lens, context_lens = meta.page_size, meta.query_lens, meta.context_lens
    decode = [i for i, q in enumerate(query_lens) if q == 1]
    max_kv = max([context_lens[i] for i in decode], default=1)
    kpos = torch.arange(max_kv, device=device)
    decode_idx = torch.tensor(decode, dtype=torch.long).to(device, non_blocking=True)
    meta.decode_kv_slots = tables[decode_idx][:, kpos // bs] * bs + kpos % bs
    decode_lens = torch.tensor([context_lens[i] for i in decode], dtype=torch.long).to(
        device, non_blocking=True
    )
    meta.decode_mask = (kpos[None, :] < decode_lens[:, None])[:, None, None, :]
    meta.decode_rows = torch.tensor([meta.query_start[i] for i in decode], dtype=torch.long).to(
        device, non_blocking=True
    )
    meta.kv_slots = [_context_slots(tables[i], context_lens[i], bs) for i in range(len(query_lens))]
    meta.prefill_reqs = [i for i, q in enumerate(query_lens) if q > 1]
    meta.prefill_masks = [
        _prefix_causal_mask(query_lens[i], context_lens[i], device) for i in meta.prefill_reqs
    ]


def _context_slots(table: torch.Tensor, context_len: int, block_size: int) -> torch.Tensor:
    pos = torch.arange(context_len, device=table.device)
    return table[pos // block_size] * block_size + pos % block_size


def _prefix_causal_mask(q: int, c: int, device: torch.device) -> torch.Tensor | None:
    if q == c:
        return None  # no cached prefix: plain causal attention
    # query j sits at position c - q + j and sees keys 0 ..= that position
    return (torch.arange(c)[None, :] <= torch.arange(c - q, c)[:, None]).to(device, non_blocking=True)
