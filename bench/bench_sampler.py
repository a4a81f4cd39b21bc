"""The sampler on its own, side by side: the torch ops (sort-based top-k/top-p filter, a generator per
seeded request) against the sampling kernel, on the same logits.

    python bench/bench_sampler.py --out bench/results/sampler.json

Prints one JSON object: per case (rows, temperature/top-k/top-p/seed) the median time of a call,
host and device, for each path. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from graphpilot.runtime.engine.request import SamplingParams
from graphpilot.runtime.layers import sampler as sampler_mod
from graphpilot.runtime.layers.sampler import Sampler

CASES = {
    "temperature": {"temperature": 0.7},
    "temperature+seed": {"temperature": 0.7, "seed": 1},
    "top_p": {"temperature": 0.7, "top_p": 0.95},
    "top_p+seed": {"temperature": 0.7, "top_p": 0.95, "seed": 1},
    "top_k": {"temperature": 0.7, "top_k": 50},
    "top_k+top_p+seed": {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "seed": 1},
}


def time_call(sampler: Sampler, logits: torch.Tensor, params: list[SamplingParams], ids: list[str],
              repeats: int) -> dict[str, float]:  # fmt: skip
    """Median ms per call: until the host returns, and until the device has finished."""
    for _ in range(3):
        sampler(logits, params, ids)
    torch.cuda.synchronize()
    host, wall = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sampler(logits, params, ids)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        host.append(t1 - t0)
        wall.append(time.perf_counter() - t0)
    return {"host_ms": round(1e3 * statistics.median(host), 4), "ms": round(1e3 * statistics.median(wall), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--rows", default="1,8,32,64")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out")
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the sampling kernel runs on one)")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "vocab": args.vocab, "dtype": args.dtype,
                              "runs": []}  # fmt: skip
    for rows in [int(r) for r in args.rows.split(",")]:
        # logits of a trained model's scale: a few tokens stand out of a wide tail
        logits = (torch.randn(rows, args.vocab, device=dev, generator=g) * 3).to(getattr(torch, args.dtype))
        ids = [f"r{i}" for i in range(rows)]
        for name, kw in CASES.items():
            params = [SamplingParams(**kw)] * rows
            run: dict[str, Any] = {"rows": rows, "case": name}
            for path, fused in (("torch", False), ("kernel", True)):
                sampler_mod.FUSED_SAMPLING = fused
                run[path] = time_call(Sampler(dev, 0), logits, params, ids, args.repeats)
            sampler_mod.FUSED_SAMPLING = True
            run["speedup"] = round(run["torch"]["ms"] / run["kernel"]["ms"], 2)
            result["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
