"""kube-scheduler's 0..10 keeps the engine's ranking: wherever the absolute scores (what
`hcs explain` and `hcs.io/scheduling-score` show) order two nodes, prioritize orders them the
same way, strictly; ties stay ties."""

from typing import Any

import numpy as np
import pytest

from hcs.demand import parse_pod
from hcs.engine import (
    EngineConfig,
    compile_request,
    evaluate,
    normalize_scores,
    prioritize,
    score_percent,
)
from hcs.state import ClusterState
from hcs.synthetic import make_node


def test_close_scores_no_longer_collapse() -> None:
    fit = np.ones(3, np.bool_)
    assert normalize_scores(np.array([69, 68, 68]), fit).tolist() == [10, 0, 0]
    assert normalize_scores(np.array([69, 68, 40]), fit).tolist() == [10, 9, 0]
    assert normalize_scores(np.array([50, 50]), np.ones(2, np.bool_)).tolist() == [10, 10]
    assert normalize_scores(np.array([90, 10]), np.array([False, True])).tolist() == [0, 10]
    many = np.arange(40, 70)  # 30 distinct scores cannot all get a step of their own
    out = normalize_scores(many, np.ones(30, np.bool_))
    assert out[0] == 0 and out[-1] == 10 and (np.diff(out) >= 0).all()


def pod(requests: dict[str, str], annotations: dict[str, str] | None = None) -> Any:
    return parse_pod(
        {
            "metadata": {"name": "p", "uid": "u", "annotations": annotations or {}},
            "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}]},
        }
    )


FILLS = [[80] * k + [0] * (8 - k) for k in range(5)]  # every node still fits 4 devices
CASES = {
    "binpack": (
        EngineConfig(),
        [make_node(f"n{i}", allocated_gi=f) for i, f in enumerate(FILLS)],
        {},
    ),
    "spread": (
        EngineConfig(strategy="spread"),
        [make_node(f"n{i}", allocated_gi=f) for i, f in enumerate(FILLS)],
        {},
    ),
    "high-bandwidth": (
        EngineConfig(),
        [
            make_node("all", cliques=[list(range(8))]),
            make_node("fours", cliques=[[0, 1, 2, 3], [4, 5, 6, 7]]),
            make_node("pairs", cliques=[[0, 1], [2, 3], [4, 5], [6, 7]]),
            make_node("none"),
        ],
        {"hcs.io/topology-preference": "high-bandwidth"},
    ),
    "low-latency": (
        EngineConfig(),
        [
            make_node("one", numa=[0] * 8),
            make_node("two", numa=[0] * 4 + [1] * 4),
            make_node("four", numa=[0, 0, 1, 1, 2, 2, 3, 3]),
            make_node("eight", numa=list(range(8))),
        ],
        {"hcs.io/topology-preference": "low-latency"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prioritize_orders_nodes_as_their_absolute_scores_do(case: str) -> None:
    config, nodes, annotations = CASES[case]
    state = ClusterState.from_nodes(nodes)
    names = [n.name for n in nodes]
    req = compile_request(pod({"ai.compute/vram": "10Gi", "ai.compute/devices": "4"}, annotations))
    ev = evaluate(state, req, state.lookup(names), config)
    absolute = score_percent(state, req, ev, config).tolist()
    scores = prioritize(state, req, names, config).tolist()
    assert (ev.codes == 0).all()  # kube-scheduler prioritizes only the nodes filter passed
    assert len(set(absolute)) >= 3, absolute  # the case really separates the nodes
    for i in range(len(names)):
        for j in range(len(names)):
            if absolute[i] > absolute[j]:
                assert scores[i] > scores[j], (case, names[i], names[j], absolute, scores)
            if absolute[i] == absolute[j]:
                assert scores[i] == scores[j]
