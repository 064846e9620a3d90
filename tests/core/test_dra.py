"""HCS as a DRA driver, the pure half: ResourceSlices within the API's limits and in
`ai.compute` units, DeviceClasses whose CEL selects the right vendor (evaluated with
cel-python, as kube-scheduler would), and CDI edits equal to the device plugin's answer."""

from __future__ import annotations

import re
from typing import Any

import pytest

from hcs.assignment import allocation
from hcs.dra import (
    DRIVER,
    PCI_ATTRIBUTE,
    cdi_edits,
    claim_cdi,
    device_classes,
    resource_slices,
    slices_changed,
)
from hcs.errors import HcsError
from hcs.models import ComputeNode
from hcs.synthetic import node_dict
from hcs.vendors import VENDOR_NAMES, VendorTable
from tests.fake_admission import evaluate, to_cel

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
QUALIFIED = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z_][A-Za-z0-9_]{0,31}$")


def node(vendor: str = "nvidia", n: int = 8, **kwargs: Any) -> ComputeNode:
    raw = node_dict("gpu-1", vendor, n, numa=[0] * (n // 2) + [1] * (n - n // 2), **kwargs)
    for i, dev in enumerate(raw["spec"]["devices"]):
        dev["identity"] = f"GPU-aaaa-{i}" if vendor == "nvidia" else f"chip-{i}"
    return ComputeNode.from_dict(raw)


def test_slices_meet_the_api_limits_and_speak_ai_compute_units() -> None:
    (s,) = resource_slices(node(), generation=3)
    spec = s["spec"]
    assert s["apiVersion"] == "resource.k8s.io/v1" and s["kind"] == "ResourceSlice"
    assert spec["driver"] == DRIVER and spec["nodeName"] == "gpu-1"
    assert spec["pool"] == {"name": "gpu-1", "generation": 3, "resourceSliceCount": 1}
    assert len(spec["devices"]) == 8
    names = [d["name"] for d in spec["devices"]]
    assert len(set(names)) == 8 and all(DNS_LABEL.match(n) for n in names)
    for d in spec["devices"]:
        keys = [*d["attributes"], *d["capacity"]]
        assert len(keys) <= 32 and all(QUALIFIED.match(k) for k in keys), keys
        assert all(C_IDENTIFIER.match(k) for k in d["capacity"])
        for value in d["attributes"].values():
            assert len(value) == 1 and set(value) <= {"int", "bool", "string", "version"}
            assert len(str(value.get("string", ""))) <= 64
    first = spec["devices"][0]
    # The A100 of hcs.synthetic: 80Gi, 312 / 19.5 TFLOPS, as ai.compute/* writes them.
    assert first["capacity"] == {
        "vram": {"value": "80Gi"},
        "tflops_fp16": {"value": "312"},
        "tflops_fp32": {"value": "19.5"},
    }
    assert first["attributes"]["vendor"] == {"string": "nvidia"}
    assert first["attributes"]["uuid"] == {"string": "GPU-aaaa-0"}
    assert first["attributes"][f"{DRIVER}/numaNode"] == {"int": 0}
    # CEL reads it in the driver's domain like the unqualified ones.
    from tests.dra_allocator import cel, cel_device

    assert cel(f'device.attributes["{DRIVER}"].numaNode == 0', cel_device(DRIVER, first))
    assert first["attributes"][PCI_ATTRIBUTE] == {"string": "0000:10:00.0"}


def test_unhealthy_devices_are_left_out_and_a_change_is_seen() -> None:
    healthy = resource_slices(node(), generation=1)
    sick = resource_slices(node(health=[100] * 7 + [20]), generation=1)
    assert len(sick[0]["spec"]["devices"]) == 7
    assert slices_changed(healthy, sick)
    assert not slices_changed(healthy, resource_slices(node(), generation=9))


def test_a_large_pool_is_split_and_every_slice_counts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At most 128 devices a slice (here 3, to see it split): every slice of the pool says
    how many slices there are, and together they hold every device once."""
    monkeypatch.setattr("hcs.dra.MAX_DEVICES_PER_SLICE", 3)
    slices = resource_slices(node(n=8), generation=2)
    assert [len(s["spec"]["devices"]) for s in slices] == [3, 3, 2]
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {3}
    assert len({s["metadata"]["name"] for s in slices}) == 3
    names = [d["name"] for s in slices for d in s["spec"]["devices"]]
    assert len(set(names)) == 8


def device(vendor: str, index: int = 0) -> dict[str, Any]:
    (s,) = resource_slices(node(vendor, 2), generation=1)
    d = s["spec"]["devices"][index]
    attrs = {k: next(iter(v.values())) for k, v in d["attributes"].items()}
    return {
        "driver": DRIVER,
        "attributes": {DRIVER: attrs},
        "capacity": {DRIVER: {k: v["value"] for k, v in d["capacity"].items()}},
        "allowMultipleAllocations": False,
    }


@pytest.mark.parametrize("vendor", VENDOR_NAMES)
def test_each_vendor_class_selects_its_vendor_only(vendor: str) -> None:
    classes = {c["metadata"]["name"]: c for c in device_classes(VendorTable())}
    assert set(classes) == {DRIVER, *(f"{v}.{DRIVER}" for v in VENDOR_NAMES)}
    (selector,) = classes[f"{vendor}.{DRIVER}"]["spec"]["selectors"]
    (any_vendor,) = classes[DRIVER]["spec"]["selectors"]
    for other in VENDOR_NAMES:
        activation = {"device": to_cel(device(other))}
        assert bool(evaluate(selector["cel"]["expression"], activation)) is (other == vendor)
        assert bool(evaluate(any_vendor["cel"]["expression"], activation))
    foreign = {**device(vendor), "driver": "gpu.nvidia.com", "attributes": {}}
    assert not evaluate(selector["cel"]["expression"], {"device": to_cel(foreign)})


@pytest.mark.parametrize("vendor", VENDOR_NAMES)
def test_cdi_edits_are_the_device_plugins_answer(vendor: str) -> None:
    cn = node(vendor, 8)
    given = [cn.devices[5], cn.devices[2]]
    profile = VendorTable()[vendor]
    spec, ids = claim_cdi("uid-1", {"main": cdi_edits(profile, given)})
    assert ids == {"main": f"{DRIVER}/device=uid-1-main"}
    (dev,) = spec["devices"]
    assert dev["name"] == "uid-1-main" and spec["kind"] == f"{DRIVER}/device"
    answer = allocation(
        profile, ["5", "2"], {d.id: d.identity or d.id for d in given}, strategies=("envvar",)
    )
    edits = dev["containerEdits"]
    env = dict(e.split("=", 1) for e in edits["env"])
    # The driver folders, which the webhook mounts in device plugin mode: read-only, from the
    # same vendor-table entries; their libraries offered beside the image's LD_LIBRARY_PATH.
    assert env.pop("HCS_DRIVER_LIBRARY_PATH", None) == (":".join(profile.ld_library_path) or None)
    assert env == answer.envs
    assert [(m["hostPath"], m["containerPath"]) for m in edits.get("mounts", [])] == [
        (m.host_path, m.mount_path) for m in profile.mounts
    ]
    assert all(m["options"][0] == "ro" for m in edits.get("mounts", []))
    assert [n["path"] for n in edits.get("deviceNodes", [])] == list(answer.device_nodes)
    if vendor == "huawei":
        assert "ASCEND_VISIBLE_DEVICES=5,2" in edits["env"]
        assert {"path": "/dev/davinci5"} in edits["deviceNodes"]


# --------------------------------------------------------------------------- claims

QUANTITY = "Q:"
"""Kubernetes' CEL Quantity, imitated: `quantity("40Gi")` and `a.compareTo(b)` on the exact
values (hcs.quantity parses them as the API server does)."""


def _quantity(text: Any) -> Any:
    from celpy import celtypes

    return celtypes.StringType(QUANTITY + str(text))


def _compare(a: Any, b: Any) -> Any:
    from celpy import celtypes

    from hcs.quantity import parse_quantity

    x = parse_quantity(str(a).removeprefix(QUANTITY))
    y = parse_quantity(str(b).removeprefix(QUANTITY))
    return celtypes.IntType((x > y) - (x < y))


def selects(expression: str, slice_device: dict[str, Any]) -> bool:
    import celpy
    from celpy.adapter import json_to_cel

    env = celpy.Environment()
    program = env.program(
        env.compile(expression), functions={"quantity": _quantity, "compareTo": _compare}
    )
    capacity = {k: QUANTITY + v["value"] for k, v in slice_device["capacity"].items()}
    device = {"driver": DRIVER, "capacity": {DRIVER: capacity}}
    return bool(program.evaluate({"device": json_to_cel(device)}))


def demand_of(limits: list[dict[str, str]], annotations: dict[str, str], name: str = "p") -> Any:
    from hcs.demand import parse_pod

    return parse_pod(
        {
            "metadata": {"name": name, "uid": f"u-{name}", "annotations": annotations},
            "spec": {
                "containers": [
                    {"name": f"c{i}", "resources": {"limits": lim}} for i, lim in enumerate(limits)
                ]
            },
        }
    )


def test_a_claim_template_falls_back_across_vendors_in_the_pods_order() -> None:
    from hcs.dra import claim_template_spec, template_name

    asks = [
        {"ai.compute/vram": "80Gi", "ai.compute/devices": "2", "ai.compute/tflops-fp16": "200"},
        {"ai.compute/vram": "8Gi"},
    ]
    prefs = {"hcs.io/vendor-preference": "huawei,nvidia", "hcs.io/allow-downgrade": "true"}
    spec = claim_template_spec(demand_of(asks, prefs))
    c0, c1 = spec["spec"]["devices"]["requests"]
    assert [s["name"] for s in c0["firstAvailable"]] == ["huawei", "nvidia", "hygon", "cambricon"]
    assert [s["deviceClassName"] for s in c0["firstAvailable"]] == [
        f"{v}.{DRIVER}" for v in ("huawei", "nvidia", "hygon", "cambricon")
    ]
    assert {s["count"] for s in c0["firstAvailable"]} == {2}
    (selector,) = c0["firstAvailable"][0]["selectors"]
    # Per device: 40Gi and 100 TFLOPS. The devices of hcs.synthetic's four models:
    verdict = {
        vendor: selects(selector["cel"]["expression"], device_of(vendor)) for vendor in VENDOR_NAMES
    }
    assert verdict == {"nvidia": True, "huawei": True, "hygon": True, "cambricon": False}
    assert c1["name"] == "c1" and "constraints" not in spec["spec"]["devices"]
    only = claim_template_spec(demand_of(asks, {"hcs.io/vendor-preference": "nvidia"}))
    assert [s["name"] for s in only["spec"]["devices"]["requests"][0]["firstAvailable"]] == [
        "nvidia"
    ]
    # Named by shape: another pod of the same ReplicaSet shares it, another shape does not.
    assert template_name(spec) == template_name(
        claim_template_spec(demand_of(asks, prefs, name="p-2"))
    )
    assert template_name(spec) != template_name(only)


def device_of(vendor: str) -> dict[str, Any]:
    (s,) = resource_slices(ComputeNode.from_dict(node_dict("n", vendor, 1)), generation=1)
    device: dict[str, Any] = s["spec"]["devices"][0]
    return device


def test_high_bandwidth_matches_on_the_interconnect_group_the_slices_publish() -> None:
    from hcs.dra import INTERCONNECT, claim_template_spec

    spec = claim_template_spec(
        demand_of(
            [{"ai.compute/vram": "80Gi", "ai.compute/devices": "2"}],
            {"hcs.io/topology-preference": "high-bandwidth"},
        )
    )
    (constraint,) = spec["spec"]["devices"]["constraints"]
    assert constraint == {"requests": ["c0"], "matchAttribute": f"{DRIVER}/{INTERCONNECT}"}
    raw = node_dict("g", "nvidia", 8, cliques=[[0, 1, 2, 3], [4, 5, 6, 7]])
    (s,) = resource_slices(ComputeNode.from_dict(raw), generation=1)
    groups = [d["attributes"][INTERCONNECT]["string"] for d in s["spec"]["devices"]]
    assert groups[:4] == [groups[0]] * 4 and groups[4:] == [groups[4]] * 4
    assert groups[0] != groups[4]


# --------------------------------------------------------------------------- shares


def shared_node(vendor: str, enforcement: str, n: int = 2) -> ComputeNode:
    return ComputeNode.from_dict(node_dict("s", vendor, n, shared=True, enforcement=enforcement))


def test_only_a_shared_node_publishes_devices_that_several_claims_may_share() -> None:
    (exclusive,) = resource_slices(ComputeNode.from_dict(node_dict("s", "nvidia", 2)), 1)
    assert all("allowMultipleAllocations" not in d for d in exclusive["spec"]["devices"])
    for enforcement in ("hami-core", "none"):
        (s,) = resource_slices(shared_node("nvidia", enforcement), 1)
        for d in s["spec"]["devices"]:
            assert d["allowMultipleAllocations"] is True
            # No request policy: a share consumes what it asks, a claim asking nothing the
            # whole device.
            assert all(set(c) == {"value"} for c in d["capacity"].values())
    # A node asking to share with no enforcement stated is exclusive (hcs.models).
    raw = node_dict("s", "nvidia", 2, shared=True)
    del raw["metadata"]["labels"]["hcs.io/share-enforcement"]
    (s,) = resource_slices(ComputeNode.from_dict(raw), 1)
    assert all("allowMultipleAllocations" not in d for d in s["spec"]["devices"])


def test_vnpu_devices_round_a_share_up_to_the_chips_templates() -> None:
    (s,) = resource_slices(shared_node("huawei", "vnpu"), 1)
    d = s["spec"]["devices"][0]
    assert d["allowMultipleAllocations"] is True
    # Ascend910B3 (64Gi): vir05_1c_16g and vir10_3c_32g, then the whole chip.
    assert d["capacity"]["vram"]["requestPolicy"] == {
        "default": "64Gi",
        "validValues": ["16Gi", "32Gi", "64Gi"],
    }
    assert "requestPolicy" not in d["capacity"]["tflops_fp16"]
    # A chip the table has no templates for cannot be cut: not shared.
    raw = node_dict("s", "huawei", 1, shared=True, enforcement="vnpu")
    raw["spec"]["devices"][0]["model"] = "Ascend950"
    (s,) = resource_slices(ComputeNode.from_dict(raw), 1)
    assert "allowMultipleAllocations" not in s["spec"]["devices"][0]
    assert "requestPolicy" not in s["spec"]["devices"][0]["capacity"]["vram"]


def test_a_share_states_every_capacity_and_whole_devices_state_none() -> None:
    from hcs.dra import claim_template_spec

    spec = claim_template_spec(
        demand_of(
            [{"ai.compute/vram": "16Gi"}, {"ai.compute/devices": "1"}],
            {"hcs.io/vendor-preference": "nvidia"},
        )
    )
    share, whole = (r["firstAvailable"][0] for r in spec["spec"]["devices"]["requests"])
    assert share["capacity"] == {
        "requests": {"vram": "16Gi", "tflops_fp16": "0", "tflops_fp32": "0"}
    }
    assert "capacity" not in whole


def test_the_limiters_contract_follows_what_the_claim_consumed() -> None:
    from hcs.dra import Share, share_enforcement, with_sharing
    from hcs.limiter import HamiPaths

    paths = HamiPaths("/lib/vgpu", "/state/claims/u_main", "/state/vgpulock", "/state/preload")
    gpu = shared_node("nvidia", "hami-core")
    a, b = gpu.devices
    # 16Gi and 78 of 312 TFLOPS on each: HAMi-core's env and mounts.
    e = share_enforcement(gpu, VendorTable(), [a, b], [Share(16384, 78000, 0)] * 2, paths)
    assert e is not None
    assert e.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == e.envs["CUDA_DEVICE_MEMORY_LIMIT_1"] == "16384m"
    assert e.envs["CUDA_DEVICE_SM_LIMIT"] == "25"
    assert ("/usr/local/vgpu/libvgpu.so", "/lib/vgpu/libvgpu.so", True) in e.mounts
    assert ("/usr/local/vgpu/containers", "/state/claims/u_main", False) in e.mounts
    # Consumed whole (or not shared at all): nothing to limit.
    whole = Share(a.vram_allocatable_mib, a.fp16_milli_tflops, a.fp32_milli_tflops)
    assert share_enforcement(gpu, VendorTable(), [a], [whole], paths) is None
    assert share_enforcement(gpu, VendorTable(), [a], [None], paths) is None
    # Allocated as a share, prepared after the node stopped sharing: refused, never unlimited.
    with pytest.raises(HcsError, match="no longer shares"):
        share_enforcement(node("nvidia", 2), VendorTable(), [a], [Share(1024, 0, 0)], paths)
    with pytest.raises(HcsError, match="HAMi-core"):
        share_enforcement(gpu, VendorTable(), [a], [Share(1024, 0, 0)], None)
    assert (
        share_enforcement(
            shared_node("nvidia", "none"), VendorTable(), [a], [Share(1024, 0, 0)], None
        )
        is None
    )

    npu = shared_node("huawei", "vnpu")
    (chip, _) = npu.devices
    e = share_enforcement(npu, VendorTable(), [chip], [Share(16384, 0, 0)], None)
    assert e is not None and e.envs == {"ASCEND_VNPU_SPECS": "vir05_1c_16g"}
    # 16Gi of memory but the compute of ten cores: the template is vir10 (32Gi), which the
    # books do not hold; said, never enforced as something else.
    with pytest.raises(HcsError, match=r"vir10_3c_32g.*ask for 32Gi"):
        share_enforcement(npu, VendorTable(), [chip], [Share(16384, 150000, 0)], None)

    # The sharing labels come from the agent's ComputeNode, whatever discovery says.
    discovered = node_dict("s", "nvidia", 1)
    published = node_dict("s", "nvidia", 1, shared=True, enforcement="hami-core")
    assert (
        ComputeNode.from_dict(with_sharing(discovered, published)).share_enforcement == "hami-core"
    )
    assert not ComputeNode.from_dict(with_sharing(published, None)).shared


K8S_VERSION = "1.37.0"
"""The API server's published OpenAPI schema these objects are checked against
(kubernetes-validate)."""


@pytest.mark.parametrize("vendor", VENDOR_NAMES)
def test_what_the_driver_and_the_webhook_write_is_valid_for_the_api_server(vendor: str) -> None:
    import kubernetes_validate

    from hcs.dra import claim_template_spec, template_name

    enforcement = {"nvidia": "hami-core", "huawei": "vnpu"}.get(vendor, "none")
    for cn in (node(vendor, 4), shared_node(vendor, enforcement, 4)):
        for s in resource_slices(cn, 7):
            kubernetes_validate.validate(s, K8S_VERSION, strict=True)
    for cls in device_classes(VendorTable()):
        kubernetes_validate.validate(cls, K8S_VERSION, strict=True)
    spec = claim_template_spec(
        demand_of(
            [{"ai.compute/vram": "16Gi", "ai.compute/devices": "2"}, {"ai.compute/devices": "1"}],
            {
                "hcs.io/vendor-preference": vendor,
                "hcs.io/allow-downgrade": "true",
                "hcs.io/topology-preference": "high-bandwidth",
            },
        )
    )
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": template_name(spec), "namespace": "ml"},
        "spec": spec,
    }
    kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_a_long_node_name_still_gives_valid_distinct_slice_names() -> None:
    from hcs.dra import slice_name

    subdomain = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    a = ("a" * 62 + ".") * 3 + "b" * 60  # 249 characters, a valid node name
    b = a[:-1] + "c"
    for node in (a, b, "gpu-1"):
        assert subdomain.match(slice_name(node, 3)), slice_name(node, 3)
    assert slice_name(a, 0) != slice_name(b, 0)
    assert slice_name("gpu-1", 0) == "gpu-1-compute.hcs.io-0"
