"""Skinny GEMM (Triton) against cuBLAS (`F.linear`) on the weight shapes of a decode step; prints JSON.

  python bench/bench_gemm.py --shapes qwen3-0.6b,qwen3-8b --out bench/results/gemm.json

For each weight matrix of the stack (qkv, o, gate_up, down, lm_head) and each row count it times
both, inside a CUDA graph of 20 calls (no launch overhead), and reports microseconds per call and
the weight-read bandwidth. `--sweep` also times every tile configuration of the skinny kernel.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any

import torch
import torch.nn.functional as F
import triton

from graphpilot.runtime.kernels.gemm import MAX_ROWS, skinny_config, skinny_mm
from graphpilot.runtime.layers.linear import graph_us
from graphpilot.runtime.models.presets import PRESETS


def weight_shapes(shape: str) -> dict[str, tuple[int, int]]:
    c = PRESETS[shape]
    h, d = c["hidden_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    return {
        "qkv": (q + 2 * kv, h), "o": (h, q), "gate_up": (2 * c["intermediate_size"], h),
        "down": (h, c["intermediate_size"]), "lm_head": (c["vocab_size"], h),
    }  # fmt: skip


def time_us(fn: Any, reps: int = 20) -> float:
    """Median microseconds per call of `fn`, replayed `reps` times inside one CUDA graph."""
    return graph_us(fn, reps, iters=15)


def emit(result: dict[str, Any], out: str | None) -> None:
    """Print the result's JSON and write it to `out` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="qwen3-0.6b,qwen3-8b")
    p.add_argument("--rows", default="1,2,4,8,16")
    p.add_argument("--sweep", action="store_true", help="time every tile configuration")
    p.add_argument("--out")
    args = p.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows_out = []
    for shape in args.shapes.split(","):
        for name, (n, k) in weight_shapes(shape).items():
            w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
            for m in [int(r) for r in args.rows.split(",") if int(r) <= MAX_ROWS]:
                x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
                out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
                cublas = time_us(lambda x=x, w=w, out=out: torch.mm(x, w.t(), out=out))
                ours = time_us(lambda x=x, w=w, out=out: skinny_mm(x, w, out=out))
                err = (skinny_mm(x, w).float() - F.linear(x, w).float()).abs().max().item()
                row: dict[str, Any] = {
                    "shape": shape, "weight": name, "n": n, "k": k, "rows": m,
                    "cublas_us": round(cublas, 2), "skinny_us": round(ours, 2),
                    "config": "{}x{}s{}".format(*skinny_config(n, sms)), "speedup": round(cublas / ours, 3),
                    "skinny_tb_per_s": round(2 * n * k / ours / 1e6, 3),
                    "cublas_tb_per_s": round(2 * n * k / cublas / 1e6, 3), "max_abs_diff": err,
                }  # fmt: skip
                if args.sweep:
                    sweep = {}
                    for bn, bk, st in itertools.product((16, 32, 64, 128), (128, 256, 512), (3, 4)):
                        try:
                            t = time_us(lambda x=x, w=w, out=out, bn=bn, bk=bk, st=st: skinny_mm(
                                x, w, out=out, block_n=bn, block_k=bk, num_stages=st))  # fmt: skip
                        except triton.runtime.errors.OutOfResources:
                            continue  # the tile does not fit in shared memory
                        sweep[f"{bn}x{bk}s{st}"] = round(t, 2)
                    best = min(sweep, key=sweep.__getitem__)
                    row["best_config"], row["best_us"], row["sweep"] = best, sweep[best], sweep
                rows_out.append(row)
                print(json.dumps(row), file=sys.stderr)
            del w
    emit({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows_out}, args.out)


if __name__ == "__main__":
    main()
