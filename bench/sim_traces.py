"""Simulated tuned vs static throughput on three traces; prints JSON (see docs/autotuner.md).

    python bench/sim_traces.py [--costs bench/results/bucket_costs_h200.json] [--out bench/results/sim_traces.json]

Each trace is a list of 10-second intervals of forwards (num_tokens -> count), from a seeded generator
of continuous-batching traffic: decode steps (num_tokens = running requests), prefill chunks of
prompts mixed with decodes, and long documents chunked at max_num_batched_tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from graphpilot.runtime.profile import default_buckets
from graphpilot.sidecar.settings import SidecarSettings
from graphpilot.sidecar.simulator import (
    CostTable,
    Trace,
    h200_table,
    hindsight_candidates,
    run_static,
    run_tuned,
)

MAX_NUM_BATCHED_TOKENS = 8192
TRACES = ("chat", "documents", "rag", "shifting")
FORWARDS_PER_INTERVAL = 400


def interval(rng: np.random.Generator, kind: str) -> dict[int, int]:
    """One interval of forwards for a traffic kind."""
    counts: dict[int, int] = {}
    for _ in range(FORWARDS_PER_INTERVAL):
        if kind == "chat":
            running = int(np.clip(rng.poisson(24), 1, 128))
            prompt = int(rng.lognormal(np.log(180), 0.6)) if rng.random() < 0.2 else 0
            n = running + prompt
        elif kind == "rag":  # retrieval prompts of a fixed template: lengths bunch just above 2048
            running = int(np.clip(rng.poisson(12), 1, 64))
            n = running + (int(rng.normal(2150, 40)) if rng.random() < 0.3 else 0)
        else:  # documents: few requests, prompts of 2k-30k tokens chunked at the batch limit
            running = int(np.clip(rng.poisson(6), 1, 32))
            if rng.random() < 0.45:
                prompt = int(rng.uniform(2000, 30000))
                chunk = MAX_NUM_BATCHED_TOKENS - running
                n = running + (chunk if rng.random() < prompt / (prompt + chunk) else prompt % chunk)
            else:
                n = running
        n = min(max(n, 1), MAX_NUM_BATCHED_TOKENS)
        counts[n] = counts.get(n, 0) + 1
    return counts


def make_trace(name: str, seed: int = 0, length: int = 90) -> Trace:
    """chat, documents, rag, or shifting (chat -> rag -> documents in thirds)."""
    rng = np.random.default_rng(seed)
    if name == "shifting":
        third = length // 3
        kinds = ["chat"] * third + ["rag"] * third + ["documents"] * (length - 2 * third)
    else:
        kinds = [name] * length
    return [interval(rng, k) for k in kinds]


def evaluate(name: str, costs: CostTable, settings: SidecarSettings) -> dict[str, object]:
    """Throughput (tokens per busy second) of the default ladder, the best static set in hindsight and the tuner."""
    trace = make_trace(name)
    default = default_buckets(MAX_NUM_BATCHED_TOKENS)
    statics = {tuple(default): "default"}
    for b in hindsight_candidates(trace, costs, settings.max_buckets, settings.memory_budget):
        statics.setdefault(b, f"dp_k{len(b)}")
    results = {
        b: run_static(trace, costs, b, max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS).throughput
        for b in statics
    }
    best = max(results, key=lambda b: results[b])
    rt, tuner = asyncio.run(
        run_tuned(trace, costs, default, settings, max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS)
    )
    decisions = [d for d in tuner.decisions if d.result not in ("skipped",)]
    return {
        "trace": name,
        "intervals": len(trace),
        "tokens": rt.tokens,
        "default_ladder": {"buckets": len(default), "tokens_per_second": round(results[tuple(default)], 1)},
        "best_static_hindsight": {
            "label": statics[best],
            "buckets": list(best),
            "tokens_per_second": round(results[best], 1),
        },
        "tuned": {
            "tokens_per_second": round(rt.throughput, 1),
            "applies": rt.applies,
            "final_buckets": list(rt.buckets),
            "decisions": [{"action": d.action, "result": d.result, "reason": d.reason} for d in decisions][
                :20
            ],
        },
        "tuned_vs_best_static": round(rt.throughput / results[best], 4),
        "tuned_vs_default": round(rt.throughput / results[tuple(default)], 4),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--costs", type=Path, help="cost table JSON (default: the architecture's H200 facts)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    costs = CostTable.load(args.costs) if args.costs else h200_table()
    settings = SidecarSettings(interval_seconds=10, cooldown_seconds=30, max_buckets=32)
    report = {
        "costs": costs.source,
        "settings": {
            "max_buckets": settings.max_buckets,
            "min_gain_ratio": settings.min_gain_ratio,
            "cooldown_seconds": settings.cooldown_seconds,
            "decay": settings.decay,
            "graph_memory_budget_bytes": settings.graph_memory_budget_bytes,
        },
        "traces": [evaluate(name, costs, settings) for name in TRACES],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
