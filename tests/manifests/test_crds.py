"""The CRDs: generated from hcs/crds.py without drift, structural, documented, and in agreement
with the Python models on what is valid."""

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from hcs import crds
from hcs.errors import ValidationError
from hcs.inventory import load_documents
from hcs.models import ComputeNode, ComputeQuota

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "manifests" / "crds"
SCHEMAS = {
    crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for crd in crds.crds().values()
}


def validator(kind: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft7Validator(SCHEMAS[kind])


def examples() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for folder in ("reference", "inventory"):
        for path in sorted((ROOT / "examples" / folder).glob("*.yaml")):
            for place, doc in load_documents(path):
                if isinstance(doc, dict) and doc.get("kind") in SCHEMAS:
                    docs.append((f"{folder}/{place}", doc))
    return docs


def test_the_crd_files_are_what_the_generator_writes() -> None:
    generated = crds.crds()
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(generated)
    for name, crd in generated.items():
        assert (CRD_DIR / name).read_text() == crds.render(crd), (
            f"{name} is stale: run python -m hcs.crds manifests/crds"
        )


def walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, child in (node.get("properties") or {}).items():
        out += walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        out += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_schemas_are_structural_and_documented(kind: str) -> None:
    for path, node in walk(SCHEMAS[kind], kind):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        elif node.get("x-kubernetes-preserve-unknown-fields"):
            assert "type" not in node and "properties" not in node, path
        else:
            assert node.get("type") in (
                "object",
                "array",
                "string",
                "integer",
                "boolean",
                "number",
            ), path
            assert "anyOf" not in node and "oneOf" not in node, path
        if not path.endswith(("[]", "{}")) and path.count(".") > 0:
            assert node.get("description"), f"{path} has no description"
        if node.get("type") == "object" and not path.endswith(".metadata"):
            assert "properties" in node or "additionalProperties" in node, path


def test_crds_have_the_names_columns_and_status_the_issue_asks_for() -> None:
    by_kind = {c["spec"]["names"]["kind"]: c for c in crds.crds().values()}
    assert {k: c["spec"]["names"]["shortNames"] for k, c in by_kind.items()} == {
        "ComputeNode": ["cn"],
        "ComputeQuota": ["cq"],
        "ComputeTask": ["ctask"],
        "ComputeTopology": ["ctopo"],
    }
    assert {k: c["spec"]["scope"] for k, c in by_kind.items()} == {
        "ComputeNode": "Cluster",
        "ComputeQuota": "Namespaced",
        "ComputeTask": "Namespaced",
        "ComputeTopology": "Cluster",
    }
    for crd in by_kind.values():
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert crd["spec"]["names"]["categories"] == ["hcs"]
    cols = [
        c["name"] for c in by_kind["ComputeNode"]["spec"]["versions"][0]["additionalPrinterColumns"]
    ]
    assert cols == ["Vendor", "Devices", "VRAM", "Phase", "Age"]
    qcols = [
        c["name"]
        for c in by_kind["ComputeQuota"]["spec"]["versions"][0]["additionalPrinterColumns"]
    ]
    assert qcols == ["VRAM-Used", "VRAM-Hard", "TFLOPS-Used", "TFLOPS-Hard", "Age"]


@pytest.mark.parametrize(("place", "doc"), examples(), ids=[p for p, _ in examples()])
def test_every_example_validates_against_its_crd(place: str, doc: dict[str, Any]) -> None:
    errors = list(validator(doc["kind"]).iter_errors(doc))
    assert not errors, [e.message for e in errors]


def pruned(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Fields of `value` the API server would prune: not declared in the schema."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            if props is not None and key in props:
                out += pruned(props[key], child, f"{path}.{key}")
            elif isinstance(extra, dict):
                out += pruned(extra, child, f"{path}.{key}")
            elif not path.endswith("metadata"):
                out.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, child in enumerate(value):
            out += pruned(schema["items"], child, f"{path}[{i}]")
    return out


@pytest.mark.parametrize(("place", "doc"), examples(), ids=[p for p, _ in examples()])
def test_no_field_an_example_uses_would_be_pruned(place: str, doc: dict[str, Any]) -> None:
    assert pruned(SCHEMAS[doc["kind"]], doc, "") == []


NODE = yaml.safe_load((ROOT / "examples/reference/computenode.yaml").read_text())
QUOTA = yaml.safe_load((ROOT / "examples/reference/computequota.yaml").read_text())


@pytest.mark.parametrize(
    ("base", "mutate"),
    [
        (NODE, lambda d: d["spec"].update(vendor="amd")),
        (NODE, lambda d: d["spec"]["devices"][0].update(healthScore=140)),
        (NODE, lambda d: d["spec"]["devices"][0].update(vram="80 GB")),
        (NODE, lambda d: d["spec"]["devices"][0]["compute"].update(fp16="fast")),
        (NODE, lambda d: d["spec"].pop("devices")),
        (NODE, lambda d: d["spec"]["capacity"].pop("vram")),
        (NODE, lambda d: d["spec"]["devices"][0]["topology"]["links"][0].update(type="wifi")),
        (NODE, lambda d: d["status"].update(phase="Running")),
        (NODE, lambda d: d["status"]["conditions"][0].update(type="Happy")),
        (QUOTA, lambda d: d["spec"].pop("hard")),
        (QUOTA, lambda d: d["spec"]["hard"].update(vram="lots")),
        (
            QUOTA,
            lambda d: d["spec"]["selector"].update(
                matchExpressions=[{"key": "a", "operator": "Near"}]
            ),
        ),
    ],
)
def test_bad_objects_are_rejected_by_the_crd_and_by_the_models(
    base: dict[str, Any], mutate: Any
) -> None:
    doc = copy.deepcopy(base)
    mutate(doc)
    assert list(validator(doc["kind"]).iter_errors(doc)), "the CRD schema accepted it"
    model = ComputeNode if doc["kind"] == "ComputeNode" else ComputeQuota
    with pytest.raises(ValidationError):
        model.from_dict(doc)
