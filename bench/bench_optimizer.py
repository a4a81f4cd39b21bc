"""Decision time of the bucket optimiser (exact DP) on distributions over 1..8192 tokens; prints JSON.

    python bench/bench_optimizer.py [--out bench/results/bench_optimizer.json]

Worst case for the DP is every size 1..8192 observed (m = 8192 candidates); K up to 64; the runtime's
padding limit (0.5) and a graph-memory budget on. Times are wall-clock of `solve`, best and median of
`--repeat` runs, on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from graphpilot.sidecar.optimizer import Problem, solve
from graphpilot.sidecar.simulator import h200_table, table_problem

MAX_TOKENS = 8192


def distribution(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct sizes and forward counts."""
    if name == "uniform_all_8192":
        sizes = np.arange(1, MAX_TOKENS + 1)
        return sizes, rng.integers(1, 100, len(sizes)).astype(np.float64)
    if name == "zipf_all_8192":
        sizes = np.arange(1, MAX_TOKENS + 1)
        return sizes, 1e6 / sizes**1.1 + 0.01
    # serving mix: decode batches 1..256 plus mixed prefill chunks anywhere up to the batch limit
    decode = np.clip(rng.poisson(48, 40000), 1, 256)
    prefill = np.clip((rng.lognormal(np.log(900), 1.0, 20000)).astype(int), 1, MAX_TOKENS)
    sizes, counts = np.unique(np.concatenate((decode, prefill)), return_counts=True)
    return sizes, counts.astype(np.float64)


def problem(sizes: np.ndarray, weights: np.ndarray, k: int) -> Problem:
    """Costs from the H200 table, 4 GiB graph budget, coverage of the largest size, padding limit 0.5."""
    return table_problem(h200_table(), sizes, weights, k, budget=4 * 2**30, max_padding_ratio=0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name in ("uniform_all_8192", "zipf_all_8192", "serving_mix"):
        sizes, weights = distribution(name, rng)
        for k in (8, 16, 32, 64):
            p = problem(sizes, weights, k)
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                solution = solve(p)
                times.append(time.perf_counter() - t0)
            assert solution is not None
            rows.append({
                "distribution": name, "distinct_sizes": len(sizes), "max_buckets": k,
                "buckets": len(solution.buckets), "best_ms": round(1e3 * min(times), 2),
                "median_ms": round(1e3 * statistics.median(times), 2),
            })  # fmt: skip
    report = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "worst_median_ms": max(r["median_ms"] for r in rows),
        "results": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
