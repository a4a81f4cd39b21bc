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
    prefill_masks: list[torch.Tensor | None]  # per prefill request: [q, context] causal mask, None if no prefix
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
    query_lens: list[int], context_lens: list[int], slots: list[list[int]], device: torch.device
) -> AttentionMetadata:
    """Metadata for a batch; slots[i] are request i's KV slots for positions [0, context_lens[i])."""
    query_start, slot_mapping, flat = [], [], []
    start = 0
    for q, c, s in zip(query_lens, context_lens, slots, strict=True):
        query_start.append(start)
        slot_mapping.extend(s[c - q : c])
        flat.extend(s[:c])
        start += q
    flat_t = torch.tensor(flat, dtype=torch.long).to(device, non_blocking=True)
    kv_slots = list(flat_t.split(list(context_lens)))
    decode = [i for i, q in enumerate(query_lens) if q == 1]
    max_kv = max([context_lens[i] for i in decode], default=1)
    table = torch.zeros(len(decode), max_kv, dtype=torch.long)
    for row, i in enumerate(decode):
        table[row, : context_lens[i]] = torch.tensor(slots[i][: context_lens[i]])
    lens = torch.tensor([context_lens[i] for i in decode], dtype=torch.long)
    mask = (torch.arange(max_kv)[None, :] < lens[:, None])[:, None, None, :]
    prefill_reqs = [i for i, q in enumerate(query_lens) if q > 1]
    prefill_masks = [_prefix_causal_mask(query_lens[i], context_lens[i], device) for i in prefill_reqs]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.long).to(device, non_blocking=True),
        query_start=query_start,
        query_lens=list(query_lens),
        context_lens=list(context_lens),
        kv_slots=kv_slots,
        prefill_reqs=prefill_reqs,
        prefill_masks=prefill_masks,
        decode_rows=torch.tensor([query_start[i] for i in decode], dtype=torch.long).to(device, non_blocking=True),
        decode_kv_slots=table.to(device, non_blocking=True),
        decode_mask=mask.to(device, non_blocking=True),
    )


def _prefix_causal_mask(q: int, c: int, device: torch.device) -> torch.Tensor | None:
    if q == c:
        return None  # no cached prefix: plain causal attention
    # query j sits at position c - q + j and sees keys 0 ..= that position
    return (torch.arange(c)[None, :] <= torch.arange(c - q, c)[:, None]).to(device, non_blocking=True)
