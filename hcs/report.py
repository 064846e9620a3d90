"""What `kubectl hcs top` shows: per-node and per-vendor use of devices, VRAM and TFLOPS, and
ComputeQuota use.

Pure functions over the books. The node figures are `ClusterState.node_figures`, the sums the
extender exports as metrics, and node availability is the engine's own (`node_availability`),
so the table, the dashboard and filter can never disagree about a node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hcs.demand import PREFIX
from hcs.engine import EngineConfig, node_availability
from hcs.models import ComputeQuota
from hcs.quantity import format_mib, format_milli
from hcs.quota import render
from hcs.state import SHARING_MODES, ClusterState, IntArray
from hcs.vendors import VENDOR_NAMES


@dataclass(frozen=True)
class Use:
    """One node's (or one vendor's) figures in engine units: MiB, milli-TFLOPS, counts."""

    name: str
    vendor: str
    status: str
    """Node: Ready, NotReady or AgentNotConnected. Vendor: "N/M nodes ready"."""
    sharing: str
    devices: int
    devices_used: int
    devices_unhealthy: int
    vram_mib: int
    vram_used_mib: int
    vram_free_mib: int
    fp16_mtf: int
    fp16_used_mtf: int
    fp16_free_mtf: int
    fp32_mtf: int
    fp32_used_mtf: int
    fp32_free_mtf: int
    nodes: int = 1
    nodes_ready: int = 0
    """Ready with a connected agent, of `nodes`."""
    vram_other_mib: int = 0
    """In use by processes HCS did not place (reported by the vendor tool beyond HCS's
    charges): allocatable = used + free + other."""

    def as_dict(self) -> dict[str, Any]:
        """The document form (`-o json|yaml`): quantities as Kubernetes quantity strings."""
        return {
            "name": self.name,
            "vendor": self.vendor,
            "status": self.status,
            "sharing": self.sharing,
            "devices": {
                "total": self.devices,
                "used": self.devices_used,
                "unhealthy": self.devices_unhealthy,
            },
            "vram": {
                **_triple(format_mib, self.vram_mib, self.vram_used_mib, self.vram_free_mib),
                "other": format_mib(self.vram_other_mib),
            },
            "tflops-fp16": _triple(
                format_milli, self.fp16_mtf, self.fp16_used_mtf, self.fp16_free_mtf
            ),
            "tflops-fp32": _triple(
                format_milli, self.fp32_mtf, self.fp32_used_mtf, self.fp32_free_mtf
            ),
        }


def _triple(fmt: Any, total: int, used: int, free: int) -> dict[str, str]:
    return {"allocatable": fmt(total), "allocated": fmt(used), "free": fmt(free)}


SHARING_DISPLAY = tuple(
    m if m == "exclusive" else f"shared ({'unenforced' if m == 'none' else m})"
    for m in SHARING_MODES
)
"""How `kubectl hcs top nodes` shows each node's sharing mode, by `node_sharing` index."""

# `node_figures` name -> `Use` field.
_FIGURES = {
    "devices": "devices",
    "devices_used": "devices_used",
    "devices_unhealthy": "devices_unhealthy",
    "vram_allocatable": "vram_mib",
    "vram_allocated": "vram_used_mib",
    "vram_free": "vram_free_mib",
    "vram_other": "vram_other_mib",
    "fp16_allocatable": "fp16_mtf",
    "fp16_allocated": "fp16_used_mtf",
    "fp16_free": "fp16_free_mtf",
    "fp32_allocatable": "fp32_mtf",
    "fp32_allocated": "fp32_used_mtf",
    "fp32_free": "fp32_free_mtf",
}


def _figures(state: ClusterState, config: EngineConfig) -> tuple[Any, dict[str, IntArray]]:
    rows, figs = state.node_figures(config.min_health)
    figs = {**figs, "devices_used": figs["devices"] - figs["devices_idle"]}
    return rows, figs


def node_report(
    state: ClusterState,
    config: EngineConfig,
    *,
    vendor: str | None = None,
    now: float | None = None,
) -> list[Use]:
    """One row per node (of `vendor`, when given), by name."""
    rows, figs = _figures(state, config)
    ready, agent = node_availability(state, rows, config, now)
    status = np.select([~ready, ~agent], ["NotReady", "AgentNotConnected"], "Ready")
    vendors = np.asarray(VENDOR_NAMES)[state.node_vendor[rows]]
    modes = np.asarray(SHARING_DISPLAY)[state.node_sharing[rows]]
    columns = {field: figs[f].tolist() for f, field in _FIGURES.items()}
    out = [
        Use(
            str(state.node_names[row]),
            str(vendors[i]),
            str(status[i]),
            str(modes[i]),
            **{field: int(c[i]) for field, c in columns.items()},
            nodes_ready=int(status[i] == "Ready"),
        )
        for i, row in enumerate(rows.tolist())
        if vendor is None or vendors[i] == vendor
    ]
    out.sort(key=lambda u: u.name)
    return out


def vendor_report(
    state: ClusterState, config: EngineConfig, *, now: float | None = None
) -> list[Use]:
    """One row per vendor that has nodes: the sums over its nodes (all of them, ready or not:
    `status` says how many are ready)."""
    rows, figs = _figures(state, config)
    codes = state.node_vendor[rows].astype(np.intp)
    ready, agent = node_availability(state, rows, config, now)
    n = len(VENDOR_NAMES)
    nodes = np.bincount(codes, minlength=n)
    ready_nodes = np.bincount(codes, weights=(ready & agent), minlength=n).astype(np.int64)
    sums = {}
    for f in _FIGURES:
        total = np.zeros(n, np.int64)
        np.add.at(total, codes, figs[f])  # exact int64 sums (bincount weights are float)
        sums[f] = total.tolist()
    return [
        Use(
            name,
            name,
            f"{ready_nodes[code]}/{nodes[code]} nodes ready",
            "",
            **{field: int(sums[f][code]) for f, field in _FIGURES.items()},
            nodes=int(nodes[code]),
            nodes_ready=int(ready_nodes[code]),
        )
        for code, name in enumerate(VENDOR_NAMES)
        if nodes[code]
    ]


@dataclass(frozen=True)
class QuotaUse:
    namespace: str
    name: str
    resource: str
    hard: str
    used: str | None
    """None: the quota has no `status.used` yet (nothing admitted, or no controller)."""
    percent: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "resource": self.resource,
            "hard": self.hard,
            "used": self.used,
            "percent": self.percent,
        }


def quota_report(quotas: Iterable[ComputeQuota]) -> list[QuotaUse]:
    """One row per limited resource of each quota, by namespace and name."""
    out = []
    for quota in sorted(quotas, key=lambda q: (q.namespace, q.name)):
        used = quota.used.as_dict()
        for key, hard in quota.hard.as_dict().items():
            if hard is None:
                continue
            counted = used.get(key)
            percent = None
            if counted is not None:
                percent = 100 if hard == 0 and counted else (counted * 100 // hard if hard else 0)
            out.append(
                QuotaUse(
                    quota.namespace,
                    quota.name,
                    PREFIX + key,
                    render(key, hard),
                    None if counted is None else render(key, counted),
                    percent,
                )
            )
    return out


def documents(rows: Sequence[Use | QuotaUse]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in rows]
