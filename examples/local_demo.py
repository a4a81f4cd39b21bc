"""GraphPilot on your laptop: runtime + autotuner on the CPU, a short load, and what happened.

    python examples/local_demo.py            # about a minute on two cores

Starts `graphpilot-runtime serve` with the `tiny` preset and the eager graph backend (the same
segmented path as CUDA graphs, without the GPU), deliberately with too few buckets; starts the
autotuner sidecar `graphpilot-sidecar` next to it when it is installed; sends a mixed load (short
chats behind one system prompt, long prompts) with the official openai client; prints requests,
replays, rejects, the bucket set before and after, the prefix cache's hit rate, and the autotuner's
decisions; then stops both with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

WORDS = [
    "the",
    "graph",
    "replay",
    "of",
    "a",
    "bucket",
    "memory",
    "cache",
    "request",
    "token",
    "batch",
    "server",
    "time",
    "fast",
    "small",
    "large",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [shutil.which(name) or name]


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    sys.exit(f"{url} not ready after {timeout:.0f} s; log: {log}")


SYSTEM = " ".join(random.Random(7).choices(WORDS, k=96))  # every chat's system prompt: a shared prefix


async def load(base_url: str, seconds: float, clients: int) -> dict[str, int]:
    """`clients` loops of chat (a short question behind the system prompt) and completions (long
    prompts) for `seconds`."""
    counts = {"ok": 0, "failed": 0, "completion_tokens": 0}
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        rng = random.Random(i)
        api = openai.AsyncOpenAI(base_url=base_url, api_key="demo", max_retries=0, timeout=120)
        while time.monotonic() < deadline:
            try:
                if rng.random() < 0.5:
                    msg = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
                    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": msg}]
                    r = await api.chat.completions.create(model="tiny", messages=messages,
                                                          max_tokens=rng.randint(4, 16), temperature=0.7)  # fmt: skip
                else:
                    prompt = " ".join(rng.choices(WORDS, k=rng.randint(20, 120)))
                    r = await api.completions.create(
                        model="tiny", prompt=prompt, max_tokens=rng.randint(4, 16)
                    )
                counts["ok"] += 1
                counts["completion_tokens"] += r.usage.completion_tokens if r.usage else 0
            except openai.APIError as e:
                counts["failed"] += 1
                print(f"  request failed: {e}")

    await asyncio.gather(*(client(i) for i in range(clients)))
    return counts


def summary(profile: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """What the runtime did during the load, from GET /admin/profile and /admin/stats."""
    graph = stats["graph_tokens"]
    return {
        "buckets": profile["buckets"],
        "forwards": sum(stats["num_tokens"].values()),
        "replays": stats["replays"],
        "rejects": stats["rejects"],
        "graph_tokens": graph,
        "eager_tokens": stats["eager_tokens"],
        "padding_ratio": round(stats["padded_tokens"] / max(1, graph + stats["padded_tokens"]), 3),
    }


def prefix_cache(text: str) -> dict[str, float]:
    """Prompt tokens looked up in and found in the prefix cache, from the runtime's /metrics."""
    out = {"hits": 0.0, "queries": 0.0}
    for line in text.splitlines():
        for key in out:
            if line.startswith(f"graphpilot_prefix_cache_{key}_total "):
                out[key] = float(line.split()[-1])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=40, help="length of the load")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--no-sidecar", action="store_true", help="runtime only")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="graphpilot-demo-"))
    port, admin_port, sidecar_port = free_port(), free_port(), free_port()
    base, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    print(f"starting the runtime (tiny preset, CPU, eager graph backend); logs in {work}")
    runtime = start([*command("graphpilot-runtime"), "serve", "--preset", "tiny", "--graph-backend", "eager",
                     "--no-progress", "--max-num-batched-tokens", "256", "--graph-buckets", "1,2,4,8",
                     "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin_port)],
                    work / "runtime.log")  # fmt: skip
    procs = [runtime]
    try:
        wait_ready(base + "/ready", runtime, work / "runtime.log")
        sidecar = None
        if not args.no_sidecar and importlib.util.find_spec("graphpilot.sidecar.app") is not None:
            print("starting the autotuner sidecar")
            env = {"GRAPHPILOT_SIDECAR_ADMIN_URL": admin, "GRAPHPILOT_SIDECAR_PORT": str(sidecar_port),
                   "GRAPHPILOT_SIDECAR_INTERVAL_SECONDS": "2", "GRAPHPILOT_SIDECAR_COOLDOWN_SECONDS": "6",
                   "GRAPHPILOT_SIDECAR_EVAL_INTERVALS": "2", "GRAPHPILOT_SIDECAR_EVAL_MIN_FORWARDS": "20",
                   "GRAPHPILOT_SIDECAR_STATE_FILE": str(work / "tuned-profile.json")}  # fmt: skip
            sidecar = start(command("graphpilot-sidecar"), work / "sidecar.log", env)
            procs.append(sidecar)
            wait_ready(f"http://127.0.0.1:{sidecar_port}/health", sidecar, work / "sidecar.log")
        before = httpx.get(admin + "/admin/profile").json()
        cursor = httpx.get(admin + "/admin/stats").json()["cursor"]
        print(f"buckets at start: {before['buckets']}")
        print(
            f"sending {args.seconds:.0f} s of load from {args.clients} clients (chats and long prompts) ..."
        )
        counts = asyncio.run(load(base + "/v1", args.seconds, args.clients))
        stats = httpx.get(admin + "/admin/stats", params={"cursor": cursor}).json()
        metrics = prefix_cache(httpx.get(base + "/metrics").text)
        after = summary(httpx.get(admin + "/admin/profile").json(), stats)
        print(f"\nrequests: {counts['ok']} served, {counts['failed']} failed, "
              f"{counts['completion_tokens']} tokens generated")  # fmt: skip
        print(f"forwards: {after['forwards']} ({after['graph_tokens']} tokens on graph, "
              f"{after['eager_tokens']} eager; padding {after['padding_ratio']:.1%} of replayed tokens)")  # fmt: skip
        print(f"replays by bucket: {after['replays']}")
        print(f"rejects by reason: {after['rejects'] or 'none'}")
        print(f"prefix cache: {metrics['hits']:.0f} of {metrics['queries']:.0f} prompt tokens found cached "
              f"({metrics['hits'] / max(1, metrics['queries']):.0%}; the chats share their system prompt)")  # fmt: skip
        print(f"buckets: {before['buckets']} -> {after['buckets']}"
              f" ({'retuned live' if after['buckets'] != before['buckets'] else 'unchanged'})")  # fmt: skip
        if sidecar is not None:
            decisions = httpx.get(f"http://127.0.0.1:{sidecar_port}/status").json().get("decisions", [])
            print(f"autotuner decisions ({len(decisions)}):")
            for d in decisions:
                new = d.get("new") or {}
                gain = d.get("predicted_gain")
                print(f"  {d.get('action')}: {d.get('result')} ({d.get('reason')})"
                      + (f" buckets={new.get('buckets')}" if new else "")
                      + (f" predicted gain {gain:.1%}" if gain is not None else ""))  # fmt: skip
        return 0 if counts["failed"] == 0 and counts["ok"] > 0 else 1
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
