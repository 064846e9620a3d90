import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hcs.errors import ValidationError
from hcs.models import (
    ComputeNode,
    ComputeQuota,
    compute_task_from_dict,
    compute_topology_from_dict,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "examples" / "reference"
SPEC = ROOT.parent / "shared" / "spec" / "hcs-api-reference.zh.md"


def load(name: str) -> Any:
    return yaml.safe_load((REFERENCE / name).read_text(encoding="utf-8"))


def test_reference_examples_are_copied_verbatim_from_the_api_reference() -> None:
    if not SPEC.exists():
        pytest.skip("the shared spec folder is not beside this checkout")
    blocks = re.findall(r"```yaml\n(.*?)```", SPEC.read_text(encoding="utf-8"), re.S)
    copies = sorted(p.read_text(encoding="utf-8") for p in REFERENCE.glob("*.yaml"))
    assert sorted(blocks) == copies


def test_reference_compute_node_loads_verbatim() -> None:
    node = ComputeNode.from_dict(load("computenode.yaml"))
    assert node.name == "gpu-node-1"
    assert node.vendor == "nvidia"
    assert node.capacity_vram_mib == 640 * 1024
    assert node.capacity_fp16_milli_tflops == 2_496_000
    assert node.capacity_fp32_milli_tflops == 156_000
    (dev,) = node.devices
    assert (dev.id, dev.model, dev.vram_mib, dev.vram_allocated_mib) == (
        "0",
        "A100-80G",
        81920,
        16384,
    )
    assert (dev.fp16_milli_tflops, dev.fp32_milli_tflops, dev.health_score) == (312_000, 19_500, 95)
    assert dev.links[0].type == "nvlink" and dev.links[0].peers == tuple("1234567")
    assert node.phase == "Ready" and node.ready
    assert node.condition_true("HardwareHealthy", default=False)
    assert node.last_heartbeat is not None and node.last_heartbeat.year == 2026
    assert not node.shared


def test_reference_compute_quota_loads_verbatim_with_the_object_scope() -> None:
    quota = ComputeQuota.from_dict(load("computequota.yaml"))
    assert (quota.namespace, quota.name) == ("team-a", "team-a-quota")
    assert quota.hard.vram_mib == 2000 * 1024
    assert quota.hard.fp16_milli_tflops == 10_000_000
    assert quota.hard.devices is None
    assert quota.scopes[0].kind == "Priority" and quota.scopes[0].priority == "high"
    assert quota.selector is not None and quota.selector.matches({"team": "team-a"})
    assert not quota.selector.matches({"team": "team-b"})
    assert quota.used.vram_mib == 500 * 1024


def test_quota_scopes_accept_the_enum_strings() -> None:
    raw = load("computequota.yaml")
    raw["spec"]["scopes"] = ["NotTerminating", "PriorityClass"]
    quota = ComputeQuota.from_dict(raw)
    assert [s.kind for s in quota.scopes] == ["NotTerminating", "PriorityClass"]


def test_bad_quantity_names_its_field_path() -> None:
    raw = load("computenode.yaml")
    dev = raw["spec"]["devices"][0]
    raw["spec"]["devices"] = [copy.deepcopy(dev) for _ in range(4)]
    for i, d in enumerate(raw["spec"]["devices"]):
        d["id"] = str(i)
    raw["spec"]["devices"][3]["vram"] = "80 GB"
    with pytest.raises(ValidationError) as info:
        ComputeNode.from_dict(raw)
    assert 'spec.devices[3].vram: "80 GB" is not a quantity' in str(info.value)
    assert info.value.problems[0][0] == "spec.devices[3].vram"


def test_every_problem_is_reported_at_once() -> None:
    raw = load("computenode.yaml")
    raw["spec"]["vendor"] = "amd"
    raw["spec"]["devices"][0]["healthScore"] = 140
    del raw["spec"]["devices"][0]["model"]
    raw["spec"]["devices"][0]["topology"]["links"][0]["type"] = "infiniband"
    raw["status"]["phase"] = "Running"
    with pytest.raises(ValidationError) as info:
        ComputeNode.from_dict(raw)
    paths = {p for p, _ in info.value.problems}
    assert paths == {
        "spec.vendor",
        "spec.devices[0].healthScore",
        "spec.devices[0].model",
        "spec.devices[0].topology.links[0].type",
        "status.phase",
    }
    text = str(info.value)
    assert '"amd" is not one of nvidia, huawei, hygon, cambricon' in text
    assert "must be an integer from 0 to 100" in text


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda r: r.pop("spec"), "spec", "is required"),
        (lambda r: r["metadata"].pop("name"), "metadata.name", "is required"),
        (lambda r: r["metadata"].update(name="GPU_Node"), "metadata.name", "not a valid name"),
        (lambda r: r["metadata"].update(namespace="x"), "metadata.namespace", "cluster-scoped"),
        (lambda r: r.update(apiVersion="hcs.io/v1"), "apiVersion", "expected hcs.io/v1alpha1"),
        (lambda r: r["spec"]["devices"][0].update(id=0), "spec.devices[0].id", "expected a string"),
        (
            lambda r: r["spec"]["devices"][0].update(vramAllocatable="90Gi"),
            "spec.devices[0].vramAllocatable",
            "must not exceed vram",
        ),
        (
            lambda r: r["spec"]["devices"].append(copy.deepcopy(r["spec"]["devices"][0])),
            "spec.devices[1].id",
            "duplicates spec.devices[0].id",
        ),
        (lambda r: r["spec"]["capacity"].update(gpus="8"), "spec.capacity.gpus", "unknown field"),
        (
            lambda r: r["spec"]["devices"][0]["compute"].update(fp16="fast"),
            "spec.devices[0].compute.fp16",
            "is not a quantity",
        ),
        (
            lambda r: r["status"]["conditions"][0].update(status="Yes"),
            "status.conditions[0].status",
            "not one of True, False, Unknown",
        ),
        (
            lambda r: r["status"].update(lastHeartbeat="yesterday"),
            "status.lastHeartbeat",
            "RFC 3339",
        ),
        (
            lambda r: r["metadata"]["labels"].update({"hcs.io/device-sharing": "maybe"}),
            "metadata.labels[hcs.io/device-sharing]",
            "not one of shared, exclusive",
        ),
    ],
)
def test_compute_node_errors_name_the_field(mutate: Any, path: str, fragment: str) -> None:
    raw = load("computenode.yaml")
    mutate(raw)
    with pytest.raises(ValidationError) as info:
        ComputeNode.from_dict(raw)
    assert any(p == path and fragment in m for p, m in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda r: r["spec"]["hard"].update(gpu="4"), "spec.hard[gpu]", "unknown resource"),
        (lambda r: r["spec"]["hard"].update(vram="lots"), "spec.hard.vram", "not a quantity"),
        (
            lambda r: r["spec"].update(scopes=["BestEffort"]),
            "spec.scopes[0]",
            "not one of PriorityClass",
        ),
        (
            lambda r: r["spec"].update(scopes=[{"priority": 3}]),
            "spec.scopes[0]",
            "{priority: <PriorityClass name>}",
        ),
        (lambda r: r["spec"].pop("hard"), "spec.hard", "is required"),
        (
            lambda r: r["spec"]["selector"].update(
                matchExpressions=[{"key": "a", "operator": "In"}]
            ),
            "spec.selector.matchExpressions[0].values",
            "must be non-empty",
        ),
    ],
)
def test_compute_quota_errors_name_the_field(mutate: Any, path: str, fragment: str) -> None:
    raw = load("computequota.yaml")
    mutate(raw)
    with pytest.raises(ValidationError) as info:
        ComputeQuota.from_dict(raw)
    assert any(p == path and fragment in m for p, m in info.value.problems), info.value.problems


def test_label_selector_expressions() -> None:
    raw = load("computequota.yaml")
    raw["spec"]["selector"] = {
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["gold", "silver"]},
            {"key": "frozen", "operator": "DoesNotExist"},
        ]
    }
    selector = ComputeQuota.from_dict(raw).selector
    assert selector is not None
    assert selector.matches({"tier": "gold"})
    assert not selector.matches({"tier": "bronze"})
    assert not selector.matches({"tier": "gold", "frozen": "1"})


def test_a_node_shares_devices_only_with_a_sharing_mode() -> None:
    raw = load("computenode.yaml")
    raw["metadata"]["labels"]["hcs.io/device-sharing"] = "shared"
    node = ComputeNode.from_dict(raw)
    assert not node.shared  # nothing says its shares are enforced, or allowed unenforced
    assert node.share_enforcement == "exclusive"
    for mode in ("hami-core", "vnpu", "none"):
        raw["metadata"]["labels"]["hcs.io/share-enforcement"] = mode
        node = ComputeNode.from_dict(raw)
        assert node.shared and node.share_enforcement == mode
    raw["metadata"]["labels"]["hcs.io/share-enforcement"] = "honour"
    with pytest.raises(ValidationError) as info:
        ComputeNode.from_dict(raw)
    assert (
        'metadata.labels[hcs.io/share-enforcement]: "honour" is not one of hami-core, vnpu, none'
        in str(info.value)
    )


def test_ready_follows_phase_and_conditions() -> None:
    raw = load("computenode.yaml")
    raw["status"]["conditions"].append({"type": "Schedulable", "status": "False"})
    assert not ComputeNode.from_dict(raw).ready
    raw = load("computenode.yaml")
    raw["status"]["phase"] = "Draining"
    assert not ComputeNode.from_dict(raw).ready
    raw = load("computenode.yaml")
    del raw["status"]
    assert ComputeNode.from_dict(raw).ready  # nothing says otherwise


def test_compute_task_and_topology_are_plain_models() -> None:
    task = compute_task_from_dict(
        {
            "apiVersion": "hcs.io/v1alpha1",
            "kind": "ComputeTask",
            "metadata": {"name": "gang", "namespace": "team-a"},
            "spec": {"minMember": 4},
        }
    )
    assert task.meta.namespace == "team-a" and task.spec["minMember"] == 4
    topo = compute_topology_from_dict(
        {
            "apiVersion": "hcs.io/v1alpha1",
            "kind": "ComputeTopology",
            "metadata": {"name": "fabric"},
            "spec": {"zones": []},
        }
    )
    assert topo.name == "fabric"
    with pytest.raises(ValidationError, match=r"metadata\.name: is required"):
        compute_task_from_dict(
            {"apiVersion": "hcs.io/v1alpha1", "kind": "ComputeTask", "metadata": {}}
        )


def test_a_quota_written_with_pod_resource_names_gets_a_suggestion() -> None:
    from hcs.synthetic import quota_dict

    with pytest.raises(ValidationError) as err:
        ComputeQuota.from_dict(quota_dict({"ai.compute/vram": "100Gi", "tflops-f16": "10"}))
    problems = dict(err.value.problems)
    assert (
        "did you mean vram? a ComputeQuota names resources without ai.compute/"
        in (problems["spec.hard[ai.compute/vram]"])
    )
    assert "did you mean tflops-fp16?" in problems["spec.hard[tflops-f16]"]
