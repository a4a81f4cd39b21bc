"""The tuning loop against a fake admin API: what a user of the pod would see happen to its profile."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import httpx
from sidecar_fakes import admin_app, client_for, cost_table, settings

from graphpilot.runtime.profile import GraphProfile
from graphpilot.sidecar.actuator import FileStore, NullStore, ProfileStore, RuntimeClient
from graphpilot.sidecar.simulator import SimRuntime
from graphpilot.sidecar.tuner import Tuner

LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# decode-like small sizes plus prefill sizes that the ladder pads badly
TRAFFIC = {3: 200, 5: 200, 40: 100, 130: 60, 300: 60, 500: 40}


class Pod:
    """A simulated runtime behind the fake admin API, the real client, and a tuner on a fake clock."""

    def __init__(
        self, buckets: tuple[int, ...] = LADDER, store: ProfileStore | None = None, **overrides: Any
    ):
        self.sim = SimRuntime(cost_table(), buckets, max_num_batched_tokens=4096)
        self.settings = settings(**overrides)
        self.now = 0.0
        self.client = client_for(admin_app(self.sim), self.settings)
        self.tuner = Tuner(self.settings, self.client, store or NullStore(), clock=lambda: self.now)

    def interval(self, counts: dict[int, int] = TRAFFIC, **gauges: float) -> float:
        """Serve one interval of traffic, then let the tuner tick; returns the forward seconds."""
        seconds = self.sim.serve(counts, **gauges)
        self.now += self.settings.interval_seconds
        asyncio.run(self.tuner.tick())
        return seconds

    def metric(self, name: str, **labels: str) -> float:
        return self.tuner.metrics.registry.get_sample_value(name, labels) or 0.0


def test_retunes_to_the_traffic_and_keeps_the_better_profile() -> None:
    pod = Pod()
    before = pod.interval()
    assert pod.sim.buckets != LADDER
    # the badly padded sizes get exact buckets; 3, 5 and 500 stay on the captured 4, 8 and 512
    # (a new capture would cost more than those few tokens of padding)
    assert {40, 130, 300} <= set(pod.sim.buckets)
    waste = pod.tuner.window.padding_waste
    assert waste(pod.sim.buckets) < 0.03 < 0.2 < waste(LADDER)
    after = pod.interval()
    assert pod.tuner.decisions[-1].result == "kept"
    assert pod.tuner.decisions[-1].measured_gain > 0.02
    assert after < 0.98 * before  # the same traffic takes less GPU time
    assert pod.metric("graphpilot_autotune_decisions_total", action="retune", result="applied") == 1


def test_a_regression_after_an_apply_is_rolled_back_within_one_evaluation_window() -> None:
    pod = Pod()
    pod.interval()
    tuned = pod.sim.buckets
    assert tuned != LADDER
    pod.sim.slowdown[tuned] = 2.0  # the new graphs replay twice as slowly as modelled
    pod.interval()  # one evaluation window (eval_intervals=1)
    assert pod.sim.buckets == LADDER
    rollback = pod.tuner.decisions[-1]
    assert (rollback.action, rollback.result) == ("rollback", "applied")
    assert pod.tuner.decisions[-2].measured_gain < -0.1
    assert pod.metric("graphpilot_autotune_rollbacks_total") == 1
    for _ in range(3):  # no flapping: the regressed set is held, not re-applied
        pod.interval()
    assert pod.sim.buckets == LADDER
    assert pod.tuner.decisions[-1].reason in ("held_after_rollback", "paused_after_failure")


def test_a_regression_is_not_rolled_back_into_eager_fallback() -> None:
    pod = Pod(buckets=(1, 2, 4, 8))
    long_prompts = {1: 100, 3000: 5}
    pod.interval(long_prompts)  # coverage: a bucket >= 3000 is captured
    covered = pod.sim.buckets
    assert covered[-1] >= 3000
    pod.sim.slowdown[covered] = 2.0  # and the new set measures slower than modelled
    pod.interval(long_prompts)
    assert pod.sim.buckets == covered  # rolling back would run the 3000-token forwards eager
    kept = pod.tuner.decisions[-1]
    assert kept.result == "kept" and "eager" in kept.reason and kept.measured_gain < -0.1
    assert pod.metric("graphpilot_autotune_rollbacks_total") == 0


def test_forwards_padded_into_eager_fallback_get_buckets_at_once() -> None:
    pod = Pod(buckets=(1, 256), min_gain_ratio=0.9)  # even with a huge gain threshold
    chat = {1: 100, 20: 60, 40: 60}  # 20 and 40 tokens pad past 50% in the 256 bucket: eager
    pod.sim.serve(chat)
    assert asyncio.run(pod.sim.get_stats(0)).rejects == {"padding_ratio": 120}
    pod.now += 10
    asyncio.run(pod.tuner.tick())
    assert pod.tuner.decisions[-1].result == "applied"
    cursor = pod.tuner.cursor.value
    pod.sim.serve(chat)
    assert asyncio.run(pod.sim.get_stats(cursor)).rejects == {}


def test_traffic_above_the_largest_bucket_gets_covered_at_once() -> None:
    pod = Pod(buckets=(1, 2, 4, 8), min_gain_ratio=0.9)  # even with a huge gain threshold
    long_prompts = {1: 100, 3000: 5}
    pod.sim.serve(long_prompts)
    assert asyncio.run(pod.sim.get_stats(0)).rejects == {"too_many_tokens": 5}
    pod.now += 10
    asyncio.run(pod.tuner.tick())
    assert pod.sim.buckets[-1] >= 3000
    assert pod.tuner.decisions[-1].reason.startswith("coverage")
    cursor = pod.tuner.cursor.value
    pod.sim.serve(long_prompts)
    assert asyncio.run(pod.sim.get_stats(cursor)).rejects == {}


def test_small_gains_and_cooldown_do_not_churn_the_profile() -> None:
    exact = tuple(sorted(TRAFFIC))
    pod = Pod(buckets=exact, cooldown_seconds=100.0)
    for _ in range(3):
        pod.interval()
    assert pod.sim.applies == 0
    shifted = {7: 300, 90: 100, 700: 50}
    pod.interval(shifted)  # t=40: applies (no apply yet, so no cooldown)
    assert pod.sim.applies == 1
    pod.interval({2: 300, 33: 100, 1500: 50})  # t=50: evaluation of the first apply
    pod.interval({2: 300, 33: 100, 1500: 50})  # t=60: would retune, but the cooldown holds
    assert pod.sim.applies == 1
    assert pod.tuner.decisions[-1].reason in ("cooldown", "coverage") or pod.sim.applies == 1


def test_a_failed_capture_is_answered_by_backing_off() -> None:
    pod = Pod()
    pod.sim.graph_memory_limit = 1.0  # every capture runs out of memory and the runtime rolls back
    pod.interval()
    assert pod.sim.buckets == LADDER
    assert pod.tuner.decisions[-1].result == "rolled_back"
    assert pod.metric("graphpilot_autotune_rollbacks_total") == 1
    assert pod.tuner.memory.budget_scale == 0.5
    pod.interval()
    assert pod.sim.applies == 0 and pod.tuner.decisions[-1].result != "rolled_back"


def test_kv_pressure_raises_mem_fraction_one_bounded_step_for_the_next_start() -> None:
    pod = Pod(buckets=tuple(sorted(TRAFFIC)), mem_fraction_max=0.83)
    pod.sim.mem_fraction_static = 0.8
    pod.interval(kv_cache_usage_ratio=0.97, num_requests_waiting=12, num_preemptions=3)
    assert pod.sim.pending_mem_fraction == 0.82
    pod.interval(kv_cache_usage_ratio=0.97, num_requests_waiting=12, num_preemptions=3)
    assert pod.sim.pending_mem_fraction == 0.83  # bounded by mem_fraction_max
    pod.interval(kv_cache_usage_ratio=0.97, num_requests_waiting=12, num_preemptions=3)
    assert pod.sim.pending_mem_fraction == 0.83
    assert pod.tuner.memory.budget_scale < 1  # at the bound: graph memory gives way to KV instead


def test_tuned_profile_survives_sidecar_and_runtime_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state" / "profile.json"
    pod = Pod(store=FileStore(state))
    pod.interval()
    pod.interval()  # kept -> persisted
    tuned = pod.sim.buckets
    assert json.loads(state.read_text())["profile"]["buckets"] == list(tuned)

    pod.sim.restart(buckets=LADDER)  # the runtime restarts with its defaults
    pod.interval()
    assert pod.tuner.cursor.restarts == 1
    assert pod.sim.buckets == tuned
    assert any(d.action == "restore" and d.result == "applied" for d in pod.tuner.decisions)

    fresh = Pod(store=FileStore(state))  # a new sidecar process, a runtime with other buckets
    fresh.interval()
    assert fresh.sim.buckets[: len(tuned)] == tuned or fresh.tuner.decisions[0].action == "restore"
    assert fresh.tuner.decisions[0].action == "restore"


def test_an_unreachable_runtime_is_retried_with_backoff_and_never_crashes() -> None:
    calls: list[float] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(asyncio.get_event_loop().time())
        raise httpx.ConnectError("connection refused", request=request)

    s = settings(interval_seconds=0.01, backoff_max_seconds=0.08)
    tuner = Tuner(s, RuntimeClient(s, transport=httpx.MockTransport(refuse)), NullStore())

    async def run_for(seconds: float) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(tuner.run(stop))
        await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(run_for(0.5))
    assert tuner.failures >= 3
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[-1] > 2 * gaps[0]  # backs off instead of hammering a dead runtime
    assert max(gaps) < 0.2  # but never beyond backoff_max_seconds (plus scheduling slack)


def test_bearer_token_is_sent_to_the_admin_api() -> None:
    sim = SimRuntime(cost_table(), LADDER)
    s = settings(admin_token="s3cret")
    ok = client_for(admin_app(sim, token="s3cret"), s)
    assert asyncio.run(ok.get_profile())["buckets"] == list(LADDER)
    wrong = client_for(admin_app(sim, token="other"), s)
    try:
        asyncio.run(wrong.get_profile())
        raise AssertionError("a refused token must surface as RuntimeUnavailable")
    except Exception as e:
        assert "401" in str(e)


def test_a_profile_the_runtime_refuses_is_a_decision_not_an_outage() -> None:
    sim = SimRuntime(cost_table(), LADDER)
    s = settings()
    client = client_for(admin_app(sim), s)

    async def put_invalid() -> dict[str, Any]:
        # bypass local validation to exercise the runtime's 422
        return await client._call("PUT", "/admin/profile", json={"buckets": [0]})

    answer = asyncio.run(put_invalid())
    assert answer["result"] == "rejected" and "out of range" in answer["reason"]
    assert GraphProfile.from_dict({"buckets": [2, 1]}).buckets == (1, 2)


def test_the_eager_overhead_is_learned_as_the_runtime_pays_it() -> None:
    """Fitted from windows that mix replays and eager forwards (above the largest bucket), the
    model's eager overhead is what an eager forward really costs over a replay here (4 ms): the
    padding charge that the optimiser adds to every bucket is not time the runtime spent."""
    pod = Pod(dry_run=True)  # the buckets stay, so the eager forwards do too
    pod.interval({3: 200, 40: 100, 2000: 10})
    pod.interval({3: 200, 40: 100, 2000: 40})
    assert pod.tuner.model.padding_token_seconds > 0
    assert abs(pod.tuner.model.eager_overhead() - 4e-3) < 2e-4, pod.tuner.model.eager_overhead()


def test_a_set_that_covers_the_batch_budget_keeps_covering_it() -> None:
    """Short traffic on a set that reaches the batch budget (4,096 tokens): the retune fits the
    short sizes and keeps a bucket at the budget, so long prompts that come back replay at once
    instead of running eager for an interval and waiting for a recapture."""
    full = (*LADDER, 1024, 2048, 4096)
    pod = Pod(buckets=full, max_buckets=6)  # as many as TRAFFIC has sizes: the top one costs a fit
    pod.interval()  # TRAFFIC: up to 500 tokens
    assert pod.sim.applies == 1 and pod.sim.buckets != full
    assert pod.sim.buckets[-1] == 4096
    cursor = pod.tuner.cursor.value
    pod.sim.serve({3: 100, 3000: 5})
    assert asyncio.run(pod.sim.get_stats(cursor)).rejects == {}


def test_a_retuned_set_keeps_a_bucket_every_doubling_for_sizes_that_come_back() -> None:
    """Short traffic on a set that reaches the batch budget: the retune fits the short sizes and,
    having room, keeps a bucket within every doubling up to its largest, so prompts of other
    lengths that come back replay within the padding limit instead of running eager."""
    full = (*LADDER, 1024, 2048, 4096)
    pod = Pod(buckets=full, max_buckets=12)
    pod.interval()  # TRAFFIC: up to 500 tokens
    assert pod.sim.applies == 1
    buckets = pod.sim.buckets
    assert all(any(p <= b < 2 * p for b in buckets) for p in (64, 128, 256, 512, 1024, 2048)), buckets
    cursor = pod.tuner.cursor.value
    pod.sim.serve({3: 100, 700: 5, 1500: 5, 3000: 5})
    assert asyncio.run(pod.sim.get_stats(cursor)).rejects == {}
