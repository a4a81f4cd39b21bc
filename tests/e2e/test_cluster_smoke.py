"""The test control plane behaves like a real GPU cluster: what the operator's e2e tests rely on."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from cluster import Cluster, versions, wait_until
from nodes import GPU_RESOURCE, GPU_TOLERATION, GPUS_PER_NODE

pytestmark = pytest.mark.e2e


def deployment(name: str, namespace: str, gpus: int, tolerate_gpu_taint: bool = True) -> dict[str, Any]:
    """One replica whose single container asks for `gpus` GPUs."""
    container = {
        "name": "runtime",
        # Never pulled: kwok plays the kubelet, so any image name is accepted.
        "image": "graphpilot/runtime:e2e",
        "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
    }
    pod_spec = {"containers": [container], "tolerations": [GPU_TOLERATION] if tolerate_gpu_taint else []}
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def test_versions_are_the_pinned_releases(cluster: Cluster) -> None:
    pinned = versions()
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == f"v{pinned['KUBERNETES_VERSION']}"
    assert version["serverVersion"]["gitVersion"] == f"v{pinned['KUBERNETES_VERSION']}"
    assert cluster.run("helm", "version", "--short").stdout.startswith(f"v{pinned['HELM_VERSION']}")
    assert f"v{pinned['KWOK_VERSION']}" in cluster.run("kwok", "--version").stdout
    assert pinned["ETCD_VERSION"] in cluster.run("etcd", "--version").stdout


def test_fake_gpu_nodes_are_ready_with_gpus_and_tainted(cluster: Cluster) -> None:
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(cluster.node_names)
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"
        assert node["status"]["allocatable"][GPU_RESOURCE] == str(GPUS_PER_NODE)
        assert {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]


def test_gpu_deployment_runs_on_a_gpu_node_and_is_garbage_collected(cluster: Cluster, namespace: str) -> None:
    cluster.apply(deployment("llm", namespace, gpus=4))
    cluster.kubectl("rollout", "status", "deployment/llm", "-n", namespace, "--timeout=90s")

    (pod,) = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=llm")["items"]
    assert pod["spec"]["nodeName"] in cluster.node_names
    assert pod["status"]["phase"] == "Running"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    assert cluster.kubectl_json("get", "deployment", "llm", "-n", namespace)["status"]["readyReplicas"] == 1

    # Owner references: deleting the Deployment lets the garbage collector remove its ReplicaSet and pods.
    cluster.kubectl("delete", "deployment", "llm", "-n", namespace, "--cascade=background")
    wait_until(
        "the ReplicaSet and pod to be garbage-collected",
        lambda: (
            not cluster.kubectl_json("get", "replicasets,pods", "-n", namespace, "-l", "app=llm")["items"]
        ),
        timeout=60,
    )


def test_more_gpus_than_a_node_has_stay_pending(cluster: Cluster, namespace: str) -> None:
    cluster.apply(deployment("too-big", namespace, gpus=GPUS_PER_NODE + 1))
    event = _wait_for_failed_scheduling(cluster, namespace, "app=too-big")
    assert f"Insufficient {GPU_RESOURCE}" in event["message"]


def test_pod_without_the_gpu_toleration_stays_pending(cluster: Cluster, namespace: str) -> None:
    cluster.apply(deployment("no-toleration", namespace, gpus=1, tolerate_gpu_taint=False))
    event = _wait_for_failed_scheduling(cluster, namespace, "app=no-toleration")
    # e.g. "0/2 nodes are available: 2 node(s) had untolerated taint(s). ..."
    assert f"{len(cluster.node_names)} node(s) had untolerated taint" in event["message"]
    (pod,) = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=no-toleration")["items"]
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]


def _wait_for_failed_scheduling(cluster: Cluster, namespace: str, selector: str) -> dict[str, Any]:
    """The FailedScheduling event of the one pod matching selector, once the scheduler has given up on it."""
    events: list[dict[str, Any]] = []

    def failed() -> bool:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
        if not pods:
            return False
        events[:] = cluster.kubectl_json(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            f"reason=FailedScheduling,involvedObject.name={pods[0]['metadata']['name']}",
        )["items"]
        return bool(events)

    wait_until(f"a FailedScheduling event for {selector}", failed, timeout=60)
    # Still unscheduled a moment later: the scheduler keeps retrying, it never places it.
    time.sleep(2)
    (pod,) = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    assert "nodeName" not in pod["spec"]
    return events[0]


def _get_as(cluster: Cluster, path: str, token: str) -> tuple[int, dict[str, Any]]:
    """GET path from the API server with a bearer token: (HTTP status, the JSON body)."""
    request = urllib.request.Request(f"{cluster.server}{path}", headers={"Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_rbac_denies_an_unprivileged_service_account(cluster: Cluster, namespace: str) -> None:
    user = f"system:serviceaccount:{namespace}:reader"
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    cluster.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        "reader",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )

    def can_i(verb: str, resource: str) -> str:
        proc = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={user}", check=False)
        return proc.stdout.strip()

    assert can_i("list", "pods") == "yes"
    assert can_i("delete", "pods") == "no"
    assert can_i("get", "secrets") == "no"
    assert can_i("create", "deployments.apps") == "no"

    # A real request with the ServiceAccount's own token: authenticated, and RBAC decides.
    token = cluster.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    status, _ = _get_as(cluster, f"/api/v1/namespaces/{namespace}/pods", token)
    assert status == 200
    status, body = _get_as(cluster, f"/api/v1/namespaces/{namespace}/secrets", token)
    assert status == 403
    assert body["reason"] == "Forbidden" and user in body["message"]
    status, _ = _get_as(cluster, f"/api/v1/namespaces/{namespace}/pods", "not-a-token")
    assert status == 401


CEL_MESSAGE = "minReplicas must not exceed maxReplicas"
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "replicaranges.e2e.graphpilot.dev"},
    "spec": {
        "group": "e2e.graphpilot.dev",
        "names": {"kind": "ReplicaRange", "plural": "replicaranges", "singular": "replicarange"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "minReplicas": {"type": "integer"},
                                    "maxReplicas": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {"rule": "self.minReplicas <= self.maxReplicas", "message": CEL_MESSAGE}
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_cel_rule_rejects_a_bad_object_with_its_message(cluster: Cluster, namespace: str) -> None:
    cluster.apply(CRD)
    try:
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{CRD['metadata']['name']}", "--timeout=30s"
        )

        def replica_range(name: str, lo: int, hi: int) -> str:
            return json.dumps(
                {
                    "apiVersion": "e2e.graphpilot.dev/v1",
                    "kind": "ReplicaRange",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"minReplicas": lo, "maxReplicas": hi},
                }
            )

        bad = cluster.kubectl("create", "-f", "-", input=replica_range("bad", 3, 1), check=False)
        assert bad.returncode != 0
        assert CEL_MESSAGE in bad.stderr and "Invalid value" in bad.stderr
        cluster.kubectl("create", "-f", "-", input=replica_range("good", 1, 3))
        assert (
            cluster.kubectl_json("get", "replicarange", "good", "-n", namespace)["spec"]["maxReplicas"] == 3
        )
    finally:
        cluster.kubectl("delete", "crd", CRD["metadata"]["name"], "--wait=false", check=False)


def test_kubectl_failure_carries_the_api_error(cluster: Cluster) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        cluster.kubectl("get", "pod", "does-not-exist", "-n", "default")
    assert 'pods "does-not-exist" not found' in failure.value.stderr
