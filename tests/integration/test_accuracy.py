"""Accuracy parity on the CPU: the trained adder answers the same through `off` and `eager` graphs.

Runs the evaluation command as a user would (bench/eval_accuracy.py): it starts a real
`graphpilot-runtime serve` per backend and sends 100 held-out problems with the openai client from 1
and from 32 threads. One torch thread per server: on a busy 2-core machine, more make this tiny
model's decode steps many times slower, not faster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "adder"
NUM_PROBLEMS = 100
MIN_SCORE = 0.95


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "bench" / "eval_accuracy.py"), "--model", str(MODEL),
           "--graph-backend", "off,eager", "--concurrency", "1,32", "--num-problems", str(NUM_PROBLEMS),
           "--answers", "--threads", "1", "--serve-args", "--max-num-batched-tokens 256"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, f"eval_accuracy failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def _rows(report: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["backend"], r["concurrency"]): r for r in report["rows"]}


def test_every_configuration_answers_held_out_problems(report: dict[str, Any]) -> None:
    rows = _rows(report)
    assert set(rows) == {("off", 1), ("off", 32), ("eager", 1), ("eager", 32)}
    for key, row in rows.items():
        assert row["num_problems"] == NUM_PROBLEMS
        assert row["score"] >= MIN_SCORE, f"{key}: {row['score']:.2%} correct; wrong: {row['wrong']}"


def test_graph_backend_and_concurrency_do_not_change_the_answers(report: dict[str, Any]) -> None:
    rows = _rows(report)
    reference = rows[("off", 1)]
    for key, row in rows.items():
        assert row["score"] == reference["score"], (
            f"{key} scores {row['score']}, off alone {reference['score']}"
        )
        changed = [
            (i, a, b)
            for i, (a, b) in enumerate(zip(reference["answers"], row["answers"], strict=True))
            if a != b
        ]
        assert not changed, f"{key} answers differently from off at concurrency 1: {changed[:5]}"


def test_eager_graphs_serve_every_forward(report: dict[str, Any]) -> None:
    rows = _rows(report)
    for concurrency in (1, 32):
        eager, off = rows[("eager", concurrency)], rows[("off", concurrency)]
        assert eager["replays"] > 0 and eager["rejects"] == {}, eager
        assert off["replays"] == 0 and set(off["rejects"]) == {"disabled"}, off
