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

import copy
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt

from hcs.demand import ContainerDemand, PodDemand
from hcs.errors import ConfigError, ErrorCode, PlacementError
from hcs.quantity import format_mib
from hcs.reuse import assign, owners
from hcs.state import (
    Allocation,
    BoolArray,
    Candidates,
    ClusterState,
    DeviceCharge,
    IndexArray,
    IntArray,
)
from hcs.vendors import VENDOR_CODES, VENDOR_NAMES, VendorName

MAX_SCORE: Final = 10  # kube-scheduler's MaxExtenderPriority
PATCH_LIMIT: Final = 64
"""A kept evaluation is patched when at most this many changes (or 1/16 of the nodes) came
since; otherwise it is made afresh."""
EVALUATIONS_KEPT: Final = 16
"""Request shapes whose evaluation over every row is kept (each holds a few bytes per device)."""
MAX_EXACT_GROUPS: Final = 8

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


# Plain ints for the kernels (an Enum attribute look-up costs more than the array op it feeds).
_NODE_NOT_FOUND: Final = int(Reason.NodeNotFound)
_NOT_READY: Final = int(Reason.NotReady)
_AGENT_NOT_CONNECTED: Final = int(Reason.AgentNotConnected)
_VENDOR_NOT_SUPPORTED: Final = int(Reason.VendorNotSupported)
# Capacity code by the number of nested levels (free, healthy, VRAM, TFLOPS) a node passes.
_CAPACITY_BY_LEVELS: Final = np.array(
    [
        Reason.InsufficientDevices,
        Reason.DeviceUnhealthy,
        Reason.InsufficientVRAM,
        Reason.InsufficientTFLOPS,
        Reason.Fits,
    ],
    np.int8,
)

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
    vendor_codes: tuple[int, ...]
    """Codes of the allowed vendors, sorted."""
    preferred_code: int
    total_devices: int

    @property
    def empty(self) -> bool:
        return not self.groups

    @property
    def key(self) -> tuple[object, ...]:
        """Everything the kernels read, hashable: equal keys give equal evaluations."""
        d = self.demand
        return (
            self.groups,
            self.vendor_codes,
            self.preferred_code,
            d.topology,
            d.resource,
            d.model,
        )

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
            family = ""
            if d.resource is not None:
                family += f", advertising {d.resource}"
            if d.model is not None:
                family += f", with {d.model} devices"
            return f"node is not a {' or '.join(d.allowed_vendors)} node{family}"
        if reason is Reason.DeviceUnhealthy:
            return (
                f"fewer than {self.total_devices} free devices with healthScore ≥ "
                f"{config.min_health}"
            )
        if reason is Reason.InsufficientDevices:
            return f"fewer than {self.total_devices} free devices"
        parts = []
        for g in self.groups:
            need = [f"≥ {format_mib(g.vram_mib)}"] if g.vram_mib else []
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
    for c in demand.placement:
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
    preferred = demand.preferred_vendor
    return Request(
        demand=demand,
        groups=groups,
        subsets=subsets,
        vendor_codes=tuple(sorted(VENDOR_CODES[v] for v in demand.allowed_vendors)),
        preferred_code=VENDOR_CODES[preferred] if preferred else -2,
        total_devices=sum(g.devices for g in groups),
    )


def _row_counts(mask: BoolArray) -> IntArray:
    """True entries per row of a C-contiguous (n_nodes, width) bool mask, width a multiple of 8.

    Each byte of a bool array is 0 or 1, so the population count of a row viewed as 64-bit
    words is its number of True entries: one elementwise pass instead of a slow short-axis
    reduction. Inputs already checked.
    """
    words = np.bitwise_count(np.ascontiguousarray(mask).view(np.uint64))
    counts = words[:, 0].astype(np.int64)
    for j in range(1, words.shape[1]):
        counts += words[:, j]
    return counts


_GATHER_BYTES: Final = np.uint64(0x0102040810204080)


def _row_bits(mask: BoolArray) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Each row of a (n_nodes, width) bool mask as one unsigned integer, bit j = column j.

    Eight 0/1 bytes read as a little-endian uint64 are packed into one byte by a multiply:
    byte i times 2**(56 - 7i) lands on bit 56 + i, and every other product is a distinct power
    of two below bit 56 or past bit 63, so nothing carries into the top byte. ~10x packbits.
    """
    words = np.ascontiguousarray(mask).view(np.uint64)
    packed = ((words * _GATHER_BYTES) >> np.uint64(56)).astype(np.uint64)
    bits = packed[:, 0]
    for j in range(1, packed.shape[1]):
        bits |= packed[:, j] << np.uint64(8 * j)
    width = mask.shape[1]
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}[width]
    out: npt.NDArray[np.unsignedinteger[Any]] = bits.astype(dtype)
    return out


def _row_max(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Maximum of each row of a small-width array, as `width` elementwise passes."""
    best = values[:, 0].copy()
    for j in range(1, values.shape[1]):
        np.maximum(best, values[:, j], out=best)
    return best


def _hall_fails(masks: Sequence[BoolArray], req: Request) -> BoolArray:
    """True per node where the containers cannot get distinct fitting devices.

    masks : one (n_nodes, width) bool array per group; inputs already checked.
    """
    if len(masks) == 1:
        single: BoolArray = _row_counts(masks[0]) < req.groups[0].devices
        return single
    fails: BoolArray | None = None
    for members, need in req.subsets:
        union = masks[members[0]]
        for i in members[1:]:
            union = union | masks[i]
        f = _row_counts(union) < need
        fails = f if fails is None else (fails | f)
    assert fails is not None
    return fails


def node_availability(
    state: ClusterState, sel: slice | IndexArray, config: EngineConfig, now: float | None = None
) -> tuple[BoolArray, BoolArray]:
    """Per selected node: `ready_mask` (Ready and Schedulable) and `agent_mask` (agent connected,
    with a heartbeat younger than `config.heartbeat_max_age_s` when that is set); each of shape
    (n_sel,). The node-level half of filter, also what `kubectl hcs top nodes` shows."""
    ready = state.node_ready_mask[sel]
    agent = state.node_agent_mask[sel]
    if config.heartbeat_max_age_s is not None:
        now = time.time() if now is None else now
        agent = agent & (state.node_heartbeat_s[sel] >= now - config.heartbeat_max_age_s)
    return ready, agent


class _Kernel:
    """The fit rules of one request computed over a selection of state rows: every row
    (`sel` is a slice, shared by filter and prioritize of the same pod) or the gathered
    candidate rows (`sel` is an index array). Arrays have shape (n_sel,) or (n_sel, width).
    """

    def __init__(
        self,
        state: ClusterState,
        req: Request,
        config: EngineConfig,
        now: float | None,
        sel: slice | IndexArray,
        *,
        empty_cluster: bool,
    ) -> None:
        self.state, self.req, self.config, self.sel = state, req, config, sel
        self.empty_cluster = empty_cluster
        self._scores: npt.NDArray[np.uint8] | None = None
        vendor_ok = state.vendor_mask(req.vendor_codes)[sel]
        d = req.demand
        if d.resource is not None or d.model is not None:
            # The family the pod's vendor resource names (its advertised name, a model).
            vendor_ok = vendor_ok & state.family_mask(d.resource, d.model)[sel]
        present = state.dev_present_mask[sel]
        self.fit: BoolArray
        self.group_fit: tuple[BoolArray, ...]
        if req.empty:  # asks nothing of HCS: every node passes
            self.codes = np.zeros(len(vendor_ok), np.int8)
            self.fit = np.zeros_like(present)
            self.group_fit = ()
            self.booked: list[tuple[IntArray | int, BoolArray | bool]] = []
            return
        # Where shares are fixed templates (vNPU) a fractional group books a template, TFLOPS
        # included, whatever it asked.
        templated = (
            state.node_templated[sel]
            if state.has_templated_nodes and not all(g.whole for g in req.groups)
            else None
        )
        need_fp16 = templated is not None or any(g.fp16_milli_tflops for g in req.groups)
        need_fp32 = templated is not None or any(g.fp32_milli_tflops for g in req.groups)
        if empty_cluster:
            valid = state.node_valid_mask[sel]
            ready = agent = valid
            idle = open_ = healthy = present
            vram_free = state.dev_vram_cap_mib[sel]
            fp16_free = state.dev_fp16_cap_mtf[sel] if need_fp16 else None
            fp32_free = state.dev_fp32_cap_mtf[sel] if need_fp32 else None
        else:
            ready, agent = node_availability(state, sel, config, now)
            idle = state.dev_idle_mask[sel]
            open_ = state.dev_open_mask[sel]
            healthy = state.dev_health[sel] >= config.min_health
            vram_free = state.dev_vram_free_mib[sel]
            fp16_free = state.dev_fp16_free_mtf[sel] if need_fp16 else None
            fp32_free = state.dev_fp32_free_mtf[sel] if need_fp32 else None
        base, health_ok, vram_ok, all_ok = [], [], [], []
        self.booked = []
        for g in req.groups:
            b = idle if g.whole else open_
            needs: tuple[IntArray | int, ...] = (
                g.vram_mib,
                g.fp16_milli_tflops,
                g.fp32_milli_tflops,
            )
            whole_rows: BoolArray | bool = False
            if templated is not None and not g.whole:
                needs, whole_rows = _template_needs(state, g, sel, templated)
                b = np.where(whole_rows[:, None], idle, open_)
            vram, fp16, fp32 = needs
            self.booked.append((vram, whole_rows))
            h = b & healthy
            v = h & (vram_free >= _column(vram))
            a = v
            if isinstance(fp16, np.ndarray) or fp16:
                assert fp16_free is not None
                a = a & (fp16_free >= _column(fp16))
            if isinstance(fp32, np.ndarray) or fp32:
                assert fp32_free is not None
                a = a & (fp32_free >= _column(fp32))
            base.append(b)
            health_ok.append(h)
            vram_ok.append(v)
            all_ok.append(a)
        # The levels are nested (all ⊆ vram ⊆ health ⊆ base per group), so their Hall failures
        # are too, and the number of levels passed picks the capacity code.
        passed = (~_hall_fails(base, req)).astype(np.int8)
        passed += ~_hall_fails(health_ok, req)
        passed += ~_hall_fails(vram_ok, req)
        passed += ~_hall_fails(all_ok, req)
        codes = _CAPACITY_BY_LEVELS[passed]
        # Node-level reasons, lowest precedence first so a higher one overwrites.
        np.putmask(codes, ~vendor_ok, _VENDOR_NOT_SUPPORTED)
        np.putmask(codes, ~agent, _AGENT_NOT_CONNECTED)
        np.putmask(codes, ~ready, _NOT_READY)
        np.putmask(codes, ~state.node_valid_mask[sel], _NODE_NOT_FOUND)
        self.codes = codes
        fit = all_ok[0]
        for a in all_ok[1:]:
            fit = fit | a
        self.fit = fit
        self.group_fit = tuple(all_ok)

    def figures(self) -> dict[str, IntArray]:
        """Device counts per selected row, read from the books the kernel was made (or last
        patched) for: they are the current books whenever the kernel is used."""
        state, sel = self.state, self.sel
        present = state.dev_present_mask[sel]
        if self.empty_cluster:
            open_ = healthy = present
            vram_free = state.dev_vram_cap_mib[sel]
        else:
            open_ = state.dev_open_mask[sel]
            healthy = state.dev_health[sel] >= self.config.min_health
            vram_free = state.dev_vram_free_mib[sel]
        return {
            "devices": _row_counts(present),
            "free_devices": _row_counts(open_),
            "healthy_free_devices": _row_counts(open_ & healthy),
            "max_free_vram_mib": _row_max(np.where(present, vram_free, 0)),
            "fitting_devices": _row_counts(self.fit),
        }

    def patched(self, rows: IndexArray, now: float | None) -> _Kernel:
        """This kernel (over every row) brought up to the current books, where only `rows`
        changed since it was made: those rows are evaluated again and written into copies of
        its arrays. The result equals a kernel made afresh (tests/core/test_incremental.py)."""
        sub = _Kernel(
            self.state, self.req, self.config, now, rows, empty_cluster=self.empty_cluster
        )
        out = copy.copy(self)
        out.codes = _overwrite(self.codes, rows, sub.codes)
        out.group_fit = tuple(
            _overwrite(full, rows, part)
            for full, part in zip(self.group_fit, sub.group_fit, strict=True)
        )
        out.fit = (
            out.group_fit[0] if len(out.group_fit) == 1 else _overwrite(self.fit, rows, sub.fit)
        )
        n = len(self.codes)
        out.booked = [
            (_overwrite_any(v, rows, sv, n), _overwrite_any(w, rows, sw, n))
            for (v, w), (sv, sw) in zip(self.booked, sub.booked, strict=True)
        ]
        out._scores = None if self._scores is None else _overwrite(self._scores, rows, sub.scores())
        return out

    def scores(self) -> npt.NDArray[np.uint8]:
        """Score percent 0..100 per selected row (rows that fail included; masked later)."""
        if self._scores is None:
            # 0..100 fits a byte: a kept evaluation holds one byte per node for its scores.
            self._scores = _score_rows(
                self.state, self.req, self.config, self.sel, self.fit, booked=self.booked
            ).astype(np.uint8)
        return self._scores


def _overwrite(full: npt.NDArray[Any], rows: IndexArray, part: npt.NDArray[Any]) -> Any:
    """A copy of `full` with `rows` replaced by `part`."""
    out = full.copy()
    out[rows] = part
    return out


def _overwrite_any(full: Any, rows: IndexArray, part: Any, n: int) -> Any:
    """`_overwrite` for a per-row value that may be one value for all `n` rows (a scalar)."""
    if not isinstance(full, np.ndarray):
        if not isinstance(part, np.ndarray) and full == part:
            return full
        full = np.full(n, full)
    return _overwrite(full, rows, part)


def _column(value: IntArray | int) -> IntArray | int:
    """A per-row requirement as a column against (n, width) device arrays."""
    return value[:, None] if isinstance(value, np.ndarray) else value


def _template_needs(
    state: ClusterState, g: Group, sel: slice | IndexArray, templated: BoolArray
) -> tuple[tuple[IntArray, IntArray, IntArray], BoolArray]:
    """Per selected row, what a fractional group books per device: the smallest template
    holding it where shares are templates, else its request; and the rows where no template
    holds it (it takes whole devices there). hcs.limiter.choose_template, over every row."""
    key = ("template-needs", g.vram_mib, g.fp16_milli_tflops, g.fp32_milli_tflops)
    cache = state.layout_cache()
    hit = cache.get(key)
    if hit is None:
        # Over the template rows only (a few), scattered into full rows; kept until the
        # nodes change (templates do not depend on the allocations).
        at = np.flatnonzero(state.node_templated)
        t_vram = state.node_tmpl_vram_mib[at]
        t_fp16 = state.node_tmpl_fp16_mtf[at]
        t_fp32 = state.node_tmpl_fp32_mtf[at]
        holds = (
            (t_vram >= g.vram_mib)
            & (t_fp16 >= g.fp16_milli_tflops)
            & (t_fp32 >= g.fp32_milli_tflops)
        )
        first = holds.argmax(axis=1)[:, None]
        fits = holds.any(axis=1)
        needs = []
        for t, asked in (
            (t_vram, g.vram_mib),
            (t_fp16, g.fp16_milli_tflops),
            (t_fp32, g.fp32_milli_tflops),
        ):
            row_need = np.full(state.rows, asked, np.int64)
            row_need[at] = np.where(fits, np.take_along_axis(t, first, axis=1)[:, 0], asked)
            needs.append(row_need)
        whole = np.zeros(state.rows, np.bool_)
        whole[at] = ~fits
        hit = cache[key] = (needs[0], needs[1], needs[2], whole)
    vram, fp16, fp32, whole_rows = cast(tuple[IntArray, IntArray, IntArray, BoolArray], hit)
    return (vram[sel], fp16[sel], fp32[sel]), whole_rows[sel] & templated


def _score_rows(
    state: ClusterState,
    req: Request,
    config: EngineConfig,
    sel: slice | IndexArray,
    fit: BoolArray,
    *,
    booked: Sequence[tuple[IntArray | int, BoolArray | bool]],
) -> IntArray:
    """Per-mille components combined into 0..100; inputs already checked. `booked`: per
    group, the VRAM a fractional container books per device and the rows where it takes whole
    devices (the kernel's `_template_needs`)."""
    wts = config.weights
    n = len(fit)
    shared = state.node_shared_mask[sel]
    total = state.node_vram_total_mib[sel]
    used = state.node_vram_used_mib[sel]
    avg = state.node_vram_avg_mib[sel]
    placed = np.zeros(n, np.int64)
    for g, (vram, whole_rows) in zip(req.groups, booked, strict=True):
        if g.whole:
            placed += g.devices * avg
        else:
            placed += g.devices * np.where(shared & ~np.asarray(whole_rows), vram, avg)
    frac = np.minimum((used + placed) * 1000 // np.maximum(total, 1), 1000)
    pack = frac if config.strategy == "binpack" else 1000 - frac

    fit_count = _row_counts(fit)
    # Health sums are small integers: a float mat-vec (BLAS) is exact and ~5x a short-axis sum.
    health_sum = np.rint((fit * state.dev_health_f64[sel]) @ state.ones_f64).astype(np.int64)
    health = health_sum * 10 // np.maximum(fit_count, 1)

    acc = wts.pack * pack + wts.health * health
    wsum = wts.pack + wts.health
    topology = req.demand.topology
    if topology is not None and wts.topology:
        groups = state.dev_clique_bits if topology == "high-bandwidth" else state.dev_numa_bits
        fit_bits = _row_bits(fit)
        best = _row_max(np.bitwise_count(groups[sel] & fit_bits[:, None])).astype(np.int64)
        acc += wts.topology * np.minimum(best * 1000 // max(req.total_devices, 1), 1000)
        wsum += wts.topology
    if req.preferred_code >= 0 and wts.vendor:
        acc += wts.vendor * np.where(state.node_vendor[sel] == req.preferred_code, 1000, 0)
        wsum += wts.vendor
    scores: IntArray = acc * 100 // (1000 * wsum)
    return scores


@dataclass(frozen=True)
class Evaluation:
    """One pod against candidate rows: `codes`, shape (n_nodes,), Reason values; the kernel
    arrays are read through `pos`, the candidates' positions in the kernel's selection."""

    rows: IndexArray
    codes: npt.NDArray[np.int8]
    kernel: _Kernel
    pos: IndexArray

    @property
    def fit_mask(self) -> BoolArray:
        """Devices that fit some container, shape (n_nodes, width)."""
        fit: BoolArray = self.kernel.fit[self.pos]
        return fit

    def group_fit(self, group: int, i: int) -> BoolArray:
        """Devices of candidate `i` fitting container group `group`, shape (width,)."""
        mask: BoolArray = self.kernel.group_fit[group][self.pos[i]]
        return mask

    @property
    def figures(self) -> dict[str, IntArray]:
        return {k: v[self.pos] for k, v in self.kernel.figures().items()}


def evaluate(
    state: ClusterState,
    req: Request,
    rows: IndexArray,
    config: EngineConfig,
    now: float | None = None,
    *,
    empty_cluster: bool = False,
) -> Evaluation:
    """Run the fit rules for one pod over `rows` (-1 = unknown node); the shared kernel of
    filter, prioritize, select_devices, routing and explanations.

    When the candidates are a good share of the cluster (kube-scheduler with
    `percentageOfNodesToScore: 100` sends all that passed its own filters), every row is
    evaluated on the contiguous arrays, without gathering, and the result is kept for this pod
    until the state changes, so prioritize after filter costs only the scores. A few
    candidates out of a large cluster are gathered and evaluated alone.

    `empty_cluster`: judge against the devices' full capacity, as if every node were Ready and
    every device healthy and free: "could this node *ever* hold the pod".
    """
    valid = rows >= 0
    all_valid = bool(valid.all())
    safe = rows if all_valid else np.where(valid, rows, 0)
    if req.empty:
        kernel = _Kernel(state, req, config, now, safe, empty_cluster=False)
        return Evaluation(rows, np.zeros(len(rows), np.int8), kernel, np.arange(len(rows)))
    # Every row evaluated already for this pod's shape (kept, patched to these books), or
    # worth evaluating whole; otherwise only the candidates.
    whole = _kernel_cached(
        state, req, config, now, empty_cluster=empty_cluster, build=2 * len(rows) >= state.n_nodes
    )
    if whole is not None:
        kernel, pos = whole, safe
    else:
        kernel = _Kernel(state, req, config, now, safe, empty_cluster=empty_cluster)
        pos = np.arange(len(rows))
    codes = kernel.codes[pos]
    if not all_valid:
        codes[~valid] = Reason.NodeNotFound
    return Evaluation(rows, codes, kernel, pos)


def _kernel_cached(
    state: ClusterState,
    req: Request,
    config: EngineConfig,
    now: float | None,
    *,
    empty_cluster: bool,
    build: bool = True,
) -> _Kernel | None:
    """The pod's evaluation over every row for the current books; None when none is kept and
    not `build`.

    Evaluations are kept per request shape across changes to the books: a bind changes one
    node's row, so the next pod of the same shape re-evaluates only the rows changed since
    (`_Kernel.patched`), not every node. Past PATCH_LIMIT changes it evaluates afresh.
    """
    tick = None
    if config.heartbeat_max_age_s is not None and not empty_cluster:
        # Heartbeat ages at one-second resolution, so the filter and prioritize calls of one
        # pod (milliseconds apart) share an evaluation.
        now = float(int(time.time() if now is None else now))
        tick = now
    key = (req.key, config, empty_cluster)
    kept = state.evaluations.get(key)
    if kept is not None:
        state.evaluations.move_to_end(key)
        mark, version, was, kernel = cast(tuple[tuple[int, int], int, float | None, _Kernel], kept)
        if version == state.version and was == tick:
            return kernel
        limit = max(PATCH_LIMIT, state.n_nodes // 16)
        rows = state.rows_changed_since(mark, limit)
        if rows is not None and was != tick:
            # Heartbeats that aged past the limit between the two ticks.
            assert was is not None and tick is not None and config.heartbeat_max_age_s
            age = config.heartbeat_max_age_s
            beats = state.node_heartbeat_s
            aged = np.flatnonzero((beats >= was - age) != (beats >= tick - age))
            rows = np.union1d(rows, aged) if len(aged) + len(rows) <= limit else None
        if rows is not None:
            kernel = kernel.patched(rows, now) if len(rows) else kernel
            state.evaluations[key] = (state.change_mark, state.version, tick, kernel)
            return kernel
    if not build:
        return None
    kernel = _Kernel(state, req, config, now, slice(None), empty_cluster=empty_cluster)
    state.evaluations[key] = (state.change_mark, state.version, tick, kernel)
    if len(state.evaluations) > EVALUATIONS_KEPT:
        state.evaluations.popitem(last=False)
    return kernel


@dataclass(frozen=True)
class FilterResult:
    names: npt.NDArray[np.object_]
    """The candidate names as an object array, shape (n_nodes,)."""
    codes: npt.NDArray[np.int8]
    request: Request
    config: EngineConfig
    figures: dict[str, IntArray] | None = None
    candidates: Candidates | None = None
    """The candidates' state rows (-1 = unknown) and names, as resolved."""

    @property
    def passed_mask(self) -> BoolArray:
        passed: BoolArray = self.codes == 0
        return passed

    def passed_names(self) -> list[str]:
        """Names of the nodes that fit, in request order."""
        passed: list[str] = self.names[self.codes == 0].tolist()
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
    found = state.resolve(names)
    ev = evaluate(state, req, found.rows, config, now)
    return FilterResult(found.names, ev.codes, req, config, ev.figures if figures else None, found)


def score_percent(
    state: ClusterState, req: Request, ev: Evaluation, config: EngineConfig
) -> IntArray:
    """Integer scores 0..100 for the evaluated rows; failing rows score 0.

    This finer figure is what `hcs.io/scheduling-score` records; kube-scheduler gets it // 10.
    """
    if req.empty:
        return np.zeros(len(ev.rows), np.int64)
    scores: IntArray = ev.kernel.scores()[ev.pos].astype(np.int64)
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
    return normalize_scores(score_percent(state, req, ev, config), ev.codes == 0)


def normalize_scores(percent: IntArray, fit_mask: BoolArray) -> IntArray:
    """kube-scheduler's 0..MAX_SCORE over one call's candidates, keeping the ranking.

    Dividing the 0..100 score by 10 would give 69, 68 and 68 the same 6. Instead, among the
    nodes that fit, the best gets MAX_SCORE, the worst 0 and the rest their place in proportion
    (rounded); where rounding would merge distinct scores, they are spread so that every
    distinct score keeps its own step, as far as MAX_SCORE + 1 steps go. Ties stay ties; nodes
    that do not fit get 0; a single distinct score gets MAX_SCORE.

    percent : ndarray of shape (n_nodes,); fit_mask : ndarray of shape (n_nodes,).
    """
    out = np.zeros(len(percent), np.int64)
    fitting = percent[fit_mask]
    if not len(fitting):
        return out
    # Percent scores are 0..100: the distinct ones by counting, not sorting.
    distinct = np.flatnonzero(np.bincount(fitting, minlength=101))  # sorted ascending
    k = len(distinct)
    if k == 1:
        out[fit_mask] = MAX_SCORE
        return out
    span = int(distinct[-1] - distinct[0])
    ideal = np.rint((distinct - distinct[0]) * MAX_SCORE / span).astype(np.int64)
    if k <= MAX_SCORE + 1:
        steps = np.arange(k)
        ideal = np.maximum.accumulate(ideal - steps) + steps  # each above the one below
        ideal = np.minimum(ideal, MAX_SCORE - (k - 1 - steps))  # room left for those above
    step = np.zeros(int(distinct[-1]) + 1, np.int64)
    step[distinct] = ideal
    out[fit_mask] = step[fitting]
    return out


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
        req.demand.placement,
        key=lambda c: group_of[(c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops, c.whole)],
    )
    w = state.width
    slots = np.arange(w)
    taken = np.zeros(w, np.bool_)
    # Every group's fitting devices and what is still needed of it: a container's devices are
    # taken so that the containers after it can still all be served (Hall's condition on what
    # is left), which greedy choice alone does not promise.
    fits = np.stack([ev.group_fit(i, 0) for i in range(len(req.groups))])
    needs = np.array([g.devices for g in req.groups], np.int64)
    free = state.dev_vram_free_mib[row]
    health = state.dev_health[row].astype(np.int64)
    # A container's devices on one NVLink/HCCS clique when the pod asks for bandwidth, on one
    # NUMA node for low latency. Otherwise still on one NUMA node where they fit, chosen by the
    # best-fitting device: kubelet's topology manager aligns each container to one NUMA node,
    # so HCS's choice is then the one kubelet makes (docs/node.md).
    asked = req.demand.topology is not None
    if req.demand.topology == "high-bandwidth":
        topo_key = state.dev_clique[row].astype(np.int64)
    else:
        topo_key = state.dev_numa[row].astype(np.int64)
    picks = []
    for c in containers:
        gi = group_of[(c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops, c.whole)]
        cand = ev.group_fit(gi, 0) & ~taken
        if np.count_nonzero(cand) < c.devices:
            raise PlacementError(
                f"{node}: cannot give every container its own fitting devices",
                code="InsufficientDevices",
            )
        fit_key = free if config.strategy == "binpack" else -free
        # Per slot: how many candidates share its group.
        same = topo_key[:, None] == topo_key[None, :]
        group_size = np.count_nonzero(same & cand[None, :], axis=1)
        enough = group_size >= c.devices
        if asked:
            # Prefer a group that can hold the whole container: the smallest such group when
            # packing, the largest when spreading.
            size_key = group_size if config.strategy == "binpack" else -group_size
            primary = np.where(enough, size_key, 2 * w + 2 - group_size)
            order = np.lexsort((slots, -health, fit_key, topo_key, primary))
        else:
            # The group of the best-fitting device that can hold the whole container.
            order = np.lexsort((slots, -health, fit_key))
            whole_group = cand[order] & enough[order]
            if whole_group.any():  # that group's devices first, the others after
                same = topo_key[order] == topo_key[order[np.argmax(whole_group)]]
                order = np.concatenate((order[same], order[~same]))
        chosen = order[cand[order]][: c.devices]
        after = taken.copy()
        after[chosen] = True
        rest = needs.copy()
        rest[gi] -= c.devices
        if not _hall_holds(fits, ~after, rest):
            chosen = _choose_leaving_a_matching(
                order[cand[order]], fits, taken, needs, gi=gi, count=c.devices
            )
        taken[chosen] = True
        needs[gi] -= c.devices
        picks.append((c, tuple(int(s) for s in chosen)))
    return tuple(picks)


def _subsets(
    fits: BoolArray, avail: BoolArray, needs: IntArray
) -> tuple[BoolArray, IntArray, BoolArray]:
    """For every non-empty subset S of the groups still needing devices: the union of their
    available fitting devices, shape (n_subsets, width); the devices S needs, (n_subsets,);
    and which groups S holds, (n_subsets, n_groups). Exact for up to MAX_EXACT_GROUPS groups
    with needs (2**8 subsets at most); inputs already checked."""
    live = np.flatnonzero(needs > 0)[:MAX_EXACT_GROUPS]
    n = len(live)
    subs = np.arange(1, 1 << n)
    member_live = ((subs[:, None] >> np.arange(n)) & 1).astype(np.bool_)  # (S, n)
    member = np.zeros((len(subs), len(needs)), np.bool_)
    member[:, live] = member_live
    masks = fits[live] & avail  # (n, width)
    union: BoolArray = np.any(member_live[:, :, None] & masks[None, :, :], axis=1)
    need: IntArray = member_live.astype(np.int64) @ needs[live]
    return union, need, member


def _hall_holds(fits: BoolArray, avail: BoolArray, needs: IntArray) -> bool:
    """Every group can still get its own devices among `avail` (Hall's condition)."""
    if not (needs > 0).any():
        return True
    union, need, _ = _subsets(fits, avail, needs)
    return bool((union.sum(axis=1) >= need).all())


def _choose_leaving_a_matching(
    order: IntArray, fits: BoolArray, taken: BoolArray, needs: IntArray, *, gi: int, count: int
) -> IntArray:
    """`count` devices for group `gi`, in preference `order`, each one chosen so that what is
    left still serves every group (one device at a time: a pod's device count)."""
    taken = taken.copy()
    needs = needs.copy()
    chosen = []
    for _ in range(count):
        union, need, member = _subsets(fits, ~taken, needs)
        # Taking device d for gi: each subset loses d if it held it, and needs one less if it
        # holds gi. d is fine when every subset keeps enough.
        left = union.sum(axis=1)[:, None] - union  # (S, width)
        ok = (left >= (need - member[:, gi])[:, None]).all(axis=0) & ~taken
        usable = order[ok[order]]
        if len(usable) == 0:
            raise PlacementError(
                "cannot give every container its own fitting devices", code="InsufficientDevices"
            )
        taken[usable[0]] = True
        needs[gi] -= 1
        chosen.append(int(usable[0]))
    return np.array(chosen, np.intp)


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
    d = req.demand
    charges = []
    # Placed containers in kubelet's order (init containers first, then spec order), so
    # `hcs.io/assigned-devices` can be split back per container.
    order = {c.name: i for i, c in enumerate(d.all_containers)}
    for c, chosen in sorted(picks, key=lambda pick: order.get(pick[0].name, 0)):
        share = None
        if not c.whole:
            share = state.booked_share(row, c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops)
        for slot in chosen:
            if share is None:
                vram = max(int(state.dev_vram_free_mib[row, slot]), 0)
                fp16 = max(int(state.dev_fp16_free_mtf[row, slot]), 0)
                fp32 = max(int(state.dev_fp32_free_mtf[row, slot]), 0)
            else:
                vram, fp16, fp32 = share
            charges.append(DeviceCharge(ids[slot], c.name, vram, fp16, fp32))
    assignment: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if d.init_containers:
        # Who gets which device under kubelet's reuse rule (hcs.reuse); each device charged
        # once, to the pod.
        per = assign(d.needs, [c.device_id for c in charges])
        assignment = tuple(per.items())
        booked = owners(d.needs, per)
        charges = [replace(c, container=booked[c.device_id]) for c in charges]
    vendor = VENDOR_NAMES[int(state.node_vendor[row])]
    return Allocation(
        d.uid,
        d.namespace,
        d.name,
        node,
        vendor,
        tuple(charges),
        "assumed",
        now,
        score_value,
        assignment,
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
    resource: str = ""
    """The device-plugin name of the node family chosen within the vendor (where the pod fits
    now, else where it could ever fit): the webhook writes it, and the extender then passes only
    nodes that advertise it."""


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
    fitting = [v for v in order if fits_by_vendor[VENDOR_CODES[v]]]
    fits_now = bool(fitting)
    # Nothing fits now: wait for the first vendor that could ever hold the pod.
    vendor = fitting[0] if fitting else next(v for v in order if ever_by_vendor[VENDOR_CODES[v]])
    family = _family(
        state,
        rows=rows,
        vendor_of_row=vendor_of_row,
        codes=ev.codes if fits_now else ever.codes,
        free_vram=ready_free,
        vendor=vendor,
    )
    return Route(vendor, fits_now, first is not None and vendor != first, family)


def _family(
    state: ClusterState,
    *,
    rows: IndexArray,
    vendor_of_row: IndexArray,
    codes: npt.NDArray[np.int8],
    free_vram: npt.NDArray[np.float64] | IntArray,
    vendor: VendorName,
) -> str:
    """The advertised name, within `vendor`, of the nodes where `codes` say the pod fits, the
    family with the most free VRAM among them (shape (n_rows,) inputs)."""
    fit = (codes == 0) & (vendor_of_row == VENDOR_CODES[vendor])
    families = state.node_resource[rows]
    weight = np.bincount(
        families[fit], weights=free_vram[fit] + 1, minlength=len(state.resource_names)
    )
    if not weight.any():
        return state.vendors[vendor].resource
    return state.resource_names[int(np.argmax(weight))]


def _never_fits(req: Request, codes: npt.NDArray[np.int8], config: EngineConfig) -> PlacementError:
    capacity = codes[codes > Reason.VendorNotSupported]
    if len(capacity) == 0:
        d = req.demand
        vendors = ", ".join(d.allowed_vendors)
        family = f" advertising {d.resource}" if d.resource else ""
        family += f" with {d.model} devices" if d.model else ""
        return PlacementError(
            f"no node of vendor {vendors}{family} in the inventory", code="VendorNotSupported"
        )
    worst = Reason(int(np.bincount(capacity).argmax()))
    return reason_error(worst, f"no node could ever hold the pod: {req.detail(worst, config)}")
