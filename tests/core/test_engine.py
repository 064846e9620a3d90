from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from hcs.demand import PodDemand, parse_pod
from hcs.engine import (
    UNRESOLVABLE,
    EngineConfig,
    Reason,
    compile_request,
    evaluate,
    filter_nodes,
    prioritize,
    route_vendor,
    score_percent,
    select_devices,
)
from hcs.errors import PlacementError, ValidationError
from hcs.ledger import Ledger
from hcs.models import ComputeNode
from hcs.state import ClusterState
from hcs.synthetic import make_node, node_dict

CFG = EngineConfig()


def demand(
    requests: dict[str, str] | None = None,
    *,
    limits: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: int = 1,
    uid: str = "uid-1",
) -> PodDemand:
    spec: dict[str, Any] = {
        "containers": [
            {"name": f"c{i}", "resources": {"requests": requests or {}, "limits": limits or {}}}
            for i in range(containers)
        ]
    }
    return parse_pod(
        {
            "metadata": {
                "name": "p",
                "namespace": "ns",
                "uid": uid,
                "annotations": annotations or {},
            },
            "spec": spec,
        }
    )


def state_of(*nodes: ComputeNode) -> ClusterState:
    return ClusterState.from_nodes(nodes)


def code_of(state: ClusterState, d: PodDemand, node: str, config: EngineConfig = CFG) -> Reason:
    result = filter_nodes(state, compile_request(d), [node], config)
    return Reason(int(result.codes[0]))


def test_fitting_node_passes() -> None:
    st = state_of(make_node("a"))
    assert code_of(st, demand({"ai.compute/vram": "40Gi"}), "a") is Reason.Fits


def test_node_not_found() -> None:
    st = state_of(make_node("a"))
    result = filter_nodes(
        st, compile_request(demand({"ai.compute/vram": "1Gi"})), ["a", "ghost"], CFG
    )
    assert [Reason(int(c)) for c in result.codes] == [Reason.Fits, Reason.NodeNotFound]
    assert result.reasons() == {
        "ghost": "NodeNotFound: no ComputeNode of that name in the HCS inventory"
    }


@pytest.mark.parametrize(
    "node",
    [
        make_node("a", phase="NotReady"),
        make_node("a", conditions={"Ready": "False"}),
        make_node("a", conditions={"Schedulable": "False"}),
        make_node("a", phase="Draining"),
    ],
)
def test_not_ready(node: ComputeNode) -> None:
    assert code_of(state_of(node), demand({"ai.compute/vram": "1Gi"}), "a") is Reason.NotReady


def test_agent_not_connected_by_condition() -> None:
    st = state_of(make_node("a", conditions={"AgentConnected": "False"}))
    assert code_of(st, demand({"ai.compute/vram": "1Gi"}), "a") is Reason.AgentNotConnected


def test_agent_not_connected_by_heartbeat_age_in_cluster_mode() -> None:
    st = state_of(make_node("a", heartbeat="2026-11-21T08:00:00Z"), make_node("b", heartbeat=None))
    hb = datetime(2026, 11, 21, 8, 0, tzinfo=UTC).timestamp()
    cfg = EngineConfig(heartbeat_max_age_s=60)
    req = compile_request(demand({"ai.compute/vram": "1Gi"}))
    fresh = filter_nodes(st, req, ["a", "b"], cfg, now=hb + 30)
    stale = filter_nodes(st, req, ["a", "b"], cfg, now=hb + 61)
    assert [Reason(int(c)) for c in fresh.codes] == [Reason.Fits, Reason.AgentNotConnected]
    assert [Reason(int(c)) for c in stale.codes] == [Reason.AgentNotConnected] * 2
    assert "within 60s" in stale.message(int(stale.codes[0]))


def test_vendor_not_supported() -> None:
    st = state_of(make_node("npu", "huawei"))
    d = demand({"ai.compute/vram": "1Gi"}, annotations={"hcs.io/vendor-preference": "nvidia"})
    assert code_of(st, d, "npu") is Reason.VendorNotSupported
    legacy = demand(limits={"nvidia.com/gpu": "1"})
    assert code_of(st, legacy, "npu") is Reason.VendorNotSupported


def test_device_unhealthy_when_only_unhealthy_devices_would_fit() -> None:
    st = state_of(make_node("a", n_devices=4, health=[100, 30, 30, 30]))
    d = demand({"ai.compute/vram": "1Gi", "ai.compute/devices": "2"})
    assert code_of(st, d, "a") is Reason.DeviceUnhealthy
    result = filter_nodes(st, compile_request(d), ["a"], CFG)
    assert result.message(int(result.codes[0])) == (
        "DeviceUnhealthy: fewer than 2 free devices with healthScore ≥ 60"
    )
    assert code_of(st, d, "a", EngineConfig(min_health=20)) is Reason.Fits


def test_insufficient_vram_message_matches_the_issue() -> None:
    st = state_of(make_node("a", n_devices=2, vram_gi=32))
    d = demand({"ai.compute/vram": "80Gi", "ai.compute/devices": "2"})
    result = filter_nodes(st, compile_request(d), ["a"], CFG)
    assert Reason(int(result.codes[0])) is Reason.InsufficientVRAM
    assert result.message(int(result.codes[0])) == (
        "InsufficientVRAM: fewer than 2 free devices with ≥ 40Gi"  # the user's units
    )


def test_reported_allocated_vram_is_not_free() -> None:
    st = state_of(make_node("a", n_devices=1, vram_gi=80, allocated_gi=[60]))
    assert code_of(st, demand({"ai.compute/vram": "20Gi"}), "a") is Reason.Fits
    assert code_of(st, demand({"ai.compute/vram": "21Gi"}), "a") is Reason.InsufficientVRAM


def test_insufficient_tflops() -> None:
    st = state_of(make_node("a", fp16="100"))
    d = demand({"ai.compute/vram": "1Gi", "ai.compute/tflops-fp16": "150"})
    result = filter_nodes(st, compile_request(d), ["a"], CFG)
    assert Reason(int(result.codes[0])) is Reason.InsufficientTFLOPS
    assert "≥ 150 TFLOPS FP16" in result.message(int(result.codes[0]))
    fp32 = demand({"ai.compute/tflops-fp32": "20"})
    assert code_of(st, fp32, "a") is Reason.InsufficientTFLOPS


def test_insufficient_devices() -> None:
    st = state_of(make_node("a", n_devices=2))
    d = demand({"ai.compute/devices": "4"})
    result = filter_nodes(st, compile_request(d), ["a"], CFG)
    assert Reason(int(result.codes[0])) is Reason.InsufficientDevices
    assert result.message(int(result.codes[0])) == "InsufficientDevices: fewer than 4 free devices"


def test_reason_precedence_follows_the_design() -> None:
    # A node that is NotReady *and* of the wrong vendor reports NotReady.
    st = state_of(make_node("a", "huawei", phase="NotReady"))
    d = demand({"ai.compute/vram": "1Gi"}, annotations={"hcs.io/vendor-preference": "nvidia"})
    assert code_of(st, d, "a") is Reason.NotReady
    assert [r.name for r in Reason][1:] == [
        "NodeNotFound",
        "NotReady",
        "AgentNotConnected",
        "VendorNotSupported",
        "DeviceUnhealthy",
        "InsufficientVRAM",
        "InsufficientTFLOPS",
        "InsufficientDevices",
    ]
    assert {r.name for r in UNRESOLVABLE} == {
        "NodeNotFound",
        "NotReady",
        "AgentNotConnected",
        "VendorNotSupported",
    }


def test_pod_asking_nothing_passes_every_node() -> None:
    st = state_of(make_node("a", phase="NotReady"))
    result = filter_nodes(st, compile_request(demand()), ["a", "ghost"], CFG)
    assert result.passed_mask.all()


def test_exclusive_devices_serve_one_container() -> None:
    st = state_of(make_node("a", n_devices=1))
    ledger = Ledger(st)
    ledger.assume(demand({"ai.compute/vram": "1Gi"}, uid="first"), "a")
    assert code_of(st, demand({"ai.compute/vram": "1Gi"}, uid="second"), "a") is (
        Reason.InsufficientDevices
    )


def test_shared_devices_split_vram() -> None:
    st = state_of(make_node("a", n_devices=1, vram_gi=80, shared=True))
    ledger = Ledger(st)
    ledger.assume(demand({"ai.compute/vram": "50Gi"}, uid="first"), "a")
    assert code_of(st, demand({"ai.compute/vram": "30Gi"}), "a") is Reason.Fits
    assert code_of(st, demand({"ai.compute/vram": "31Gi"}), "a") is Reason.InsufficientVRAM
    # A legacy whole-device request needs a device nobody holds.
    assert code_of(st, demand(limits={"nvidia.com/gpu": "1"}), "a") is (Reason.InsufficientDevices)


def test_a_node_without_a_sharing_mode_does_not_share_devices() -> None:
    """Fractional containers share a device only where the node states how shares are kept
    (a limiter, or unenforced sharing the owner allowed); elsewhere each takes a device."""
    raw = node_dict("a", n_devices=1, vram_gi=80, shared=True)
    del raw["metadata"]["labels"]["hcs.io/share-enforcement"]
    for labels, fits in (({}, False), ({"hcs.io/share-enforcement": "hami-core"}, True)):
        raw["metadata"]["labels"].update(labels)
        st = state_of(ComputeNode.from_dict(raw))
        Ledger(st).assume(demand({"ai.compute/vram": "16Gi"}, uid="first"), "a")
        second = code_of(st, demand({"ai.compute/vram": "16Gi"}), "a")
        assert (second is Reason.Fits) is fits, (labels, second)


def test_containers_of_one_pod_get_distinct_devices() -> None:
    st = state_of(make_node("a", n_devices=2, vram_gi=80, shared=True))
    two = demand({"ai.compute/vram": "10Gi"}, containers=2)
    three = demand({"ai.compute/vram": "10Gi"}, containers=3)
    assert code_of(st, two, "a") is Reason.Fits
    assert code_of(st, three, "a") is Reason.InsufficientDevices


def test_mixed_containers_use_halls_condition() -> None:
    # One big device and one small: a big and a small container fit (big->big, small->small);
    # two big containers do not, though each alone would.
    st = state_of(make_node("a", n_devices=2, vram_gi=80, allocated_gi=[0, 60]))
    spec: dict[str, Any] = {
        "containers": [
            {"name": "big", "resources": {"requests": {"ai.compute/vram": "70Gi"}}},
            {"name": "small", "resources": {"requests": {"ai.compute/vram": "10Gi"}}},
        ]
    }
    fits = parse_pod({"metadata": {"name": "p", "uid": "u"}, "spec": spec})
    assert code_of(st, fits, "a") is Reason.Fits
    spec["containers"][1]["resources"]["requests"]["ai.compute/vram"] = "70Gi"
    spec["containers"][1]["name"] = "big2"
    two_big = parse_pod({"metadata": {"name": "p", "uid": "u"}, "spec": spec})
    assert code_of(st, two_big, "a") is Reason.InsufficientVRAM
    picks = select_devices(st, compile_request(fits), "a", CFG)
    assert {c.name: s for c, s in picks} == {"big": (0,), "small": (1,)}


def test_binpack_prefers_fuller_nodes_and_spread_emptier() -> None:
    st = state_of(make_node("empty"), make_node("busy", allocated_gi=[80] * 6 + [0, 0]))
    req = compile_request(demand({"ai.compute/vram": "40Gi"}))
    pack = prioritize(st, req, ["empty", "busy"], CFG)
    spread = prioritize(st, req, ["empty", "busy"], EngineConfig(strategy="spread"))
    assert pack[1] > pack[0]
    assert spread[0] > spread[1]
    assert all(0 <= s <= 10 for s in [*pack, *spread])


def test_failing_nodes_score_zero() -> None:
    st = state_of(make_node("a", phase="NotReady"), make_node("b"))
    scores = prioritize(st, compile_request(demand({"ai.compute/vram": "1Gi"})), ["a", "b"], CFG)
    assert scores[0] == 0 and scores[1] > 0


def test_high_bandwidth_favours_a_node_whose_devices_share_a_clique() -> None:
    linked = make_node("linked", n_devices=4, cliques=[[0, 1, 2, 3]])
    loose = make_node("loose", n_devices=4)
    st = state_of(linked, loose)
    d = demand(
        {"ai.compute/vram": "10Gi", "ai.compute/devices": "4"},
        annotations={"hcs.io/topology-preference": "high-bandwidth"},
    )
    scores = prioritize(st, compile_request(d), ["linked", "loose"], CFG)
    assert scores[0] > scores[1]
    plain = prioritize(
        st,
        compile_request(demand({"ai.compute/vram": "10Gi", "ai.compute/devices": "4"})),
        ["linked", "loose"],
        CFG,
    )
    assert plain[0] == plain[1]


def test_low_latency_favours_one_numa_node() -> None:
    st = state_of(
        make_node("same", n_devices=4, numa=[0, 0, 1, 1]),
        make_node("split", n_devices=4, numa=[0, 1, 2, 3]),
    )
    d = demand(
        {"ai.compute/vram": "10Gi", "ai.compute/devices": "2"},
        annotations={"hcs.io/topology-preference": "low-latency"},
    )
    scores = prioritize(st, compile_request(d), ["same", "split"], CFG)
    assert scores[0] > scores[1]


def test_health_raises_the_score() -> None:
    st = state_of(make_node("healthy", health=[100] * 8), make_node("tired", health=[61] * 8))
    scores = prioritize(
        st, compile_request(demand({"ai.compute/vram": "10Gi"})), ["healthy", "tired"], CFG
    )
    assert scores[0] > scores[1]


def test_preferred_vendor_gets_a_bonus() -> None:
    st = state_of(make_node("gpu", "nvidia", vram_gi=64), make_node("npu", "huawei"))
    d = demand(
        {"ai.compute/vram": "10Gi"},
        annotations={"hcs.io/vendor-preference": "huawei", "hcs.io/allow-downgrade": "true"},
    )
    scores = prioritize(st, compile_request(d), ["gpu", "npu"], CFG)
    assert scores.tolist() == [0, 10]  # normalized over the call: best 10, worst 0
    ev = evaluate(st, compile_request(d), st.lookup(["gpu", "npu"]), CFG)
    percent = score_percent(st, compile_request(d), ev, CFG)
    assert percent[1] > percent[0] > 0  # the absolute scores (hcs.io/scheduling-score)


def test_select_devices_keeps_a_container_inside_one_clique() -> None:
    node = make_node(
        "a",
        n_devices=8,
        cliques=[[0, 1, 2, 3], [4, 5, 6, 7]],
        allocated_gi=[0, 80, 0, 0, 0, 0, 0, 0],
    )
    st = state_of(node)
    d = demand(
        {"ai.compute/vram": "10Gi", "ai.compute/devices": "4"},
        annotations={"hcs.io/topology-preference": "high-bandwidth"},
    )
    ((_, slots),) = select_devices(st, compile_request(d), "a", CFG)
    assert sorted(slots) == [4, 5, 6, 7]


def test_select_devices_binpacks_onto_the_tightest_device() -> None:
    st = state_of(make_node("a", n_devices=3, vram_gi=80, allocated_gi=[0, 50, 20], shared=True))
    ((_, slots),) = select_devices(
        st, compile_request(demand({"ai.compute/vram": "20Gi"})), "a", CFG
    )
    assert slots == (1,)
    ((_, spread),) = select_devices(
        st,
        compile_request(demand({"ai.compute/vram": "20Gi"})),
        "a",
        EngineConfig(strategy="spread"),
    )
    assert spread == (0,)


def test_select_devices_prefers_healthier_devices_on_ties() -> None:
    st = state_of(make_node("a", n_devices=3, health=[70, 100, 90]))
    ((_, slots),) = select_devices(
        st, compile_request(demand({"ai.compute/vram": "1Gi"})), "a", CFG
    )
    assert slots == (1,)


def test_select_devices_raises_with_the_filter_reason() -> None:
    st = state_of(make_node("a", n_devices=1, vram_gi=16))
    with pytest.raises(PlacementError) as info:
        select_devices(st, compile_request(demand({"ai.compute/vram": "32Gi"})), "a", CFG)
    assert info.value.code == "InsufficientVRAM"
    with pytest.raises(PlacementError) as missing:
        select_devices(st, compile_request(demand({"ai.compute/vram": "1Gi"})), "nope", CFG)
    assert missing.value.code == "NodeNotFound"


def test_route_prefers_the_first_vendor_that_fits_now() -> None:
    st = state_of(make_node("gpu", "nvidia", n_devices=1), make_node("npu", "huawei"))
    Ledger(st).assume(demand({"ai.compute/vram": "1Gi"}, uid="holder"), "gpu")
    d = demand(
        {"ai.compute/vram": "10Gi"}, annotations={"hcs.io/vendor-preference": "nvidia,huawei"}
    )
    route = route_vendor(st, compile_request(d), CFG)
    assert (route.vendor, route.fits_now, route.downgraded) == ("huawei", True, True)


def test_route_waits_on_the_preferred_vendor_without_downgrade() -> None:
    st = state_of(make_node("gpu", "nvidia", n_devices=1), make_node("npu", "huawei"))
    Ledger(st).assume(demand({"ai.compute/vram": "1Gi"}, uid="holder"), "gpu")
    d = demand({"ai.compute/vram": "10Gi"}, annotations={"hcs.io/vendor-preference": "nvidia"})
    route = route_vendor(st, compile_request(d), CFG)
    assert (route.vendor, route.fits_now, route.downgraded) == ("nvidia", False, False)
    down = demand(
        {"ai.compute/vram": "10Gi"},
        annotations={"hcs.io/vendor-preference": "nvidia", "hcs.io/allow-downgrade": "true"},
    )
    assert route_vendor(st, compile_request(down), CFG).vendor == "huawei"


def test_route_denies_only_what_could_never_fit() -> None:
    st = state_of(make_node("gpu", "nvidia", vram_gi=80), make_node("npu", "huawei"))
    with pytest.raises(PlacementError) as info:
        route_vendor(st, compile_request(demand({"ai.compute/vram": "100Gi"})), CFG)
    assert info.value.code == "InsufficientVRAM"
    with pytest.raises(PlacementError) as vendor:
        route_vendor(st, compile_request(demand(limits={"cambricon.com/mlu": "1"})), CFG)
    assert vendor.value.code == "VendorNotSupported"
    # A NotReady node could still hold it one day: routed, not denied.
    st2 = state_of(make_node("gpu", "nvidia", phase="NotReady"))
    assert not route_vendor(st2, compile_request(demand({"ai.compute/vram": "1Gi"})), CFG).fits_now


def test_filter_figures_explain_a_decision() -> None:
    st = state_of(
        make_node("a", n_devices=4, allocated_gi=[80, 0, 0, 0], health=[100, 100, 10, 100])
    )
    result = filter_nodes(
        st, compile_request(demand({"ai.compute/vram": "40Gi"})), ["a"], CFG, figures=True
    )
    assert result.figures is not None
    assert {k: int(v[0]) for k, v in result.figures.items()} == {
        "devices": 4,
        "free_devices": 4,
        "healthy_free_devices": 3,
        "max_free_vram_mib": 81920,
        "fitting_devices": 2,
    }


def test_filter_handles_an_empty_candidate_list() -> None:
    st = state_of(make_node("a"))
    result = filter_nodes(st, compile_request(demand({"ai.compute/vram": "1Gi"})), [], CFG)
    assert result.codes.shape == (0,)
    assert np.asarray(result.passed_mask).shape == (0,)


def test_a_shared_device_takes_no_more_containers_than_its_slots() -> None:
    """The device plugin advertises `hcs.io/device-slots` replicas: kubelet admits no more."""
    from hcs.synthetic import node_dict

    raw = node_dict("s", n_devices=1, shared=True)
    raw["metadata"]["labels"]["hcs.io/device-slots"] = "2"
    st = state_of(ComputeNode.from_dict(raw))
    ledger = Ledger(st)
    for i in range(2):
        ledger.assume(demand({"ai.compute/vram": "1Gi"}, uid=f"u{i}"), "s")
    third = filter_nodes(
        st, compile_request(demand({"ai.compute/vram": "1Gi"}, uid="u3")), ["s"], CFG
    )
    assert third.passed_names() == []  # VRAM would fit, the slots do not
    raw["metadata"]["labels"]["hcs.io/device-slots"] = "zero"
    with pytest.raises(ValidationError, match="device-slots"):
        ComputeNode.from_dict(raw)


def test_vram_in_use_is_not_counted_twice_on_a_shared_device() -> None:
    """The agent reports `memory.used`, which includes the HCS pod already there: free is
    allocatable - max(reported, charged), so an 80Gi GPU with one 40Gi pod takes a second."""
    st = state_of(make_node("s", n_devices=1, shared=True))
    ledger = Ledger(st)
    ledger.assume(demand({"ai.compute/vram": "40Gi"}, uid="first"), "s")
    st.upsert_node(make_node("s", n_devices=1, shared=True, allocated_gi=[40]))  # agent's view
    second = compile_request(demand({"ai.compute/vram": "40Gi"}, uid="second"))
    assert filter_nodes(st, second, ["s"], CFG).passed_names() == ["s"]
    third = compile_request(demand({"ai.compute/vram": "41Gi"}, uid="third"))
    assert filter_nodes(st, third, ["s"], CFG).passed_names() == []
    # What the device reports beyond HCS's charges (a process HCS did not place) still counts.
    st.upsert_node(make_node("s", n_devices=1, shared=True, allocated_gi=[70]))
    assert filter_nodes(st, second, ["s"], CFG).passed_names() == []
