"""Per-forward metadata that live-batch ops (attention) read, so model.forward stays (ids, positions)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] KV slot each token writes
    query_start: list[int]  # per request: first row of its query tokens
    query_lens: list[int]  # per request: tokens in this forward
    context_lens: list[int]  # per request: KV length after this forward
    kv_slots: list[torch.Tensor]  # per request: [context_len] slots of its whole context
    prefill_reqs: list[int]  # requests with more than one query token (run one by one)
    prefill_masks: list[
        torch.Tensor | None
    ]  # per prefill request: [q, context] causal mask, None if no prefix
    decode_rows: torch.Tensor  # [num_decode] rows of single-token requests (run as one batch)
    decode_kv_slots: torch.Tensor  # [num_decode, max_kv] their context slots, 0-padded
    decode_mask: torch.Tensor  # [num_decode, 1, 1, max_kv] True on real keys


@dataclass
class ForwardContext:
    num_tokens: int  # real tokens of the live batch (graph buckets may pad above this)
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


def build_attention_metadata(
    query_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device,
) -> AttentionMetadata:
    """Metadata for a batch; request i computes its last query_lens[i] of context_lens[i] positions.

    Slots are derived on the device from the block tables: the host only ships [num_reqs, max_blocks].
    """  # fmt: skip
    num_reqs = len(query_lens)
    max_blocks = max(len(b) for b in block_tables)
    flat = [b for bt in block_tables for b in (*bt, *([0] * (max_blocks - len(bt))))]
    tables = torch.tensor(flat, dtype=torch.long).view(num_reqs, max_blocks).to(device, non_blocking=True)
    ql = torch.tensor(query_lens, dtype=torch.long)
    cl = torch.tensor(context_lens, dtype=torch.long)
    # per token: its request and position -> its slot
    req_of = torch.repeat_interleave(torch.arange(num_reqs), ql)
    starts = torch.cumsum(ql, 0) - ql
    pos = (cl - ql)[req_of] + torch.arange(len(req_of)) - starts[req_of]
    req_of, pos = req_of.to(device, non_blocking=True), pos.to(device, non_blocking=True)
    slot_mapping = tables[req_of, pos // block_size] * block_size + pos % block_size
    decode = [i for i, q in enumerate(query_lens) if q == 1]
    max_kv = max([context_lens[i] for i in decode], default=1)
    kpos = torch.arange(max_kv, device=device)
    decode_idx = torch.tensor(decode, dtype=torch.long).to(device, non_blocking=True)
    decode_slots = tables[decode_idx][:, kpos // block_size] * block_size + kpos % block_size
    decode_lens = cl[decode].to(device, non_blocking=True)
    prefill_reqs = [i for i, q in enumerate(query_lens) if q > 1]
    return AttentionMetadata(
        slot_mapping=slot_mapping,
        query_start=starts.tolist(),
        query_lens=list(query_lens),
        context_lens=list(context_lens),
        kv_slots=[_context_slots(tables[i], context_lens[i], block_size) for i in range(num_reqs)],
        prefill_reqs=prefill_reqs,
        prefill_masks=[_prefix_causal_mask(query_lens[i], context_lens[i], device) for i in prefill_reqs],
        decode_rows=starts[decode].to(device, non_blocking=True),
        decode_kv_slots=decode_slots,
        decode_mask=(kpos[None, :] < decode_lens[:, None])[:, None, None, :],
    )


def _context_slots(table: torch.Tensor, context_len: int, block_size: int) -> torch.Tensor:
    pos = torch.arange(context_len, device=table.device)
    return table[pos // block_size] * block_size + pos % block_size


def _prefix_causal_mask(q: int, c: int, device: torch.device) -> torch.Tensor | None:
    if q == c:
        return None  # no cached prefix: plain causal attention
    # query j sits at position c - q + j and sees keys 0 ..= that position
    return (torch.arange(c)[None, :] <= torch.arange(c - q, c)[:, None]).to(device, non_blocking=True)
