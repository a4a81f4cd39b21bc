"""Score the adder through the runtime: held-out problems, greedy, at several client concurrencies.

Accuracy parity for graph backends: a graph change is good when a model's answers on a real task do
not change with it, alone and in batches. For every graph backend this starts
`graphpilot-runtime serve --model DIR --graph-backend B` on loopback (or uses --base-url), sends the
same N held-out problems with the official openai client from 1 and from 32 threads, and prints JSON:
score, throughput, and the graph replays and rejects the server counted (deltas of /metrics).

    python bench/eval_accuracy.py --model tests/fixtures/adder --graph-backend off,eager --concurrency 1,32
    python bench/eval_accuracy.py --base-url http://127.0.0.1:8000 --model tests/fixtures/adder
    python bench/eval_accuracy.py --engine --model tests/fixtures/adder --graph-backend off,cuda

`--engine` scores in process through the Engine API instead (closed loop: `concurrency` requests in
flight), for machines without the server's dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_adder import answer_text, load_task, prompt_text, read_answer, sample_problems

READY_TIMEOUT_SECONDS = 600.0


@dataclass
class Counts:
    """Graph replays and rejects (per reason) the runtime counted, and tokens generated."""

    replays: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    generation_tokens: int = 0

    def __sub__(self, before: Counts) -> Counts:
        rejects = Counter(self.rejects)
        rejects.subtract(before.rejects)
        return Counts(self.replays - before.replays, {k: v for k, v in rejects.items() if v},
                      self.generation_tokens - before.generation_tokens)  # fmt: skip


@dataclass
class Row:
    backend: str
    concurrency: int
    score: float  # share of problems answered exactly
    correct: int
    num_problems: int
    seconds: float
    requests_per_second: float
    output_tokens_per_second: float
    replays: int
    rejects: dict[str, int]
    answers: list[str] | None = None
    wrong: list[dict[str, str]] = field(default_factory=list)  # the first few, to look at


# ---- scoring -------------------------------------------------------------------------------------------


def score(
    backend: str, concurrency: int, problems: list[tuple[int, int]], digits: int,
    complete: Callable[[str], str], counts: Callable[[], Counts], keep_answers: bool,
) -> Row:  # fmt: skip
    """Send every problem from `concurrency` threads; exact match on the decoded sum."""
    prompts = [prompt_text(a, b, digits) for a, b in problems]
    before, start = counts(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(complete, prompts))
    seconds = time.perf_counter() - start
    delta = counts() - before
    return _row(backend, concurrency, problems, digits, answers, seconds, delta, keep_answers)


def _row(
    backend: str, concurrency: int, problems: list[tuple[int, int]], digits: int, answers: list[str],
    seconds: float, delta: Counts, keep_answers: bool,
) -> Row:  # fmt: skip
    ok = [
        read_answer(t) == a + b and t.strip() == answer_text(a, b, digits)
        for (a, b), t in zip(problems, answers, strict=True)
    ]
    wrong = [{"prompt": prompt_text(a, b, digits), "expected": answer_text(a, b, digits), "got": t}
             for (a, b), t, good in zip(problems, answers, ok, strict=True) if not good]  # fmt: skip
    return Row(
        backend, concurrency, round(sum(ok) / len(ok), 4), sum(ok), len(ok), round(seconds, 3),
        round(len(ok) / seconds, 2), round(delta.generation_tokens / seconds, 1), delta.replays, delta.rejects,
        answers if keep_answers else None, wrong[:5],
    )  # fmt: skip


# ---- through the server --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextlib.contextmanager
def running_server(model: str, backend: str, serve_args: Sequence[str], threads: int | None) -> Iterator[str]:
    """`graphpilot-runtime serve` on loopback until ready; yields its base URL, stops it on exit."""
    env = dict(os.environ) | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    port = _free_port()
    cmd = [sys.executable, "-m", "graphpilot.runtime.cli", "serve", "--model", model, "--graph-backend", backend,
           "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(_free_port()), "--no-progress",
           *serve_args]  # fmt: skip
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, url, log)
            yield url
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Any) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                f"the server exited with {proc.returncode} before it was ready:\n{log.read()[-4000:]}"
            )
        with contextlib.suppress(OSError):
            if _get(url + "/ready")[0] == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"the server at {url} was not ready after {READY_TIMEOUT_SECONDS:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric_counts(url: str) -> Counts:
    """Replays, rejects by reason and generated tokens from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = _get(url + "/metrics")
    if status != 200:
        raise RuntimeError(f"GET {url}/metrics answered {status}")
    c = Counts()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "graphpilot_graph_replays_total":
                c.replays += int(s.value)
            elif s.name == "graphpilot_graph_rejects_total" and s.value:
                c.rejects[s.labels["reason"]] = int(s.value)
            elif s.name == "graphpilot_generation_tokens_total":
                c.generation_tokens = int(s.value)
    return c


def score_server(url: str, backend: str, args: argparse.Namespace, problems: list[tuple[int, int]],
                 task: dict[str, Any]) -> list[Row]:  # fmt: skip
    """Score one running server at every concurrency."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300.0)
    model = client.models.list().data[0].id

    def complete(prompt: str) -> str:
        out = client.completions.create(
            model=model, prompt=prompt, max_tokens=task["max_tokens"], temperature=0.0
        )
        return out.choices[0].text

    complete(prompt_text(0, 0, task["digits"]))  # warm-up, outside the measured runs
    return [score(backend, c, problems, task["digits"], complete, lambda: metric_counts(url), args.answers)
            for c in args.concurrency]  # fmt: skip


# ---- in process, through the Engine API ----------------------------------------------------------------


def score_engine(backend: str, args: argparse.Namespace, problems: list[tuple[int, int]],
                 task: dict[str, Any]) -> list[Row]:  # fmt: skip
    """Score an in-process Engine at every concurrency (closed loop: that many requests in flight)."""
    import gc

    import torch

    from graphpilot.runtime.config import EngineConfig
    from graphpilot.runtime.engine.engine import Engine, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(EngineConfig(model=args.model, graph_backend=backend, device=args.device, dtype=args.dtype,
                                 max_num_batched_tokens=args.max_num_batched_tokens,
                                 max_total_tokens=args.max_total_tokens, progress=False))  # fmt: skip
    params = SamplingParams(max_tokens=task["max_tokens"], temperature=0.0)
    prompts = [prompt_text(a, b, task["digits"]) for a, b in problems]
    _closed_loop(engine, prompts[:1], 1, params)  # warm-up
    rows = []
    for c in args.concurrency:
        before, start = _engine_counts(engine), time.perf_counter()
        answers = _closed_loop(engine, prompts, c, params)
        seconds = time.perf_counter() - start
        delta = _engine_counts(engine) - before
        rows.append(_row(backend, c, problems, task["digits"], answers, seconds, delta, args.answers))
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def _closed_loop(engine: Any, prompts: list[str], concurrency: int, params: Any) -> list[str]:
    answers: list[str] = [""] * len(prompts)
    in_flight: dict[str, int] = {}
    todo = list(range(len(prompts)))[::-1]
    while todo or in_flight:
        while todo and len(in_flight) < concurrency:
            i = todo.pop()
            in_flight[engine.add_request(prompts[i], params)] = i
        for out in engine.step():
            if out.finished:
                answers[in_flight.pop(out.request_id)] = out.text
    return answers


def _engine_counts(engine: Any) -> Counts:
    runner = engine.runner
    return Counts(sum(runner.replays.values()), dict(runner.rejects), engine.counters["generation_tokens"])


# ---- command -------------------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    task = load_task(args.model)
    problems = sample_problems(args.num_problems, task["digits"], args.seed, held_out=True)
    rows: list[Row] = []
    if args.base_url:
        rows += score_server(args.base_url.rstrip("/"), args.base_url_backend, args, problems, task)
    for backend in args.graph_backend if not args.base_url else []:
        if args.engine:
            rows += score_engine(backend, args, problems, task)
            continue
        with running_server(args.model, backend, args.serve_args, args.threads) as url:
            rows += score_server(url, backend, args, problems, task)
    return {"model": os.path.basename(os.path.normpath(args.model)), "task": task, "num_problems": len(problems),
            "seed": args.seed, "via": "engine" if args.engine else "server", "rows": [asdict(r) for r in rows]}  # fmt: skip


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _backends(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in ("auto", "cuda", "eager", "off")]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"graph backends are auto, cuda, eager, off; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tests/fixtures/adder", help="the adder checkpoint (its task.json too)")
    p.add_argument(
        "--graph-backend", type=_backends, default=["off", "eager"], help="comma-separated, run in turn"
    )
    p.add_argument("--concurrency", type=_ints, default=[1, 32], help="client threads, comma-separated")
    p.add_argument("--num-problems", "-n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="which held-out problems")
    p.add_argument("--base-url", help="score a running server instead of starting one")
    p.add_argument(
        "--base-url-backend", default="unknown", help="the running server's graph backend (a label)"
    )
    p.add_argument(
        "--serve-args", type=shlex.split, default=[], help="more flags for `graphpilot-runtime serve`"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads of the runtime (OMP_NUM_THREADS of started servers); 1 is far "
        "faster for this tiny model on a busy machine",
    )
    p.add_argument("--engine", action="store_true", help="score in process through the Engine API")
    p.add_argument("--device", default="auto", help="--engine only")
    p.add_argument("--dtype", default="auto", help="--engine only")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="--engine only")
    p.add_argument("--max-total-tokens", type=int, help="--engine only: KV cache size (default: from memory)")
    p.add_argument("--answers", action="store_true", help="include every answer in the JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_problems < 1:
        raise SystemExit("eval_accuracy: --num-problems must be >= 1")
    print(json.dumps(evaluate(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
