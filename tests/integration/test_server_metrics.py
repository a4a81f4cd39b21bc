"""/metrics: the metric contract, valid for promtool, and counting what the traffic did."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

CONTRACT = [
    "graphpilot_graph_replays_total", "graphpilot_graph_rejects_total", "graphpilot_forward_tokens_total",
    "graphpilot_graph_padded_tokens_total", "graphpilot_forward_num_tokens_bucket", "graphpilot_graph_buckets",
    "graphpilot_graph_max_bucket_tokens", "graphpilot_graph_memory_bytes", "graphpilot_graph_capture_seconds",
    "graphpilot_graph_recaptures_total", "graphpilot_kv_cache_usage_ratio", "graphpilot_kv_cache_capacity_tokens",
    "graphpilot_mem_fraction_static", "graphpilot_requests_total", "graphpilot_time_to_first_token_seconds_bucket",
    "graphpilot_inter_token_latency_seconds_bucket", "graphpilot_e2e_request_latency_seconds_bucket",
    "graphpilot_prompt_tokens_total", "graphpilot_generation_tokens_total", "graphpilot_num_requests_running",
    "graphpilot_num_requests_waiting", "graphpilot_prefix_cache_queries_total", "graphpilot_prefix_cache_hits_total",
]  # fmt: skip


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_promtool_accepts_live_metrics(tiny_runtime):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make system-deps` (Debian package `prometheus`)")
    httpx.post(
        tiny_runtime.openai_url + "/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3}
    )
    text = httpx.get(tiny_runtime.base_url + "/metrics").text
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_metric_contract_and_counts(tiny_runtime):
    before = samples(httpx.get(tiny_runtime.base_url + "/metrics").text)
    for name in CONTRACT:
        assert any(k == name or k.startswith(name + "{") for k in before), f"{name} missing from /metrics"
    r = httpx.post(tiny_runtime.openai_url + "/completions",
                   json={"model": "tiny", "prompt": "hello world", "max_tokens": 5, "ignore_eos": True}, timeout=60)  # fmt: skip
    assert r.status_code == 200
    httpx.post(tiny_runtime.openai_url + "/completions", json={"model": "tiny", "prompt": "x", "top_p": 9})
    after = samples(httpx.get(tiny_runtime.base_url + "/metrics").text)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('graphpilot_requests_total{status="length"}') == 1
    assert delta('graphpilot_requests_total{status="invalid"}') == 1
    assert delta("graphpilot_generation_tokens_total") == 5
    assert delta('graphpilot_forward_tokens_total{path="graph"}') >= 5  # prompt + 4 decode steps, on graph
    assert delta('graphpilot_graph_replays_total{bucket="1"}') == 4  # the four decode steps
    assert delta("graphpilot_forward_num_tokens_count") == 5
    assert delta("graphpilot_time_to_first_token_seconds_count") == 1
    assert delta("graphpilot_inter_token_latency_seconds_count") == 4
    assert after["graphpilot_graph_buckets"] == 9
    assert after["graphpilot_graph_max_bucket_tokens"] == 256
    assert after["graphpilot_mixed_step_tokens"] == 0  # eager backend: no measured mixed-step budget
    assert after['graphpilot_graph_rejects_total{reason="too_many_tokens"}'] == 0


def test_a_repeated_prompt_is_served_from_the_prefix_cache(tiny_runtime):
    body = {"model": "tiny", "prompt": "prefix cache " + "red blue green the answer " * 12, "max_tokens": 4,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    url = tiny_runtime.openai_url + "/completions"
    first = httpx.post(url, json=body, timeout=60).json()
    before = samples(httpx.get(tiny_runtime.base_url + "/metrics").text)
    second = httpx.post(url, json=body, timeout=60).json()
    after = samples(httpx.get(tiny_runtime.base_url + "/metrics").text)
    prompt = second["usage"]["prompt_tokens"]
    hits = after["graphpilot_prefix_cache_hits_total"] - before["graphpilot_prefix_cache_hits_total"]
    assert (
        after["graphpilot_prefix_cache_queries_total"] - before["graphpilot_prefix_cache_queries_total"]
        == prompt
    )
    assert hits == (prompt - 1) // 16 * 16 > 0  # every full block but the one with the last prompt token
    computed = (
        after['graphpilot_forward_tokens_total{path="graph"}']
        - before['graphpilot_forward_tokens_total{path="graph"}']
    )
    assert computed == prompt - hits + 3  # the rest of the prompt, then 3 decode steps
    assert second["choices"][0]["text"] == first["choices"][0]["text"]
