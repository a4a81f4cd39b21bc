"""The mgsm-like workload through the real scheduler, timed with a GPU run's measured step costs; JSON.

  python bench/sim_schedule.py --costs bench/results/graphs-qwen3-8b.json --budgets 64,96,128,160,192,256 \
      --out bench/results/sim-schedule-8b.json

Runs on the CPU in seconds. It drives `Scheduler` the way the async engine does (a step is scheduled
while the one before it is in flight: requests sampled in that step carry a placeholder token and
finish when it is read), with the same prompts as `bench_graphs.py`, and charges every step the
mean time the GPU run measured for its kind and bucket ("decode@32", "prefill@128", ... in the JSON's
`step_kinds`; a kind the run never had costs its bucket's replay time plus the gap between the two
at the nearest bucket of that kind the run had). So scheduler changes can be compared on step
counts, which the model gets exactly for the run it was fitted to, before a GPU confirms the time.
`--budgets` tries other mixed-step token budgets (a larger chunk's extra attention is not modelled,
so budgets above the run's are flattered).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from typing import Any

from bench_gemm import emit  # type: ignore[import-not-found]
from bench_graphs import make_prompts  # type: ignore[import-not-found]

from graphpilot.runtime.engine.kv_cache import BlockPool
from graphpilot.runtime.engine.request import Request, SamplingParams
from graphpilot.runtime.engine.scheduler import Scheduler


class StepCosts:
    """Seconds of a step by kind and bucket, from a `bench_graphs.py` run at concurrency > 1."""

    def __init__(self, result: dict[str, Any]) -> None:
        run = next(r for r in result["runs"] if r["backend"] == "cuda" and r["concurrency"] > 1)
        self.mixed_step_tokens = run["mixed_step_tokens"]
        self.measured = {k: v["mean_ms"] / 1000 for k, v in run["step_kinds"].items()}
        self.replay = {b["num_tokens"]: b["replay_seconds"] for b in result["graphs"]["per_bucket"]}
        self.buckets = sorted(self.replay)
        self.gaps: dict[str, dict[int, float]] = {"decode": {}, "prefill": {}}  # step time - replay
        for key, seconds in self.measured.items():
            kind, bucket = key.split("@")
            if int(bucket) in self.replay:
                self.gaps[kind][int(bucket)] = seconds - self.replay[int(bucket)]

    def __call__(self, num_tokens: int, decode_only: bool) -> tuple[str, float]:
        bucket = next(b for b in self.buckets if b >= num_tokens)
        kind = "decode" if decode_only else "prefill"
        key = f"{kind}@{bucket}"
        if key in self.measured:
            return key, self.measured[key]
        nearest = min(self.gaps[kind], key=lambda b: abs(math.log(b / bucket)))
        return key, self.replay[bucket] + self.gaps[kind][nearest]


def simulate(
    costs: StepCosts, prompt_lens: list[int], output_len: int, concurrency: int, budget: int
) -> dict[str, Any]:
    sched = Scheduler(BlockPool(1 << 20, 16), 2048, concurrency, budget)
    params = SamplingParams(max_tokens=output_len, ignore_eos=True)
    for n in prompt_lens:
        sched.add(Request([1] * n, params))
    inflight: list[Request] | None = None
    seconds, kinds = 0.0, {}
    while sched.has_unfinished() or inflight is not None:
        batch, launched = sched.schedule(), None
        if batch is not None:
            launched = []
            for req, n in zip(batch.requests, batch.num_new_tokens, strict=True):
                req.num_computed_tokens += n
                if req.num_computed_tokens == req.num_tokens:
                    launched.append(req)
            key, cost = costs(batch.num_tokens, batch.num_tokens == len(batch.requests))
            seconds += cost
            kinds[key] = kinds.get(key, 0) + 1
        for req in inflight or ():  # the host reads the step before: placeholders become tokens
            if not req.finished:
                req.output_token_ids[-1] = 0
                if req.at_max_tokens:
                    sched.finish(req, "length")
        for req in launched or ():
            if not req.finished:
                req.output_token_ids.append(-1)
        inflight = launched
    tokens = len(prompt_lens) * output_len
    return {
        "steps": sum(kinds.values()), "seconds": round(seconds, 3), "output_tokens_per_s": round(tokens / seconds, 1),
        "step_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--costs", default="bench/results/graphs-qwen3-8b.json", help="a bench_graphs.py result")
    p.add_argument("--num-requests", type=int, default=200)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seeds", default="0,1,2", help="prompt seeds (bench_graphs.py uses 0)")
    p.add_argument("--budgets", default="", help="mixed-step token budgets to try (default: the run's)")
    p.add_argument("--out")
    args = p.parse_args()
    with open(args.costs) as f:
        costs = StepCosts(json.load(f))
    result: dict[str, Any] = {"costs": args.costs, "mixed_step_tokens": costs.mixed_step_tokens, "runs": []}
    budgets = [int(b) for b in args.budgets.split(",") if b] or [costs.mixed_step_tokens]
    default_release = Scheduler.release_complete
    for seed, budget in itertools.product((int(s) for s in args.seeds.split(",")), budgets):
        lens = [len(p) for p in make_prompts(151936, args.num_requests, seed)]
        for release in (True, False):  # the hand-over of a finished request's slot, and a step later
            Scheduler.release_complete = release
            run = simulate(costs, lens, args.output_len, args.concurrency, budget)
            result["runs"].append(
                {"seed": seed, "mixed_step_tokens": budget, "release_complete": release, **run}
            )
            print(
                json.dumps({k: v for k, v in result["runs"][-1].items() if k != "step_kinds"}),
                file=sys.stderr,
            )
    Scheduler.release_complete = default_release
    emit(result, args.out)


if __name__ == "__main__":
    main()
