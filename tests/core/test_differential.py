"""The vectorized engine and the plain-Python reference agree, node for node, on random clusters.

The reference decides fit by bipartite matching over the ComputeNode models and allocation
records; the engine by Hall's condition over numpy arrays. Any disagreement in a reason code or a
score is a bug in one of them.
"""

import contextlib
import random
import time
from functools import lru_cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hcs.demand import PodDemand, parse_pod
from hcs.engine import (
    EngineConfig,
    compile_request,
    evaluate,
    filter_nodes,
    prioritize,
    score_percent,
    select_devices,
)
from hcs.errors import HcsError
from hcs.ledger import Ledger
from hcs.models import ComputeNode
from hcs.reference import filter_reference, prioritize_reference, score_percent_reference
from hcs.state import ClusterState
from hcs.synthetic import random_cluster

VENDORS = ("nvidia", "huawei", "hygon", "cambricon")
LEGACY = {
    "nvidia": "nvidia.com/gpu",
    "huawei": "huawei.com/Ascend910",
    "hygon": "hygon.com/dcu",
    "cambricon": "cambricon.com/mlu",
}


@lru_cache(maxsize=32)
def cluster(n_nodes: int, seed: int, vary: bool) -> tuple[ComputeNode, ...]:
    return tuple(random_cluster(n_nodes, seed, vary_devices=vary))


@st.composite
def resources(draw: st.DrawFn, legacy_vendor: str | None) -> dict[str, Any]:
    if legacy_vendor is not None:
        return {"limits": {LEGACY[legacy_vendor]: str(draw(st.integers(1, 4)))}}
    req = {"ai.compute/vram": f"{draw(st.integers(1, 90))}Gi"}
    if draw(st.booleans()):
        req["ai.compute/devices"] = str(draw(st.integers(1, 5)))
    if draw(st.booleans()):
        req["ai.compute/tflops-fp16"] = str(draw(st.integers(1, 1200)))
    if draw(st.integers(0, 3)) == 0:
        req["ai.compute/tflops-fp32"] = str(draw(st.integers(1, 60)))
    return {"requests": req}


@st.composite
def pods(draw: st.DrawFn) -> PodDemand:
    """Valid pods: abstract requests, or (one time in ten) legacy whole devices of one vendor."""
    legacy = draw(st.sampled_from(VENDORS)) if draw(st.integers(0, 9)) == 0 else None
    annotations: dict[str, str] = {}
    if legacy is None and draw(st.booleans()):
        prefs = draw(st.lists(st.sampled_from(VENDORS), min_size=1, max_size=3, unique=True))
        annotations["hcs.io/vendor-preference"] = ",".join(prefs)
        if draw(st.booleans()):
            annotations["hcs.io/allow-downgrade"] = "true"
    topology = draw(st.sampled_from((None, "high-bandwidth", "low-latency")))
    if topology:
        annotations["hcs.io/topology-preference"] = topology
    spec = {
        "containers": [
            {"name": f"c{i}", "resources": draw(resources(legacy))}
            for i in range(draw(st.integers(1, 8)))
        ]
    }
    return parse_pod(
        {"metadata": {"name": "p", "uid": "probe", "annotations": annotations}, "spec": spec}
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ClusterState, EngineConfig, list[str]]:
    n_nodes = draw(st.integers(1, 200))
    seed = draw(st.integers(0, 10_000))
    state = ClusterState.from_nodes(cluster(n_nodes, seed, draw(st.booleans())))
    config = EngineConfig(
        min_health=draw(st.sampled_from((0, 60, 90))),
        strategy=draw(st.sampled_from(("binpack", "spread"))),
    )
    # Allocations made through the ledger, so both sides see the same bookings.
    rng = random.Random(seed)
    ledger = Ledger(state, config)
    names = sorted(state.index)
    for i in range(draw(st.integers(0, 3 * n_nodes))):
        pod = parse_pod(
            {
                "metadata": {"name": f"b{i}", "uid": f"b{i}"},
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "resources": {
                                "requests": {
                                    "ai.compute/vram": f"{rng.choice((4, 16, 40))}Gi",
                                    "ai.compute/devices": str(rng.choice((1, 1, 2))),
                                }
                            },
                        }
                    ]
                },
            }
        )
        with contextlib.suppress(HcsError):
            ledger.assume(pod, rng.choice(names))
    candidates = [*names, "ghost-node"]
    rng.shuffle(candidates)
    return state, config, candidates


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios(), demand=pods())
def test_engine_equals_reference_on_random_clusters(
    scenario: tuple[ClusterState, EngineConfig, list[str]], demand: PodDemand
) -> None:
    state, config, names = scenario
    req = compile_request(demand)
    engine_codes = [int(c) for c in filter_nodes(state, req, names, config).codes]
    reference_codes = [int(r) for r in filter_reference(state, demand, names, config)]
    assert engine_codes == reference_codes
    ev = evaluate(state, req, state.lookup(names), config)
    assert score_percent(state, req, ev, config).tolist() == score_percent_reference(
        state, demand, names, config
    )
    assert prioritize(state, req, names, config).tolist() == prioritize_reference(
        state, demand, names, config
    )


# --------------------------------------------------------------------------- filter => bind


@st.composite
def wide_clusters(draw: st.DrawFn) -> tuple[ClusterState, EngineConfig, float]:
    """Small clusters with what the first generator lacks: shared nodes with slot limits and
    vNPU templates, TFLOPS and whole-device (legacy) bookings, unhealthy devices, stale
    heartbeats."""
    from hcs.synthetic import node_dict

    rng = random.Random(draw(st.integers(0, 10_000)))
    now = 1_800_000_000.0
    nodes = []
    for i in range(draw(st.integers(1, 12))):
        vendor = rng.choice(VENDORS)
        n = rng.choice((1, 2, 4, 8))
        shared = rng.random() < 0.5
        raw = node_dict(
            f"n{i}",
            vendor,
            n,
            allocated_gi=[rng.choice((0, 0, 8, 16, 32)) for _ in range(n)],
            health=[rng.choice((100, 100, 90, 50)) for _ in range(n)],
            cliques=[list(range(s, min(s + 4, n))) for s in range(0, n, 4)],
            numa=[0 if j < n // 2 else 1 for j in range(n)],
            shared=shared,
            # Ascend shares as vNPU templates (booked as the smallest template that holds them).
            enforcement="vnpu" if vendor == "huawei" and rng.random() < 0.6 else "none",
            heartbeat=time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - rng.choice((5, 5, 5, 500)))
            ),
        )
        if shared and rng.random() < 0.7:
            raw["metadata"]["labels"]["hcs.io/device-slots"] = str(rng.choice((1, 2, 3)))
        nodes.append(ComputeNode.from_dict(raw))
    state = ClusterState.from_nodes(nodes)
    config = EngineConfig(
        min_health=rng.choice((0, 60)),
        strategy=rng.choice(("binpack", "spread")),
        heartbeat_max_age_s=rng.choice((None, 60.0)),
    )
    ledger = Ledger(state, config, clock=lambda: now)
    names = sorted(state.index)
    for k in range(draw(st.integers(0, 30))):
        if rng.random() < 0.3:
            vendor = rng.choice(VENDORS)
            res = {"limits": {LEGACY[vendor]: str(rng.choice((1, 2)))}}
        else:
            res = {
                "requests": {
                    "ai.compute/vram": f"{rng.choice((2, 8, 20))}Gi",
                    "ai.compute/tflops-fp16": str(rng.choice((1, 50, 150))),
                    "ai.compute/devices": str(rng.choice((1, 1, 2))),
                }
            }
        booked = parse_pod(
            {
                "metadata": {"name": f"b{k}", "uid": f"b{k}"},
                "spec": {"containers": [{"name": "c", "resources": res}]},
            }
        )
        with contextlib.suppress(HcsError):
            ledger.assume(booked, rng.choice(names))
    return state, config, now


@st.composite
def wide_pods(draw: st.DrawFn) -> PodDemand:
    """1 to 8 containers of up to 8 distinct shapes (past the engine's exact grouping)."""
    containers = []
    for i in range(draw(st.integers(1, 8))):
        req = {"ai.compute/vram": f"{draw(st.integers(1, 70))}Gi"}
        if draw(st.booleans()):
            req["ai.compute/devices"] = str(draw(st.integers(1, 3)))
        if draw(st.booleans()):
            req["ai.compute/tflops-fp16"] = str(draw(st.integers(1, 300)))
        containers.append({"name": f"c{i}", "resources": {"requests": req}})
    return parse_pod(
        {"metadata": {"name": "p", "uid": "probe"}, "spec": {"containers": containers}}
    )


WIDE = given(scenario=wide_clusters(), demand=wide_pods())
WIDE_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@WIDE_SETTINGS
@WIDE
def test_a_node_filter_passes_can_always_be_bound(
    scenario: tuple[ClusterState, EngineConfig, float], demand: PodDemand
) -> None:
    """Filter says Fits => bind finds devices there, with the same books: otherwise
    kube-scheduler would retry a bind that can never succeed, forever."""
    state, config, now = scenario
    req = compile_request(demand)
    names = sorted(state.index)
    codes = filter_nodes(state, req, names, config, now).codes
    for name, code in zip(names, codes, strict=True):
        if int(code) != 0:
            continue
        picks = select_devices(state, req, name, config, now)
        used = [s for _, slots in picks for s in slots]
        assert len(used) == len(set(used)) == sum(c.devices for c in demand.placement)


@WIDE_SETTINGS
@WIDE
def test_engine_equals_reference_on_shared_and_template_nodes(
    scenario: tuple[ClusterState, EngineConfig, float], demand: PodDemand
) -> None:
    """The same agreement where shares have slot limits or are booked as vNPU templates."""
    state, config, now = scenario
    req = compile_request(demand)
    names = [*sorted(state.index), "ghost-node"]
    engine_codes = [int(c) for c in filter_nodes(state, req, names, config, now).codes]
    assert engine_codes == [int(r) for r in filter_reference(state, demand, names, config, now)]
    ev = evaluate(state, req, state.lookup(names), config, now)
    assert score_percent(state, req, ev, config).tolist() == score_percent_reference(
        state, demand, names, config, now
    )
