"""Host time of an engine step on the CUDA graph path: where the Python between launches goes; prints JSON.

  python bench/bench_host.py --shape qwen3-0.6b --out bench/results/host-qwen3-0.6b.json
  python bench/bench_host.py --cores-only    # the host operations alone, pinned to each CPU in turn
  python bench/bench_host.py --inputs-only   # building a step's inputs on the host (runs on a CPU)

A small model's decode step is bound by the host when the host's work per step (scheduling, the
step's inputs, a graph segment replay and an attention launch per layer, sampling, reading the
tokens back) takes as long as the GPU's. Over windows of consecutive decode steps this measures the
step (wall time) and, inside it, the host time spent replaying graph segments, running the breaks
(attention), in Triton's kernel launcher, and waiting for the device. `ratio_break_to_graph` (break
time over segment-replay time) compares launch paths across hosts of different speed: a segment
replay is one torch call whose cost only the host's speed changes. `--cores` also times a tensor
slice, a graph replay and a Python loop pinned to each CPU in turn. `--inputs-only` times
`build_step_inputs` alone, the numpy work that packs a step's inputs for its one host-to-device copy,
for decode steps of 1, 8 and 32 requests and a mixed step (31 decodes and a 96-token chunk) at
contexts of 64-767 tokens; it needs no GPU (on one, the copy is left to the device's queue).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from graphpilot.runtime.engine.context import build_step_inputs
from graphpilot.runtime.graphs import segments
from graphpilot.runtime.models.presets import init_model

_spent = {"graph": 0.0, "break": 0.0, "wait": 0.0, "launcher": 0.0}


def _instrument() -> None:
    """Time the host side of graph replays, breaks, Triton launches and event waits."""

    def replay(self: segments.CapturedBucket, n: int) -> None:
        clock = time.perf_counter
        for i, graph in enumerate(self.segments):
            t0 = clock()
            graph.replay()
            t1 = clock()
            _spent["graph"] += t1 - t0
            if i < len(self.breaks):
                self.breaks[i].run(n)
                _spent["break"] += clock() - t1

    segments.CapturedBucket.replay = replay  # type: ignore[method-assign]
    sync = torch.cuda.Event.synchronize

    def timed_sync(event: torch.cuda.Event) -> None:
        t0 = time.perf_counter()
        sync(event)
        _spent["wait"] += time.perf_counter() - t0

    torch.cuda.Event.synchronize = timed_sync  # type: ignore[method-assign]
    try:
        from triton.backends.nvidia.driver import CudaLauncher
    except ImportError:
        return
    call = CudaLauncher.__call__

    def timed_call(self: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = call(self, *args)
        _spent["launcher"] += time.perf_counter() - t0
        return out

    CudaLauncher.__call__ = timed_call  # type: ignore[method-assign]


def step_windows(shape: str, batches: list[int], windows: int, steps: int) -> list[dict[str, Any]]:
    import bench_graphs as bg  # the engine and the decode batches of the graphs benchmark

    model_dir = init_model(shape, tempfile.mkdtemp(prefix=f"{shape}-"))
    args = argparse.Namespace(max_num_batched_tokens=2048, mem_fraction_static=0.85, attention="auto")
    engine = bg.make_engine(model_dir, "cuda", max(batches), args)
    rows = []
    for batch in batches:
        for _ in range(windows):
            ids = bg.start_decoding(engine, batch, 256, max_tokens=steps + 16)
            for _ in range(4):
                engine.step()
            torch.cuda.synchronize()
            for k in _spent:
                _spent[k] = 0.0
            t0 = time.perf_counter()
            for _ in range(steps):
                engine.step()
            step_ms = 1000 * (time.perf_counter() - t0) / steps
            per_step = {f"{k}_ms": round(1000 * v / steps, 4) for k, v in _spent.items()}
            rows.append({
                "batch": batch, "step_ms": round(step_ms, 4), **per_step,
                "other_host_ms": round(step_ms - sum(1000 * v / steps for k, v in _spent.items() if k != "launcher"), 4),
                "ratio_break_to_graph": round(_spent["break"] / max(_spent["graph"], 1e-9), 2),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            for rid in ids:
                engine.abort(rid)
    return rows


def _us(fn: Callable[[], object], n: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    us = 1e6 * (time.perf_counter() - t0) / n
    torch.cuda.synchronize()
    return round(us, 2)


def _loop() -> int:
    total = 0
    for i in range(1000):
        total += i
    return total


def core_speeds(rounds: int) -> list[dict[str, Any]]:
    """A tensor slice, a one-kernel graph replay and a 1,000-step Python loop, pinned to each CPU."""
    x = torch.randn(64, 1024, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x.mul(2)  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x.mul(2)
    before = os.sched_getaffinity(0)
    rows = []
    try:
        for r in range(rounds):
            for cpu in sorted(before):
                os.sched_setaffinity(0, {cpu})
                time.sleep(0.01)
                rows.append({"round": r, "cpu": cpu, "slice_us": _us(lambda: x[:3], 20000),
                             "graph_replay_us": _us(graph.replay, 500), "python_loop_us": _us(_loop, 2000)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    finally:
        os.sched_setaffinity(0, before)
    return rows


def input_times(n: int = 3000) -> list[dict[str, Any]]:
    """Host microseconds of `build_step_inputs` per call (qwen3 heads: 4 query heads per KV head)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name, decodes, chunk in [("decode", 1, 0), ("decode", 8, 0), ("decode", 32, 0), ("mixed", 31, 96)]:
        query_lens = [1] * decodes + ([chunk] if chunk else [])
        context_lens = [64 + (97 * i) % 704 for i in range(decodes)] + ([chunk] if chunk else [])
        tables = [list(range(1000 * i, 1000 * i + -(-c // 16))) for i, c in enumerate(context_lens)]
        step = (
            list(range(sum(query_lens))),
            query_lens,
            context_lens,
            tables,
            16,
            device,
            4,
            list(range(len(query_lens))),
        )
        for _ in range(n // 10):
            build_step_inputs(*step)
        t0 = time.perf_counter()
        for _ in range(n):
            build_step_inputs(*step)
        us = 1e6 * (time.perf_counter() - t0) / n
        rows.append(
            {"step": name, "requests": len(query_lens), "tokens": sum(query_lens), "us": round(us, 1)}
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--windows", type=int, default=2, help="windows of decode steps per batch size")
    p.add_argument("--steps", type=int, default=96, help="decode steps per window")
    p.add_argument("--cores", action="store_true", help="also time host operations on every CPU")
    p.add_argument("--cores-only", action="store_true", help="only time host operations on every CPU")
    p.add_argument("--rounds", type=int, default=2, help="passes over the CPUs")
    p.add_argument("--inputs-only", action="store_true", help="only time building a step's inputs")
    p.add_argument("--out")
    args = p.parse_args()
    if args.inputs_only:
        result = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                  "inputs": input_times()}  # fmt: skip
        return _emit(result, args.out)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    result: dict[str, Any] = {
        "shape": args.shape,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    if not args.cores_only:
        _instrument()
        batches = [int(b) for b in args.batches.split(",") if b]
        result["windows"] = step_windows(args.shape, batches, args.windows, args.steps)
    if args.cores or args.cores_only:
        result["cores"] = core_speeds(args.rounds)
    _emit(result, args.out)


def _emit(result: dict[str, Any], out: str | None) -> None:
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
