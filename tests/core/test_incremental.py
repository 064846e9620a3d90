"""Kept evaluations patched with the rows that changed equal evaluations made afresh.

The engine keeps each request shape's evaluation over every node and, after the books change,
re-evaluates only the changed rows (`hcs.engine._kernel_cached`). Here the books change in
every way they can (allocations made and given back, nodes changed, added, removed, devices
added past the row width, heartbeats ageing past the limit) and after each change every shape
is checked against an evaluation from scratch: codes, fitting devices, scores.
"""

from __future__ import annotations

import random
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hcs.demand import parse_pod
from hcs.engine import EngineConfig, _Kernel, compile_request, evaluate, filter_nodes
from hcs.errors import HcsError
from hcs.ledger import Ledger
from hcs.models import ComputeNode
from hcs.state import ClusterState
from hcs.synthetic import node_dict

VENDORS = ("nvidia", "huawei", "hygon", "cambricon")
SHAPES = (
    {"ai.compute/vram": "8Gi"},
    {"ai.compute/vram": "40Gi", "ai.compute/devices": "2"},
    {"ai.compute/vram": "20Gi", "ai.compute/tflops-fp16": "100"},
    {"nvidia.com/gpu": "1"},
    {"huawei.com/Ascend910": "2"},
)
NOW = 1_800_000_000.0


def node(rng: random.Random, name: str, n: int | None = None) -> ComputeNode:
    vendor = rng.choice(VENDORS)
    n = n or rng.choice((1, 2, 4, 8))
    shared = rng.random() < 0.4
    raw = node_dict(
        name,
        vendor,
        n,
        allocated_gi=[rng.choice((0, 0, 8, 32)) for _ in range(n)],
        health=[rng.choice((100, 100, 90, 40)) for _ in range(n)],
        shared=shared,
        enforcement="vnpu" if vendor == "huawei" and rng.random() < 0.5 else "none",
        phase=rng.choice(("Ready", "Ready", "Ready", "NotReady")),
        heartbeat=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - rng.randrange(0, 120))),
    )
    return ComputeNode.from_dict(raw)


def pod(uid: str, limits: dict[str, str]) -> dict[str, object]:
    return {
        "metadata": {"name": uid, "namespace": "n", "uid": uid},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
    }


def check_all(state: ClusterState, config: EngineConfig, now: float) -> None:
    names = sorted(state.index)
    for limits in SHAPES:
        req = compile_request(parse_pod(pod("probe", limits)))
        result = filter_nodes(state, req, names, config, now)  # kept and patched
        ev = evaluate(state, req, state.lookup(names), config, now)
        fresh = _Kernel(state, req, config, now, slice(None), empty_cluster=False)
        rows = state.lookup(names)
        assert result.codes.tolist() == fresh.codes[rows].tolist()
        assert np.array_equal(ev.fit_mask, fresh.fit[rows])
        assert ev.kernel.scores()[rows].tolist() == fresh.scores()[rows].tolist()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.integers(0, 10_000), heartbeats=st.booleans())
def test_patched_evaluations_equal_fresh_ones(seed: int, heartbeats: bool) -> None:
    rng = random.Random(seed)
    state = ClusterState.from_nodes([node(rng, f"n{i}") for i in range(rng.randrange(3, 30))])
    config = EngineConfig(heartbeat_max_age_s=60.0 if heartbeats else None)
    now = NOW
    ledger = Ledger(state, config, clock=lambda: now)
    check_all(state, config, now)
    placed: list[str] = []
    for step in range(40):
        what = rng.random()
        names = sorted(state.index)
        if what < 0.45 and names:
            uid = f"p{step}"
            with_shape = rng.choice(SHAPES)
            try:
                ledger.assume(parse_pod(pod(uid, with_shape)), rng.choice(names))
                placed.append(uid)
            except HcsError:
                pass
        elif what < 0.6 and placed:
            state.remove_allocation(placed.pop(rng.randrange(len(placed))))
        elif what < 0.75 and names:
            state.upsert_node(node(rng, rng.choice(names)))  # changed in place
        elif what < 0.82 and names:
            state.remove_node(rng.choice(names))
        elif what < 0.9:
            wide = rng.random() < 0.2  # past the row width: arrays reshaped
            state.upsert_node(node(rng, f"new{step}", 16 if wide else None))
        else:
            now += rng.choice((1.0, 7.0, 30.0))  # heartbeats age past the limit
        check_all(state, config, now)


def test_a_bind_reevaluates_one_row_not_the_cluster() -> None:
    """After one allocation, the next pod of a kept shape re-evaluates that node's row only."""
    rng = random.Random(1)
    state = ClusterState.from_nodes([node(rng, f"n{i:03d}", 8) for i in range(200)])
    config = EngineConfig()
    req = compile_request(parse_pod(pod("a", {"ai.compute/vram": "8Gi"})))
    names = sorted(state.index)
    filter_nodes(state, req, names, config)
    codes = filter_nodes(state, req, names, config).codes
    ready = [n for n, c in zip(names, codes.tolist(), strict=True) if c == 0]
    Ledger(state, config).assume(parse_pod(pod("b", {"ai.compute/vram": "8Gi"})), ready[0])
    seen: list[int] = []
    original = _Kernel.__init__

    def counting(self: _Kernel, *args: object, **kwargs: object) -> None:
        sel = args[4]
        seen.append(len(sel) if isinstance(sel, np.ndarray) else state.rows)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    _Kernel.__init__ = counting  # type: ignore[method-assign]
    try:
        filter_nodes(state, req, names, config)
    finally:
        _Kernel.__init__ = original  # type: ignore[method-assign]
    assert seen == [1]
