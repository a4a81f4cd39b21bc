"""The Helm chart: renders what an operator install needs, least privilege, every value documented."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from graphpilot.operator import resources as res

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "graphpilot"


def find_helm() -> str | None:
    versions = dict(re.findall(r"^(\w+)=(\S+)$", (ROOT / "tests/cluster/versions.env").read_text(), re.M))
    cache = Path(os.environ.get("GRAPHPILOT_CACHE") or Path.home() / ".cache" / "graphpilot")
    cached = cache / f"k8s-{versions.get('KUBERNETES_VERSION', '')}" / "bin" / "helm"
    return str(cached) if cached.is_file() else shutil.which("helm")


HELM = find_helm()
FREE_FORM = {"resources", "podSecurityContext", "securityContext"}
needs_helm = pytest.mark.skipif(HELM is None, reason="helm is not built yet (make cluster-tools)")


def render(*sets: str, check: bool = True) -> list[dict[str, Any]] | subprocess.CompletedProcess[str]:
    args = [
        str(HELM),
        "template",
        "gp",
        str(CHART),
        "--namespace",
        "graphpilot-system",
        "--kube-version",
        "1.35.0",
    ]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: Any, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def operator_args(docs: Any) -> list[str]:
    (dep,) = by_kind(docs, "Deployment")
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_chart_crd_is_the_source_crd() -> None:
    assert (CHART / "files" / "inferenceservice.yaml").read_bytes() == (
        ROOT / "crds" / "inferenceservice.yaml"
    ).read_bytes()


def test_every_value_is_documented_and_in_the_schema() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load("\n".join(lines))
    undocumented, parent = [], ""
    for i, line in enumerate(lines):
        m = re.match(r"^( {0,2})([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        parent = m.group(2) if not m.group(1) else parent
        # Children of free-form Kubernetes objects (resources, security contexts) are examples, not settings.
        free_form = bool(m.group(1)) and parent in FREE_FORM
        if not free_form and not lines[i - 1].lstrip().startswith("#"):
            undocumented.append(m.group(2))
    assert undocumented == []
    assert set(values) == set(schema["properties"])
    for key, sub in schema["properties"].items():
        assert sub.get("description") or sub.get("properties"), key
        for name in (sub.get("properties") or {}) if isinstance(values[key], dict) else ():
            assert name in values[key], f"{key}.{name} is in the schema but not in values.yaml"


@needs_helm
def test_default_install_renders_operator_rbac_and_a_kept_crd() -> None:
    docs = render()
    assert {d["kind"] for d in docs} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
    }
    (crd,) = by_kind(docs, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "inferenceservices.graphpilot.dev"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    source = yaml.safe_load((ROOT / "crds" / "inferenceservice.yaml").read_text())
    assert crd["spec"] == source["spec"]
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # standalone operators must not overlap
    assert pod["containers"][0]["command"] == ["graphpilot-operator"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["GRAPHPILOT_OPERATOR_IMAGE"] == "ghcr.io/graphpilot/graphpilot:0.1.0"
    assert "--peering" not in " ".join(operator_args(docs))


@needs_helm
def test_crds_can_be_left_out_or_not_kept() -> None:
    assert by_kind(render("crds.enabled=false"), "CustomResourceDefinition") == []
    (crd,) = by_kind(render("crds.keep=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


def rule_allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


@needs_helm
def test_operator_holds_every_right_it_grants_to_autotuners_and_no_wildcards() -> None:
    (role,) = by_kind(render(), "ClusterRole")
    rules = role["rules"]
    for granted in res.role(res.Owner("x", "ns", "uid"))["rules"]:
        for group in granted["apiGroups"]:
            for resource in granted["resources"]:
                for verb in granted["verbs"]:
                    assert rule_allows(rules, group, resource, verb), (group, resource, verb)
    flat = [x for r in rules for x in (*r["apiGroups"], *r["resources"], *r["verbs"])]
    assert "*" not in flat and "escalate" not in flat and "bind" not in flat
    assert not rule_allows(rules, "", "secrets", "get")
    for kind in (
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
    ):
        group = {"Deployment": "apps", "Role": "rbac.authorization.k8s.io", "RoleBinding": "rbac.authorization.k8s.io",
                 "PodDisruptionBudget": "policy"}.get(kind, "")  # fmt: skip
        resource = {"PodDisruptionBudget": "poddisruptionbudgets"}.get(kind, kind.lower() + "s")
        for verb in ("get", "create", "patch", "delete"):
            assert rule_allows(rules, group, resource, verb), (kind, verb)


@needs_helm
def test_peering_and_namespaces_reach_the_operator_command_line() -> None:
    docs = render("peering.enabled=true", "replicaCount=2", "watchNamespaces={ml,batch}", "logLevel=info")
    args = operator_args(docs)
    assert "--peering=graphpilot" in args and "--namespace=ml" in args and "--namespace=batch" in args
    assert "--verbose" in args
    (dep,) = by_kind(docs, "Deployment")
    assert "strategy" not in dep["spec"]
    # The operator creates the peering objects; the chart installs the CRD it needs (per watch scope).
    assert [c["metadata"]["name"] for c in by_kind(docs, "CustomResourceDefinition")][
        -1
    ] == "kopfpeerings.kopf.dev"
    clusterwide = render("peering.enabled=true", "replicaCount=2")
    assert "clusterkopfpeerings.kopf.dev" in [
        c["metadata"]["name"] for c in by_kind(clusterwide, "CustomResourceDefinition")
    ]
    (role,) = by_kind(clusterwide, "ClusterRole")
    assert rule_allows(role["rules"], "kopf.dev", "clusterkopfpeerings", "create")


@needs_helm
def test_schema_refuses_two_standalone_replicas_and_unknown_values() -> None:
    two = render("replicaCount=2", check=False)
    assert (
        isinstance(two, subprocess.CompletedProcess) and two.returncode != 0 and "replicaCount" in two.stderr
    )
    typo = render("imagee.tag=x", check=False)
    assert isinstance(typo, subprocess.CompletedProcess) and typo.returncode != 0 and "imagee" in typo.stderr


@needs_helm
def test_helm_lint_is_clean() -> None:
    proc = subprocess.run(
        [str(HELM), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
