"""Real pods from public repositories (tests/webhook/real_pods, sources in its SOURCES.md) and
one-change variants, pushed through what a cluster would do with them: the shipped webhook
configuration's matchConditions (evaluated as kube-apiserver does, tests/fake_admission), the
webhook, its patch (jsonpatch, validated as a Pod), and HCS's placement. Admitted means
placeable: every extended resource the patched pod names is ai.compute/* or the name the node
HCS places it on advertises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hcs.admission import AdmissionContext, review
from hcs.demand import parse_pod
from hcs.engine import EngineConfig, compile_request, evaluate, select_devices
from hcs.models import ComputeNode
from hcs.policies import webhook_configuration
from hcs.quota import QuotaBook
from hcs.state import ClusterState
from hcs.synthetic import node_dict
from hcs.vendors import VendorTable
from tests.fake_admission import Request, namespace_object, webhook_matches
from tests.webhook.test_admission import applied, request_for

PODS = Path(__file__).resolve().parent / "real_pods"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((PODS / "expected.yaml").read_text())


def cluster() -> ClusterState:
    nodes = [node_dict("gpu-a100", "nvidia", 8), node_dict("npu-910b3", "huawei", 8)]
    small = node_dict("npu-310p", "huawei", 4, vram_gi=24)
    for d in small["spec"]["devices"]:
        d["model"] = "Ascend310P3"
    nodes += [small, node_dict("dcu-k100", "hygon", 8), node_dict("mlu-370", "cambricon", 8)]
    return ClusterState.from_nodes([ComputeNode.from_dict(n) for n in nodes])


def load(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = yaml.safe_load((PODS / name).read_text())
    pod["metadata"]["namespace"] = "team-a"
    # kube-apiserver serializes quantities as strings
    for c in pod["spec"]["containers"]:
        for section in ("requests", "limits"):
            values = (c.get("resources") or {}).get(section) or {}
            for k, v in values.items():
                values[k] = str(v)
    return pod


def test_every_file_is_expected_and_sourced() -> None:
    files = sorted(p.name for p in PODS.glob("*.yaml") if p.name != "expected.yaml")
    assert files == sorted(EXPECTED)
    sources = (PODS / "SOURCES.md").read_text()
    for name in files:
        if not name.startswith("variant-"):
            assert f"| {name} |" in sources, name
        else:
            assert (PODS / name).read_text().startswith("# "), f"{name}: say what changed"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_real_pod_is_admitted_only_where_it_can_run(name: str) -> None:
    expected = EXPECTED[name]
    pod = load(name)
    config = webhook_configuration()
    namespaces = {"team-a": namespace_object("team-a")}
    seen = webhook_matches(
        config, Request("CREATE", "pods", namespace="team-a", object=pod), namespaces
    )
    assert bool(seen) is expected["seen"], name
    state = cluster()
    vendors = VendorTable()
    if not expected["seen"]:
        # Left to kube-scheduler as written: every vendor resource it names is advertised.
        names = {k for c in pod["spec"]["containers"] for k in (c["resources"].get("limits") or {})}
        owned = {k for k in names if vendors.vendor_of_resource(k)}
        assert owned <= set(state.resource_names), name
        return
    ctx = AdmissionContext(state, QuotaBook({}), scheduler_name="hcs-scheduler")
    answer = review(request_for(pod), ctx)
    if not expected["allowed"]:
        assert answer["allowed"] is False, answer
        assert expected["says"] in answer["status"]["message"], answer["status"]["message"]
        return
    out = applied(pod, answer)
    annotations = out["metadata"]["annotations"]
    assert annotations["hcs.io/assigned-vendor"] == expected["vendor"]
    limits = {k for c in out["spec"]["containers"] for k in (c["resources"].get("limits") or {})}
    extended = {k for k in limits if "/" in k}
    vendor_names = {k for k in extended if not k.startswith("ai.compute/")}
    assert vendor_names == {expected["resource"]}, name  # aliases rewritten
    # Placeable: HCS's placement of the patched pod lands on a node advertising that name.
    demand = parse_pod(out, vendors)
    assert demand.model == expected.get("model")
    req = compile_request(demand)
    rows = state.all_rows()
    ev = evaluate(state, req, rows, EngineConfig())
    fitting = [state.node_names[r] for r, code in zip(rows, ev.codes, strict=True) if code == 0]
    assert fitting, name
    for node in fitting:
        row = state.index[node]
        assert state.resource_names[int(state.node_resource[row])] == expected["resource"]
        select_devices(state, req, node, EngineConfig())  # and devices can be chosen there


def test_the_resource_name_follows_the_family_where_the_pod_fits() -> None:
    """910B nodes busy, the 310P node free: a pod routed to Huawei is written the 310P name and
    placed there (not the majority's name on a node it cannot use)."""
    busy = [node_dict(f"npu-910b3-{i}", "huawei", 8, allocated_gi=[64] * 8) for i in range(3)]
    small = node_dict("npu-310p", "huawei", 4, vram_gi=24)
    for d in small["spec"]["devices"]:
        d["model"] = "Ascend310P3"
    state = ClusterState.from_nodes([ComputeNode.from_dict(n) for n in [*busy, small]])
    ctx = AdmissionContext(state, QuotaBook({}))
    pod = load("variant-vllm-ai-compute.yaml")
    pod["spec"]["containers"][0]["env"] = []
    pod["spec"]["containers"][0]["image"] = "ascendhub.huawei.com/public-ascendhub/pytorch:24"
    pod["spec"]["containers"][0]["resources"] = {
        "limits": {"ai.compute/vram": "16Gi"},
        "requests": {"ai.compute/vram": "16Gi"},
    }
    out = applied(pod, review(request_for(pod), ctx))
    limits = out["spec"]["containers"][0]["resources"]["limits"]
    assert limits["huawei.com/Ascend310P"] == "1" and "huawei.com/Ascend910" not in limits
    ev = evaluate(state, compile_request(parse_pod(out)), state.all_rows(), EngineConfig())
    assert [state.node_names[r] for r in state.all_rows()[ev.codes == 0]] == ["npu-310p"]


def test_the_docs_table_of_resource_names_is_the_vendor_tables() -> None:
    from hcs.vendors import resource_name_table

    docs = (Path(__file__).resolve().parents[2] / "docs" / "webhook.md").read_text()
    shown = docs.split("<!-- resource-names:start -->\n", 1)[1].split(
        "<!-- resource-names:end -->"
    )[0]
    assert shown == resource_name_table(VendorTable())
