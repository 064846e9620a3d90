"""From discovered devices to the ComputeNode the agent publishes.

Compute figures come from a per-model table (the tools report memory, not TFLOPS): the datasheet
values of DESIGN §5 and the vendor facts. A model not in the table gets 0 TFLOPS and a warning,
never a guess; a site can add its models with `--model-table FILE` (YAML: `MODEL: {fp16: "…",
fp32: "…", link: "600GB/s"}`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hcs.agent.discovery import LINK_OF, RawDevice, Topology
from hcs.models import SHARING_LABEL
from hcs.quantity import format_milli, milli_tflops
from hcs.vendors import VendorName

log = logging.getLogger("hcs.agent")


@dataclass(frozen=True)
class ModelFigures:
    fp16: str
    fp32: str
    link_bandwidth: str = ""


# Dense TFLOPS; "0" where no figure is published (Hygon) or none is known (FP32 on Ascend).
MODEL_TABLE: dict[str, ModelFigures] = {
    "V100-32G": ModelFigures("125", "15.7", "300GB/s"),
    "T4": ModelFigures("65", "8.1"),
    "A10": ModelFigures("125", "31.2"),
    "A100-40G": ModelFigures("312", "19.5", "600GB/s"),
    "A100-80G": ModelFigures("312", "19.5", "600GB/s"),
    "H100-SXM": ModelFigures("989", "67", "900GB/s"),
    "H100-PCIe": ModelFigures("756", "51", "600GB/s"),
    "H200": ModelFigures("989", "67", "900GB/s"),
    "H20": ModelFigures("148", "44", "900GB/s"),
    "L40S": ModelFigures("362", "91.6"),
    "L4": ModelFigures("121", "30.3"),
    "Ascend910A": ModelFigures("256", "0", "30GB/s"),
    "Ascend910B3": ModelFigures("313", "0", "56GB/s"),
    "Ascend910B4": ModelFigures("280", "0", "56GB/s"),
    "Ascend310P3": ModelFigures("70", "0"),
    "K100-AI": ModelFigures("0", "0"),
    "MLU370-X8": ModelFigures("96", "32", "200GB/s"),
    "MLU370-S4": ModelFigures("72", "18"),
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


def model_key(vendor: VendorName, name: str) -> str:
    """The table's name for a model as the tool prints it (`NVIDIA A100-SXM4-80GB` -> A100-80G)."""
    if vendor == "nvidia":
        for pattern, key in _NVIDIA_NAMES:
            if re.search(pattern, name):
                return key
    if vendor == "huawei":
        return "Ascend" + name.removeprefix("Ascend")
    if vendor == "hygon":
        return name.replace("_", "-")
    return name


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
    *, healthy: bool, reason: str, message: str, now: str | None = None
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
            _condition("Schedulable", True, "Schedulable", "", now),
        ],
        "lastHeartbeat": now,
    }


def build_compute_node(
    node_name: str,
    vendor: VendorName,
    devices: Sequence[RawDevice],
    topology: Topology,
    *,
    table: Mapping[str, ModelFigures] | None = None,
    shared: bool = False,
    now: str | None = None,
) -> dict[str, Any]:
    """The ComputeNode for `devices` (Kubernetes JSON, ready to validate and publish)."""
    table = table if table is not None else MODEL_TABLE
    clique_of = {d: group for group in topology.cliques for d in group}
    link = LINK_OF[vendor]
    spec_devices = []
    totals = [0, 0, 0]
    bandwidths = set()
    for dev in devices:
        key = model_key(vendor, dev.name)
        figures = table.get(key)
        if figures is None:
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
            "vramAllocated": f"{dev.used_mib}Mi",
            "compute": {"fp16": figures.fp16, "fp32": figures.fp32},
            "topology": {"busId": dev.bus_id or f"unknown-{dev.id}"},
            "healthScore": dev.health_score,
        }
        if dev.id in topology.numa:
            entry["topology"]["numaNode"] = topology.numa[dev.id]
        peers = [p for p in clique_of.get(dev.id, ()) if p != dev.id]
        if peers:
            bandwidth = figures.link_bandwidth or "unknown"
            bandwidths.add(bandwidth)
            entry["topology"]["links"] = [{"type": link, "peers": peers, "bandwidth": bandwidth}]
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
    if topology.cliques:
        spec["topology"] = {
            "interconnects": [{"type": link, "bandwidth": b} for b in sorted(bandwidths)]
        }
    unhealthy = [d.id for d in devices if d.health_score < 60]
    message = (
        f"{len(devices)} devices read"
        if not unhealthy
        else f"{len(devices)} devices read; low health: {', '.join(unhealthy)}"
    )
    return {
        "apiVersion": "hcs.io/v1alpha1",
        "kind": "ComputeNode",
        "metadata": {
            "name": node_name,
            "labels": {"vendor": vendor, **({SHARING_LABEL: "shared"} if shared else {})},
        },
        "spec": spec,
        "status": build_status(healthy=bool(devices), reason="NoDevices", message=message, now=now),
    }
