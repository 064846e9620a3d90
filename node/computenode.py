"""From discovered devices to the ComputeNode the agent publishes.

Compute figures come from a per-model table (the tools report memory, not TFLOPS), each figure
with its source. A model not in the table gets 0 TFLOPS and a warning, never a guess; a site
adds its models with `--model-table FILE` (YAML: `MODEL: {fp16: "…", fp32: "…", link:
"600GB/s"}`). Figures are per device as the tool lists devices: cnmon lists each chip of a
dual-chip MLU370-X8 card as its own card, so the X8 row is half the card's datasheet figure.

NVIDIA vGPU names (`NVIDIA H200-141C`, `GRID A100-20C`) carry the profile's framebuffer in GiB:
the figures are the base GPU's, scaled by the profile's share of the GPU's memory (a 141C
profile on a 141 GB H200 is the whole GPU; time-sliced profiles share the engines equally).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from hcs.models import ENFORCEMENT_LABEL, SHARING_LABEL, SLOTS_LABEL
from hcs.quantity import format_milli, milli_tflops
from hcs.vendors import VendorName
from node.devices import RawDevice, Topology

log = logging.getLogger("hcs.agent")


@dataclass(frozen=True)
class ModelFigures:
    fp16: str
    fp32: str
    link_bandwidth: str = ""
    vram_gib: int = 0
    """The model's memory, to scale vGPU profiles; 0 where not needed."""
    source: str = "site configuration"


_DS = "NVIDIA datasheet (dense tensor FP16, FP32)"
_VT = "shared/spec/VENDOR-TOOLS.md"
# Dense TFLOPS per device; "0" where no figure is published (Hygon) or known (FP32 on Ascend).
MODEL_TABLE: dict[str, ModelFigures] = {
    "V100-32G": ModelFigures("125", "15.7", "300GB/s", 32, _DS),
    "T4": ModelFigures("65", "8.1", "", 16, _DS),
    "A10": ModelFigures("125", "31.2", "", 24, _DS),
    "A100-40G": ModelFigures("312", "19.5", "600GB/s", 40, _DS),
    "A100-80G": ModelFigures("312", "19.5", "600GB/s", 80, _DS),
    "H100-SXM": ModelFigures("989", "67", "900GB/s", 80, _DS),
    "H100-PCIe": ModelFigures("756", "51", "600GB/s", 80, _DS),
    "H200": ModelFigures("989", "67", "900GB/s", 141, f"press, per {_VT}"),
    "H20": ModelFigures("148", "44", "900GB/s", 96, f"press, per {_VT}"),
    "L40S": ModelFigures("362", "91.6", "", 48, _DS),
    "L4": ModelFigures("121", "30.3", "", 24, _DS),
    "Ascend910A": ModelFigures("256", "0", "30GB/s", 32, f"{_VT} (unverified)"),
    "Ascend910B3": ModelFigures("313", "0", "56GB/s", 64, f"{_VT} (unverified)"),
    "Ascend910B4": ModelFigures("280", "0", "56GB/s", 32, f"{_VT} (unverified)"),
    "Ascend910B4-1": ModelFigures(
        "280",
        "0",
        "56GB/s",
        64,
        f"the 910B4's figure, {_VT} (unverified); 64 GB as npu-smi 25.2.0 prints it",
    ),
    "Ascend910_93": ModelFigures(
        "376",
        "0",
        "",
        64,
        "press: ~752 TFLOPS dense FP16 per Ascend 910C (A3) package of two dies, halved per "
        "die as npu-smi lists them (unverified)",
    ),
    "Ascend310": ModelFigures("8", "0", "", 8, "Huawei Ascend 310 datasheet: 8 TFLOPS FP16"),
    "Ascend310P3": ModelFigures("70", "0", "", 24, f"{_VT} (unverified; Atlas 300I Pro per chip)"),
    "K100-AI": ModelFigures("0", "0", "", 64, "memory only: no public TFLOPS figure"),
    "K100": ModelFigures("0", "0", "", 64, "memory only: no public TFLOPS figure"),
    "Z100L": ModelFigures("0", "0", "", 32, "memory only: no public TFLOPS figure"),
    "Z100": ModelFigures("0", "0", "", 32, "memory only: no public TFLOPS figure"),
    "BW": ModelFigures("0", "0", "", 64, "Hygon BW (C-3000): memory only, no public figure"),
    "MLU370-X8": ModelFigures(
        "48",
        "16",
        "200GB/s",
        24,
        f"card 96/32 ({_VT}, press) halved: cnmon lists the card's two chips as two cards",
    ),
    "MLU370-X4": ModelFigures("96", "24", "", 24, "Cambricon MLU370-X4 product page (press)"),
    "MLU370-S4": ModelFigures("72", "18", "", 24, f"{_VT} (unverified)"),
}

_NVIDIA_NAMES = [
    (r"A100.*80", "A100-80G"),
    (r"A100", "A100-40G"),
    (r"H100.*PCI", "H100-PCIe"),
    (r"H100", "H100-SXM"),
    (r"H200", "H200"),
    (r"H20\b", "H20"),
    (r"L40S", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bA10\b", "A10"),
    (r"\bT4\b", "T4"),
    (r"V100", "V100-32G"),
]
_HYGON_NAMES = [
    (r"K100[ _-]?AI", "K100-AI"),
    (r"\bK100\b", "K100"),
    (r"Z100L", "Z100L"),
    (r"Z100", "Z100"),
    (r"\bBW\d*\b|C-?3000", "BW"),
]
# `-141C`, `-20C`, `-1-5C` (MIG-backed): the profile's framebuffer in GiB, then its series.
_VGPU = re.compile(r"-(?:\d+-)?(\d+)[ABCQ]$")


def model_key(vendor: VendorName, name: str, hint: str | None = None) -> str:
    """The table's name for a model as the tool prints it (`NVIDIA A100-SXM4-80GB` -> A100-80G)."""
    if hint:
        return hint
    patterns = {"nvidia": _NVIDIA_NAMES, "hygon": _HYGON_NAMES}.get(vendor, [])
    for pattern, key in patterns:
        if re.search(pattern, name):
            return key
    if vendor == "huawei":
        return "Ascend" + name.removeprefix("Ascend")
    return name


def figures_for(
    vendor: VendorName, dev: RawDevice, table: Mapping[str, ModelFigures]
) -> tuple[str, ModelFigures | None]:
    """The model key and its per-device figures (scaled for an NVIDIA vGPU profile)."""
    key = model_key(vendor, dev.name, dev.model_hint)
    figures = table.get(key)
    vgpu = _VGPU.search(dev.name) if vendor == "nvidia" else None
    if figures is not None and vgpu is not None and figures.vram_gib:
        share = min(Fraction(int(vgpu[1]), figures.vram_gib), Fraction(1))
        if share < 1:
            figures = replace(
                figures,
                fp16=format_milli(int(milli_tflops(figures.fp16) * share)),
                fp32=format_milli(int(milli_tflops(figures.fp32) * share)),
            )
    return key, figures


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, ok: bool, reason: str, message: str, now: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }


def build_status(
    *,
    healthy: bool,
    reason: str,
    message: str,
    now: str | None = None,
    schedulable_message: str = "",
) -> dict[str, Any]:
    now = now or _now()
    return {
        "phase": "Ready" if healthy else "NotReady",
        "conditions": [
            _condition("Ready", healthy, "NodeReady" if healthy else reason, message, now),
            _condition(
                "HardwareHealthy", healthy, "AllDevicesRead" if healthy else reason, message, now
            ),
            _condition("AgentConnected", True, "HeartbeatReceived", "agent running", now),
            _condition(
                "Schedulable",
                True,
                "DevicesReindexed" if schedulable_message else "Schedulable",
                schedulable_message,
                now,
            ),
        ],
        "lastHeartbeat": now,
    }


def _links(
    dev: RawDevice,
    topology: Topology,
    id_of: Mapping[str, str],
    bandwidth: str,
) -> list[dict[str, Any]]:
    """This device's links as its own matrix row marks them, grouped by link type."""
    by_type: dict[str, set[str]] = {}
    for label in dev.labels or (dev.id,):
        for peer, kind in topology.links.get(label, {}).items():
            if peer in id_of and id_of[peer] != dev.id:
                by_type.setdefault(kind, set()).add(id_of[peer])
    return [
        {"type": kind, "peers": sorted(peers, key=_id_order), "bandwidth": bandwidth or "unknown"}
        for kind, peers in sorted(by_type.items())
    ]


def _id_order(dev_id: str) -> tuple[int, str]:
    return (int(dev_id), "") if dev_id.isdigit() else (1 << 30, dev_id)


def build_compute_node(
    node_name: str,
    vendor: VendorName,
    devices: Sequence[RawDevice],
    topology: Topology,
    *,
    table: Mapping[str, ModelFigures] | None = None,
    shared: bool = False,
    slots: int | None = None,
    enforcement: str | None = None,
    unschedulable: Mapping[str, str] | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """The ComputeNode for `devices` (Kubernetes JSON, ready to validate and publish).
    `unschedulable` maps device IDs to why no new pod may use them (re-indexed devices)."""
    table = table if table is not None else MODEL_TABLE
    unschedulable = unschedulable or {}
    id_of = {label: d.id for d in devices for label in (d.labels or (d.id,))}
    spec_devices = []
    totals = [0, 0, 0]
    interconnects: set[tuple[str, str]] = set()
    warnings = list(topology.notes)
    for dev in devices:
        key, figures = figures_for(vendor, dev, table)
        if figures is None:
            warnings.append(f"model {dev.name!r} unknown: 0 TFLOPS")
            log.warning(
                "model %r (%s) is not in the model table: 0 TFLOPS published; add it "
                "with --model-table",
                dev.name,
                key,
            )
            figures = ModelFigures("0", "0")
        entry: dict[str, Any] = {
            "id": dev.id,
            "model": key,
            "vram": f"{dev.vram_mib}Mi",
            "vramAllocatable": f"{dev.vram_mib}Mi",
            "vramAllocated": f"{min(dev.used_mib, dev.vram_mib)}Mi",
            "compute": {"fp16": figures.fp16, "fp32": figures.fp32},
            "topology": {"busId": dev.bus_id or f"unknown-{dev.id}"},
            "healthScore": dev.health_score,
        }
        if dev.identity:
            entry["identity"] = dev.identity
        if dev.id in unschedulable:
            entry["unschedulable"] = True
        numa = next((topology.numa[x] for x in dev.labels or (dev.id,) if x in topology.numa), None)
        if numa is not None:
            entry["topology"]["numaNode"] = numa
        links = _links(dev, topology, id_of, figures.link_bandwidth)
        if links:
            entry["topology"]["links"] = links
            interconnects |= {(lk["type"], lk["bandwidth"]) for lk in links}
        spec_devices.append(entry)
        totals[0] += dev.vram_mib
        totals[1] += milli_tflops(figures.fp16)
        totals[2] += milli_tflops(figures.fp32)
    spec: dict[str, Any] = {
        "vendor": vendor,
        "nodeSelector": {"kubernetes.io/hostname": node_name},
        "capacity": {
            "vram": f"{totals[0]}Mi",
            "tflops-fp16": format_milli(totals[1]),
            "tflops-fp32": format_milli(totals[2]),
        },
        "devices": spec_devices,
    }
    if interconnects:
        spec["topology"] = {
            "interconnects": [{"type": t, "bandwidth": b} for t, b in sorted(interconnects)]
        }
    unhealthy = [d.id for d in devices if d.health_score < 60]
    message = f"{len(devices)} devices read"
    if unhealthy:
        message += f"; low health: {', '.join(unhealthy)}"
    if warnings:
        message += "; " + "; ".join(warnings)
    return {
        "apiVersion": "hcs.io/v1alpha1",
        "kind": "ComputeNode",
        "metadata": {
            "name": node_name,
            "labels": {
                "vendor": vendor,
                **({SHARING_LABEL: "shared"} if shared else {}),
                **({ENFORCEMENT_LABEL: enforcement} if shared and enforcement else {}),
                **({SLOTS_LABEL: str(slots)} if slots else {}),
            },
        },
        "spec": spec,
        "status": build_status(
            healthy=bool(devices),
            reason="NoDevices",
            message=message[:1000],
            now=now,
            schedulable_message="; ".join(
                f"device {i}: {why}" for i, why in sorted(unschedulable.items())
            )[:1000],
        ),
    }
