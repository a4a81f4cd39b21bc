"""kopf handlers: level-based reconcile of everything an InferenceService owns.

Every trigger (create, spec change, a new tuned-profile record, operator restart, periodic resync)
runs the same `reconcile`: derive the desired objects from spec + tuned profile, server-side apply
them, prune what is no longer wanted, and write the observed state into status.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from graphpilot.operator import resources as res
from graphpilot.operator.kube import Kube, KubeError
from graphpilot.operator.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION, ServiceSpec
from graphpilot.operator.status import ProfileDecision, build_status, resolve_profile

RESYNC_SECONDS = float(os.environ.get("GRAPHPILOT_OPERATOR_RESYNC_SECONDS", "120"))
IS = (GROUP, VERSION, PLURAL)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Keep kopf's bookkeeping in our own annotations and out of status; post only our own events."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.level = logging.WARNING  # kopf's own log lines; ours are explicit events
    settings.execution.max_workers = int(os.environ.get("GRAPHPILOT_OPERATOR_WORKERS", "8"))
    settings.watching.server_timeout = 300
    memo.kube = Kube()
    if not settings.peering.standalone:
        _ensure_peering(memo.kube, settings.peering.name, memo.namespaces, logger)
    memo.image = os.environ.get("GRAPHPILOT_OPERATOR_IMAGE", "")
    memo.cluster_domain = os.environ.get("GRAPHPILOT_OPERATOR_CLUSTER_DOMAIN", "cluster.local")


def _ensure_peering(kube: Kube, name: str, namespaces: list[str], logger: kopf.Logger) -> None:
    """kopf elects the active replica through a peering object but never creates it: create it here.

    (A chart cannot ship the object next to its CRD: the CRD is not served yet when Helm applies it.)
    """
    objs = [{"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": ns}}
            for ns in namespaces] or [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}]  # fmt: skip
    for obj in objs:
        try:
            if kube.create(obj):
                logger.info("created %s %s", obj["kind"], name)
        except KubeError as e:
            # kopf itself then reports the missing peering (and refuses to run unpeered when asked to peer).
            logger.warning("cannot create %s %s: %s", obj["kind"], name, e.message)


def _retry(e: KubeError, what: str) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"{what}: {e.message}", delay=5 if e.retriable else 15)


def _apply(kube: Kube, body: kopf.Body, manifest: dict[str, Any]) -> dict[str, Any]:
    """Apply one object; post an event when it was created or changed."""
    meta, kind = manifest["metadata"], manifest["kind"]
    try:
        before = kube.get(manifest["apiVersion"], kind, meta["namespace"], meta["name"])
        after = kube.apply(manifest)
    except KubeError as e:
        raise _retry(e, f"applying {kind} {meta['name']}") from e
    if before is None:
        kopf.event(body, type="Normal", reason="Created", message=f"created {kind} {meta['name']}")
    elif before["metadata"].get("resourceVersion") != after["metadata"].get("resourceVersion"):
        kopf.event(body, type="Normal", reason="Updated", message=f"updated {kind} {meta['name']}")
    return after


def _prune(kube: Kube, body: kopf.Body, api_version: str, kind: str, namespace: str, name: str) -> None:
    try:
        existing = kube.get(api_version, kind, namespace, name)
        owned = existing and any(
            r.get("uid") == body["metadata"]["uid"] for r in existing["metadata"].get("ownerReferences") or ()
        )
        if owned and kube.delete(api_version, kind, namespace, name):
            kopf.event(
                body,
                type="Normal",
                reason="Deleted",
                message=f"deleted {kind} {name}: no longer wanted by the spec",
            )
    except KubeError as e:
        raise _retry(e, f"pruning {kind} {name}") from e


def _announce_profile(body: kopf.Body, decision: ProfileDecision, status: kopf.Status) -> None:
    old: dict[str, Any] = next((c for c in status.get("conditions") or () if c.get("type") == "Tuned"), {})
    if (old.get("reason"), old.get("message")) == (decision.tuned.reason, decision.tuned.message):
        return
    p = decision.profile
    if decision.tuned.reason == "ProfileAccepted":
        msg = f"new pods start with the tuned profile: {len(p.buckets)} buckets up to {p.max_bucket}, mem_fraction_static {p.mem_fraction_static}"
        kopf.event(body, type="Normal", reason="ProfileAccepted", message=msg)
    elif decision.tuned.reason in ("InvalidProfile", "ProfileOutOfBounds"):
        kopf.warn(body, reason=decision.tuned.reason, message=decision.tuned.message)


@kopf.on.create(*IS)
@kopf.on.resume(*IS)
@kopf.on.update(*IS, field="spec")
@kopf.on.field(*IS, field="status.autotuner")
@kopf.timer(*IS, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, idle=RESYNC_SECONDS)
def reconcile(
    name: str, namespace: str | None, body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status,
    patch: kopf.Patch, memo: Any, **_: Any,
) -> None:  # fmt: skip
    """Make the owned objects match spec + tuned profile, then report what the cluster shows."""
    kube: Kube = memo.kube
    ns = namespace or "default"  # InferenceService is namespaced; this only narrows the type
    s = ServiceSpec.from_spec(name, spec)
    image = s.image or memo.image
    if not image:
        raise kopf.PermanentError(
            "spec.image is empty and the operator has no default image (GRAPHPILOT_OPERATOR_IMAGE)"
        )
    owner = res.Owner(name, ns, meta["uid"], int(meta.get("generation") or 1))
    decision = resolve_profile(s, status.get("autotuner"))
    _announce_profile(body, decision, status)

    try:
        dep = _apply_all(kube, body, owner, s, decision, image)
    except kopf.TemporaryError as e:
        # Report why in status too (the handler's patch is applied even when it fails), then retry.
        current = _current_deployment(kube, ns, name)
        patch.status.update(_status(owner, s, decision, current, dict(status), memo.cluster_domain, str(e)))
        raise
    patch.status.update(_status(owner, s, decision, dep, dict(status), memo.cluster_domain))


def _apply_all(kube: Kube, body: kopf.Body, owner: res.Owner, s: ServiceSpec, decision: ProfileDecision,
               image: str) -> dict[str, Any]:  # fmt: skip
    """Apply every owned object; the Deployment last, as the mark that its generation is complete."""
    ns, name = owner.namespace, owner.name
    for manifest in (res.service_account(owner), res.role(owner), res.role_binding(owner),
                     res.config_map(owner, s, decision.profile, decision.source), res.service(owner, s)):  # fmt: skip
        _apply(kube, body, manifest)
    if s.pdb_enabled:
        _apply(kube, body, res.disruption_budget(owner, s))
    else:
        _prune(kube, body, "policy/v1", "PodDisruptionBudget", ns, name)
    try:
        monitors = kube.serves("monitoring.coreos.com/v1", "servicemonitors")
    except KubeError as e:
        raise _retry(e, "discovering ServiceMonitor support") from e
    if monitors and s.service_monitor:
        _apply(kube, body, res.service_monitor(owner, s))
    elif monitors:
        _prune(kube, body, "monitoring.coreos.com/v1", "ServiceMonitor", ns, name)
    # The Deployment goes last: its generation annotation then means "everything for this generation
    # is applied", which is what status.observedGeneration reports.
    return _apply(kube, body, res.deployment(owner, s, image))


def _current_deployment(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return kube.get("apps/v1", "Deployment", namespace, name)
    except KubeError:
        return None


def _status(owner: res.Owner, s: ServiceSpec, decision: ProfileDecision, dep: dict[str, Any] | None,
            previous: dict[str, Any], cluster_domain: str, failure: str | None = None) -> dict[str, Any]:  # fmt: skip
    return build_status(
        generation=owner.generation, desired=s.replicas, dep=dep, decision=decision,
        selector=res.selector_string(owner.name), url=res.service_url(owner, s, cluster_domain), previous=previous,
        failure=failure,
    )  # fmt: skip


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    conds = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or ()
    ]
    return {**{k: v for k, v in status.items() if k != "autotuner"}, "conditions": conds}


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": res.MANAGED_BY})
def deployment_changed(
    body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Pods came and went: refresh the owner's status without touching the owned objects."""
    name = body["metadata"].get("labels", {}).get(f"{GROUP}/inferenceservice")
    namespace = body["metadata"]["namespace"]
    kube: Kube = memo.kube
    try:
        isvc = kube.get(API_VERSION, KIND, namespace, name) if name else None
        if isvc is None or isvc["metadata"].get("deletionTimestamp"):
            return
        s = ServiceSpec.from_spec(name, isvc.get("spec") or {})
        meta = isvc["metadata"]
        owner = res.Owner(name, namespace, meta["uid"], int(meta.get("generation") or 1))
        previous = isvc.get("status") or {}
        decision = resolve_profile(s, previous.get("autotuner"))
        dep = None if type == "DELETED" else dict(body)
        new = _status(owner, s, decision, dep, previous, memo.cluster_domain)
        if _comparable(new) != _comparable(previous):
            kube.patch_status(API_VERSION, KIND, namespace, name, new)
    except KubeError as e:
        # Event handlers are not retried; the next Deployment event or the periodic resync catches up.
        logger.warning("status refresh of %s/%s failed: %s", namespace, name, e)
