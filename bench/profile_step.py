"""Where the time of one engine step goes (host side), for a decode-heavy run; prints tables.

python bench/profile_step.py --shape qwen3-0.6b --backend cuda --batch 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time

import torch

from graphpilot.runtime.config import EngineConfig
from graphpilot.runtime.engine.engine import Engine
from graphpilot.runtime.engine.request import SamplingParams
from graphpilot.runtime.models.presets import init_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--backend", default="cuda")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--max-total-tokens", type=int, default=200000)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None)
    args = p.parse_args()
    d = init_model(args.shape, tempfile.mkdtemp())
    engine = Engine(EngineConfig(model=d, load_format="dummy", graph_backend=args.backend, progress=False,
                                 max_total_tokens=args.max_total_tokens, async_scheduling=args.async_scheduling))  # fmt: skip
    params = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(list(range(100 + i, 400 + i)), params)
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    torch.cuda.synchronize()
    print(f"{args.backend} batch {args.batch}: {1000 * (time.perf_counter() - t0) / args.steps:.2f} ms/step")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        engine.step()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
    print(out.getvalue())
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as tp:
        for _ in range(5):
            engine.step()
    print(tp.key_averages().table(sort_by="self_cuda_time_total", row_limit=15)[-3500:])


if __name__ == "__main__":
    main()
