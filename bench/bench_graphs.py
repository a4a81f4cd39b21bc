"""Breakable CUDA graphs vs eager on one GPU, side by side in one run; prints JSON.

  python bench/bench_graphs.py --shape qwen3-8b --out bench/results/graphs-qwen3-8b.json

Sections: the mgsm-like workload (prompts 64..512 tokens, 256 output tokens, all requests queued,
`concurrency` = max running requests) for each backend; per-bucket replay time, capture time and
graph memory of the default ladder; the cost of the breaks against one unbroken CUDA graph of the
same stack (decode batches of n requests at a fixed context); the weight-read floor of a decode step.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from graphpilot.runtime.config import EngineConfig
from graphpilot.runtime.engine import context
from graphpilot.runtime.engine.context import ForwardContext, forward_context
from graphpilot.runtime.engine.engine import Engine
from graphpilot.runtime.engine.request import SamplingParams
from graphpilot.runtime.engine.scheduler import Scheduler
from graphpilot.runtime.kernels import launch, paged_attention
from graphpilot.runtime.layers import linear, sampler
from graphpilot.runtime.models.presets import init_model


def make_engine(model_dir: str, backend: str, concurrency: int, args: argparse.Namespace) -> Engine:
    # e.g. cuda+sync: async scheduling off; cuda+cublas: cuBLAS for every matrix multiply; cuda+nocap:
    # a step with decodes takes prefill chunks up to max_num_batched_tokens (no mixed-step budget);
    # cuda+cap256: a mixed-step budget of 256 tokens instead of the measured one; +rows64, +hotgemm,
    # +nopdl and +nolpt: `previous_choices`
    graph_backend, *modes = backend.split("+")
    mixed = next((int(m[3:]) for m in modes if m.startswith("cap")), None)
    return Engine(EngineConfig(
        model=model_dir, load_format="dummy", graph_backend=graph_backend, max_running_requests=concurrency,
        mixed_step_tokens=args.max_num_batched_tokens if "nocap" in modes else mixed,
        async_scheduling=False if "sync" in modes else None, gemm_backend="cublas" if "cublas" in modes else "auto",
        max_num_batched_tokens=args.max_num_batched_tokens, mem_fraction_static=args.mem_fraction_static,
        attention_backend=args.attention, progress=False,
    ))  # fmt: skip


def make_prompts(vocab_size: int, num_requests: int, seed: int) -> list[list[int]]:
    """The mgsm-like prompts: 64..512 random token ids each, the same for every backend and peer."""
    g = torch.Generator().manual_seed(seed)
    vocab = min(vocab_size, 100000)
    return [torch.randint(0, vocab, (int(torch.randint(64, 513, (1,), generator=g)),), generator=g).tolist()
            for _ in range(num_requests)]  # fmt: skip


def workload(
    engine: Engine, num_requests: int, output_len: int, seed: int, temperature: float = 0.0
) -> dict[str, Any]:
    prompts = make_prompts(engine.model_config.vocab_size, num_requests, seed)
    params = SamplingParams(max_tokens=output_len, temperature=temperature, top_p=1.0 if temperature == 0 else 0.95,
                            ignore_eos=True, seed=None if temperature == 0 else seed)  # fmt: skip
    engine.runner.replays.clear()
    engine.runner.rejects.clear()
    cursor = engine.step_log.seq
    hits = engine.kv.pool.hit_tokens
    torch.cuda.synchronize()
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    w = engine.step_log.window(cursor)
    records = engine.step_log.records(cursor)
    step_ms = sorted(1000 * r.forward_seconds for r in records)
    generated = sum(len(o.token_ids) for o in outs)
    return {
        "num_requests": num_requests, "temperature": temperature, "output_tokens": generated, "seconds": round(seconds, 3),
        "output_tokens_per_s": round(generated / seconds, 1),
        "prompt_tokens": sum(len(p) for p in prompts), "steps": w.cursor - w.since,
        "prefix_cache_hit_tokens": engine.kv.pool.hit_tokens - hits,  # random prompts: none expected
        "replays": sum(w.replays.values()), "rejects": w.rejects, "padded_tokens": w.padded_tokens,
        "graph_tokens": w.graph_tokens, "eager_tokens": w.eager_tokens,
        "mean_step_ms": round(1000 * w.forward_seconds / max(1, w.cursor - w.since), 3),
        # what a running stream waits between tokens: a long step is a prefill chunk stalling it
        "p50_step_ms": round(step_ms[len(step_ms) // 2], 3), "p99_step_ms": round(step_ms[int(0.99 * (len(step_ms) - 1))], 3),
        "max_step_ms": round(step_ms[-1], 3), "mixed_step_tokens": engine.scheduler.mixed_step_tokens,
        "step_kinds": step_kinds(records),
    }  # fmt: skip


def step_kinds(records: list[Any]) -> dict[str, dict[str, float]]:
    """Steps by kind and bucket, e.g. "decode@32" (every token a decode) or "prefill@128" (with a
    prefill chunk, and any decodes beside it): how many, their mean and total time, largest total first."""
    kinds: dict[str, list[float]] = {}
    for r in records:
        kind = "decode" if r.num_tokens == r.generation_tokens else "prefill"
        kinds.setdefault(f"{kind}@{r.bucket if r.bucket is not None else r.num_tokens}", []).append(
            r.forward_seconds
        )
    rows = {k: {"steps": len(v), "mean_ms": round(1000 * sum(v) / len(v), 3), "total_s": round(sum(v), 3)}
            for k, v in kinds.items()}  # fmt: skip
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]["total_s"]))


def arrival_ttft_ms(
    engine: Engine, running: int = 31, prompt_len: int = 512, reps: int = 5
) -> dict[str, float]:
    """A prompt arriving while `running` requests decode: milliseconds to its first token, and the
    longest step the running streams wait meanwhile (median over `reps` arrivals)."""
    vocab = engine.model_config.vocab_size
    ids = start_decoding(engine, running, 256, max_tokens=1024)
    ttft, stall = [], []
    for rep in range(reps):
        for _ in range(4):
            engine.step()
        prompt = [t % vocab for t in range(5000 + rep * prompt_len, 5000 + (rep + 1) * prompt_len)]
        rid = engine.add_request(prompt, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = last = time.perf_counter()
        longest = 0.0
        while True:
            outs = engine.step()
            now = time.perf_counter()
            longest, last = max(longest, now - last), now
            if any(o.request_id == rid for o in outs):
                break
        ttft.append(1000 * (now - start))
        stall.append(1000 * longest)
    for rid in ids:
        engine.abort(rid)
    while engine.has_unfinished():
        engine.step()
    return {
        "ttft_ms": round(statistics.median(ttft), 2),
        "longest_step_ms": round(statistics.median(stall), 2),
    }


def start_decoding(engine: Engine, batch: int, prompt_len: int, max_tokens: int) -> list[str]:
    """Queue `batch` greedy requests and step until every one decodes (prefill may be chunked)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    ids = [engine.add_request([t % vocab for t in range(100 + i, 100 + i + prompt_len)], params)
           for i in range(batch)]  # fmt: skip
    reqs = [engine.requests[rid] for rid in ids]
    while not all(r.output_token_ids for r in reqs):
        engine.step()
    return ids


def decode_step_ms(engine: Engine, batch: int, prompt_len: int = 256, steps: int = 64) -> float:
    """Median wall time of one engine step (schedule, forward, logits, sampling) decoding `batch` requests."""
    ids = start_decoding(engine, batch, prompt_len, max_tokens=steps + 16)
    for _ in range(4):  # a few decode steps to warm up
        engine.step()
    # consecutive step returns, no extra synchronisation: a synchronous step waits for its tokens
    # anyway, and an async one must be free to overlap the next
    torch.cuda.synchronize()
    stamps = [time.perf_counter()]
    for _ in range(steps):
        engine.step()
        stamps.append(time.perf_counter())
    times = [1000 * (b - a) for a, b in itertools.pairwise(stamps)]
    for rid in ids:
        engine.abort(rid)
    return statistics.median(times)


def _median_ms(fn: Any, iters: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def decode_batch(engine: Engine, n: int, context: int) -> tuple[ForwardContext, torch.Tensor, torch.Tensor]:
    """The forward context, token ids and positions of `n` decode requests at `context` tokens each."""
    table = list(range(1, context // engine.kv.pool.block_size + 2))
    ctx = ForwardContext(n, engine.attention_metadata([1] * n, [context] * n, [table] * n))
    ids = torch.randint(0, 1000, (n,), device=engine.device)
    return ctx, ids, torch.full((n,), context - 1, device=engine.device)


def capture_unbroken(engine: Engine, ids: torch.Tensor, pos: torch.Tensor) -> torch.cuda.CUDAGraph:
    """One CUDA graph of the whole stack, the batch's metadata frozen in (call it in the batch's
    forward context); the stack runs once on a side stream first, outside the capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        engine.model.forward_stack(ids, pos)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        engine.model.forward_stack(ids, pos)
    return graph


@torch.inference_mode()
def break_cost(engine: Engine, sizes: list[int], context: int) -> list[dict[str, Any]]:
    """Step time of the stack for n decode requests: eager, breakable graphs, one unbroken graph."""
    model, runner = engine.model, engine.runner
    rows = []
    for n in sizes:
        ctx, ids, pos = decode_batch(engine, n, context)
        with forward_context(ctx):
            eager_ms = _median_ms(lambda ids=ids, pos=pos: model.forward_stack(ids, pos))
            graph = capture_unbroken(engine, ids, pos)
            unbroken_ms = _median_ms(graph.replay)
            del graph
        breakable_ms = _median_ms(lambda ids=ids, pos=pos, ctx=ctx: runner.forward(ids, pos, ctx))
        rows.append({
            "num_tokens": n, "context": context, "eager_ms": round(eager_ms, 4),
            "breakable_graph_ms": round(breakable_ms, 4), "unbroken_graph_ms": round(unbroken_ms, 4),
            "break_overhead_pct": round(100 * (breakable_ms / unbroken_ms - 1), 2),
            "bucket": runner.can_run(n)[0],
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), best of 20 after warm-up."""
    x = torch.empty(4 * 2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(10):
        y.copy_(x)
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        y.copy_(x)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return 2 * x.numel() / (min(times) / 1000)


def weight_bytes(engine: Engine) -> int:
    return sum(p.numel() * p.element_size() for p in engine.model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--runs", default="cuda:32,off:32,hf:32",
                   help="backend:concurrency, in order; +sync: async scheduling off; +cublas: cuBLAS for "
                        "every matrix multiply; +nocap: no mixed-step token budget; +capN: a budget of N tokens; "
                        "+rows64: 64-row query tiles in mixed steps; +hotgemm: GEMM kernels timed hot in L2; "
                        "+nopdl: no programmatic dependent launch; +nolpt: decode attention in "
                        "running order, one KV head at a time; +late: a finishing request's slot is "
                        "handed on once its last token is read; +nosnake: decode steps longest first throughout; "
                        "+nogated: the MLP's activation never in the gate/up multiply's epilogue; +torchsample: sampled "
                        "rows through torch ops, not the sampling kernel; hf: transformers' continuous batching")  # fmt: skip
    p.add_argument("--attention", default="auto", help="attention backend (auto: triton on CUDA)")
    p.add_argument("--skip-workload", action="store_true", help="decode steps and graphs only")
    p.add_argument("--arrival", action="store_true",
                   help="also time a 512-token prompt arriving beside 31 decoding requests (first token, "
                        "longest step of the running streams)")  # fmt: skip
    p.add_argument("--num-requests", type=int, default=200, help="at concurrency > 1")
    p.add_argument("--num-requests-c1", type=int, default=8, help="at concurrency 1 (sequential)")
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="of the workload (0: greedy, the default; above: sampled with top_p 0.95)")  # fmt: skip
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--mem-fraction-static", type=float, default=0.85)
    p.add_argument("--break-sizes", default="1,2,4,8,16,32,64,128,256")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--out")
    p.add_argument("--peer-json", help=argparse.SUPPRESS)  # internal: run the transformers peer only
    args = p.parse_args()
    model_dir = init_model(args.shape, tempfile.mkdtemp(prefix=f"{args.shape}-"))
    if args.peer_json:
        with open(args.peer_json, "w") as f:
            json.dump(hf_peer(model_dir, int(args.runs.split(":")[1]), args), f)
        return
    result: dict[str, Any] = {
        "shape": args.shape,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    result["copy_bandwidth_bytes_per_s"] = copy_bandwidth()
    result["fast_launch"] = os.environ.get("GRAPHPILOT_FAST_LAUNCH", "1") != "0"
    result["runs"] = []
    for spec in args.runs.split(","):
        backend, c = spec.split(":")[0], int(spec.split(":")[1])
        if backend == "hf":  # in a fresh process: the GPU memory our engines held is all back
            peer_json = os.path.join(tempfile.mkdtemp(), "peer.json")
            cmd = [sys.executable, __file__, "--shape", args.shape, "--runs", spec, "--peer-json", peer_json,
                   "--num-requests", str(args.num_requests), "--output-len", str(args.output_len)]  # fmt: skip
            proc = subprocess.run(cmd, check=False)
            if proc.returncode == 0:
                with open(peer_json) as f:
                    result["runs"].append(json.load(f))
            else:
                result["runs"].append(
                    {"backend": "transformers-cb", "concurrency": c, "error": proc.returncode}
                )
            save(result, args.out)
            continue
        t0 = time.perf_counter()
        restore = previous_choices(backend.split("+")[1:])
        engine = make_engine(model_dir, backend, c, args)
        run: dict[str, Any] = {"backend": backend, "concurrency": c, "engine_start_seconds": round(time.perf_counter() - t0, 2),
                               "load_seconds": round(engine.load_seconds, 2), "attention": engine.attn_backend,
                               "async_scheduling": engine.async_scheduling,
                               "skinny_gemm_shapes": len(engine.model.gemm.skinny),
                               "gated_mlp_rows": sorted(rows for _, _, rows in engine.model.gemm.gated)}  # fmt: skip
        result["runs"].append(run)
        if backend.startswith("cuda") and "graphs" not in result:
            result["weight_bytes"] = weight_bytes(engine)
            # floor: every weight byte read once at the measured copy bandwidth (bytes moved per second)
            result["decode_floor_ms"] = round(
                1000 * result["weight_bytes"] / result["copy_bandwidth_bytes_per_s"], 4
            )
            result["graphs"] = {
                "buckets": list(engine.runner.buckets), "capture_seconds": round(engine.runner.capture_seconds, 3),
                "graph_memory_bytes": engine.runner.graph_memory_bytes,
                "shared_boundary_bytes": engine.runner.shared.nbytes,
                "per_bucket": [s.to_dict() for s in sorted(engine.runner.bucket_stats.values(), key=lambda s: s.num_tokens)],
            }  # fmt: skip
            result["gemm"] = engine.model.gemm.measured
            save(result, args.out)
            sizes = [int(x) for x in args.break_sizes.split(",") if x]
            result["break_cost"] = break_cost(engine, sizes, args.context)
            save(result, args.out)
        if args.arrival and c >= 32:
            run["arrival_512_beside_31"] = arrival_ttft_ms(engine)
        run["decode_step_ms_batch1"] = round(decode_step_ms(engine, 1), 4)
        if c >= 32:
            run["decode_step_ms_batch32"] = round(decode_step_ms(engine, 32), 4)
        print(json.dumps(run), file=sys.stderr)
        save(result, args.out)
        n = args.num_requests if c > 1 else args.num_requests_c1
        if not args.skip_workload:
            run.update(workload(engine, n, args.output_len, seed=0, temperature=args.temperature))
        print(json.dumps(run), file=sys.stderr)
        save(result, args.out)
        del engine
        restore()
        gc.collect()
        torch.cuda.empty_cache()
    print(json.dumps(result, indent=2))


def previous_choices(modes: list[str]) -> Any:
    """For one engine's run, the choices before the current ones: +rows64, 64-row query tiles in
    every step with a prefill (not 16-row ones where decodes outnumber the prefill's tiles);
    +hotgemm, GEMM kernels timed on one weight, hot in L2 (not on copies cold in L2); +nopdl, every
    kernel launched only once the one before it has finished (`launch.dependent_launch` off); +nolpt,
    decode-only steps in running order with the decode attention grid (requests, KV heads), not
    longest context first with a request's KV heads side by side; +late, a request that has all its
    tokens keeps its slot until the host reads the last one (a step later under async scheduling);
    +nosnake, decode-only steps longest context first throughout, not back and forth in rounds of
    `decode_round` requests; +nogated, the MLP's gate/up multiply and its activation as two kernels
    everywhere (the gated skinny kernel never timed); +torchsample, sampled rows through torch ops
    (the top-k/top-p filter by sorting, a generator per seeded request), not the sampling kernel.
    Returns the function that puts the current choices back."""
    tile_tokens, copies, pdl = context.SMALL_TILE_TOKENS, linear.cold_copies, launch.DEPENDENT_LAUNCH
    gated, fused_sampling = linear.GATED_MLP, sampler.FUSED_SAMPLING
    lpt = Scheduler.longest_first, paged_attention.DECODE_HEADS_FIRST
    handover_order = Scheduler.release_complete, Scheduler.snake_order
    if "rows64" in modes:
        context.SMALL_TILE_TOKENS = 0
    if "hotgemm" in modes:
        linear.cold_copies = lambda w: [w]
    if "nopdl" in modes:
        launch.DEPENDENT_LAUNCH = False
    if "nolpt" in modes:
        Scheduler.longest_first, paged_attention.DECODE_HEADS_FIRST = False, False
    if "late" in modes:
        Scheduler.release_complete = False
    if "nosnake" in modes:
        Scheduler.snake_order = False
    if "nogated" in modes:
        linear.GATED_MLP = False
    if "torchsample" in modes:
        sampler.FUSED_SAMPLING = False

    def restore() -> None:
        context.SMALL_TILE_TOKENS, linear.cold_copies, launch.DEPENDENT_LAUNCH = tile_tokens, copies, pdl
        Scheduler.longest_first, paged_attention.DECODE_HEADS_FIRST = lpt
        Scheduler.release_complete, Scheduler.snake_order = handover_order
        linear.GATED_MLP, sampler.FUSED_SAMPLING = gated, fused_sampling

    return restore


def hf_peer(model_dir: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """Hugging Face transformers' continuous batching (`generate_batch`, CUDA graphs on), same prompts."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    run: dict[str, Any] = {"backend": "transformers-cb", "concurrency": concurrency,
                           "transformers": transformers.__version__}  # fmt: skip
    config = AutoConfig.from_pretrained(model_dir)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    torch.set_default_dtype(torch.float32)
    prompts = make_prompts(config.vocab_size, args.num_requests, seed=0)
    gen = GenerationConfig(max_new_tokens=args.output_len, do_sample=False, eos_token_id=None, pad_token_id=0)
    kwargs: dict[str, Any] = {}
    try:  # transformers >= 5: a separate continuous-batching config
        from transformers import ContinuousBatchingConfig

        kwargs["continuous_batching_config"] = ContinuousBatchingConfig(
            max_requests_per_batch=concurrency, use_cuda_graph=True
        )
        run["config"] = "ContinuousBatchingConfig(max_requests_per_batch, use_cuda_graph=True)"
    except ImportError:  # 4.5x: the same knobs on the generation config
        gen.use_cuda_graph = True
        gen.max_batch_tokens = args.max_num_batched_tokens
        run["config"] = "GenerationConfig(use_cuda_graph=True, max_batch_tokens)"
    # generate_batch runs its own loop thread and manages grad mode itself
    model.generate_batch(inputs=prompts[:concurrency], generation_config=gen, **kwargs)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    outs = model.generate_batch(inputs=prompts, generation_config=gen, **kwargs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    generated = sum(len(o.generated_tokens) for o in outs.values())
    run.update({
        "num_requests": len(prompts), "output_tokens": generated, "seconds": round(seconds, 3),
        "output_tokens_per_s": round(generated / seconds, 1), "prompt_tokens": sum(len(p) for p in prompts),
    })  # fmt: skip
    print(json.dumps(run), file=sys.stderr)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return run


def save(result: dict[str, Any], path: str | None) -> None:
    """Write what has been measured so far: a run cut short still leaves its numbers."""
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
