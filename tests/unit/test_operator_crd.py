"""The InferenceService CRD: kubectl explain, printer columns, scale, and defaults shared with the operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from graphpilot.operator.spec import ServiceSpec

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "inferenceservice.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """What the API server does to a new object: fill defaults, recursing into objects."""
    if value is None and "default" in node:
        value = node["default"]
    if isinstance(value, dict) and "properties" in node:
        for name, child in node["properties"].items():
            filled = apply_defaults(child, value.get(name))
            if filled is not None:
                value[name] = filled
    return value


def test_every_field_is_explained() -> None:
    # kubectl explain shows no description for the items of a list of scalars, so those may go without.
    scalar_item = {"integer", "string", "number", "boolean"}
    fields = [
        (p, n) for p, n in walk(SCHEMA) if p and not (p.endswith("[]") and n.get("type") in scalar_item)
    ]
    assert [p for p, n in fields if p != ".metadata" and not n.get("description")] == []


def test_printer_columns_show_ready_replicas_buckets_tuned_url_age() -> None:
    cols = [c["name"] for c in VERSION["additionalPrinterColumns"]]
    assert cols == ["Ready", "Replicas", "Buckets", "Tuned", "URL", "Age"]
    status = SCHEMA["properties"]["status"]["properties"]
    for c in VERSION["additionalPrinterColumns"]:
        field = c["jsonPath"].split(".")[2].split("[")[0]
        assert c["jsonPath"].startswith(".metadata") or field in status, c


def test_scale_subresource_points_at_real_fields() -> None:
    scale = VERSION["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}  # fmt: skip
    assert "status" in VERSION["subresources"]


def test_short_name_does_not_clash_with_kserve() -> None:
    assert "isvc" not in CRD["spec"]["names"]["shortNames"]


def test_operator_defaults_match_the_crd_defaults() -> None:
    spec = {"model": {"uri": "hf://Qwen/Qwen3-0.6B"}, "resources": {}, "runtime": {}, "autotune": {}}
    defaulted = apply_defaults(SCHEMA["properties"]["spec"], yaml.safe_load(yaml.safe_dump(spec)))
    assert ServiceSpec.from_spec("q", defaulted) == ServiceSpec.from_spec("q", {"model": spec["model"]})


def test_cross_field_rules_have_messages_naming_fields() -> None:
    rules = [r for _, n in walk(SCHEMA) for r in n.get("x-kubernetes-validations") or ()]
    assert len(rules) >= 8
    assert all("spec." in r["message"] or "metadata." in r["message"] for r in rules)
