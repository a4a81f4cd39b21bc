"""`graphpilot-runtime`: init-model, generate, serve."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from graphpilot.runtime.config import ConfigError, EngineConfig
from graphpilot.runtime.logs import setup_logging


def cache_dir() -> str:
    return os.environ.get("GRAPHPILOT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "graphpilot")


def resolve_preset(name: str, seed: int = 0) -> str:
    """The directory of a preset checkpoint, written on first use."""
    from graphpilot.runtime.models.presets import PRESETS, init_model

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    path = os.path.join(cache_dir(), "presets", f"{name}-seed{seed}")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        init_model(name, path, seed=seed)
    return path


def _buckets(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--graph-buckets takes comma-separated integers, got {text!r}"
        ) from e


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Engine flags, named as in vLLM/SGLang where they exist."""
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model", help="Hugging Face model directory (config.json, safetensors, tokenizer.json)"
    )
    src.add_argument("--preset", help="built-in model: tiny, qwen3-0.6b, qwen3-8b, llama3-8b")
    p.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-running-requests", type=int, default=256)
    p.add_argument("--mixed-step-tokens", type=int,
                   help="token budget of a step that also decodes (default: measured from the captured "
                        "graphs on CUDA, where a step starts to cost more than a decode step; no cap on CPU)")  # fmt: skip
    p.add_argument("--mem-fraction-static", type=float, default=0.85)
    p.add_argument("--max-total-tokens", type=int, help="KV cache size in tokens (default: from memory)")
    p.add_argument("--graph-backend", default="auto", choices=["auto", "cuda", "eager", "off"])
    p.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="schedule and prepare step N+1 while the GPU runs step N (default: on with CUDA)",
    )
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start a request from the K/V of its longest cached prompt prefix (default: on)",
    )
    p.add_argument("--gemm-backend", default="auto", choices=["auto", "cublas"],
                   help="auto: a skinny Triton GEMM for decode-sized batches where it measures faster")  # fmt: skip
    p.add_argument("--graph-buckets", type=_buckets, help="comma-separated num_tokens buckets")
    p.add_argument("--graph-max-padding-ratio", type=float, default=0.5)
    p.add_argument("--attention-backend", default="auto", choices=["auto", "reference", "sdpa", "triton"])
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    if not args.model and not args.preset:
        raise ConfigError("give --model DIR or --preset NAME")
    model = args.model or resolve_preset(args.preset, args.seed)
    load_format = args.load_format
    if args.preset and load_format == "auto" and not os.path.isfile(os.path.join(model, "model.safetensors")):
        load_format = "dummy"  # config-only presets
    return EngineConfig(
        model=model, device=args.device, dtype=args.dtype, load_format=load_format, seed=args.seed,
        max_model_len=args.max_model_len, max_num_batched_tokens=args.max_num_batched_tokens,
        max_running_requests=args.max_running_requests, mixed_step_tokens=args.mixed_step_tokens,
        mem_fraction_static=args.mem_fraction_static,
        max_total_tokens=args.max_total_tokens, graph_backend=args.graph_backend, graph_buckets=args.graph_buckets,
        graph_max_padding_ratio=args.graph_max_padding_ratio, attention_backend=args.attention_backend,
        async_scheduling=args.async_scheduling, gemm_backend=args.gemm_backend,
        enable_prefix_caching=args.enable_prefix_caching, progress=not args.no_progress,
    )  # fmt: skip


def cmd_init_model(args: argparse.Namespace) -> int:
    from graphpilot.runtime.models.presets import init_model

    init_model(args.preset, args.out, seed=args.seed, with_weights=True if args.weights else None)
    print(json.dumps({"preset": args.preset, "out": args.out}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from graphpilot.runtime.engine.engine import Engine
    from graphpilot.runtime.engine.request import SamplingParams

    prompts = list(args.prompt or [])
    if args.prompts_file:
        with open(args.prompts_file) as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise ConfigError("give at least one --prompt or a --prompts-file")
    engine = Engine(engine_config_from_args(args))
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.sampling_seed, stop=tuple(args.stop or ()), ignore_eos=args.ignore_eos,
    )  # fmt: skip
    for prompt, c in zip(prompts, engine.generate(prompts, params), strict=True):
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": prompt,
                        "text": c.text,
                        "token_ids": c.token_ids,
                        "finish_reason": c.finish_reason,
                    }
                )
            )
        else:
            print(f"{prompt!r} -> {c.text!r} ({c.finish_reason})")
    if args.stats:
        print(json.dumps({"stats": engine.stats_summary()}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphpilot-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init-model", help="write a preset checkpoint with random weights")
    p.add_argument("--preset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", action="store_true", help="write weights for large presets too")
    p.set_defaults(func=cmd_init_model)
    g = sub.add_parser("generate", help="offline generation")
    add_engine_args(g)
    g.add_argument("--prompt", action="append")
    g.add_argument("--prompts-file")
    g.add_argument("--max-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--sampling-seed", type=int)
    g.add_argument("--stop", action="append")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--json", action="store_true", help="JSON lines")
    g.add_argument("--stats", action="store_true", help="print replays, rejects and padding as JSON")
    g.set_defaults(func=cmd_generate)
    try:
        from graphpilot.runtime.server.cli import add_serve_parser
    except ImportError:
        pass
    else:
        add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", "warning"))
    try:
        return int(args.func(args))
    except (ConfigError, ValueError, OSError) as e:
        print(f"graphpilot-runtime: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
