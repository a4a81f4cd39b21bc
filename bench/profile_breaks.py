"""Where the breaks' cost goes: the device's idle time between kernels, and the host's time to issue
one forward, for the breakable stack against one unbroken CUDA graph of the same stack.

For `n` decode requests at a 512-token context (the break-cost setup of bench_graphs.py), each
forward runs under the torch profiler; the kernels of one forward, in start order, give its span
(first start to last end), the time kernels ran (busy) and the gaps, summed per pair of kernels on
either side of a gap (a negative gap is programmatic dependent launch overlapping two kernels).
`host_us_median` is the median host time of one forward's launches, without waiting for the
device. The runner captures buckets 1-32; sizes up to 32.

python bench/profile_breaks.py --shape qwen3-0.6b --sizes 1,2,4,16 --out bench/results/breaks-profile-0.6b.json
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_graphs import capture_unbroken, decode_batch  # type: ignore[import-not-found]
from torch.profiler import ProfilerActivity, profile

from graphpilot.runtime.config import EngineConfig
from graphpilot.runtime.engine.context import forward_context
from graphpilot.runtime.engine.engine import Engine
from graphpilot.runtime.models.presets import init_model


def _one_forward(prof: Any) -> list[Any]:
    """The device kernels of the middle forward of a profile (forwards are > 50 us apart)."""
    kernels = sorted(
        (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
        key=lambda e: e.time_range.start,
    )
    forwards, cur = [], [kernels[0]]
    for prev, e in itertools.pairwise(kernels):
        if e.time_range.start - prev.time_range.end > 50:
            forwards.append(cur)
            cur = []
        cur.append(e)
    forwards.append(cur)
    return forwards[len(forwards) // 2]


def measure(fn: Callable[[], Any], forwards: int = 5) -> dict[str, Any]:
    for _ in range(5):
        fn()
    host = []
    for _ in range(20):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        host.append(1e6 * (time.perf_counter() - start))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(forwards):
            fn()
            torch.cuda.synchronize()
    run = _one_forward(prof)
    gaps: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for prev, e in itertools.pairwise(run):
        gaps[(prev.name[:40], e.name[:40])].append(e.time_range.start - prev.time_range.end)
    busy = sum(e.time_range.elapsed_us() for e in run)
    span = run[-1].time_range.end - run[0].time_range.start
    pairs = sorted(gaps.items(), key=lambda kv: -sum(kv[1]))[:8]
    return {
        "host_us_median": round(statistics.median(host), 1), "kernels": len(run), "span_us": round(span, 1),
        "busy_us": round(busy, 1), "gap_us": round(span - busy, 1),
        "top_gaps": [{"sum": round(sum(v), 1), "n": len(v), "median": round(statistics.median(v), 2),
                      "pair": [a, b]} for (a, b), v in pairs],
    }  # fmt: skip


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--sizes", default="1,2,4,16")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--out")
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    engine = Engine(EngineConfig(
        model=init_model(args.shape, tempfile.mkdtemp()), load_format="dummy", graph_backend="cuda",
        progress=False, graph_buckets=(1, 2, 4, 8, 16, 32), max_total_tokens=200_000,
    ))  # fmt: skip
    result: dict[str, Any] = {}
    for n in sizes:
        ctx, ids, pos = decode_batch(engine, n, args.context)
        with forward_context(ctx):
            graph = capture_unbroken(engine, ids, pos)
            unbroken = measure(graph.replay)
            del graph
        breakable = measure(lambda ids=ids, pos=pos, ctx=ctx: engine.runner.forward(ids, pos, ctx))
        result[str(n)] = {"breakable": breakable, "unbroken": unbroken}
        print(json.dumps({n: result[str(n)]}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
