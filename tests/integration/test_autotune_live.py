"""The autotuner sidecar against a real runtime process: a shifting load is followed within 3 intervals.

Both processes run on loopback (the runtime with the tiny preset and the eager graph backend, the
same segmented path as CUDA graphs). The runtime starts with a ladder that misfits the traffic
(nothing above 64 tokens); the load goes short chat prompts -> long documents -> chat again.

The shift up is urgent (forwards above the largest bucket fall back to eager), so the sidecar must
fit the documents within three intervals: no eager fallback, little padding. On the shift back the
captured ladder still serves every chat size; the sidecar recaptures only where its model says the
forwards get faster by `--min-gain-ratio`, so chat may keep the documents' ladder for a while. There
the test asks for what a user would notice: no eager fallback to speak of, and padding below the
level at which the padding-waste alert fires.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RuntimeProcess, free_port

INTERVAL = 4.0  # seconds between two sidecar reads of /admin/stats
ALERT_PADDING_WASTE = 0.3  # GraphPilotHighPaddingWaste (charts/graphpilot/rules/graphpilot-rules.yaml)
START_BUCKETS = "1,2,4,8,16,32,64"
WORDS = [
    "the",
    "graph",
    "replay",
    "of",
    "a",
    "bucket",
    "keeps",
    "the",
    "server",
    "fast",
    "while",
    "requests",
    "come",
    "and",
    "go",
]


def sidecar_command() -> list[str]:
    script = Path(sys.executable).parent / "graphpilot-sidecar"
    return [str(script)] if script.exists() else [sys.executable, "-m", "graphpilot.sidecar.cli"]


@pytest.fixture
def sidecar(
    runtime_factory: Callable[..., RuntimeProcess], tmp_path: Path
) -> Iterator[tuple[RuntimeProcess, str]]:
    rt = runtime_factory("--max-num-batched-tokens", "1024", "--graph-buckets", START_BUCKETS, tiny=True)
    port = free_port()
    args = [*sidecar_command(), "--admin-url", rt.admin_url, "--port", str(port), "--interval-seconds",
            str(INTERVAL), "--cooldown-seconds", "0", "--eval-intervals", "1", "--min-gain-ratio", "0.01",
            "--decay", "0.5",
            "--state-file", str(tmp_path / "tuned.json"),
            "--log-level", "info" if os.environ.get("GRAPHPILOT_TEST_SHOW_LOGS") else "warning"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHPILOT_SIDECAR_")}
    # On the CPU eager backend a forward's time is mostly what the cost model leaves out (attention
    # over the context, host scheduling) and a few dozen forwards per window are noisy: judge only
    # gross regressions here. Rollback of a regression is tested against a controlled fake runtime.
    env["GRAPHPILOT_SIDECAR_REGRESSION_TOLERANCE"] = "1.0"
    log = open(tmp_path / "sidecar.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield rt, url
    proc.terminate()
    proc.wait(30)
    log.close()
    if os.environ.get("GRAPHPILOT_TEST_SHOW_LOGS"):
        print((tmp_path / "sidecar.log").read_text()[-5000:])


class Load:
    """Client threads sending completions; the prompt kind can be switched while they run."""

    def __init__(self, base_url: str, num_clients: int = 6):
        self.kind = "chat"
        self.failures: list[str] = []
        self.done = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(base_url, i), daemon=True)
                         for i in range(num_clients)]  # fmt: skip

    def prompt(self, i: int) -> tuple[str, int]:
        words = itertools.islice(itertools.cycle(WORDS), i % 7, None)
        if self.kind == "chat":
            return " ".join(itertools.islice(words, 4 + i % 9)), 12
        return " ".join(itertools.islice(words, 240 + 37 * (i % 9))), 3

    def _client(self, base_url: str, c: int) -> None:
        with httpx.Client(base_url=base_url, timeout=120) as http:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                prompt, max_tokens = self.prompt(c * 31 + n)
                body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                        "ignore_eos": True}  # fmt: skip
                try:
                    r = http.post("/v1/completions", json=body)
                    if r.status_code != 200:
                        self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    self.done += 1
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)


def runtime_window(admin_url: str, seconds: float) -> dict:
    """The runtime's own exact counts over the next `seconds`."""
    with httpx.Client(base_url=admin_url, timeout=30) as admin:
        cursor = admin.get("/admin/stats").json()["cursor"]
        time.sleep(seconds)
        return admin.get("/admin/stats", params={"cursor": cursor}).json()


def padding_waste(w: dict) -> float:
    padded, real = w["padded_tokens"], w["graph_tokens"]
    return padded / (padded + real) if padded + real else 0.0


@pytest.mark.slow
def test_shifting_load_is_followed_within_three_intervals(sidecar: tuple[RuntimeProcess, str]) -> None:
    rt, url = sidecar
    results = {}
    with Load(rt.base_url) as load:
        # a cold start (not a shift, not asserted), then the two shifts
        for phase in ("chat_cold_start", "documents", "chat"):
            load.kind = "chat" if phase.startswith("chat") else "documents"
            time.sleep(3 * INTERVAL + 0.5)  # three tuning intervals after the shift
            w = runtime_window(rt.admin_url, 2 * INTERVAL)
            if os.environ.get("GRAPHPILOT_TEST_SHOW_LOGS"):
                print(phase, w["num_tokens"], httpx.get(url + "/status").json()["current"]["buckets"])
            results[phase] = {"rejects": w["rejects"], "padding_waste": padding_waste(w), "forwards":
                              sum(w["num_tokens"].values()), "max": max(map(int, w["num_tokens"]), default=0)}  # fmt: skip
    status = httpx.get(url + "/status").json()
    metrics = httpx.get(url + "/metrics").text
    assert load.failures == [], load.failures[:5]
    assert load.done > 0
    # Eager fallbacks at the padding limit: with at most 32 buckets the sidecar's DP leaves rare sizes
    # in a gap of the ladder (in a traced run, forwards of 93-194 tokens: buckets 92, then 389) to the
    # padding limit where its model finds that cheaper than a bucket for them, and on the CPU's eager
    # backend an eager forward costs about what its replay would (2 % of the documents' forwards in
    # one CI run). Held here: a few percent at most, and none above the ladder.
    for phase, max_waste in (("documents", 0.10), ("chat", ALERT_PADDING_WASTE)):
        r = results[phase]
        assert r["forwards"] > 0, (phase, r)
        assert r["rejects"].get("too_many_tokens", 0) == 0, (phase, r, status["decisions"])
        assert sum(r["rejects"].values()) < 0.05 * r["forwards"], (phase, r, status["decisions"])
        assert r["padding_waste"] < max_waste, (phase, r, status["decisions"])
    assert results["documents"]["max"] > 64  # the documents really were above the starting ladder
    applied = [d for d in status["decisions"] if d["action"] == "retune" and d["result"] == "applied"]
    assert applied and all(d["predicted_gain"] is not None for d in applied)
    assert 'graphpilot_autotune_decisions_total{action="retune",result="applied"}' in metrics
    assert status["current"]["buckets"][-1] >= results["documents"]["max"]
