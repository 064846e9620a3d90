"""The inventory as numpy arrays, updated incrementally (DESIGN §6).

Layout: one *row* per node, and per-device arrays of shape `(n_rows, width)`, where `width` is the
largest device count of any node (8 on most fleets). A node's devices are one contiguous row, so
per-node reductions are `sum(axis=1)`; slots past a node's device count have `dev_present_mask`
False. Removing a node frees its row for the next node added; adding past the allocated rows
doubles them, and a node with more devices than `width` widens every row, both amortised O(1).
Every other update (a ComputeNode changed, an allocation made or released) rewrites only that
node's row: O(devices of that node), never a rebuild.

Amounts are integers: MiB and milli-TFLOPS. The free amount of a device is
`allocatable - allocated (as the agent reports it) - HCS allocations`, kept up to date so the
engine reads it without arithmetic.

The state also holds the allocations themselves (pod UID -> node, devices, amounts). It is not
thread-safe on its own; the Ledger serialises writers.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import repeat
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from hcs.errors import PlacementError
from hcs.limiter import TemplateBooking, choose_template, template_options, uses_templates
from hcs.models import ENFORCEMENTS, ComputeNode
from hcs.vendors import VENDOR_CODES, VendorName, VendorProfile, VendorTable
from hcs.wire import name_fragments

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]

NO_HEARTBEAT: Final = -np.inf
_LOOKUP_CACHE_SIZE: Final = 64


@dataclass(frozen=True)
class Candidates:
    """Candidate nodes of one request: rows (-1 = unknown name), shape (n_nodes,), and the
    names as an object array so replies are built with a numpy take, not a loop."""

    rows: IndexArray
    names: npt.NDArray[np.object_]

    @cached_property
    def fragments(self) -> npt.NDArray[np.object_] | None:
        """Each name as JSON writes it between quotes (hcs.wire.name_fragments), for replies
        assembled by `bytes.join`; None when some name needs escaping."""
        found = name_fragments(self.names.tolist())
        if found is None:
            return None
        out = np.empty(len(found), dtype=object)
        out[:] = found
        return out

    def take(self, index: IndexArray) -> Candidates:
        """The candidates at positions `index`, with their fragments when already known."""
        sub = Candidates(self.rows[index], self.names[index])
        known = self.__dict__.get("fragments")
        if known is not None:
            sub.__dict__["fragments"] = known[index]
        return sub


@dataclass(frozen=True)
class DeviceCharge:
    """What one allocation takes from one device."""

    device_id: str
    container: str
    vram_mib: int
    fp16_milli_tflops: int
    fp32_milli_tflops: int


@dataclass(frozen=True)
class Allocation:
    uid: str
    namespace: str
    name: str
    node: str
    vendor: VendorName
    charges: tuple[DeviceCharge, ...]
    state: Literal["assumed", "confirmed"] = "assumed"
    created_at: float = 0.0
    score: int | None = None
    assignment: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Each container's devices when they are not simply the charges' (init containers hand
    theirs on to later containers: hcs.reuse); a device is charged once whoever uses it."""

    @property
    def device_ids(self) -> tuple[str, ...]:
        """Distinct device IDs in the order they were assigned."""
        return tuple(dict.fromkeys(c.device_id for c in self.charges))

    def devices_annotation(self) -> str:
        """The value of `hcs.io/assigned-devices` (`0,1`)."""
        return ",".join(self.device_ids)

    def per_container(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each container's own device IDs, in kubelet's order (init containers first)."""
        if self.assignment:
            return list(self.assignment)
        out: dict[str, list[str]] = {}
        for charge in self.charges:
            out.setdefault(charge.container, []).append(charge.device_id)
        return [(name, tuple(ids)) for name, ids in out.items()]

    def confirmed(self) -> Allocation:
        return replace(self, state="confirmed")


@dataclass
class ClusterState:
    """Arrays of nodes and devices plus the allocations charged against them.

    Node arrays have shape (n_rows,), device arrays (n_rows, width); rows whose
    `node_valid_mask` is False are free.
    """

    vendors: VendorTable = field(default_factory=VendorTable)
    width: int = 8
    rows: int = 16
    keep_nodes: bool = True
    """Keep each ComputeNode object (`nodes`: the plain-Python reference and tests read them).
    Cluster mode does not: everything the rules read is in the arrays, and 50,000 nodes' objects
    would cost about 100 MB."""

    def __post_init__(self) -> None:
        self.width = _width_for(self.width)
        n, w = self.rows, self.width
        self.version = 0
        """Bumped by every change to the arrays (invalidates cached evaluations)."""
        self._row_log: list[int] = []
        """The row each change touched, in order (what a kept evaluation must redo)."""
        self._row_log_start = 0
        """How many changes were forgotten from the front of `_row_log`."""
        self.shape_epoch = 0
        """Bumped when the arrays are reshaped (more rows, wider rows): nothing kept from
        before can be patched."""
        self.evaluations: OrderedDict[object, object] = OrderedDict()
        """The engine's evaluations over every row, kept across changes and patched with the
        rows that changed (hcs.engine._kernel_cached); least recently used first."""
        self._kernel_cache: dict[object, object] = {}
        self._kernel_cache_version = -1
        self._layout_cache: dict[object, object] = {}
        self._layout_cache_version = -1
        self.layout_version = 0
        """Bumped when nodes are added, changed or removed (not by allocations)."""
        self._vendor_masks: dict[tuple[int, ...], BoolArray] = {}
        self.resource_names: list[str] = []
        """Device-plugin resource names seen on nodes; node_resource indexes into it."""
        self._vendor_masks_version = -1
        self.node_valid_mask: BoolArray = np.zeros(n, np.bool_)
        self.node_vendor: npt.NDArray[np.int8] = np.full(n, -1, np.int8)
        self.node_ready_mask: BoolArray = np.zeros(n, np.bool_)
        self.node_agent_mask: BoolArray = np.zeros(n, np.bool_)
        self.node_heartbeat_s: npt.NDArray[np.float64] = np.full(n, NO_HEARTBEAT, np.float64)
        self.node_shared_mask: BoolArray = np.zeros(n, np.bool_)
        self.node_slots: npt.NDArray[np.int32] = np.full(n, UNLIMITED_SLOTS, np.int32)
        self.node_sharing: npt.NDArray[np.int8] = np.zeros(n, np.int8)
        """Index into SHARING_MODES: exclusive, or how a shared node keeps its shares."""
        # Nodes whose shares are fixed templates (vNPU): the templates' sizes, smallest first,
        # padded with -1 (holds nothing); a share no template holds takes whole devices there.
        self.node_templated: BoolArray = np.zeros(n, np.bool_)
        self.template_width = 4
        self.node_tmpl_vram_mib: IntArray = np.full((n, self.template_width), -1, np.int64)
        self.node_tmpl_fp16_mtf: IntArray = np.full((n, self.template_width), -1, np.int64)
        self.node_tmpl_fp32_mtf: IntArray = np.full((n, self.template_width), -1, np.int64)
        self.share_options: list[tuple[TemplateBooking, ...]] = [()] * n
        """Per row, the templates a share is booked as (hcs.limiter.template_options)."""
        self.node_resource: npt.NDArray[np.int32] = np.zeros(n, np.int32)
        """Index into resource_names: the resource the node's device model is advertised as."""
        self.model_names: list[str] = []
        """Device models seen on nodes; node_model indexes into it."""
        self.node_model: npt.NDArray[np.int32] = np.zeros(n, np.int32)
        """Index into model_names: the model of the node's devices (its first device's)."""
        """Containers a device may serve on a shared node (the plugin's replicas)."""
        # Per-node VRAM figures for scoring, kept with the free amounts: total allocatable, used
        # (a held device on an exclusive node counts as fully used) and the mean device size.
        self.node_vram_total_mib: IntArray = np.zeros(n, np.int64)
        self.node_vram_used_mib: IntArray = np.zeros(n, np.int64)
        self.node_vram_avg_mib: IntArray = np.zeros(n, np.int64)
        self.dev_present_mask: BoolArray = np.zeros((n, w), np.bool_)
        self.dev_vram_cap_mib: IntArray = np.zeros((n, w), np.int64)
        self.dev_vram_reported_mib: IntArray = np.zeros((n, w), np.int64)
        self.dev_vram_hcs_mib: IntArray = np.zeros((n, w), np.int64)
        self.dev_vram_free_mib: IntArray = np.zeros((n, w), np.int64)
        self.dev_fp16_cap_mtf: IntArray = np.zeros((n, w), np.int64)
        self.dev_fp16_hcs_mtf: IntArray = np.zeros((n, w), np.int64)
        self.dev_fp16_free_mtf: IntArray = np.zeros((n, w), np.int64)
        self.dev_fp32_cap_mtf: IntArray = np.zeros((n, w), np.int64)
        self.dev_fp32_hcs_mtf: IntArray = np.zeros((n, w), np.int64)
        self.dev_fp32_free_mtf: IntArray = np.zeros((n, w), np.int64)
        self.dev_health: npt.NDArray[np.int16] = np.zeros((n, w), np.int16)
        self.dev_holders: npt.NDArray[np.int32] = np.zeros((n, w), np.int32)
        # Derived on every row refresh, so the engine reads instead of computing: a device nobody
        # holds, one that may take a container (idle, or on a shared node), health as float64
        # for an exact BLAS mat-vec.
        self.dev_idle_mask: BoolArray = np.zeros((n, w), np.bool_)
        self.dev_open_mask: BoolArray = np.zeros((n, w), np.bool_)
        self.dev_health_f64: npt.NDArray[np.float64] = np.zeros((n, w), np.float64)
        # Per slot, the slots of its clique / NUMA node as a bit mask (bit j = slot j).
        self.dev_clique_bits: npt.NDArray[np.unsignedinteger[Any]] = np.zeros(
            (n, w), _BITS_DTYPE[w]
        )
        self.dev_numa_bits: npt.NDArray[np.unsignedinteger[Any]] = np.zeros((n, w), _BITS_DTYPE[w])
        # Clique: devices joined by high-bandwidth links (NVLink, HCCS, ...); the id is the slot
        # of the clique's first device, so a device without links is a clique of its own.
        self.dev_clique: npt.NDArray[np.int16] = np.zeros((n, w), np.int16)
        # NUMA node, or a value > width unique to the slot when unknown (never "same NUMA").
        self.dev_numa: npt.NDArray[np.int32] = np.zeros((n, w), np.int32)
        self.node_names: list[str | None] = [None] * n
        self.device_ids: list[tuple[str, ...]] = [()] * n
        self.nodes: dict[str, ComputeNode] = {}
        self.index: dict[str, int] = {}
        self.allocations: dict[str, Allocation] = {}
        self.node_allocations: dict[str, set[str]] = {}
        self._free_rows: list[int] = list(range(n - 1, -1, -1))
        self.generation = 0
        """Bumped whenever the set of node names changes (invalidates name look-ups)."""
        self._lookup_cache: dict[tuple[object, ...], tuple[list[str], Candidates]] = {}
        self._lookup_generation = 0

    @property
    def ones_f64(self) -> npt.NDArray[np.float64]:
        return np.ones(self.width, np.float64)

    def vendor_mask(self, codes: tuple[int, ...]) -> BoolArray:
        """Rows whose node is of one of the vendor `codes`, shape (n_rows,)."""
        if self._vendor_masks_version != self.layout_version:
            self._vendor_masks = {}
            self._vendor_masks_version = self.layout_version
        mask = self._vendor_masks.get(codes)
        if mask is None:
            mask = np.isin(self.node_vendor, codes)
            self._vendor_masks[codes] = mask
        return mask

    def family_mask(self, resource: str | None, model: str | None) -> BoolArray:
        """Nodes that advertise `resource` (None: any) with devices of a model matching the
        fnmatch pattern `model` (None: any); shape (n_nodes,). Cached per state version."""
        key = ("family", resource, model)
        cache = self.kernel_cache()
        hit = cache.get(key)
        if isinstance(hit, np.ndarray):
            return hit
        mask = np.ones(self.rows, np.bool_)
        if resource is not None:
            code = self.resource_names.index(resource) if resource in self.resource_names else -1
            mask &= self.node_resource == code
        if model is not None:
            codes = [i for i, m in enumerate(self.model_names) if fnmatch.fnmatchcase(m, model)]
            mask &= np.isin(self.node_model, codes)
        cache[key] = mask
        return mask

    def vendor_resource(self, profile: VendorProfile) -> str:
        """The device-plugin resource most of `profile`'s nodes advertise (their models decide:
        Ascend 310P nodes advertise huawei.com/Ascend310P). A count over one array."""
        rows = self.node_valid_mask & (self.node_vendor == VENDOR_CODES[profile.name])
        if not rows.any():
            return profile.resource
        counts = np.bincount(self.node_resource[rows], minlength=len(self.resource_names))
        best = self.resource_names[int(np.argmax(counts))]
        return best if counts.max() > 0 else profile.resource

    def _changed(self, row: int | None) -> None:
        """Record a change to the arrays (of `row`, if any)."""
        self.version += 1
        if row is not None:
            self._row_log.append(row)
            if len(self._row_log) > ROW_LOG_KEPT:
                half = len(self._row_log) // 2
                del self._row_log[:half]
                self._row_log_start += half

    @property
    def change_mark(self) -> tuple[int, int]:
        """Where the books are now, for `rows_changed_since`."""
        return self.shape_epoch, self._row_log_start + len(self._row_log)

    def rows_changed_since(self, mark: tuple[int, int], limit: int) -> IndexArray | None:
        """The rows changed since `mark` (sorted, distinct); None when the arrays were
        reshaped, the changes are forgotten, or more than `limit` changes happened."""
        epoch, at = mark
        end = self._row_log_start + len(self._row_log)
        if epoch != self.shape_epoch or at < self._row_log_start or end - at > limit:
            return None
        return np.unique(np.array(self._row_log[at - self._row_log_start :], np.intp))

    def layout_cache(self) -> dict[object, object]:
        """A scratch dict for the engine, emptied whenever nodes change (not allocations)."""
        if self._layout_cache_version != self.layout_version or len(self._layout_cache) > 256:
            self._layout_cache = {}
            self._layout_cache_version = self.layout_version
        return self._layout_cache

    def kernel_cache(self) -> dict[object, object]:
        """A scratch dict for the engine, emptied whenever the state changes."""
        if self._kernel_cache_version != self.version or len(self._kernel_cache) > 64:
            self._kernel_cache = {}
            self._kernel_cache_version = self.version
        return self._kernel_cache

    # ------------------------------------------------------------------ names

    @property
    def n_nodes(self) -> int:
        return len(self.index)

    @property
    def n_devices(self) -> int:
        return int(self.dev_present_mask.sum())

    def lookup(self, names: Sequence[str]) -> IndexArray:
        """Row of each name, -1 for names not in the inventory: shape (len(names),)."""
        return self.resolve(names).rows

    def resolve(self, names: Sequence[str]) -> Candidates:
        """Rows of `names` (-1 if unknown) and the names as an object array, for replies.

        kube-scheduler sends the same candidate list for pod after pod, so results are cached.
        The key is a sample (length, first, middle and last name) and a hit is confirmed by
        comparing the whole list: a list comparison is an identity check or a memcmp per name,
        several times cheaper than hashing every name. The cache is dropped when the set of
        node names changes.
        """
        if self._lookup_generation != self.generation:
            self._lookup_cache.clear()
            self._lookup_generation = self.generation
        seq = names if isinstance(names, list) else list(names)
        n = len(seq)
        key = (n, seq[0], seq[n // 2], seq[-1]) if n else (0,)
        hit = self._lookup_cache.get(key)
        if hit is not None and hit[0] == seq:
            return hit[1]
        rows = np.fromiter(map(self.index.get, seq, repeat(-1)), dtype=np.intp, count=n)
        rows.flags.writeable = False
        name_array = np.empty(n, dtype=object)
        name_array[:] = seq
        name_array.flags.writeable = False
        found = Candidates(rows, name_array)
        if len(self._lookup_cache) >= _LOOKUP_CACHE_SIZE:
            del self._lookup_cache[next(iter(self._lookup_cache))]  # oldest first
        self._lookup_cache[key] = (list(seq), found)
        return found

    def all_rows(self) -> IndexArray:
        """Rows of every node, in row order."""
        return np.flatnonzero(self.node_valid_mask)

    @property
    def has_templated_nodes(self) -> bool:
        """Does some node book shares as templates? (The engine skips the rule otherwise.)"""
        key = ("templated",)
        cache = self.layout_cache()
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = bool(np.any(self.node_templated & self.node_valid_mask))
        return bool(hit)

    def booked_share(
        self, row: int | None, vram_mib: int, fp16_mtf: int, fp32_mtf: int
    ) -> tuple[int, int, int] | None:
        """What a share (per device) is booked as on `row`: itself, or the smallest template
        holding it where shares are templates; None when it must take whole devices there."""
        if row is None or not self.node_templated[row]:
            return vram_mib, fp16_mtf, fp32_mtf
        chosen = choose_template(self.share_options[row], vram_mib, fp16_mtf, fp32_mtf)
        if chosen is None:
            return None
        return chosen.vram_mib, chosen.fp16_milli_tflops, chosen.fp32_milli_tflops

    def enforces_shares(self, vendor: str) -> bool:
        """Does some node of `vendor` keep containers to their shares with a limiter?"""
        limited = [SHARING_MODES.index(m) for m in ENFORCEMENTS if m != "none"]
        return bool(
            np.any(
                self.node_valid_mask
                & (self.node_vendor == VENDOR_CODES[vendor])
                & np.isin(self.node_sharing, limited)
            )
        )

    def node_figures(self, min_health: int) -> tuple[IndexArray, dict[str, IntArray]]:
        """Per-node sums for monitoring, one vector per figure over `all_rows()`: VRAM (MiB)
        allocatable / allocated by HCS / free / in use outside HCS, TFLOPS (milli) allocatable
        / allocated / free, and devices present / idle / below `min_health`."""
        rows = self.all_rows()
        present = self.dev_present_mask[rows]

        def total(figure: npt.NDArray[Any], where: BoolArray = present) -> IntArray:
            summed: IntArray = np.where(where, figure[rows], 0).sum(axis=1, dtype=np.int64)
            return summed

        return rows, {
            "vram_allocatable": total(self.dev_vram_cap_mib),
            "vram_allocated": total(self.dev_vram_hcs_mib),
            "vram_free": total(self.dev_vram_free_mib),
            # In use by what HCS did not place (the tool reports more than HCS charged), so
            # allocatable = allocated + free + other wherever a device is not overbooked.
            "vram_other": total(np.maximum(self.dev_vram_reported_mib - self.dev_vram_hcs_mib, 0)),
            "fp16_allocatable": total(self.dev_fp16_cap_mtf),
            "fp16_allocated": total(self.dev_fp16_hcs_mtf),
            "fp16_free": total(self.dev_fp16_free_mtf),
            "fp32_allocatable": total(self.dev_fp32_cap_mtf),
            "fp32_allocated": total(self.dev_fp32_hcs_mtf),
            "fp32_free": total(self.dev_fp32_free_mtf),
            "devices": present.sum(axis=1, dtype=np.int64),
            "devices_idle": (present & self.dev_idle_mask[rows]).sum(axis=1, dtype=np.int64),
            "devices_unhealthy": (present & (self.dev_health[rows] < min_health)).sum(
                axis=1, dtype=np.int64
            ),
        }

    # ------------------------------------------------------------------ nodes

    def upsert_node(self, node: ComputeNode) -> None:
        """Add a ComputeNode or replace its previous version: O(its devices)."""
        name = node.name
        row = self.index.get(name)
        if row is None:
            row = self._take_row()
            self.index[name] = row
            self.node_names[row] = name
            self.generation += 1
        if self.keep_nodes:
            self.nodes[name] = node
        if len(node.devices) > self.width:
            self._widen(len(node.devices))
        self._write_row(row, node)
        self._recharge_row(row)
        self._changed(row)
        self.layout_version += 1

    def remove_node(self, name: str) -> bool:
        """Forget a ComputeNode; its allocations stay (their pods still exist) and are charged
        again if the node comes back. Returns whether it was known."""
        row = self.index.pop(name, None)
        if row is None:
            return False
        self.nodes.pop(name, None)
        self.node_names[row] = None
        self.device_ids[row] = ()
        self.node_valid_mask[row] = False
        self.node_vendor[row] = -1
        self.node_templated[row] = False
        self.dev_present_mask[row] = False
        self.dev_idle_mask[row] = False
        self.dev_open_mask[row] = False
        self._free_rows.append(row)
        self.generation += 1
        self._changed(row)
        self.layout_version += 1
        return True

    def _take_row(self) -> int:
        if not self._free_rows:
            self._grow_rows(self.rows * 2)
        return self._free_rows.pop()

    def _node_arrays(self) -> list[str]:
        return [
            a
            for a in vars(self)
            if a.startswith("node_") and a not in {"node_names", "node_allocations"}
        ]

    def _device_arrays(self) -> list[str]:
        return [a for a in vars(self) if a.startswith("dev_")]

    def _grow_rows(self, rows: int) -> None:
        old = self.rows
        for attr in self._node_arrays() + self._device_arrays():
            arr = getattr(self, attr)
            fill = (
                NO_HEARTBEAT
                if attr == "node_heartbeat_s"
                else (-1 if attr == "node_vendor" or attr.startswith("node_tmpl_") else 0)
            )
            grown = np.full((rows, *arr.shape[1:]), fill, arr.dtype)
            grown[:old] = arr
            setattr(self, attr, grown)
        self.node_names.extend([None] * (rows - old))
        self.device_ids.extend([()] * (rows - old))
        self.share_options.extend([()] * (rows - old))
        self._free_rows = list(range(rows - 1, old - 1, -1)) + self._free_rows
        self.rows = rows
        self.shape_epoch += 1

    def _widen(self, needed: int) -> None:
        """More device columns for every row, from the arrays alone (no node object is kept):
        the new columns are absent devices, exactly as `_write_row` pads them (zero, no group
        bits, a NUMA id of their own), and the bit masks take the wider dtype."""
        old = self.width
        width = _width_for(max(needed, self.width * 2))
        for attr in self._device_arrays():
            arr = getattr(self, attr)
            dtype = _BITS_DTYPE[width] if attr.endswith("_bits") else arr.dtype
            grown = np.zeros((self.rows, width), dtype)
            grown[:, :old] = arr
            if attr == "dev_numa":
                grown[:, old:] = ABSENT_NUMA + np.arange(old, width)
            setattr(self, attr, grown)
        self.width = width
        self.shape_epoch += 1

    def _write_row(self, row: int, node: ComputeNode) -> None:
        n = len(node.devices)
        w = self.width
        self.node_valid_mask[row] = True
        self.node_vendor[row] = VENDOR_CODES[node.vendor]
        self.node_ready_mask[row] = node.ready
        self.node_agent_mask[row] = node.condition_true("AgentConnected", default=True)
        hb = node.last_heartbeat
        self.node_heartbeat_s[row] = hb.timestamp() if hb is not None else NO_HEARTBEAT
        self.node_shared_mask[row] = node.shared
        self.node_sharing[row] = SHARING_MODES.index(node.share_enforcement)
        self.node_slots[row] = node.device_slots or UNLIMITED_SLOTS
        self._write_templates(row, node)
        profile = self.vendors[node.vendor]
        resource = profile.resource_for(node.devices[0].model) if node.devices else profile.resource
        if resource not in self.resource_names:
            self.resource_names.append(resource)
        self.node_resource[row] = self.resource_names.index(resource)
        model = node.devices[0].model if node.devices else ""
        if model not in self.model_names:
            self.model_names.append(model)
        self.node_model[row] = self.model_names.index(model)
        self.device_ids[row] = tuple(d.id for d in node.devices)
        present = np.zeros(w, np.bool_)
        present[:n] = True
        self.dev_present_mask[row] = present
        self.dev_vram_cap_mib[row] = _pad([d.vram_allocatable_mib for d in node.devices], w)
        self.dev_vram_reported_mib[row] = _pad([d.vram_allocated_mib for d in node.devices], w)
        self.dev_fp16_cap_mtf[row] = _pad([d.fp16_milli_tflops for d in node.devices], w)
        self.dev_fp32_cap_mtf[row] = _pad([d.fp32_milli_tflops for d in node.devices], w)
        # An unschedulable (re-indexed) device is as unusable as a failed one.
        self.dev_health[row] = _pad(
            [0 if d.unschedulable else d.health_score for d in node.devices], w
        )
        self.dev_health_f64[row] = self.dev_health[row]
        cliques = _pad(_cliques(node, self.vendors), w)
        numa = [
            d.numa_node
            if i < n and (d := node.devices[i]).numa_node is not None
            else ABSENT_NUMA + i
            for i in range(w)
        ]
        self.dev_clique[row] = cliques
        self.dev_numa[row] = numa
        self.dev_clique_bits[row] = _group_bits(cliques, n)
        self.dev_numa_bits[row] = _group_bits(numa, n)

    def _write_templates(self, row: int, node: ComputeNode) -> None:
        options = template_options(node, self.vendors)
        self.node_templated[row] = uses_templates(node)
        self.share_options[row] = options
        if len(options) > self.template_width:
            width = len(options)
            for attr in ("node_tmpl_vram_mib", "node_tmpl_fp16_mtf", "node_tmpl_fp32_mtf"):
                grown = np.full((self.rows, width), -1, np.int64)
                grown[:, : self.template_width] = getattr(self, attr)
                setattr(self, attr, grown)
            self.template_width = width
        pad = [-1] * (self.template_width - len(options))
        self.node_tmpl_vram_mib[row] = [t.vram_mib for t in options] + pad
        self.node_tmpl_fp16_mtf[row] = [t.fp16_milli_tflops for t in options] + pad
        self.node_tmpl_fp32_mtf[row] = [t.fp32_milli_tflops for t in options] + pad

    # ------------------------------------------------------------------ allocations

    def add_allocation(self, alloc: Allocation) -> None:
        """Charge an allocation to its node's devices (the caller checked that it fits)."""
        if alloc.uid in self.allocations:
            raise PlacementError(
                f"pod {alloc.namespace}/{alloc.name} ({alloc.uid}) already has "
                f"an allocation on {self.allocations[alloc.uid].node}"
            )
        self.allocations[alloc.uid] = alloc
        self.node_allocations.setdefault(alloc.node, set()).add(alloc.uid)
        row = self.index.get(alloc.node)
        if row is not None:
            self._charge(row, alloc, +1)
            self._refresh_free(row)
        self._changed(row)

    def remove_allocation(self, uid: str) -> Allocation | None:
        alloc = self.allocations.pop(uid, None)
        if alloc is None:
            return None
        on_node = self.node_allocations.get(alloc.node)
        if on_node is not None:
            on_node.discard(uid)
            if not on_node:
                del self.node_allocations[alloc.node]
        row = self.index.get(alloc.node)
        if row is not None:
            self._charge(row, alloc, -1)
            self._refresh_free(row)
        self._changed(row)
        return alloc

    def replace_allocation(self, alloc: Allocation) -> None:
        """Swap an allocation's record for one with the same charges (e.g. confirmed)."""
        self.allocations[alloc.uid] = alloc

    def _slot(self, row: int, device_id: str) -> int | None:
        try:
            return self.device_ids[row].index(device_id)
        except ValueError:
            return None

    def _charge(self, row: int, alloc: Allocation, sign: int) -> None:
        for charge in alloc.charges:
            slot = self._slot(row, charge.device_id)
            if slot is None:  # the device left the node; nothing to charge against
                continue
            self.dev_vram_hcs_mib[row, slot] += sign * charge.vram_mib
            self.dev_fp16_hcs_mtf[row, slot] += sign * charge.fp16_milli_tflops
            self.dev_fp32_hcs_mtf[row, slot] += sign * charge.fp32_milli_tflops
            self.dev_holders[row, slot] += sign

    def _recharge_row(self, row: int) -> None:
        self.dev_vram_hcs_mib[row] = 0
        self.dev_fp16_hcs_mtf[row] = 0
        self.dev_fp32_hcs_mtf[row] = 0
        self.dev_holders[row] = 0
        name = self.node_names[row]
        for uid in self.node_allocations.get(name or "", ()):
            self._charge(row, self.allocations[uid], +1)
        self._refresh_free(row)

    def _refresh_free(self, row: int) -> None:
        # Free = allocatable - max(reported in use, charged by HCS): the agent's `memory.used`
        # already includes what HCS's pods use, so subtracting both would count them twice.
        # What the device reports beyond HCS's charges (processes HCS did not place) still
        # counts.
        np.maximum(
            self.dev_vram_reported_mib[row],
            self.dev_vram_hcs_mib[row],
            out=self.dev_vram_free_mib[row],
        )
        np.subtract(
            self.dev_vram_cap_mib[row], self.dev_vram_free_mib[row], out=self.dev_vram_free_mib[row]
        )
        np.subtract(
            self.dev_fp16_cap_mtf[row], self.dev_fp16_hcs_mtf[row], out=self.dev_fp16_free_mtf[row]
        )
        np.subtract(
            self.dev_fp32_cap_mtf[row], self.dev_fp32_hcs_mtf[row], out=self.dev_fp32_free_mtf[row]
        )
        present = self.dev_present_mask[row]
        idle = self.dev_holders[row] == 0
        self.dev_idle_mask[row] = present & idle
        room = self.node_shared_mask[row] & (self.dev_holders[row] < self.node_slots[row])
        self.dev_open_mask[row] = present & (idle | room)
        cap = np.where(present, self.dev_vram_cap_mib[row], 0)
        partly = idle | self.node_shared_mask[row]
        used = np.where(partly, cap - np.clip(self.dev_vram_free_mib[row], 0, cap), cap)
        total = int(cap.sum())
        self.node_vram_total_mib[row] = total
        self.node_vram_used_mib[row] = int(np.where(present, used, 0).sum())
        self.node_vram_avg_mib[row] = total // max(int(present.sum()), 1)

    # ------------------------------------------------------------------ bulk

    @classmethod
    def from_nodes(
        cls, nodes: Iterable[ComputeNode], vendors: VendorTable | None = None
    ) -> ClusterState:
        nodes = list(nodes)
        width = max([8, *(len(n.devices) for n in nodes)])
        state = cls(vendors=vendors or VendorTable(), width=width, rows=max(16, len(nodes)))
        for node in nodes:
            state.upsert_node(node)
        return state


MAX_DEVICES_PER_NODE: Final = 64
ABSENT_NUMA: Final = 1000
"""The NUMA id of slot i with no known NUMA node (or no device) is ABSENT_NUMA + i: a group of
its own."""
_BITS_DTYPE: Final[dict[int, type[np.unsignedinteger[Any]]]] = {
    8: np.uint8,
    16: np.uint16,
    32: np.uint32,
    64: np.uint64,
}


def _width_for(devices: int) -> int:
    """Row width: a power of two from 8 to 64, so a row of bools packs into one machine word."""
    width = 8
    while width < devices:
        width *= 2
    if width > MAX_DEVICES_PER_NODE:
        raise PlacementError(
            f"a node with {devices} devices exceeds the supported {MAX_DEVICES_PER_NODE} per node"
        )
    return width


def _group_bits(groups: list[int], n: int) -> list[int]:
    """Per slot: the bit mask of the present slots sharing its group id."""
    out = []
    for i in range(len(groups)):
        mask = 0
        if i < n:
            for j in range(n):
                if groups[j] == groups[i]:
                    mask |= 1 << j
        out.append(mask)
    return out


def _pad(values: list[int], width: int) -> list[int]:
    return values + [0] * (width - len(values))


UNLIMITED_SLOTS: Final = 1 << 30
ROW_LOG_KEPT: Final = 4096
"""Changes remembered for patching kept evaluations (older ones: evaluate afresh)."""
SHARING_MODES: Final = ("exclusive", *ENFORCEMENTS)
MAX_CLIQUES_EXAMINED: Final = 20_000


def device_cliques(node: ComputeNode, vendors: VendorTable) -> list[int]:
    """Per device, its all-to-all high-bandwidth group, named by the group's first slot."""
    return _cliques(node, vendors)


def _cliques(node: ComputeNode, vendors: VendorTable) -> list[int]:
    """All-to-all groups of high-bandwidth links: each group's devices are pairwise linked.

    A partial mesh (a DGX-1 hybrid cube mesh: NVLink to four peers, PCIe to three) is not one
    group because its links connect everything: only sets linked pair by pair are. The node is
    partitioned greedily: the largest all-to-all set of the remaining devices (the one with the
    lowest slots on a tie) becomes a group, named by its lowest slot, until none remain. A link
    counts when either end lists it; peers not in the list are ignored.
    """
    neighbours = _link_graph(node, vendors)
    group = list(range(len(node.devices)))
    remaining = set(group)
    while remaining:
        best: tuple[int, ...] = ()
        cliques = _maximal_cliques(set(), set(remaining), set(), neighbours)
        # Real link graphs have few maximal cliques; a pathological one (64 devices, links
        # chosen to maximise them) is cut off, keeping the best found, so reading a
        # ComputeNode stays bounded.
        for clique in itertools.islice(cliques, MAX_CLIQUES_EXAMINED):
            members = tuple(sorted(clique))
            if (len(members), [-m for m in members]) > (len(best), [-m for m in best]):
                best = members
        for slot in best:
            group[slot] = best[0]
        remaining -= set(best)
    return group


def _link_graph(node: ComputeNode, vendors: VendorTable) -> dict[int, set[int]]:
    fast = vendors.all_link_types()
    slot_of = {d.id: i for i, d in enumerate(node.devices)}
    neighbours: dict[int, set[int]] = {i: set() for i in range(len(node.devices))}
    for i, dev in enumerate(node.devices):
        for link in dev.links:
            if link.type not in fast:
                continue
            for peer in link.peers:
                j = slot_of.get(peer)
                if j is not None and j != i:
                    neighbours[i].add(j)
                    neighbours[j].add(i)
    return neighbours


def _maximal_cliques(
    r: set[int], p: set[int], x: set[int], nb: dict[int, set[int]]
) -> Iterator[set[int]]:
    """Bron-Kerbosch with a pivot over the slots in `p` (a node has at most 64 devices)."""
    if not p and not x:
        yield r
        return
    pivot = max(p | x, key=lambda u: len(nb[u] & p))
    for v in sorted(p - nb[pivot]):
        yield from _maximal_cliques(r | {v}, p & nb[v], x & nb[v], nb)
        p = p - {v}
        x = x | {v}
