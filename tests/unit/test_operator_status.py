"""Status semantics: the effective profile and what Ready / Progressing / Degraded / Tuned say."""

from __future__ import annotations

from typing import Any

from graphpilot.operator.resources import GENERATION_ANNOTATION
from graphpilot.operator.spec import ServiceSpec
from graphpilot.operator.status import build_status, resolve_profile, rollout

SPEC = ServiceSpec.from_spec(
    "qwen", {"model": {"uri": "hf://a/b"}, "runtime": {"graphBuckets": [1, 2, 4, 8]}}
)


def record(profile: Any) -> dict[str, Any]:
    return {"profile": profile, "updatedAt": "2026-01-01T00:00:00Z", "pod": "qwen-abc"}


def test_without_a_record_the_spec_profile_is_effective() -> None:
    d = resolve_profile(SPEC, None)
    assert (d.source, d.profile.buckets, d.profile.mem_fraction_static) == ("spec", (1, 2, 4, 8), 0.85)
    assert (d.tuned.status, d.tuned.reason) == (False, "AwaitingProfile")


def test_empty_spec_buckets_mean_the_runtime_default_ladder() -> None:
    s = ServiceSpec.from_spec("q", {"model": {"uri": "hf://a/b"}, "runtime": {"maxNumBatchedTokens": 256}})
    buckets = resolve_profile(s, None).profile.buckets
    assert buckets[0] == 1 and buckets[-1] == 256


def test_a_valid_tuned_record_becomes_the_effective_profile() -> None:
    d = resolve_profile(SPEC, record({"buckets": [16, 4, 1, 4], "mem_fraction_static": 0.9}))
    assert (d.source, d.profile.buckets, d.profile.mem_fraction_static) == ("autotuner", (1, 4, 16), 0.9)
    assert (d.tuned.status, d.tuned.reason) == (True, "ProfileAccepted")
    assert "qwen-abc" in d.tuned.message


def test_a_tuned_record_without_mem_fraction_keeps_the_spec_one() -> None:
    d = resolve_profile(SPEC, record({"buckets": [1, 2]}))
    assert d.profile.mem_fraction_static == 0.85 and d.source == "autotuner"


def test_malformed_records_are_rejected_with_the_reason() -> None:
    for bad, words in [
        ({"buckets": []}, "empty"),
        ({"buckets": ["x"]}, "not an integer"),
        ({"buckets": [1], "extra": 1}, "unknown"),
        ("nonsense", "JSON object"),
        ({"buckets": [1], "mem_fraction_static": 1.5}, "out of range"),
    ]:
        d = resolve_profile(SPEC, record(bad))
        assert (d.source, d.tuned.reason) == ("spec", "InvalidProfile"), bad
        assert words in d.tuned.message


def test_records_outside_the_spec_bounds_are_rejected() -> None:
    too_big = resolve_profile(SPEC, record({"buckets": [1, 4096]}))
    assert too_big.tuned.reason == "ProfileOutOfBounds" and "maxNumBatchedTokens" in too_big.tuned.message
    low_mem = resolve_profile(SPEC, record({"buckets": [1], "mem_fraction_static": 0.3}))
    assert low_mem.tuned.reason == "ProfileOutOfBounds" and "memFractionBounds" in low_mem.tuned.message
    many = resolve_profile(SPEC, record({"buckets": list(range(1, 40))}))
    assert many.tuned.reason == "ProfileOutOfBounds" and "maxBuckets" in many.tuned.message


def test_records_are_ignored_when_autotune_is_disabled() -> None:
    s = ServiceSpec.from_spec("q", {"model": {"uri": "hf://a/b"}, "autotune": {"enabled": False}})
    d = resolve_profile(s, record({"buckets": [1, 2]}))
    assert (d.source, d.tuned.reason) == ("spec", "AutotuneDisabled")


def deployment(
    gen: int = 2, replicas: int = 2, ready: int = 2, updated: int = 2, reason: str = "NewReplicaSetAvailable"
) -> dict:
    return {
        "metadata": {"generation": 5, "annotations": {GENERATION_ANNOTATION: str(gen)}},
        "status": {
            "observedGeneration": 5, "replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated,
            "availableReplicas": ready, "conditions": [{"type": "Progressing", "status": "True", "reason": reason}],
        },
    }  # fmt: skip


def states(r: Any) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.reason) for c in r.conditions}


def test_all_replicas_ready_on_the_current_spec_is_ready() -> None:
    assert states(rollout(2, 2, deployment())) == {
        "Ready": (True, "AllReplicasReady"), "Progressing": (False, "RolloutComplete"), "Degraded": (False, "AsExpected"),
    }  # fmt: skip


def test_a_deployment_built_from_an_older_spec_is_not_ready() -> None:
    s = states(rollout(3, 2, deployment(gen=2)))
    assert s["Ready"][0] is False and s["Progressing"] == (True, "RollingOut")


def test_a_rollout_with_old_pods_left_is_progressing() -> None:
    s = states(rollout(2, 2, deployment(replicas=3, updated=1, ready=2, reason="ReplicaSetUpdated")))
    assert s["Ready"][0] is False and s["Progressing"] == (True, "RollingOut") and s["Degraded"][0] is False


def test_new_pods_still_capturing_graphs_are_starting() -> None:
    s = states(rollout(2, 2, deployment(ready=0, reason="ReplicaSetUpdated")))
    assert s["Ready"] == (False, "ReplicasNotReady") and s["Progressing"] == (True, "PodsStarting")


def test_pods_lost_after_a_complete_rollout_are_degraded() -> None:
    s = states(rollout(2, 2, deployment(ready=1)))
    assert s["Degraded"] == (True, "ReplicasUnavailable") and s["Ready"][0] is False


def test_a_stuck_rollout_is_degraded_and_no_longer_progressing() -> None:
    s = states(rollout(2, 2, deployment(ready=0, reason="ProgressDeadlineExceeded")))
    assert s["Degraded"] == (True, "ProgressDeadlineExceeded")
    assert s["Progressing"] == (False, "ProgressDeadlineExceeded")


def test_scaled_to_zero_is_not_ready_but_complete() -> None:
    s = states(rollout(2, 0, deployment(replicas=0, ready=0, updated=0)))
    assert s["Ready"] == (False, "ScaledToZero") and s["Progressing"][0] is False


def test_status_never_writes_the_autotuner_record_and_keeps_transition_times() -> None:
    d = resolve_profile(SPEC, None)
    kw: dict[str, Any] = {"generation": 2, "desired": 2, "decision": d, "selector": "a=b", "url": "http://x"}
    first = build_status(dep=deployment(), previous=None, **kw)
    assert "autotuner" not in first
    assert (first["observedGeneration"], first["readyReplicas"], first["replicaSummary"]) == (2, 2, "2/2")
    assert first["profile"] == {"buckets": [1, 2, 4, 8], "memFractionStatic": 0.85}
    assert first["bucketSummary"] == "4 (max 8)" and first["profileSource"] == "spec"
    old = {
        **first,
        "conditions": [{**c, "lastTransitionTime": "2020-01-01T00:00:00Z"} for c in first["conditions"]],
    }
    again = build_status(dep=deployment(), previous=old, **kw)
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {"2020-01-01T00:00:00Z"}
    flipped = build_status(dep=deployment(ready=0, reason="ReplicaSetUpdated"), previous=old, **kw)
    ready = next(c for c in flipped["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_a_failed_reconcile_is_degraded_until_the_generation_is_applied() -> None:
    d = resolve_profile(SPEC, None)
    kw: dict[str, Any] = {"desired": 2, "decision": d, "selector": "a=b", "url": "http://x"}
    failed = build_status(generation=3, dep=deployment(gen=2), previous=None, failure="exceeded quota", **kw)
    degraded = next(c for c in failed["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"], degraded["message"]) == (
        "True",
        "ReconcileFailed",
        "exceeded quota",
    )
    # A Deployment event in between (it still has the old generation) keeps reporting the failure...
    refreshed = build_status(generation=3, dep=deployment(gen=2), previous=failed, **kw)
    assert next(c for c in refreshed["conditions"] if c["type"] == "Degraded")["reason"] == "ReconcileFailed"
    # ...until the current generation is applied.
    fixed = build_status(generation=3, dep=deployment(gen=3), previous=refreshed, **kw)
    assert next(c for c in fixed["conditions"] if c["type"] == "Degraded")["reason"] == "AsExpected"
