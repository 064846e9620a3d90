"""Example Pods and Deployments are valid Kubernetes objects and valid HCS requests."""

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from hcs.demand import parse_pod
from hcs.inventory import load_documents
from hcs.simulate import pods_from_paths

ROOT = Path(__file__).resolve().parents[2]
BAD_ON_PURPOSE: set[str] = set()  # examples/invalid/ holds the deliberately bad ones


def workloads() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((ROOT / "examples" / "pods").glob("*.yaml")):
        docs += [(p, d) for p, d in load_documents(path) if d.get("kind") in ("Pod", "Deployment")]
    for name in ("pod-requests.yaml", "pod-annotations.yaml"):
        docs += load_documents(ROOT / "examples" / "reference" / name)
    return docs


@pytest.mark.parametrize(("place", "doc"), workloads(), ids=[p for p, _ in workloads()])
def test_example_workloads_are_valid_kubernetes_objects(place: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_example_pods_are_valid_hcs_requests() -> None:
    for place, pod in pods_from_paths([ROOT / "examples" / "pods"]):
        meta = pod["metadata"]
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        if key in BAD_ON_PURPOSE:
            with pytest.raises(Exception, match="did you mean"):
                parse_pod(pod)
        else:
            assert parse_pod(pod).asks_for_compute, place


def test_the_deployment_example_asks_for_vram_with_preference_and_downgrade() -> None:
    pods = [p for place, p in pods_from_paths([ROOT / "examples/pods/03-deployment.yaml"])]
    assert len(pods) == 3
    demand = parse_pod(pods[0])
    assert demand.preference == ("nvidia",) and demand.allow_downgrade
    assert demand.containers[0].vram_mib == 24 * 1024
