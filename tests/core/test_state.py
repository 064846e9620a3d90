import contextlib
import random

import numpy as np
import pytest

from hcs.demand import PodDemand, parse_pod
from hcs.engine import EngineConfig, Reason, compile_request, filter_nodes
from hcs.errors import PlacementError
from hcs.ledger import Ledger
from hcs.models import ComputeNode
from hcs.state import ClusterState
from hcs.synthetic import make_node, random_cluster

ROW_ARRAYS = (
    "dev_present_mask",
    "dev_vram_cap_mib",
    "dev_vram_free_mib",
    "dev_fp16_free_mtf",
    "dev_fp32_free_mtf",
    "dev_health",
    "dev_holders",
    "dev_clique",
    "dev_numa",
    "node_vendor",
    "node_ready_mask",
    "node_shared_mask",
    "node_vram_total_mib",
    "node_vram_used_mib",
)


def gpu_demand(uid: str, vram: str = "10Gi", devices: int = 1) -> PodDemand:
    return parse_pod(
        {
            "metadata": {"name": uid, "uid": uid},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "resources": {
                            "requests": {
                                "ai.compute/vram": vram,
                                "ai.compute/devices": str(devices),
                            }
                        },
                    }
                ]
            },
        }
    )


def snapshot(state: ClusterState, name: str) -> dict[str, np.ndarray]:
    row = state.index[name]
    return {a: np.array(getattr(state, a)[row]) for a in ROW_ARRAYS}


def assert_same_as_rebuild(state: ClusterState) -> None:
    """The incrementally kept arrays equal those of a state built from scratch."""
    fresh = ClusterState.from_nodes(state.nodes.values())
    for alloc in state.allocations.values():
        fresh.add_allocation(alloc)
    assert sorted(fresh.index) == sorted(state.index)
    for name in state.index:
        mine, theirs = snapshot(state, name), snapshot(fresh, name)
        for attr in ROW_ARRAYS:
            w = min(len(np.atleast_1d(mine[attr])), len(np.atleast_1d(theirs[attr])))
            a, b = np.atleast_1d(mine[attr])[:w], np.atleast_1d(theirs[attr])[:w]
            assert np.array_equal(a, b), (name, attr, a, b)


def test_updating_a_node_rewrites_only_its_row() -> None:
    nodes = random_cluster(20, seed=3)
    state = ClusterState.from_nodes(nodes)
    before = {n.name: snapshot(state, n.name) for n in nodes}
    changed = make_node(nodes[7].name, "nvidia", 8, allocated_gi=[40] * 8)
    state.upsert_node(changed)
    for n in nodes:
        after = snapshot(state, n.name)
        same = all(np.array_equal(before[n.name][a], after[a]) for a in ROW_ARRAYS)
        assert same == (n.name != changed.name)
    assert (state.dev_vram_free_mib[state.index[changed.name]] == 40 * 1024).all()


def test_rows_grow_and_are_reused() -> None:
    state = ClusterState(rows=2)
    for i in range(40):
        state.upsert_node(make_node(f"n{i}"))
    assert state.n_nodes == 40 and state.rows >= 40
    assert state.remove_node("n3")
    row_of_n3_gone = state.rows
    state.upsert_node(make_node("fresh"))
    assert state.rows == row_of_n3_gone  # the freed row was reused
    assert_same_as_rebuild(state)


def test_a_node_with_more_devices_widens_every_row() -> None:
    state = ClusterState.from_nodes([make_node("small", n_devices=4)])
    Ledger(state).assume(gpu_demand("u1"), "small")
    state.upsert_node(make_node("big", n_devices=16))
    assert state.width >= 16
    assert int(state.dev_holders[state.index["small"]].sum()) == 1
    result = filter_nodes(
        state, compile_request(gpu_demand("u2", devices=12)), ["small", "big"], EngineConfig()
    )
    assert [Reason(int(c)) for c in result.codes] == [Reason.InsufficientDevices, Reason.Fits]
    assert_same_as_rebuild(state)


def test_allocations_survive_a_node_update_and_a_node_coming_back() -> None:
    state = ClusterState.from_nodes([make_node("a", n_devices=2)])
    ledger = Ledger(state)
    alloc = ledger.assume(gpu_demand("u1", vram="30Gi"), "a")
    slot = state.device_ids[state.index["a"]].index(alloc.device_ids[0])
    state.upsert_node(make_node("a", n_devices=2, allocated_gi=[5, 5]))
    row = state.index["a"]
    assert state.dev_vram_free_mib[row, slot] == (80 - max(5, 30)) * 1024  # max, not a sum
    state.remove_node("a")
    assert "u1" in state.allocations
    state.upsert_node(make_node("a", n_devices=2))
    assert state.dev_holders[state.index["a"], slot] == 1
    assert_same_as_rebuild(state)


def test_lookup_maps_names_and_follows_membership_changes() -> None:
    state = ClusterState.from_nodes([make_node("a"), make_node("b")])
    assert state.lookup(["b", "x", "a"]).tolist() == [state.index["b"], -1, state.index["a"]]
    assert state.lookup(["b", "x", "a"]) is state.lookup(["b", "x", "a"])  # cached
    state.upsert_node(make_node("x"))
    assert state.lookup(["b", "x", "a"])[1] == state.index["x"]
    state.remove_node("a")
    assert state.lookup(["b", "x", "a"])[2] == -1


def test_random_sequences_of_updates_match_a_rebuild() -> None:
    rng = random.Random(11)
    pool: list[ComputeNode] = random_cluster(60, seed=5, vary_devices=True)
    state = ClusterState(rows=4)
    ledger = Ledger(state)
    uid = 0
    for _ in range(400):
        op = rng.random()
        if op < 0.45:
            state.upsert_node(rng.choice(pool))
        elif op < 0.55 and state.index:
            state.remove_node(rng.choice(sorted(state.index)))
        elif op < 0.85 and state.index:
            uid += 1
            node = rng.choice(sorted(state.index))
            try:
                ledger.assume(
                    gpu_demand(
                        f"u{uid}", vram=f"{rng.choice((1, 8, 30))}Gi", devices=rng.choice((1, 2))
                    ),
                    node,
                )
            except PlacementError as exc:  # does not fit there: fine, nothing must be charged
                assert f"u{uid}" not in state.allocations, exc
        elif state.allocations:
            ledger.release(rng.choice(sorted(state.allocations)))
    assert_same_as_rebuild(state)


def test_link_groups_are_all_to_all_even_on_pathological_link_graphs() -> None:
    """The complement of disjoint triangles has 3^(n/3) maximal cliques: the search is cut off,
    yet every group it forms is still linked pair by pair."""
    n = 30
    links = [[j for j in range(n) if j != i and j // 3 != i // 3] for i in range(n)]
    state = ClusterState.from_nodes([make_node("mm", "nvidia", n, links=links)])
    groups: dict[int, list[int]] = {}
    for slot, group in enumerate(state.dev_clique[state.index["mm"], :n].tolist()):
        groups.setdefault(group, []).append(slot)
    assert sum(len(g) for g in groups.values()) == n
    for members in groups.values():
        assert all(b in links[a] for a in members for b in members if a != b)
    assert max(len(g) for g in groups.values()) == n // 3  # one device of every triangle


@pytest.mark.parametrize("keep_nodes", [True, False])
def test_widening_from_the_arrays_alone_equals_a_state_built_wide(keep_nodes: bool) -> None:
    """Cluster mode keeps no ComputeNode objects: a wider node arriving later widens every row
    from the arrays alone, and every device and node array, every column, equals a state
    built at that width from the start (padding, NUMA ids, group bits, charges)."""
    nodes = random_cluster(24, seed=9, vary_devices=True)
    big = make_node("big", n_devices=16)
    state = ClusterState(width=8, rows=32, keep_nodes=keep_nodes)
    for node in nodes:
        state.upsert_node(node)
    ledger = Ledger(state)
    placed = []
    for i, node in enumerate(nodes[:12]):
        with contextlib.suppress(PlacementError):  # does not fit there: fine
            placed.append(ledger.assume(gpu_demand(f"u{i}", vram="8Gi"), node.name))
    assert placed
    state.upsert_node(big)
    assert state.width == 16 and (state.nodes == {}) is not keep_nodes
    wide = ClusterState(width=16, rows=32)
    for node in [*nodes, big]:
        wide.upsert_node(node)
    for alloc in placed:
        wide.add_allocation(alloc)
    arrays = [a for a in vars(state) if a.startswith(("dev_", "node_"))]
    arrays = [a for a in arrays if isinstance(getattr(state, a), np.ndarray)]
    assert "dev_numa" in arrays and "dev_clique_bits" in arrays
    for name in state.index:
        mine, theirs = state.index[name], wide.index[name]
        for attr in arrays:
            a, b = getattr(state, attr)[mine], getattr(wide, attr)[theirs]
            assert a.dtype == b.dtype, attr
            assert np.array_equal(a, b), (name, attr, a, b)
