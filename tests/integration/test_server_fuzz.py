"""Schemathesis fuzzes the public API from its own OpenAPI spec: no input may cause a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx


def schemathesis_command() -> list[str]:
    script = Path(sys.executable).parent / "schemathesis"
    return [str(script)] if script.exists() else [shutil.which("schemathesis") or "schemathesis"]


def test_fuzzing_finds_no_server_error(runtime_factory, tmp_path):
    # a short context bounds every generated request (max_tokens included) to a few steps on the CPU
    rt = runtime_factory("--max-model-len", "32", "--max-request-bytes", str(64 << 10))
    run = subprocess.run(
        [*schemathesis_command(), "run", rt.base_url + "/openapi.json", "--checks", "not_a_server_error",
         "--phases", "coverage,fuzzing", "--max-examples", "30", "--generation-deterministic", "--workers", "1",
         "--request-timeout", "60", "--no-color"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout  # it really ran cases
    metrics = httpx.get(rt.base_url + "/metrics").text
    served = [
        line for line in metrics.splitlines() if line.startswith('graphpilot_requests_total{status="length"}')
    ]
    assert float(served[0].split()[-1]) > 0, "no fuzzed request reached the engine"
    assert httpx.get(rt.base_url + "/ready").status_code == 200  # still serving
