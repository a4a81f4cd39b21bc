"""Accuracy parity on a GPU: the trained adder scores the same through real CUDA graphs as without.

Runs bench/eval_accuracy.py with `--graph-backend off,cuda` at 1 and 32 requests in flight. Through
the Engine API always (needs only torch and tokenizers); through the real server and the openai
client as well where fastapi, uvicorn and openai are installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "adder"
NUM_PROBLEMS = 200
MIN_SCORE = 0.95
# bf16 replay may differ from eager by a few ulps (other GEMM algorithms under capture): allow a
# handful of flipped answers, far fewer than a broken replay would cost
MAX_SCORE_DIFFERENCE = 0.01


def _has_server_deps() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn", "openai"))


def _evaluate(via: str, dtype: str) -> dict[tuple[str, int], dict[str, Any]]:
    cmd = [sys.executable, str(ROOT / "bench" / "eval_accuracy.py"), "--model", str(MODEL),
           "--graph-backend", "off,cuda", "--concurrency", "1,32", "--num-problems", str(NUM_PROBLEMS)]  # fmt: skip
    # a KV cache of 64k tokens: plenty for 32 requests of 13 tokens, and quick to allocate
    if via == "engine":
        cmd += ["--engine", "--dtype", dtype, "--max-total-tokens", "65536"]
    else:
        cmd += ["--serve-args", f"--dtype {dtype} --max-total-tokens 65536"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, f"eval_accuracy failed:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    print(json.dumps(report["rows"]))  # the measured table, with -s
    return {(r["backend"], r["concurrency"]): r for r in report["rows"]}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "via",
    [
        "engine",
        pytest.param(
            "server",
            marks=pytest.mark.skipif(not _has_server_deps(), reason="fastapi, uvicorn or openai missing"),
        ),
    ],
)
def test_cuda_graphs_score_like_eager(via: str, dtype: str) -> None:
    rows = _evaluate(via, dtype)
    for concurrency in (1, 32):
        off, cuda = rows[("off", concurrency)], rows[("cuda", concurrency)]
        assert off["score"] >= MIN_SCORE, f"off at {concurrency}: {off['score']:.2%}; wrong: {off['wrong']}"
        assert abs(cuda["score"] - off["score"]) <= MAX_SCORE_DIFFERENCE, (
            f"at concurrency {concurrency} cuda scores {cuda['score']:.2%}, off {off['score']:.2%}; "
            f"cuda got wrong: {cuda['wrong']}"
        )
        assert cuda["replays"] > 0, cuda
        assert cuda["rejects"] == {}, (
            f"at concurrency {concurrency} forwards fell back to eager: {cuda['rejects']}"
        )
