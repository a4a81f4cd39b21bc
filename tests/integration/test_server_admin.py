"""Admin API: profile, stats by cursor, refused profiles, a memory fraction kept for the next start, auth."""

from __future__ import annotations

import json
import subprocess

import httpx
from conftest import TINY_ARGS, runtime_command
from test_server_openai import _metric


def test_profile_and_stats_by_cursor(tiny_runtime):
    admin = httpx.Client(base_url=tiny_runtime.admin_url, timeout=60)
    profile = admin.get("/admin/profile").json()
    assert profile["buckets"] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert profile["backend"] == "eager"
    assert profile["max_num_batched_tokens"] == 256
    assert profile["mixed_step_tokens"] is None  # a budget is measured only on CUDA graphs
    assert [s["num_tokens"] for s in profile["bucket_stats"]] == profile["buckets"]
    assert all(s["replay_seconds"] > 0 for s in profile["bucket_stats"])
    cursor = admin.get("/admin/stats", params={"cursor": 0}).json()["cursor"]
    r = httpx.post(tiny_runtime.openai_url + "/completions",
                   json={"prompt": "hello world", "max_tokens": 3, "ignore_eos": True}, timeout=60)  # fmt: skip
    assert r.status_code == 200
    w = admin.get("/admin/stats", params={"cursor": cursor}).json()
    assert w["since"] == cursor
    assert w["generation_tokens"] == 3
    assert sum(w["num_tokens"].values()) == 3  # one prefill, two decode steps
    assert w["num_tokens"]["1"] == 2
    assert w["kv_cache_capacity_tokens"] > 0
    again = admin.get("/admin/stats", params={"cursor": w["cursor"]}).json()
    assert again["num_tokens"] == {}  # nothing counted twice
    assert admin.get("/admin/stats", params={"cursor": -1}).status_code == 400


def test_refused_profiles(tiny_runtime):
    admin = httpx.Client(base_url=tiny_runtime.admin_url, timeout=60)
    before = admin.get("/admin/profile").json()["buckets"]
    for body, status, words in [
        (b"{not json", 400, "not valid JSON"),
        (b'{"buckets": []}', 400, "must not be empty"),
        (b'{"buckets": [1, "x"]}', 400, "not an integer"),
        (b'{"buckets": [1, 2], "extra": 1}', 400, "unknown profile fields"),
        (b'{"buckets": [1, 512]}', 409, "exceeds max_num_batched_tokens"),
        (b'{"buckets": [1], "mem_fraction_static": 2}', 400, "out of range"),
    ]:
        r = admin.put("/admin/profile", content=body)
        assert r.status_code == status, r.text
        assert r.json()["result"] == "rejected"
        assert words in r.json()["reason"]
    assert admin.get("/admin/profile").json()["buckets"] == before


def test_mem_fraction_is_kept_for_the_next_start(runtime_factory, tmp_path):
    # settings from a config file, as the operator passes them; the state file sits on a writable volume
    config = tmp_path / "runtime.yaml"
    config.write_text("preset: tiny\ngraph_backend: eager\nno_progress: true\nmax_num_batched_tokens: 256\n"
                      "graph_buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256]\nserved_model_name: tiny-from-file\n")  # fmt: skip
    state = tmp_path / "runtime-state.json"
    args = ("--config", str(config), "--state-file", str(state))
    rt = runtime_factory(*args, tiny=False)
    assert httpx.get(rt.openai_url + "/models").json()["data"][0]["id"] == "tiny-from-file"
    r = httpx.put(rt.admin_url + "/admin/profile", json={"buckets": [1, 4, 16, 64], "mem_fraction_static": 0.6},
                  timeout=120).json()  # fmt: skip
    assert r["result"] == "applied"
    assert "takes effect at the next start" in r["reason"]
    assert r["profile"]["buckets"] == [1, 4, 16, 64]
    assert r["profile"]["mem_fraction_static"] == 0.85  # this process keeps its KV cache
    assert r["profile"]["pending_restart"]["mem_fraction_static"] == 0.6
    assert json.loads(state.read_text()) == {"graph_buckets": [1, 4, 16, 64], "mem_fraction_static": 0.6}
    assert rt.stop() == 0
    # a restart with the same state file (the pod's container restarting) starts with the tuned profile
    again = runtime_factory(*args, tiny=False)
    profile = httpx.get(again.admin_url + "/admin/profile").json()
    assert profile["buckets"] == [1, 4, 16, 64]
    assert profile["mem_fraction_static"] == 0.6
    assert profile["pending_restart"] is None


def test_admin_token(runtime_factory):
    rt = runtime_factory("--admin-token", "s3cret", env={"GRAPHPILOT_MAX_RUNNING_REQUESTS": "8"})
    assert httpx.get(rt.admin_url + "/admin/profile").status_code == 401
    wrong = httpx.get(rt.admin_url + "/admin/stats", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "Bearer" in wrong.json()["error"]["message"]
    ok = httpx.get(rt.admin_url + "/admin/profile", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_exposed_admin_port_needs_a_token():
    run = subprocess.run([*runtime_command(), "serve", *TINY_ARGS, "--admin-host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert "--admin-token" in run.stderr


def test_profile_tells_the_padding_limit_the_autotuner_plans_with(tiny_runtime) -> None:
    profile = httpx.get(f"{tiny_runtime.admin_url}/admin/profile", timeout=30).json()
    assert profile["graph_max_padding_ratio"] == 0.5


def test_reset_prefix_cache_makes_a_repeated_prompt_compute_again(tiny_runtime):
    body = {"model": "tiny", "prompt": "admin reset " + "green blue red " * 20, "max_tokens": 2}
    url, admin = tiny_runtime.openai_url + "/completions", tiny_runtime.admin_url

    httpx.post(url, json=body, timeout=60)
    before = _metric(tiny_runtime, "graphpilot_prefix_cache_hits_total")
    httpx.post(url, json=body, timeout=60)
    assert _metric(tiny_runtime, "graphpilot_prefix_cache_hits_total") > before  # the repeat found its prefix
    r = httpx.post(admin + "/admin/reset_prefix_cache", timeout=60).json()
    assert r["result"] == "reset" and r["forgotten_blocks"] > 0
    before = _metric(tiny_runtime, "graphpilot_prefix_cache_hits_total")
    httpx.post(url, json=body, timeout=60)
    assert _metric(tiny_runtime, "graphpilot_prefix_cache_hits_total") == before  # nothing was left to find
