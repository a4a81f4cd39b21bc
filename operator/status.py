"""Status semantics: which profile is effective, and what the owned Deployment says about readiness.

Pure functions of (spec, observed objects); the handlers write what they return.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from graphpilot.operator.resources import GENERATION_ANNOTATION
from graphpilot.operator.spec import ServiceSpec
from graphpilot.runtime.profile import GraphProfile, ProfileError

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Tuned")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str

    def to_dict(self, generation: int, now: str, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        status = "True" if self.status else "False"
        keep = (
            previous is not None and previous.get("status") == status and previous.get("lastTransitionTime")
        )
        return {
            "type": self.type,
            "status": status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": previous["lastTransitionTime"] if keep and previous else now,
            "observedGeneration": generation,
        }


@dataclass(frozen=True)
class ProfileDecision:
    profile: GraphProfile
    source: str  # "spec" | "autotuner"
    tuned: Condition


def resolve_profile(spec: ServiceSpec, record: dict[str, Any] | None) -> ProfileDecision:
    """The profile new pods start with: the autotuner's record when it is valid for this spec, else the spec's."""
    fallback = spec.spec_profile()
    if not spec.autotune:
        return ProfileDecision(
            fallback, "spec", Condition("Tuned", False, "AutotuneDisabled", "spec.autotune.enabled is false")
        )
    if not record or "profile" not in record:
        return ProfileDecision(
            fallback, "spec", Condition("Tuned", False, "AwaitingProfile", "no tuned profile recorded yet")
        )
    try:
        tuned = GraphProfile.from_dict(record["profile"])
        problem = _out_of_bounds(spec, tuned)
    except ProfileError as e:
        return ProfileDecision(
            fallback, "spec", Condition("Tuned", False, "InvalidProfile", f"tuned profile rejected: {e}")
        )
    if problem:
        return ProfileDecision(
            fallback,
            "spec",
            Condition("Tuned", False, "ProfileOutOfBounds", f"tuned profile rejected: {problem}"),
        )
    if tuned.mem_fraction_static is None:
        tuned = GraphProfile(tuned.buckets, spec.mem_fraction_static)
    who = f" by pod {record['pod']}" if record.get("pod") else ""
    when = f" at {record['updatedAt']}" if record.get("updatedAt") else ""
    return ProfileDecision(
        tuned, "autotuner", Condition("Tuned", True, "ProfileAccepted", f"tuned profile accepted{who}{when}")
    )


def _out_of_bounds(spec: ServiceSpec, p: GraphProfile) -> str | None:
    if p.max_bucket > spec.max_num_batched_tokens:
        return f"largest bucket {p.max_bucket} exceeds spec.runtime.maxNumBatchedTokens {spec.max_num_batched_tokens}"
    if len(p.buckets) > spec.autotune_max_buckets:
        return f"{len(p.buckets)} buckets exceed spec.autotune.maxBuckets {spec.autotune_max_buckets}"
    mem = p.mem_fraction_static
    if mem is not None and not spec.mem_fraction_min <= mem <= spec.mem_fraction_max:
        return f"mem_fraction_static {mem} is outside spec.autotune.memFractionBounds [{spec.mem_fraction_min}, {spec.mem_fraction_max}]"
    return None


def bucket_summary(profile: GraphProfile) -> str:
    return f"{len(profile.buckets)} (max {profile.max_bucket})"


@dataclass(frozen=True)
class Rollout:
    """What the Deployment says, reduced to the numbers status needs."""

    observed_generation: int | None  # the InferenceService generation the Deployment was built from
    replicas: int
    ready: int
    updated: int
    available: int
    conditions: tuple[Condition, Condition, Condition]


def _deploy_condition(dep: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (dep.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return dict(c)
    return {}


def rollout(generation: int, desired: int, dep: dict[str, Any] | None) -> Rollout:
    """Ready / Progressing / Degraded from the owned Deployment and the desired replica count."""
    if dep is None:
        missing = "the Deployment does not exist yet"
        conds = (Condition("Ready", False, "DeploymentMissing", missing), Condition("Progressing", True, "Creating", missing),
                 Condition("Degraded", False, "AsExpected", ""))  # fmt: skip
        return Rollout(None, 0, 0, 0, 0, conds)
    st, meta = dep.get("status") or {}, dep.get("metadata") or {}
    gen = (meta.get("annotations") or {}).get(GENERATION_ANNOTATION)
    replicas, ready = int(st.get("replicas") or 0), int(st.get("readyReplicas") or 0)
    updated, available = int(st.get("updatedReplicas") or 0), int(st.get("availableReplicas") or 0)
    # Both the Deployment controller and the operator must have seen the latest spec.
    seen = int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0) and gen == str(
        generation
    )
    rolled_out = seen and updated >= desired and replicas == desired
    all_ready = rolled_out and available >= desired and ready >= desired
    progress = _deploy_condition(dep, "Progressing")
    deadline = progress.get("reason") == "ProgressDeadlineExceeded"
    failure = _deploy_condition(dep, "ReplicaFailure")
    counts = f"{ready}/{desired} replicas ready, {updated} updated"

    if desired == 0:
        ready_c = Condition("Ready", False, "ScaledToZero", "spec.replicas is 0")
    elif all_ready:
        ready_c = Condition("Ready", True, "AllReplicasReady", counts)
    else:
        ready_c = Condition("Ready", False, "ReplicasNotReady", counts)

    if all_ready or (desired == 0 and replicas == 0):
        prog_c = Condition("Progressing", False, "RolloutComplete", counts)
    elif deadline:
        prog_c = Condition(
            "Progressing", False, "ProgressDeadlineExceeded", progress.get("message") or counts
        )
    elif not rolled_out:
        prog_c = Condition("Progressing", True, "RollingOut", counts)
    else:
        prog_c = Condition("Progressing", True, "PodsStarting", counts)

    if deadline:
        deg_c = Condition("Degraded", True, "ProgressDeadlineExceeded", progress.get("message") or counts)
    elif failure.get("status") == "True":
        deg_c = Condition("Degraded", True, "ReplicaFailure", failure.get("message") or "")
    elif rolled_out and not all_ready and desired > 0 and progress.get("reason") == "NewReplicaSetAvailable":
        # The rollout finished earlier and pods have since stopped being ready (crash, lost node).
        deg_c = Condition("Degraded", True, "ReplicasUnavailable", counts)
    else:
        deg_c = Condition("Degraded", False, "AsExpected", "")
    return Rollout(int(gen) if gen else None, replicas, ready, updated, available, (ready_c, prog_c, deg_c))


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_status(
    *,
    generation: int,
    desired: int,
    dep: dict[str, Any] | None,
    decision: ProfileDecision,
    selector: str,
    url: str,
    previous: dict[str, Any] | None,
    failure: str | None = None,
) -> dict[str, Any]:
    """The status fields the operator owns (never `autotuner`, which is the sidecar's record).

    `failure` is why the last reconcile could not apply everything; it stays reported (Degraded,
    ReconcileFailed) until a reconcile of the current generation gets through.
    """
    r = rollout(generation, desired, dep)
    now = now_rfc3339()
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or ()}
    if (
        failure is None
        and r.observed_generation != generation
        and old.get("Degraded", {}).get("reason") == "ReconcileFailed"
    ):
        failure = old["Degraded"].get("message")
    if failure is not None:
        r = replace(
            r,
            conditions=(
                r.conditions[0],
                r.conditions[1],
                Condition("Degraded", True, "ReconcileFailed", failure),
            ),
        )
    observed = (
        r.observed_generation
        if r.observed_generation is not None
        else (previous or {}).get("observedGeneration")
    )
    conditions = [c.to_dict(generation, now, old.get(c.type)) for c in (*r.conditions, decision.tuned)]
    return {
        "observedGeneration": observed,
        "replicas": r.replicas,
        "readyReplicas": r.ready,
        "updatedReplicas": r.updated,
        "replicaSummary": f"{r.ready}/{desired}",
        "selector": selector,
        "url": url,
        "profile": {
            "buckets": list(decision.profile.buckets),
            "memFractionStatic": decision.profile.mem_fraction_static,
        },
        "profileSource": decision.source,
        "bucketSummary": bucket_summary(decision.profile),
        "conditions": conditions,
    }
