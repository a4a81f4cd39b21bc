"""The operator against a real control plane with fake GPU nodes.

The chart is installed with helm (CRD, ServiceAccount, ClusterRole); the operator runs as a local
process with the chart's ServiceAccount token, so the chart's RBAC is what it really has. Pods are
kwok fakes: they are scheduled against nvidia.com/gpu capacity and turn Ready by kwok's stages.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from cluster import Cluster, versions, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "graphpilot"
RELEASE, SYSTEM_NS = "graphpilot", "graphpilot-system"
OWNED = ["deployment", "service", "serviceaccount", "role", "rolebinding", "configmap", "poddisruptionbudget"]


class Operator:
    """graphpilot-operator as a local process, with the chart ServiceAccount's identity."""

    def __init__(self, cluster: Cluster, workdir: Path, *args: str) -> None:
        self.cluster, self.workdir, self.args = cluster, workdir, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "operator.log"

    def kubeconfig(self) -> Path:
        token = self.cluster.kubectl(
            "create", "token", RELEASE, "-n", SYSTEM_NS, "--duration=6h"
        ).stdout.strip()
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        config = copy.deepcopy(admin)
        config["users"] = [{"name": "operator", "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = "operator"
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig()),
            "GRAPHPILOT_OPERATOR_IMAGE": "graphpilot/graphpilot:e2e",
            "GRAPHPILOT_OPERATOR_RESYNC_SECONDS": "30",
        }
        script = Path(sys.executable).with_name("graphpilot-operator")  # the installed console script
        entry = [str(script)] if script.exists() else [sys.executable, "-m", "graphpilot.operator.cli"]
        cmd = [*entry, "run", "--verbose", "--log-format=plain", *self.args]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text) if self.log.exists() else 0

    def tail(self, lines: int = 60) -> str:
        return (
            "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
        )


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    cluster.run(
        "helm",
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "-n",
        SYSTEM_NS,
        "--create-namespace",
        "--wait=false",
    )
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/inferenceservices.graphpilot.dev", "--timeout=60s"
    )
    op = Operator(cluster, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()
    sys.stderr.write(f"--- operator log (tail) ---\n{op.tail()}\n")


def get(cluster: Cluster, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    conds = ((obj or {}).get("status") or {}).get("conditions") or ()
    return next((c for c in conds if c["type"] == type_), {})


def is_ready(obj: dict[str, Any] | None) -> bool:
    """Ready=True for the object's current generation."""
    if not obj:
        return False
    current = (
        obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
        if obj.get("status")
        else False
    )
    return current and condition(obj, "Ready").get("status") == "True"


def wait_for(what: str, check: Callable[[], bool], op: Operator, timeout: float = 90) -> None:
    try:
        wait_until(what, check, timeout=timeout, interval=0.5)
    except Exception as e:
        raise AssertionError(f"{e}\n--- operator log ---\n{op.tail()}") from e


def example(name: str, **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "qwen3-0.6b.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    return doc


def apply(cluster: Cluster, ns: str, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc), check=False)


def owned(cluster: Cluster, ns: str, name: str) -> dict[str, list[str]]:
    """Names of the owned objects per kind, found by the instance label."""
    out = {}
    for kind in [*OWNED, "replicaset"]:
        items = cluster.kubectl_json("get", kind, "-n", ns, "-l", f"app.kubernetes.io/instance={name}")[
            "items"
        ]
        out[kind] = sorted(i["metadata"]["name"] for i in items)
    return out


def test_chart_is_lint_clean_and_server_side_valid(cluster: Cluster) -> None:
    lint = cluster.run("helm", "lint", "--strict", str(CHART), check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for sets in (
        [],
        ["--set", "watchNamespaces={a,b}", "--set", "crds.keep=false", "--set", "logLevel=debug"],
    ):
        kube = f"--kube-version={versions()['KUBERNETES_VERSION']}"
        rendered = cluster.run("helm", "template", "gp-dry", str(CHART), "-n", "default", kube, *sets).stdout
        dry = cluster.kubectl(
            "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered, check=False
        )
        assert dry.returncode == 0, dry.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_a_valid_inference_service(cluster: Cluster, operator: Operator, path: Path) -> None:
    out = cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", "default", "-f", str(path), check=False
    )
    assert out.returncode == 0, out.stderr
    assert "inferenceservice.graphpilot.dev/" in out.stdout


def test_example_serves_on_gpu_nodes_and_reports_ready(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    applied = cluster.kubectl(
        "apply", "-n", namespace, "-f", str(ROOT / "examples" / "qwen3-0.6b.yaml"), check=False
    )
    assert applied.returncode == 0, applied.stderr
    name = "qwen3-0-6b"
    wait_for("InferenceService Ready", lambda: is_ready(get(cluster, namespace, "gpis", name)), operator)

    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}")[
        "items"
    ]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] in cluster.node_names
        gpus = pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        assert gpus == "1"
    isvc = get(cluster, namespace, "gpis", name)
    assert isvc is not None
    st = isvc["status"]
    assert (st["replicas"], st["readyReplicas"], st["profileSource"]) == (2, 2, "spec")
    assert st["url"] == f"http://{name}.{namespace}.svc.cluster.local"
    assert st["selector"] == f"app.kubernetes.io/instance={name},app.kubernetes.io/name=graphpilot"
    assert condition(isvc, "Tuned")["reason"] == "AwaitingProfile"

    table = cluster.kubectl("get", "gpis", name, "-n", namespace).stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert header == ["NAME", "READY", "REPLICAS", "BUCKETS", "TUNED", "URL", "AGE"]
    assert row[:4] == [name, "True", "2/2", "12"] and row[4] == "(max" and row[6] == "False"
    assert row[7] == st["url"]
    explained = cluster.kubectl("explain", "inferenceservice.spec.autotune.memFractionBounds").stdout
    assert "range the autotuner may move memFractionStatic" in explained

    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.kind=InferenceService"
    ).stdout
    assert "created Deployment" in events


def watch_status(
    cluster: Cluster, ns: str, name: str, stop: threading.Event, seen: list[tuple[Any, ...]]
) -> None:
    while True:
        done = stop.is_set()  # one last sample after the stop, so the list ends with the final state
        obj = get(cluster, ns, "gpis", name)
        if obj and obj.get("status"):
            seen.append((obj["status"].get("observedGeneration"), condition(obj, "Ready").get("status"),
                         condition(obj, "Progressing").get("status"), obj["status"].get("readyReplicas")))  # fmt: skip
        if done:
            return
        time.sleep(0.1)


def test_scale_and_spec_change_roll_out_truthfully(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    name = "rolling"
    assert apply(cluster, namespace, example(name, replicas=1)).returncode == 0
    wait_for("Ready", lambda: is_ready(get(cluster, namespace, "gpis", name)), operator)

    cluster.kubectl("scale", "gpis", name, "-n", namespace, "--replicas=3")
    wait_for(
        "3 ready replicas",
        lambda: (
            (get(cluster, namespace, "deployment", name) or {}).get("status", {}).get("readyReplicas") == 3
        ),
        operator,
    )
    wait_for("Ready at 3", lambda: is_ready(get(cluster, namespace, "gpis", name)), operator)
    path = f"/apis/graphpilot.dev/v1alpha1/namespaces/{namespace}/inferenceservices/{name}/scale"
    scale = json.loads(cluster.kubectl("get", "--raw", path).stdout)
    assert scale["status"]["replicas"] == 3 and scale["status"]["selector"].startswith(
        "app.kubernetes.io/instance="
    )

    before = get(cluster, namespace, "gpis", name)
    assert before is not None
    old_gen = before["metadata"]["generation"]
    stop, seen = threading.Event(), []  # type: ignore[var-annotated]
    watcher = threading.Thread(target=watch_status, args=(cluster, namespace, name, stop, seen), daemon=True)
    watcher.start()
    patch = {"spec": {"runtime": {"maxRunningRequests": 64}}}
    cluster.kubectl("patch", "gpis", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    try:
        wait_for(
            "Ready after the rollout",
            lambda: is_ready(get(cluster, namespace, "gpis", name)),
            operator,
            timeout=120,
        )
    finally:
        stop.set()
        watcher.join()
    new_gen = old_gen + 1
    # While the new generation rolled out, status said Progressing and not Ready; then Ready and not Progressing.
    rolling = [s for s in seen if s[0] == new_gen and s[2] == "True"]
    assert rolling, f"never saw Progressing=True for generation {new_gen}: {seen}"
    assert all(s[1] == "False" for s in rolling)
    assert seen[-1][:3] == (new_gen, "True", "False")
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}")[
        "items"
    ]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    config = yaml.safe_load(
        cluster.kubectl_json("get", "configmap", f"{name}-runtime", "-n", namespace)["data"]["runtime.yaml"]
    )
    assert config["max_running_requests"] == 64
    hashes = {p["metadata"]["annotations"]["graphpilot.dev/spec-hash"] for p in live}
    assert len(hashes) == 1 and len(live) == 3


def sidecar_patch(
    cluster: Cluster, ns: str, target: str, identity: str, record: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "patch", "gpis", target, "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"autotuner": record}}), f"--as=system:serviceaccount:{ns}:{identity}", check=False,
    )  # fmt: skip


def test_tuned_profile_from_the_sidecar_identity_reaches_status_and_new_pods_only(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    for name in ("tuned", "neighbour"):
        assert apply(cluster, namespace, example(name, replicas=1)).returncode == 0
    wait_for(
        "both Ready",
        lambda: all(is_ready(get(cluster, namespace, "gpis", n)) for n in ("tuned", "neighbour")),
        operator,
    )
    rs_before = owned(cluster, namespace, "tuned")["replicaset"]
    template_before = get(cluster, namespace, "deployment", "tuned")["spec"]["template"]  # type: ignore[index]

    record = {"profile": {"buckets": [1, 4, 16, 96, 512], "mem_fraction_static": 0.82},
              "updatedAt": "2026-01-01T00:00:00Z", "pod": "tuned-abc"}  # fmt: skip
    ok = sidecar_patch(cluster, namespace, "tuned", "tuned-autotuner", record)
    assert ok.returncode == 0, ok.stderr

    def accepted() -> bool:
        obj = get(cluster, namespace, "gpis", "tuned")
        return bool(obj) and obj["status"].get("profileSource") == "autotuner"  # type: ignore[index]

    wait_for("tuned profile accepted", accepted, operator)
    obj = get(cluster, namespace, "gpis", "tuned")
    assert obj is not None
    assert obj["status"]["profile"] == {"buckets": [1, 4, 16, 96, 512], "memFractionStatic": 0.82}
    assert obj["status"]["autotuner"] == record  # the operator never clobbers the sidecar's record
    assert (condition(obj, "Tuned")["status"], condition(obj, "Tuned")["reason"]) == (
        "True",
        "ProfileAccepted",
    )
    cm = cluster.kubectl_json("get", "configmap", "tuned-runtime", "-n", namespace)
    config = yaml.safe_load(cm["data"]["runtime.yaml"])
    assert (config["graph_buckets"], config["mem_fraction_static"]) == ([1, 4, 16, 96, 512], 0.82)
    # Running pods already have the profile (live retune): nothing restarts for it.
    assert owned(cluster, namespace, "tuned")["replicaset"] == rs_before
    assert get(cluster, namespace, "deployment", "tuned")["spec"]["template"] == template_before  # type: ignore[index]
    assert is_ready(get(cluster, namespace, "gpis", "tuned"))

    denied = sidecar_patch(cluster, namespace, "neighbour", "tuned-autotuner", record)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    spec_write = cluster.kubectl("patch", "gpis", "tuned", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":5}}',
                                 f"--as=system:serviceaccount:{namespace}:tuned-autotuner", check=False)  # fmt: skip
    assert spec_write.returncode != 0 and "forbidden" in spec_write.stderr.lower()
    neighbour = get(cluster, namespace, "gpis", "neighbour")
    assert neighbour is not None and "autotuner" not in neighbour["status"]

    bad = {**record, "profile": {"buckets": [1, 4096]}}
    assert sidecar_patch(cluster, namespace, "tuned", "tuned-autotuner", bad).returncode == 0
    wait_for(
        "out-of-bounds profile rejected",
        lambda: (
            condition(get(cluster, namespace, "gpis", "tuned"), "Tuned").get("reason") == "ProfileOutOfBounds"
        ),
        operator,
    )
    obj = get(cluster, namespace, "gpis", "tuned")
    assert obj is not None and obj["status"]["profileSource"] == "spec"
    assert "maxNumBatchedTokens" in condition(obj, "Tuned")["message"]


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("two model sources", {"model": {"uri": "hf://a/b", "hostPath": {"path": "/m"}}}, "spec.model"),
    ("no model source", {"model": {}}, "spec.model"),
    ("bounds inverted", {"autotune": {"memFractionBounds": {"min": 0.9, "max": 0.6}}}, "memFractionBounds"),
    ("mem fraction outside bounds", {"runtime": {"memFractionStatic": 0.3}}, "memFractionStatic"),
    ("unsorted buckets", {"runtime": {"graphBuckets": [8, 4, 16]}}, "graphBuckets"),
    ("duplicate buckets", {"runtime": {"graphBuckets": [4, 4, 16]}}, "graphBuckets"),
    (
        "bucket above the token budget",
        {"runtime": {"maxNumBatchedTokens": 512, "graphBuckets": [1, 1024]}},
        "graphBuckets",
    ),
    ("unknown graph backend", {"runtime": {"graphBackend": "tensorrt"}}, "graphBackend"),
    ("mixed-step budget of zero", {"runtime": {"mixedStepTokens": 0}}, "mixedStepTokens"),
    ("cuda without gpus", {"resources": {"gpus": 0}}, "graphBackend"),
    ("negative replicas", {"replicas": -1}, "replicas"),
    ("unsupported uri", {"model": {"uri": "ftp://host/model"}}, "uri"),
    ("rollout that cannot progress", {"rollout": {"maxSurge": 0, "maxUnavailable": 0}}, "rollout"),
    ("pvc path escaping the volume", {"model": {"pvc": {"claimName": "m", "path": "../etc"}}}, "path"),
    ("too many buckets for the autotuner", {"autotune": {"maxBuckets": 4}}, "graphBuckets"),
]


@pytest.mark.parametrize(("case", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_specs_are_rejected_naming_the_field(
    cluster: Cluster, operator: Operator, case: str, spec: dict[str, Any], field: str
) -> None:
    doc = example("invalid")
    doc["spec"] = {
        **doc["spec"],
        **{k: v for k, v in spec.items() if k not in ("runtime", "autotune", "resources")},
    }
    for section in ("runtime", "autotune", "resources"):
        if section in spec:
            doc["spec"][section] = {**doc["spec"].get(section, {}), **spec[section]}
    out = cluster.kubectl(
        "apply", "--dry-run=server", "-n", "default", "-f", "-", input=json.dumps(doc), check=False
    )
    assert out.returncode != 0, f"{case} was accepted"
    assert field in out.stderr, out.stderr


def test_deleting_the_service_removes_everything_it_owned(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    assert apply(cluster, namespace, example("doomed", replicas=2)).returncode == 0
    wait_for("Ready", lambda: is_ready(get(cluster, namespace, "gpis", "doomed")), operator)
    assert all(owned(cluster, namespace, "doomed")[k] for k in OWNED)
    cluster.kubectl("delete", "gpis", "doomed", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        "owned objects garbage-collected",
        lambda: not any(owned(cluster, namespace, "doomed").values()),
        operator,
    )
    wait_for("pods gone", lambda: not cluster.kubectl_json("get", "pods", "-n", namespace)["items"], operator)


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    # A quota that refuses PodDisruptionBudgets stops the reconcile halfway (after the RBAC objects,
    # ConfigMap and Service), so the kill below lands mid-reconcile for sure, with the handler retrying.
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pdb", "namespace": namespace},
             "spec": {"hard": {"count/poddisruptionbudgets.policy": "0"}}}  # fmt: skip
    cluster.apply(quota)
    assert apply(cluster, namespace, example("crashy", replicas=2)).returncode == 0
    wait_for(
        "the reconcile to stop at the PodDisruptionBudget",
        lambda: "exceeded quota" in operator.tail(200),
        operator,
    )
    partial = owned(cluster, namespace, "crashy")
    assert partial["serviceaccount"] and partial["service"] and not partial["poddisruptionbudget"]
    # Nothing claims the new generation is served while the owned objects are incomplete.
    stuck = get(cluster, namespace, "gpis", "crashy")
    assert not is_ready(stuck) and not partial["deployment"]
    wait_for(
        "the failure in status",
        lambda: (
            condition(get(cluster, namespace, "gpis", "crashy"), "Degraded").get("reason")
            == "ReconcileFailed"
        ),
        operator,
    )
    assert "exceeded quota" in condition(get(cluster, namespace, "gpis", "crashy"), "Degraded")["message"]
    operator.kill()
    cluster.kubectl("delete", "resourcequota", "no-pdb", "-n", namespace)
    operator.start()
    wait_for("Ready after restart", lambda: is_ready(get(cluster, namespace, "gpis", "crashy")), operator)
    final = owned(cluster, namespace, "crashy")
    expected = {"deployment": ["crashy"], "service": ["crashy"], "serviceaccount": ["crashy-autotuner"],
                "role": ["crashy-autotuner"], "rolebinding": ["crashy-autotuner"], "configmap": ["crashy-runtime"],
                "poddisruptionbudget": ["crashy"]}  # fmt: skip
    assert {k: v for k, v in final.items() if k != "replicaset"} == expected, f"before the restart: {partial}"
    assert len(final["replicaset"]) == 1  # the restart did not roll the pods
    assert condition(get(cluster, namespace, "gpis", "crashy"), "Degraded")["reason"] == "AsExpected"

    # A restart of a converged operator changes nothing either.
    rv = get(cluster, namespace, "deployment", "crashy")["metadata"]["resourceVersion"]  # type: ignore[index]
    operator.stop()
    done = operator.count("Handler 'reconcile' succeeded")
    operator.start()
    wait_for(
        "the resumed operator reconciled",
        lambda: operator.count("Handler 'reconcile' succeeded") > done,
        operator,
    )
    assert get(cluster, namespace, "deployment", "crashy")["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    assert owned(cluster, namespace, "crashy") == final


def peers(cluster: Cluster) -> dict[str, Any]:
    """The operators announced in the ClusterKopfPeering object (identity -> priority, lifetime)."""
    out = cluster.kubectl("get", "clusterkopfpeering", "graphpilot", "-o", "json", check=False)
    return (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}


def test_peered_operators_reconcile_once_and_hand_over(
    cluster: Cluster, namespace: str, operator: Operator, tmp_path: Path
) -> None:
    peering = ["--set", "peering.enabled=true", "--set", "replicaCount=2"]
    cluster.run("helm", "upgrade", RELEASE, str(CHART), "-n", SYSTEM_NS, "--wait=false", *peering)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s"
    )
    operator.stop()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    active = Operator(cluster, tmp_path / "a", "--peering=graphpilot", "--priority=200")
    standby = Operator(cluster, tmp_path / "b", "--peering=graphpilot", "--priority=100")
    done = "Handler 'reconcile' succeeded"
    try:
        # kopf's peering is no lock: two peers that start at the same instant may both act for a moment
        # (harmless here, every write is an idempotent apply). Start them one after the other.
        active.start()
        wait_for("the active peer", lambda: len(peers(cluster)) == 1, active)
        standby.start()
        wait_for("two peers", lambda: len(peers(cluster)) == 2, standby)
        assert "Resuming operations" in active.tail(200)
        assert apply(cluster, namespace, example("peered", replicas=1)).returncode == 0
        wait_for("Ready", lambda: is_ready(get(cluster, namespace, "gpis", "peered")), active)
        assert active.count(done) >= 1 and standby.count(done) == 0

        active.stop()  # a graceful exit withdraws it from the peering: the standby takes over
        wait_for("the standby to resume", lambda: "Resuming operations" in standby.tail(200), standby)
        cluster.kubectl("scale", "gpis", "peered", "-n", namespace, "--replicas=2")
        wait_for("Ready at 2 under the standby", lambda: is_ready(get(cluster, namespace, "gpis", "peered"))
                 and get(cluster, namespace, "gpis", "peered")["status"]["readyReplicas"] == 2, standby)  # type: ignore[index]  # fmt: skip
        assert standby.count(done) >= 1
    finally:
        active.stop()
        standby.stop()
        cluster.run("helm", "upgrade", RELEASE, str(CHART), "-n", SYSTEM_NS, "--wait=false")
        operator.start()


SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}  # fmt: skip


def test_service_monitor_follows_the_prometheus_operator_and_the_spec(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    assert apply(cluster, namespace, example("scraped", replicas=1)).returncode == 0
    wait_for("Ready", lambda: is_ready(get(cluster, namespace, "gpis", "scraped")), operator)
    cluster.apply(SERVICE_MONITOR_CRD)  # as if the Prometheus Operator were installed now
    try:
        cluster.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com")
        # No spec change: the periodic resync notices the new API.
        wait_for(
            "ServiceMonitor",
            lambda: get(cluster, namespace, "servicemonitor", "scraped") is not None,
            operator,
        )
        sm = get(cluster, namespace, "servicemonitor", "scraped")
        assert sm is not None
        assert [e["port"] for e in sm["spec"]["endpoints"]] == ["http", "autotuner"]
        svc = get(cluster, namespace, "service", "scraped")
        assert svc is not None
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        off = {"spec": {"monitoring": {"serviceMonitor": False}, "disruptionBudget": {"enabled": False}}}
        cluster.kubectl("patch", "gpis", "scraped", "-n", namespace, "--type=merge", "-p", json.dumps(off))
        wait_for("ServiceMonitor and PDB pruned", lambda: get(cluster, namespace, "servicemonitor", "scraped") is None
                 and get(cluster, namespace, "pdb", "scraped") is None, operator)  # fmt: skip
    finally:
        cluster.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "--wait=true")
