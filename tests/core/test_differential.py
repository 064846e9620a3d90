"""The vectorized engine and the plain-Python reference agree, node for node, on random clusters.

The reference decides fit by bipartite matching over the ComputeNode models and allocation
records; the engine by Hall's condition over numpy arrays. Any disagreement in a reason code or a
score is a bug in one of them.
"""

import contextlib
import random
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
            for i in range(draw(st.integers(1, 3)))
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
