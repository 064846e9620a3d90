"""Plain-Python reference of the engine's filter and prioritize rules.

Used only by tests (differential tests on random clusters) and benchmarks (the speed-up ratio);
never on a request path. It is written to be obviously right rather than fast, and independently
of the engine: it reads the ComputeNode models and allocation records (not the numpy arrays),
finds all-to-all groups by exhaustive search rather than Bron-Kerbosch, and decides fit by
bipartite matching (Kuhn's augmenting paths) rather than Hall's subset condition.
"""

from __future__ import annotations

import fnmatch
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from hcs.demand import PodDemand
from hcs.engine import MAX_SCORE, EngineConfig, Reason
from hcs.limiter import choose_template, template_options, uses_templates
from hcs.models import ComputeNode, Device
from hcs.state import ClusterState


@dataclass
class _Dev:
    slot: int
    device: Device
    free_vram: int
    free_fp16: int
    free_fp32: int
    holders: int
    clique: int
    numa: int


def _devices(state: ClusterState, node: ComputeNode) -> list[_Dev]:
    charges: dict[str, list[int]] = {}
    for uid in state.node_allocations.get(node.name, ()):
        for ch in state.allocations[uid].charges:
            acc = charges.setdefault(ch.device_id, [0, 0, 0, 0])
            acc[0] += ch.vram_mib
            acc[1] += ch.fp16_milli_tflops
            acc[2] += ch.fp32_milli_tflops
            acc[3] += 1
    cliques = _cliques(state, node)
    out = []
    for slot, d in enumerate(node.devices):
        v, f16, f32, holders = charges.get(d.id, [0, 0, 0, 0])
        out.append(
            _Dev(
                slot,
                d,
                d.vram_allocatable_mib - max(d.vram_allocated_mib, v),
                d.fp16_milli_tflops - f16,
                d.fp32_milli_tflops - f32,
                holders,
                cliques[slot],
                d.numa_node if d.numa_node is not None else 1000 + slot,
            )
        )
    return out


def _cliques(state: ClusterState, node: ComputeNode) -> list[int]:
    """All-to-all groups, by exhaustive search: repeatedly the largest set of remaining slots
    linked pair by pair (the lexicographically first on a tie), named by its lowest slot."""
    fast = state.vendors.all_link_types()
    slot_of = {d.id: i for i, d in enumerate(node.devices)}
    linked: set[tuple[int, int]] = set()
    for i, d in enumerate(node.devices):
        for link in d.links:
            if link.type in fast:
                for peer in link.peers:
                    if peer in slot_of and slot_of[peer] != i:
                        linked |= {(i, slot_of[peer]), (slot_of[peer], i)}
    label = list(range(len(node.devices)))
    remaining = list(range(len(node.devices)))
    while remaining:
        degree = max(sum((a, b) in linked for b in remaining) for a in remaining)
        for size in range(min(degree + 1, len(remaining)), 0, -1):
            group = next(
                (
                    g
                    for g in combinations(remaining, size)
                    if all((a, b) in linked for a, b in combinations(g, 2))
                ),
                None,
            )
            if group is not None:
                break
        assert group is not None
        for slot in group:
            label[slot] = group[0]
        remaining = [s for s in remaining if s not in group]
    return label


def _health(d: Device) -> int:
    """An unschedulable (re-indexed) device counts as failed."""
    return 0 if d.unschedulable else d.health_score


def _matchable(units: list[list[int]], n_devices: int) -> bool:
    """Can every unit (a list of acceptable device slots) get a distinct device?"""
    owner = [-1] * n_devices

    def augment(u: int, seen: list[bool]) -> bool:
        for d in units[u]:
            if not seen[d]:
                seen[d] = True
                if owner[d] < 0 or augment(owner[d], seen):
                    owner[d] = u
                    return True
        return False

    return all(augment(u, [False] * n_devices) for u in range(len(units)))


def _container_units(demand: PodDemand) -> list[tuple[int, int, int, bool]]:
    """One entry per device needed: (vram, fp16, fp32, whole)."""
    return [
        (c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops, c.whole)
        for c in demand.placement
        for _ in range(c.devices)
    ]


def _booked(
    state: ClusterState, node: ComputeNode, unit: tuple[int, int, int, bool]
) -> tuple[int, int, int, bool]:
    """What a unit books on `node`: a share on a node whose shares are templates is the
    smallest template holding it, or whole devices when none does."""
    vram, fp16, fp32, whole = unit
    if whole or not uses_templates(node):
        return unit
    chosen = choose_template(template_options(node, state.vendors), vram, fp16, fp32)
    if chosen is None:
        return vram, fp16, fp32, True
    return chosen.vram_mib, chosen.fp16_milli_tflops, chosen.fp32_milli_tflops, False


def _levels(
    devs: list[_Dev],
    unit: tuple[int, int, int, bool],
    node: ComputeNode,
    config: EngineConfig,
) -> tuple[list[int], list[int], list[int], list[int]]:
    vram, fp16, fp32, whole = unit
    slots = node.device_slots or 1 << 30
    base = [
        d.slot for d in devs if d.holders == 0 or (node.shared and not whole and d.holders < slots)
    ]
    health = [s for s in base if _health(devs[s].device) >= config.min_health]
    vram_ok = [s for s in health if devs[s].free_vram >= vram]
    all_ok = [
        s
        for s in vram_ok
        if (fp16 == 0 or devs[s].free_fp16 >= fp16) and (fp32 == 0 or devs[s].free_fp32 >= fp32)
    ]
    return base, health, vram_ok, all_ok


def filter_reference(
    state: ClusterState,
    demand: PodDemand,
    names: Sequence[str],
    config: EngineConfig,
    now: float | None = None,
) -> list[Reason]:
    return [_node_reason(state, demand, name, config, now)[0] for name in names]


def _node_reason(
    state: ClusterState, demand: PodDemand, name: str, config: EngineConfig, now: float | None
) -> tuple[Reason, list[_Dev], set[int]]:
    if not demand.placement:
        return Reason.Fits, [], set()
    node = state.nodes.get(name)
    if node is None:
        return Reason.NodeNotFound, [], set()
    if not node.ready:
        return Reason.NotReady, [], set()
    connected = node.condition_true("AgentConnected", default=True)
    if config.heartbeat_max_age_s is not None:
        now = time.time() if now is None else now
        hb = node.last_heartbeat
        connected = (
            connected and hb is not None and (hb.timestamp() >= now - config.heartbeat_max_age_s)
        )
    if not connected:
        return Reason.AgentNotConnected, [], set()
    if node.vendor not in demand.allowed_vendors:
        return Reason.VendorNotSupported, [], set()
    model = node.devices[0].model if node.devices else ""
    advertised = state.vendors[node.vendor].resource_for(model)
    if demand.resource is not None and advertised != demand.resource:
        return Reason.VendorNotSupported, [], set()
    if demand.model is not None and not fnmatch.fnmatchcase(model, demand.model):
        return Reason.VendorNotSupported, [], set()
    devs = _devices(state, node)
    units = _container_units(demand)
    levels = [_levels(devs, _booked(state, node, u), node, config) for u in units]
    ok = [_matchable([lv[i] for lv in levels], len(devs)) for i in range(4)]
    base_ok, health_ok, vram_ok, all_ok = ok
    if not health_ok and base_ok:
        return Reason.DeviceUnhealthy, devs, set()
    if not base_ok:
        return Reason.InsufficientDevices, devs, set()
    if not vram_ok:
        return Reason.InsufficientVRAM, devs, set()
    if not all_ok:
        return Reason.InsufficientTFLOPS, devs, set()
    fitting = {s for lv in levels for s in lv[3]}
    return Reason.Fits, devs, fitting


def prioritize_reference(
    state: ClusterState,
    demand: PodDemand,
    names: Sequence[str],
    config: EngineConfig,
    now: float | None = None,
) -> list[int]:
    """Scores 0..MAX_SCORE, as kube-scheduler receives them: normalized over the candidates
    that fit (best MAX_SCORE, worst 0, the rest in proportion, each distinct score its own step
    while there are enough steps)."""
    percents = score_percent_reference(state, demand, names, config, now)
    fits = [_node_reason(state, demand, n, config, now)[0] is Reason.Fits for n in names]
    values = sorted({p for p, f in zip(percents, fits, strict=True) if f})
    if not values:
        return [0] * len(names)
    if len(values) == 1:
        return [MAX_SCORE if f else 0 for f in fits]
    low, high = values[0], values[-1]
    step: dict[int, int] = {}
    below = -1
    for i, v in enumerate(values):
        s = round((v - low) * MAX_SCORE / (high - low))
        if len(values) <= MAX_SCORE + 1:
            s = min(max(s, below + 1), MAX_SCORE - (len(values) - 1 - i))
        step[v] = s
        below = s
    return [step[p] if f else 0 for p, f in zip(percents, fits, strict=True)]


def score_percent_reference(
    state: ClusterState,
    demand: PodDemand,
    names: Sequence[str],
    config: EngineConfig,
    now: float | None = None,
) -> list[int]:
    """Scores 0..100 (what `hcs.io/scheduling-score` records)."""
    scores = []
    for name in names:
        reason, devs, fitting = _node_reason(state, demand, name, config, now)
        if reason is not Reason.Fits or not demand.placement:
            scores.append(0)
            continue
        node = state.nodes[name]
        scores.append(
            _score(state, node=node, devs=devs, fitting=fitting, demand=demand, config=config)
        )
    return scores


def _score(
    state: ClusterState,
    *,
    node: ComputeNode,
    devs: list[_Dev],
    fitting: set[int],
    demand: PodDemand,
    config: EngineConfig,
) -> int:
    w = config.weights
    total = sum(d.device.vram_allocatable_mib for d in devs)
    used = 0
    for d in devs:
        cap = d.device.vram_allocatable_mib
        if d.holders == 0 or node.shared:
            used += cap - min(max(d.free_vram, 0), cap)
        else:
            used += cap
    avg = total // max(len(devs), 1)
    placed = 0
    for c in demand.placement:
        vram, _, _, whole = _booked(
            state, node, (c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops, c.whole)
        )
        per = vram if (node.shared and not whole) else avg
        placed += c.devices * per
    frac = min((used + placed) * 1000 // max(total, 1), 1000)
    pack = frac if config.strategy == "binpack" else 1000 - frac
    health = sum(_health(devs[s].device) for s in fitting) * 10 // max(len(fitting), 1)
    acc = w.pack * pack + w.health * health
    wsum = w.pack + w.health
    if demand.topology is not None and w.topology:
        by_clique = demand.topology == "high-bandwidth"
        groups = Counter(devs[s].clique if by_clique else devs[s].numa for s in fitting)
        best = max(groups.values(), default=0)
        total_devices = sum(c.devices for c in demand.placement)
        acc += w.topology * min(best * 1000 // max(total_devices, 1), 1000)
        wsum += w.topology
    if demand.preferred_vendor is not None and w.vendor:
        acc += w.vendor * (1000 if node.vendor == demand.preferred_vendor else 0)
        wsum += w.vendor
    return acc * 100 // (1000 * wsum)
