"""Decode attention over the paged cache: time per call against the number of context splits; JSON.

  python bench/bench_attention.py --out bench/results/attention-splits.json

For decode batches of b requests at context c (qwen3 heads: 32 query / 8 KV heads of 128, pages of
16), it times the paged attention kernel with the context split 1..16 ways (flash-decoding; the last
split of each request and KV head to finish combines them), inside a CUDA graph of 20 calls, beside
the split count `decode_splits` picks. The rule in `paged_attention.decode_splits` and the tiles
(`--sweep-tiles`) are set from this table. `--workload` times split counts and tiles at uneven
contexts, as in the mgsm-like workload (`--batches ''` skips the uniform table). `--mixed` times
steps of decodes beside a prefill chunk with 64-row and with 16-row query tiles
(`context.SMALL_TILE_TOKENS` is set from it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any

import torch
import triton
from bench_gemm import emit, time_us  # type: ignore[import-not-found]

from graphpilot.runtime.engine import context
from graphpilot.runtime.engine.context import build_attention_metadata
from graphpilot.runtime.kernels import paged_attention as pa
from graphpilot.runtime.kernels.launch import num_sms
from graphpilot.runtime.kernels.paged_attention import decode_splits, paged_attention


def attend(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: Any, page: int, splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    return paged_attention(
        q, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens, meta.block_req,
        meta.block_q0, meta.block_q, page, q.shape[-1] ** -0.5, out=out, max_seq_len=meta.max_seq_len,
        splits=splits)  # fmt: skip


def time_splits(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: Any, page: int, splits: int
) -> float:
    out = torch.empty_like(q)
    return round(time_us(lambda: attend(q, k_cache, v_cache, meta, page, splits, out)), 2)


def decode_batch(
    b: int, c: int | list[int], heads: int, kv_heads: int, page: int, dev: torch.device
) -> tuple[Any, ...]:
    contexts = c if isinstance(c, list) else [c] * b
    return step_batch([1] * b, contexts, heads, kv_heads, page, dev)


def step_batch(
    query_lens: list[int], contexts: list[int], heads: int, kv_heads: int, page: int, dev: torch.device
) -> tuple[Any, ...]:
    """q, K/V caches (each request's pages its own) and the paged metadata of one step."""
    pages = -(-max(contexts) // page)
    tables = [list(range(1 + i * pages, 1 + i * pages + -(-ci // page))) for i, ci in enumerate(contexts)]
    meta = build_attention_metadata(query_lens, contexts, tables, page, dev, paged_group=heads // kv_heads)
    k_cache = torch.randn((len(contexts) * pages + 1) * page, kv_heads, 128, dtype=torch.bfloat16, device=dev)
    q = torch.randn(sum(query_lens), heads, 128, dtype=torch.bfloat16, device=dev)
    return q, k_cache, torch.randn_like(k_cache), meta


def sweep_tiles(heads: int, kv_heads: int, page: int, dev: torch.device) -> list[dict[str, Any]]:
    """Decode tiles against each other at the split count the rule picks (`SPLIT_TILE` where it
    splits, `DECODE_TILE` where it does not)."""
    rows = []
    for b, c in ((1, 512), (8, 512), (32, 512), (32, 1024), (64, 512)):
        q, k_cache, v_cache, meta = decode_batch(b, c, heads, kv_heads, page, dev)
        splits = decode_splits(b, kv_heads, c, num_sms(dev))
        tile = pa.SPLIT_TILE if splits > 1 else pa.DECODE_TILE
        default, times = dict(tile), {}
        for block_n, warps, stages in itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3)):
            tile.update(BLOCK_N=block_n, num_warps=warps, num_stages=stages)
            try:
                times[f"n{block_n}w{warps}s{stages}"] = time_splits(q, k_cache, v_cache, meta, page, splits)
            except triton.runtime.errors.OutOfResources:
                continue
        tile.update(default)
        best = min(times, key=times.__getitem__)
        rows.append({"batch": b, "context": c, "splits": splits, "us_by_tile": times, "best": best})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def workload_contexts(b: int, seed: int = 0) -> list[int]:
    """Decode contexts as in the mgsm-like workload's steady state: a 64..512-token prompt plus
    0..255 generated tokens, different for every request."""
    g = torch.Generator().manual_seed(seed)
    return [int(torch.randint(64, 513, (1,), generator=g)) + int(torch.randint(0, 256, (1,), generator=g))
            for _ in range(b)]  # fmt: skip


def sweep_workload(heads: int, kv_heads: int, page: int, dev: torch.device) -> list[dict[str, Any]]:
    """Split counts and tiles at the workload's uneven contexts: the longest request sets the
    unsplit kernel's time, splitting evens the programs out."""
    rows = []
    for b in (16, 32, 64):
        contexts = workload_contexts(b)
        q, k_cache, v_cache, meta = decode_batch(b, contexts, heads, kv_heads, page, dev)
        times = {}
        for splits in (1, 2, 3, 4, 6, 8):
            tile = pa.SPLIT_TILE if splits > 1 else pa.DECODE_TILE
            default = dict(tile)
            for block_n, warps, stages in itertools.product((32, 64, 128), (4,), (1, 2, 3)):
                tile.update(BLOCK_N=block_n, num_warps=warps, num_stages=stages)
                try:
                    times[f"x{splits}n{block_n}w{warps}s{stages}"] = time_splits(
                        q, k_cache, v_cache, meta, page, splits
                    )
                except triton.runtime.errors.OutOfResources:
                    continue
            tile.update(default)
        best = min(times, key=times.__getitem__)
        chosen = decode_splits(b, kv_heads, max(contexts), num_sms(dev))
        rule = time_splits(q, k_cache, v_cache, meta, page, chosen)
        kv_bytes = sum(contexts) * kv_heads * 128 * 2 * 2
        rows.append({"batch": b, "contexts": contexts, "kv_bytes": kv_bytes, "us_by_config": times,
                     "best": best, "best_us": times[best], "rule_splits": chosen, "rule_us": rule})  # fmt: skip
        print(
            json.dumps({k: v for k, v in rows[-1].items() if k not in ("contexts", "us_by_config")}),
            file=sys.stderr,
        )
    return rows


def sweep_mixed(heads: int, kv_heads: int, page: int, dev: torch.device) -> list[dict[str, Any]]:
    """Decodes at the workload's contexts beside one prefill chunk: the step's attention with 64-row
    query tiles (each decode request a mostly empty tile) against 16-row ones, and their outputs."""
    rows = []
    rule = context.query_block_size
    for decodes, chunk, prefix in ((32, 32, 268), (32, 96, 204), (32, 96, 504), (32, 224, 276), (32, 480, 0),
                                   (8, 480, 0), (1, 480, 0), (4, 96, 204)):  # fmt: skip
        query_lens = [1] * decodes + [chunk]
        contexts = [*workload_contexts(decodes), prefix + chunk]
        q, k_cache, v_cache, _ = step_batch(query_lens, contexts, heads, kv_heads, page, dev)
        row: dict[str, Any] = {"decodes": decodes, "chunk": chunk, "chunk_context": prefix + chunk}
        outs = []
        for name, rows_ in (("rows64", 64), ("rows16", 16)):
            context.query_block_size = lambda *_, r=rows_: r // (heads // kv_heads)  # type: ignore[assignment]
            forced = step_batch(query_lens, contexts, heads, kv_heads, page, dev)[3]
            context.query_block_size = rule
            row[f"{name}_us"] = time_splits(q, k_cache, v_cache, forced, page, 1)
            outs.append(attend(q, k_cache, v_cache, forced, page).float())
        meta = step_batch(query_lens, contexts, heads, kv_heads, page, dev)[3]  # the rule's choice
        row["max_abs_diff"] = float((outs[0] - outs[1]).abs().max())
        row["rule"] = "rows16" if meta.block_q == 16 // (heads // kv_heads) else "rows64"
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,4,8,16,32,64")
    p.add_argument("--contexts", default="256,512,1024,2048")
    p.add_argument("--splits", default="1,2,3,4,6,8,12,16")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument(
        "--sweep-tiles", action="store_true", help="also time decode tiles (BLOCK_N, warps, stages)"
    )
    p.add_argument("--workload", action="store_true",
                   help="also time splits and tiles at the mgsm-like workload's uneven contexts")  # fmt: skip
    p.add_argument("--mixed", action="store_true",
                   help="also time decodes beside a prefill chunk with 64-row and 16-row query tiles")  # fmt: skip
    p.add_argument("--out")
    args = p.parse_args()
    heads, kv_heads, page = args.heads, args.kv_heads, 16
    dev = torch.device("cuda")
    rows = []
    for b in [int(x) for x in args.batches.split(",") if x]:
        for c in [int(x) for x in args.contexts.split(",")]:
            q, k_cache, v_cache, meta = decode_batch(b, c, heads, kv_heads, page, dev)
            times = {
                s: time_splits(q, k_cache, v_cache, meta, page, s) for s in map(int, args.splits.split(","))
            }
            best = min(times, key=times.__getitem__)
            chosen = decode_splits(b, kv_heads, c, num_sms(dev))
            row = {"batch": b, "context": c, "us_by_splits": times, "best_splits": best, "best_us": times[best],
                   "rule_splits": chosen, "rule_us": times.get(chosen)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "sms": num_sms(dev), "rows": rows}
    if args.sweep_tiles:
        result["tiles"] = sweep_tiles(heads, kv_heads, page, dev)
    if args.workload:
        result["workload"] = sweep_workload(heads, kv_heads, page, dev)
    if args.mixed:
        result["mixed"] = sweep_mixed(heads, kv_heads, page, dev)
    emit(result, args.out)


if __name__ == "__main__":
    main()
