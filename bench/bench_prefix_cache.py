"""Prefix caching side by side: requests that share a long system prompt, with and without it; prints JSON.

  python bench/bench_prefix_cache.py --preset tiny --out bench/results/prefix-cache-tiny-cpu.json
  python bench/bench_prefix_cache.py --preset qwen3-0.6b --load-format dummy --out prefix-0.6b.json  # GPU

`--requests` requests each send the same `--system-tokens`-token system prompt followed by a question
of their own (`--question-tokens` random tokens) and generate `--output-tokens` greedy tokens, at most
`--concurrency` in flight. The same engine settings run with prefix caching on, off, on without
waiting for a prompt block another request is computing (`Scheduler.wait_for_shared_prefix`), and on
again (so a drift of the host shows); each run reports the wall time, the prompt tokens the engine
computed (prefill work) against those it found cached, and the time to the first token of each
request (mean and p90), measured as the engine step that returns it.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from typing import Any

import torch

from graphpilot.runtime.config import EngineConfig
from graphpilot.runtime.engine.engine import Engine
from graphpilot.runtime.engine.request import SamplingParams
from graphpilot.runtime.engine.scheduler import Scheduler
from graphpilot.runtime.models.presets import init_model


def prompts(vocab: int, args: argparse.Namespace) -> list[list[int]]:
    g = torch.Generator().manual_seed(args.seed)
    system = torch.randint(0, vocab, (args.system_tokens,), generator=g).tolist()
    return [system + torch.randint(0, vocab, (args.question_tokens,), generator=g).tolist()
            for _ in range(args.requests)]  # fmt: skip


def run(engine: Engine, ps: list[list[int]], args: argparse.Namespace) -> dict[str, Any]:
    params = SamplingParams(max_tokens=args.output_tokens, temperature=0.0, ignore_eos=True)
    pool = engine.kv.pool
    hits = pool.hit_tokens
    waiting, arrived, ttft, outputs = list(ps), {}, [], {}
    start = time.perf_counter()
    while waiting or engine.has_unfinished():
        while waiting and len(arrived) - len(outputs) < args.concurrency:
            rid = engine.add_request(waiting.pop(0), params)
            arrived[rid] = time.perf_counter()
        for out in engine.step():
            if out.num_output_tokens == 1:
                ttft.append(time.perf_counter() - arrived[out.request_id])
            if out.finished:
                outputs[out.request_id] = out.text
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    ttft.sort()
    cached = pool.hit_tokens - hits
    return {
        "prefix_caching": pool.prefix_caching, "seconds": round(seconds, 3),
        "prompt_tokens_cached": cached, "prompt_tokens_computed": sum(len(p) for p in ps) - cached,
        "output_tokens_per_s": round(len(ps) * args.output_tokens / seconds, 1),
        "ttft_mean_ms": round(1000 * sum(ttft) / len(ttft), 2), "ttft_p90_ms": round(1000 * ttft[int(0.9 * (len(ttft) - 1))], 2),
        "texts": [outputs[rid] for rid in arrived],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--system-tokens", type=int, default=1024)
    p.add_argument("--question-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args()
    model = init_model(args.preset, tempfile.mkdtemp(prefix="prefix-bench-"))
    result: dict[str, Any] = {"preset": args.preset, "host": platform.processor() or platform.machine(),
                              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": []}  # fmt: skip
    engines = {
        on: Engine(EngineConfig(model=model, load_format=args.load_format, progress=False,
                                max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=on))
        for on in (True, False)
    }  # fmt: skip
    ps = prompts(engines[True].model_config.vocab_size, args)
    for on, wait in ((True, True), (False, True), (True, False), (True, True)):
        engine = engines[on]
        engine.kv.pool.reset_prefix_cache()  # each run starts from an empty cache
        Scheduler.wait_for_shared_prefix = wait
        result["runs"].append({**run(engine, ps, args), "wait_for_shared_prefix": wait})
    Scheduler.wait_for_shared_prefix = True
    texts = [r.pop("texts") for r in result["runs"]]
    result["same_texts"] = all(t == texts[0] for t in texts)
    out = json.dumps(result, indent=2)
    print(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(out + "\n")


if __name__ == "__main__":
    main()
