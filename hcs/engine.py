"""The placement engine: filter, prioritize and select_devices over the numpy state.

Everything on the request path is array expressions over the candidate rows, shape
(n_nodes,) or (n_nodes, width); the only Python loops run over the pod's *containers* (a handful),
never over nodes or devices.

**Fit.** Each requesting container needs `devices` distinct devices, each with its per-device
share free. Containers of one pod get distinct devices (sharing happens between pods), so a pod
fits a node iff a matching exists, which by Hall's theorem holds iff for every set S of
containers the devices fitting some container of S number at least the devices S needs.
Identical containers are grouped first, so the check is exact for up to MAX_EXACT_GROUPS distinct
container shapes (2^G - 1 subsets); beyond that only single groups and the union are checked and
`select_devices` has the last word.

**Reasons.** One code per failing node, from a fixed set in a fixed precedence (DESIGN §6):
NodeNotFound, NotReady, AgentNotConnected, VendorNotSupported, DeviceUnhealthy,
InsufficientVRAM, InsufficientTFLOPS, InsufficientDevices. The capacity codes partition the
failures: DeviceUnhealthy = would fit if unhealthy devices were healthy; InsufficientDevices =
too few free devices whatever their size; InsufficientVRAM = enough free devices but too few with
the VRAM; InsufficientTFLOPS = enough with the VRAM but too few with the compute.

**Scores.** Integers 0-10 from integer per-mille components (so the plain-Python reference agrees
to the last digit): VRAM packing after placement (binpack or spread), topology when asked, mean
health of the fitting devices, and the preferred vendor.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, Literal, cast

import numpy as np
import numpy.typing as npt

from hcs.demand import ContainerDemand, PodDemand
from hcs.errors import ConfigError, ErrorCode, PlacementError
from hcs.state import Allocation, BoolArray, ClusterState, DeviceCharge, IndexArray, IntArray
from hcs.vendors import VENDOR_CODES, VENDOR_NAMES, VendorName

MAX_SCORE: Final = 10  # kube-scheduler's MaxExtenderPriority
MAX_EXACT_GROUPS: Final = 5

Strategy = Literal["binpack", "spread"]
STRATEGIES: Final[tuple[Strategy, ...]] = ("binpack", "spread")


class Reason(IntEnum):
    """Filter outcome per node; the order is the precedence."""

    Fits = 0
    NodeNotFound = 1
    NotReady = 2
    AgentNotConnected = 3
    VendorNotSupported = 4
    DeviceUnhealthy = 5
    InsufficientVRAM = 6
    InsufficientTFLOPS = 7
    InsufficientDevices = 8


UNRESOLVABLE: Final = frozenset(
    {Reason.NodeNotFound, Reason.NotReady, Reason.AgentNotConnected, Reason.VendorNotSupported}
)
"""Reasons no preemption can fix (kube-scheduler's FailedAndUnresolvableNodes)."""
REASON_NAMES: Final = tuple(r.name for r in Reason)


@dataclass(frozen=True)
class ScoreWeights:
    pack: int = 5
    topology: int = 3
    health: int = 2
    vendor: int = 2

    def __post_init__(self) -> None:
        for name in ("pack", "topology", "health", "vendor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise ConfigError(f"score weight {name}: {value!r} must be an integer 0-100")
        if self.pack + self.health == 0:
            raise ConfigError("score weights: pack and health cannot both be 0")


@dataclass(frozen=True)
class EngineConfig:
    min_health: int = 60
    """Devices whose healthScore is below this are not used."""
    strategy: Strategy = "binpack"
    heartbeat_max_age_s: float | None = None
    """Cluster mode: a node whose agent heartbeat is older is AgentNotConnected. None: the
    AgentConnected condition is taken as written (local mode)."""
    weights: ScoreWeights = field(default_factory=ScoreWeights)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f'strategy: "{self.strategy}" is not one of {", ".join(STRATEGIES)}')
        if not 0 <= self.min_health <= 100:
            raise ConfigError(f"min health: {self.min_health} is not within 0-100")
        if self.heartbeat_max_age_s is not None and self.heartbeat_max_age_s <= 0:
            raise ConfigError("heartbeat max age: must be positive")


@dataclass(frozen=True)
class Group:
    """Identical containers merged: `devices` is their total device count."""

    devices: int
    vram_mib: int
    fp16_milli_tflops: int
    fp32_milli_tflops: int
    whole: bool


@dataclass(frozen=True)
class Request:
    """A PodDemand compiled once per pod for the kernels."""

    demand: PodDemand
    groups: tuple[Group, ...]
    subsets: tuple[tuple[tuple[int, ...], int], ...]
    """Hall subsets as (group indices, devices they need together)."""
    vendor_ok_table: BoolArray
    """Indexed by node vendor code; the last entry (code -1, no node) is False."""
    preferred_code: int
    total_devices: int

    @property
    def empty(self) -> bool:
        return not self.groups

    def message(self, reason: Reason, config: EngineConfig) -> str:
        """`<Code>: <detail>` — identical for every node failing for this reason."""
        return f"{reason.name}: {self.detail(reason, config)}"

    def detail(self, reason: Reason, config: EngineConfig) -> str:
        d = self.demand
        if reason is Reason.NodeNotFound:
            return "no ComputeNode of that name in the HCS inventory"
        if reason is Reason.NotReady:
            return "ComputeNode is not Ready or not Schedulable"
        if reason is Reason.AgentNotConnected:
            if config.heartbeat_max_age_s is not None:
                return (
                    f"no HCS agent heartbeat within {config.heartbeat_max_age_s:g}s "
                    "(or AgentConnected is False)"
                )
            return "HCS agent is not connected (AgentConnected is False)"
        if reason is Reason.VendorNotSupported:
            return f"node vendor is not {' or '.join(d.allowed_vendors)}"
        if reason is Reason.DeviceUnhealthy:
            return (
                f"fewer than {self.total_devices} free devices with healthScore ≥ "
                f"{config.min_health}"
            )
        if reason is Reason.InsufficientDevices:
            return f"fewer than {self.total_devices} free devices"
        parts = []
        for g in self.groups:
            need = [f"≥ {g.vram_mib} MiB"] if g.vram_mib else []
            if reason is Reason.InsufficientTFLOPS:
                if g.fp16_milli_tflops:
                    need.append(f"≥ {_tflops(g.fp16_milli_tflops)} TFLOPS FP16")
                if g.fp32_milli_tflops:
                    need.append(f"≥ {_tflops(g.fp32_milli_tflops)} TFLOPS FP32")
            parts.append(
                f"{g.devices} free device{'s' if g.devices > 1 else ''}"
                + (f" with {' and '.join(need)}" if need else "")
            )
        return "fewer than " + " plus ".join(parts)


def reason_error(reason: Reason, message: str) -> PlacementError:
    """A PlacementError whose code is a filter reason."""
    return PlacementError(message, code=cast(ErrorCode, reason.name))


def _tflops(milli: int) -> str:
    return f"{milli / 1000:g}"


def compile_request(demand: PodDemand) -> Request:
    """Group identical containers and precompute the Hall subsets and vendor table."""
    merged: dict[tuple[int, int, int, bool], int] = {}
    for c in demand.containers:
        key = (c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops, c.whole)
        merged[key] = merged.get(key, 0) + c.devices
    # Strictest first: the order select_devices serves them in.
    groups = tuple(
        Group(k, *key) for key, k in sorted(merged.items(), key=lambda kv: kv[0], reverse=True)
    )
    n = len(groups)
    if n <= MAX_EXACT_GROUPS:
        combos = [s for size in range(1, n + 1) for s in itertools.combinations(range(n), size)]
    else:
        combos = [(i,) for i in range(n)] + [tuple(range(n))]
    subsets = tuple((s, sum(groups[i].devices for i in s)) for s in combos)
    table = np.zeros(len(VENDOR_NAMES) + 1, np.bool_)
    for vendor in demand.allowed_vendors:
        table[VENDOR_CODES[vendor]] = True
    preferred = demand.preferred_vendor
    return Request(
        demand=demand,
        groups=groups,
        subsets=subsets,
        vendor_ok_table=table,
        preferred_code=VENDOR_CODES[preferred] if preferred else -2,
        total_devices=sum(g.devices for g in groups),
    )


@dataclass(frozen=True)
class Evaluation:
    """Per-candidate results of one pod against a set of rows.

    codes : ndarray of shape (n_nodes,), Reason values
    fit_mask : ndarray of shape (n_nodes, width), devices that fit some container
    """

    rows: IndexArray
    safe_rows: IndexArray
    codes: npt.NDArray[np.int8]
    fit_mask: BoolArray
    group_fit_masks: tuple[BoolArray, ...]
    figures: dict[str, IntArray] | None = None


def _hall_fails(masks: Sequence[BoolArray], req: Request) -> BoolArray:
    """True per node where the containers cannot get distinct fitting devices.

    masks : one (n_nodes, width) bool array per group; inputs already checked.
    """
    if len(masks) == 1:
        single: BoolArray = np.count_nonzero(masks[0], axis=1) < req.groups[0].devices
        return single
    fails: BoolArray | None = None
    for members, need in req.subsets:
        union = masks[members[0]]
        for i in members[1:]:
            union = union | masks[i]
        f = np.count_nonzero(union, axis=1) < need
        fails = f if fails is None else (fails | f)
    assert fails is not None
    return fails


def evaluate(
    state: ClusterState,
    req: Request,
    rows: IndexArray,
    config: EngineConfig,
    now: float | None = None,
    *,
    figures: bool = False,
    empty_cluster: bool = False,
) -> Evaluation:
    """Run the fit rules for one pod over `rows` (-1 = unknown node); the shared kernel of
    filter, prioritize, select_devices and explanations.

    `empty_cluster`: judge against the devices' full capacity, as if every node were Ready and
    every device healthy and free: "could this node *ever* hold the pod".
    """
    valid = rows >= 0
    safe = np.where(valid, rows, 0) if not valid.all() else rows
    n, w = len(rows), state.width
    if req.empty:
        empty = np.zeros((n, w), np.bool_)
        return Evaluation(rows, safe, np.zeros(n, np.int8), empty, ())
    vendor_ok = req.vendor_ok_table[state.node_vendor[safe]]
    present = state.dev_present_mask[safe]
    need_tflops = any(g.fp16_milli_tflops or g.fp32_milli_tflops for g in req.groups)
    if empty_cluster:
        ready = agent = valid
        idle = healthy = present
        vram_free = state.dev_vram_cap_mib[safe]
        fp16_free = state.dev_fp16_cap_mtf[safe] if need_tflops else None
        fp32_free = state.dev_fp32_cap_mtf[safe] if need_tflops else None
    else:
        ready = state.node_ready_mask[safe]
        agent = state.node_agent_mask[safe]
        if config.heartbeat_max_age_s is not None:
            now = time.time() if now is None else now
            agent = agent & (state.node_heartbeat_s[safe] >= now - config.heartbeat_max_age_s)
        idle = state.dev_holders[safe] == 0
        healthy = state.dev_health[safe] >= config.min_health
        vram_free = state.dev_vram_free_mib[safe]
        fp16_free = state.dev_fp16_free_mtf[safe] if need_tflops else None
        fp32_free = state.dev_fp32_free_mtf[safe] if need_tflops else None

    usable_whole = present & idle
    usable_split = present & (idle | state.node_shared_mask[safe][:, None])
    base, health_ok, vram_ok, all_ok = [], [], [], []
    for g in req.groups:
        b = usable_whole if g.whole else usable_split
        h = b & healthy
        v = h & (vram_free >= g.vram_mib)
        a = v
        if g.fp16_milli_tflops:
            assert fp16_free is not None
            a = a & (fp16_free >= g.fp16_milli_tflops)
        if g.fp32_milli_tflops:
            assert fp32_free is not None
            a = a & (fp32_free >= g.fp32_milli_tflops)
        base.append(b)
        health_ok.append(h)
        vram_ok.append(v)
        all_ok.append(a)
    fail_base = _hall_fails(base, req)
    fail_health = _hall_fails(health_ok, req)
    fail_vram = _hall_fails(vram_ok, req)
    fail_all = _hall_fails(all_ok, req)
    codes = np.select(
        [
            ~valid,
            ~ready,
            ~agent,
            ~vendor_ok,
            fail_health & ~fail_base,
            ~fail_health & fail_vram,
            ~fail_vram & fail_all,
            fail_base,
        ],
        [np.int8(r) for r in range(1, 9)],
        np.int8(0),
    ).astype(np.int8, copy=False)
    fit = all_ok[0]
    for a in all_ok[1:]:
        fit = fit | a
    figs = None
    if figures:
        figs = {
            "devices": np.count_nonzero(present, axis=1),
            "free_devices": np.count_nonzero(usable_split, axis=1),
            "healthy_free_devices": np.count_nonzero(usable_split & healthy, axis=1),
            "max_free_vram_mib": np.where(present, vram_free, 0).max(axis=1),
            "fitting_devices": np.count_nonzero(fit, axis=1),
        }
    return Evaluation(rows, safe, codes, fit, tuple(all_ok), figs)


@dataclass(frozen=True)
class FilterResult:
    names: Sequence[str]
    codes: npt.NDArray[np.int8]
    request: Request
    config: EngineConfig
    figures: dict[str, IntArray] | None = None

    @property
    def passed_mask(self) -> BoolArray:
        passed: BoolArray = self.codes == 0
        return passed

    def message(self, code: int) -> str:
        return self.request.message(Reason(code), self.config)

    def reasons(self) -> dict[str, str]:
        """name -> message for every failing node (for explanations; allocates per node)."""
        failed = np.flatnonzero(self.codes)
        msgs = {int(c): self.message(int(c)) for c in np.unique(self.codes[failed])}
        return {self.names[i]: msgs[int(self.codes[i])] for i in failed.tolist()}


def filter_nodes(
    state: ClusterState,
    req: Request,
    names: Sequence[str],
    config: EngineConfig,
    now: float | None = None,
    *,
    figures: bool = False,
) -> FilterResult:
    """Pass/fail and a reason code per candidate node name."""
    ev = evaluate(state, req, state.lookup(names), config, now, figures=figures)
    return FilterResult(names, ev.codes, req, config, ev.figures)


def score_percent(
    state: ClusterState, req: Request, ev: Evaluation, config: EngineConfig
) -> IntArray:
    """Integer scores 0..100 for the evaluated rows; failing rows score 0.

    This finer figure is what `hcs.io/scheduling-score` records; kube-scheduler gets it // 10.
    Inputs already checked.
    """
    n = len(ev.rows)
    if req.empty:
        return np.zeros(n, np.int64)
    safe = ev.safe_rows
    wts = config.weights
    shared = state.node_shared_mask[safe]
    total = state.node_vram_total_mib[safe]
    used = state.node_vram_used_mib[safe]
    avg = state.node_vram_avg_mib[safe]
    placed = np.zeros(n, np.int64)
    for g in req.groups:
        if g.whole:
            placed += g.devices * avg
        else:
            placed += g.devices * np.where(shared, g.vram_mib, avg)
    frac = np.minimum((used + placed) * 1000 // np.maximum(total, 1), 1000)
    pack = frac if config.strategy == "binpack" else 1000 - frac

    fit = ev.fit_mask
    fit_count = np.count_nonzero(fit, axis=1)
    health_sum = np.where(fit, state.dev_health[safe], 0).sum(axis=1, dtype=np.int64)
    health = health_sum * 10 // np.maximum(fit_count, 1)

    acc = wts.pack * pack + wts.health * health
    wsum = wts.pack + wts.health
    topology = req.demand.topology
    if topology is not None and wts.topology:
        group = state.dev_clique[safe] if topology == "high-bandwidth" else state.dev_numa[safe]
        same = group[:, :, None] == group[:, None, :]
        best = np.count_nonzero(same & fit[:, None, :], axis=2).max(axis=1)
        acc += wts.topology * np.minimum(best * 1000 // max(req.total_devices, 1), 1000)
        wsum += wts.topology
    if req.preferred_code >= 0 and wts.vendor:
        acc += wts.vendor * np.where(state.node_vendor[safe] == req.preferred_code, 1000, 0)
        wsum += wts.vendor
    scores: IntArray = acc * 100 // (1000 * wsum)
    scores[ev.codes != 0] = 0
    return scores


def prioritize(
    state: ClusterState,
    req: Request,
    names: Sequence[str],
    config: EngineConfig,
    now: float | None = None,
) -> IntArray:
    """Scores 0..MAX_SCORE per candidate name (0 for nodes that do not fit)."""
    ev = evaluate(state, req, state.lookup(names), config, now)
    scores: IntArray = score_percent(state, req, ev, config) // (100 // MAX_SCORE)
    return scores


def select_devices(
    state: ClusterState, req: Request, node: str, config: EngineConfig, now: float | None = None
) -> tuple[tuple[ContainerDemand, tuple[int, ...]], ...]:
    """Concrete device slots on `node` for each requesting container.

    Order of preference: the topology group (clique or NUMA node) when the pod asks for one,
    then binpack (tightest free VRAM) or spread (most free VRAM), then health, then slot.
    Raises PlacementError with the filter's reason code when the pod does not fit.
    """
    row = state.index.get(node)
    rows = np.array([-1 if row is None else row], np.intp)
    ev = evaluate(state, req, rows, config, now)
    code = Reason(int(ev.codes[0]))
    if code is not Reason.Fits:
        raise reason_error(code, f"{node}: {req.detail(code, config)}")
    if req.empty:
        return ()
    assert row is not None
    group_of = {  # container -> index of its group
        (g.vram_mib, g.fp16_milli_tflops, g.fp32_milli_tflops, g.whole): i
        for i, g in enumerate(req.groups)
    }
    containers = sorted(
        req.demand.containers,
        key=lambda c: group_of[(c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops, c.whole)],
    )
    w = state.width
    slots = np.arange(w)
    taken = np.zeros(w, np.bool_)
    free = state.dev_vram_free_mib[row]
    health = state.dev_health[row].astype(np.int64)
    topo_key = None
    if req.demand.topology == "high-bandwidth":
        topo_key = state.dev_clique[row].astype(np.int64)
    elif req.demand.topology == "low-latency":
        topo_key = state.dev_numa[row].astype(np.int64)
    picks = []
    for c in containers:
        gi = group_of[(c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops, c.whole)]
        cand = ev.group_fit_masks[gi][0] & ~taken
        if np.count_nonzero(cand) < c.devices:
            raise PlacementError(
                f"{node}: cannot give every container its own fitting devices",
                code="InsufficientDevices",
            )
        fit_key = free if config.strategy == "binpack" else -free
        if topo_key is not None:
            # Per slot: how many candidates share its group. Prefer a group that can hold the
            # whole container: the smallest such group when packing, the largest when spreading.
            same = topo_key[:, None] == topo_key[None, :]
            group_size = np.count_nonzero(same & cand[None, :], axis=1)
            enough = group_size >= c.devices
            size_key = group_size if config.strategy == "binpack" else -group_size
            primary = np.where(enough, size_key, 2 * w + 2 - group_size)
            order = np.lexsort((slots, -health, fit_key, topo_key, primary))
        else:
            order = np.lexsort((slots, -health, fit_key))
        chosen = order[cand[order]][: c.devices]
        taken[chosen] = True
        picks.append((c, tuple(int(s) for s in chosen)))
    return tuple(picks)


def make_allocation(
    state: ClusterState,
    req: Request,
    node: str,
    picks: tuple[tuple[ContainerDemand, tuple[int, ...]], ...],
    *,
    now: float,
    score_value: int | None = None,
) -> Allocation:
    """The charges of `picks`: a container's share per device, or the whole free device."""
    row = state.index[node]
    ids = state.device_ids[row]
    charges = []
    for c, chosen in picks:
        for slot in chosen:
            if c.whole:
                vram = max(int(state.dev_vram_free_mib[row, slot]), 0)
                fp16 = max(int(state.dev_fp16_free_mtf[row, slot]), 0)
                fp32 = max(int(state.dev_fp32_free_mtf[row, slot]), 0)
            else:
                vram, fp16, fp32 = c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops
            charges.append(DeviceCharge(ids[slot], c.name, vram, fp16, fp32))
    d = req.demand
    vendor = VENDOR_NAMES[int(state.node_vendor[row])]
    return Allocation(
        d.uid, d.namespace, d.name, node, vendor, tuple(charges), "assumed", now, score_value
    )


@dataclass(frozen=True)
class Route:
    """The vendor a pod is sent to at admission (DESIGN §2)."""

    vendor: VendorName
    fits_now: bool
    """Some Ready node of `vendor` can hold the pod now (otherwise it will wait Pending)."""
    downgraded: bool
    """Not the first preference: it was full and `hcs.io/allow-downgrade` or the list allowed
    another vendor."""


def route_vendor(
    state: ClusterState, req: Request, config: EngineConfig, now: float | None = None
) -> Route:
    """Choose the vendor: the first allowed vendor (preference order) with a node that fits now;
    vendors beyond the preference list (allow-downgrade) are tried by most free VRAM. If none
    fits now, the first preference anyway (the pod waits Pending, as Kubernetes pods do).

    Raises PlacementError (VendorNotSupported, or the capacity code most nodes fail with) only
    when no node of any allowed vendor could *ever* hold the pod.
    """
    demand = req.demand
    if req.empty:
        raise PlacementError("the pod asks for no ai.compute resources", code="InvalidRequest")
    rows = state.all_rows()
    ever = evaluate(state, req, rows, config, now, empty_cluster=True)
    if not (ever.codes == 0).any():
        raise _never_fits(req, ever.codes, config)
    ev = evaluate(state, req, rows, config, now)
    n_vendors = len(VENDOR_NAMES)
    vendor_of_row = state.node_vendor[rows].astype(np.intp)
    fits_by_vendor = np.bincount(vendor_of_row[ev.codes == 0], minlength=n_vendors) > 0
    ever_by_vendor = np.bincount(vendor_of_row[ever.codes == 0], minlength=n_vendors) > 0
    free_vram = state.node_vram_total_mib[rows] - state.node_vram_used_mib[rows]
    ready_free = np.where(state.node_ready_mask[rows], free_vram, 0)
    free_by_vendor = np.bincount(vendor_of_row, weights=ready_free, minlength=n_vendors)
    listed = [
        v
        for v in demand.allowed_vendors
        if demand.fixed_vendor is not None or v in demand.preference
    ]
    extra = sorted(
        (v for v in demand.allowed_vendors if v not in listed),
        key=lambda v: (-free_by_vendor[VENDOR_CODES[v]], VENDOR_CODES[v]),
    )
    order = listed + extra
    first = demand.preference[0] if demand.preference else None
    for vendor in order:
        if fits_by_vendor[VENDOR_CODES[vendor]]:
            return Route(vendor, True, first is not None and vendor != first)
    # Nothing fits now: wait for the first vendor that could ever hold the pod.
    waiting = next(v for v in order if ever_by_vendor[VENDOR_CODES[v]])
    return Route(waiting, False, first is not None and waiting != first)


def _never_fits(req: Request, codes: npt.NDArray[np.int8], config: EngineConfig) -> PlacementError:
    capacity = codes[codes > Reason.VendorNotSupported]
    if len(capacity) == 0:
        vendors = ", ".join(req.demand.allowed_vendors)
        return PlacementError(
            f"no node of vendor {vendors} in the inventory", code="VendorNotSupported"
        )
    worst = Reason(int(np.bincount(capacity).argmax()))
    return reason_error(worst, f"no node could ever hold the pod: {req.detail(worst, config)}")
