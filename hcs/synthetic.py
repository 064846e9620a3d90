"""Synthetic ComputeNode objects, for tests and benchmarks.

`node_dict` writes one ComputeNode, `quota_dict` one ComputeQuota, as Kubernetes JSON (so they go
through the same validation as real ones); `random_cluster` makes a mixed-vendor cluster with
random health, sharing, readiness and reported usage from a seeded generator, so a benchmark
or a failing test can be reproduced.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from hcs.models import ComputeNode
from hcs.vendors import VENDOR_NAMES

MODELS: dict[str, tuple[str, int, str, str, str]] = {
    # vendor: (model, VRAM GiB, FP16, FP32, link type)
    "nvidia": ("A100-80G", 80, "312", "19.5", "nvlink"),
    "huawei": ("Ascend910B3", 64, "313", "0", "hccs"),
    "hygon": ("K100-AI", 64, "100", "25", "xgmi"),
    "cambricon": ("MLU370-X8", 48, "96", "32", "mlulink"),
}
HEARTBEAT = "2026-11-21T08:00:00Z"


def node_dict(
    name: str,
    vendor: str = "nvidia",
    n_devices: int = 8,
    *,
    vram_gi: int | None = None,
    fp16: str | None = None,
    fp32: str | None = None,
    allocated_gi: Sequence[int] | None = None,
    health: Sequence[int] | None = None,
    cliques: Sequence[Sequence[int]] | None = None,
    links: Sequence[Sequence[int]] | None = None,
    numa: Sequence[int] | None = None,
    shared: bool = False,
    enforcement: str = "none",
    phase: str = "Ready",
    conditions: dict[str, str] | None = None,
    heartbeat: str | None = HEARTBEAT,
) -> dict[str, Any]:
    """A ComputeNode as Kubernetes JSON. `cliques` lists groups of device slots joined by the
    vendor's high-bandwidth link all to all; `links` gives instead each slot's own peers (a
    partial mesh); `conditions` maps condition type to status."""
    model, default_vram, default16, default32, link = MODELS[vendor]
    vram = vram_gi if vram_gi is not None else default_vram
    devices = []
    for i in range(n_devices):
        dev: dict[str, Any] = {
            "id": str(i),
            "model": model,
            "vram": f"{vram}Gi",
            "vramAllocatable": f"{vram}Gi",
            "vramAllocated": f"{allocated_gi[i]}Gi" if allocated_gi else "0",
            "compute": {"fp16": fp16 or default16, "fp32": fp32 or default32},
            "topology": {"busId": f"0000:{0x10 + i:02x}:00.0"},
            "healthScore": health[i] if health else 100,
        }
        if numa is not None:
            dev["topology"]["numaNode"] = numa[i]
        peers = [p for group in cliques or () if i in group for p in group if p != i]
        if links is not None:
            peers = list(links[i])
        if peers:
            dev["topology"]["links"] = [
                {"type": link, "peers": [str(p) for p in peers], "bandwidth": "600GB/s"}
            ]
        devices.append(dev)
    conds = [
        {"type": t, "status": s, "lastTransitionTime": HEARTBEAT}
        for t, s in (conditions or {}).items()
    ]
    status: dict[str, Any] = {"phase": phase, "conditions": conds}
    if heartbeat is not None:
        status["lastHeartbeat"] = heartbeat
    return {
        "apiVersion": "hcs.io/v1alpha1",
        "kind": "ComputeNode",
        "metadata": {
            "name": name,
            "labels": {"hcs.io/device-sharing": "shared", "hcs.io/share-enforcement": enforcement}
            if shared
            else {},
        },
        "spec": {
            "vendor": vendor,
            "nodeSelector": {"kubernetes.io/hostname": name},
            "capacity": {"vram": f"{vram * n_devices}Gi", "tflops-fp16": "0", "tflops-fp32": "0"},
            "devices": devices,
        },
        "status": status,
    }


def quota_dict(
    hard: dict[str, str],
    *,
    name: str = "q",
    namespace: str = "team-a",
    used: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A ComputeQuota as Kubernetes JSON; `status.used` only when `used` is given."""
    obj: dict[str, Any] = {
        "apiVersion": "hcs.io/v1alpha1",
        "kind": "ComputeQuota",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hard": hard, **spec},
    }
    if used is not None:
        obj["status"] = {"used": used}
    return obj


def make_node(name: str, vendor: str = "nvidia", n_devices: int = 8, **kwargs: Any) -> ComputeNode:
    return ComputeNode.from_dict(node_dict(name, vendor, n_devices, **kwargs))


def random_cluster(
    n_nodes: int, seed: int = 0, *, devices: int = 8, vary_devices: bool = False
) -> list[ComputeNode]:
    """A mixed four-vendor cluster: ~5% NotReady, ~3% agent lost, ~10% shared (half the shared
    Ascend nodes with vNPU templates), a few unhealthy
    devices, random VRAM already in use and NVLink/HCCS cliques of four; one node in five has
    random partial-mesh links instead."""
    rng = random.Random(seed)
    nodes = []
    for i in range(n_nodes):
        vendor = VENDOR_NAMES[rng.randrange(len(VENDOR_NAMES))]
        n = rng.choice((1, 2, 4, 8)) if vary_devices else devices
        vram = MODELS[vendor][1]
        conditions: dict[str, str] = {}
        mesh = None
        if rng.random() < 0.2:
            pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if rng.random() < 0.6]
            mesh = [
                [b for a, b in pairs if a == j] + [a for a, b in pairs if b == j] for j in range(n)
            ]
        if rng.random() < 0.03:
            conditions["AgentConnected"] = "False"
        nodes.append(
            make_node(
                f"node-{i:05d}",
                vendor,
                n,
                allocated_gi=[rng.choice((0, 0, 0, 8, 16, vram // 2, vram)) for _ in range(n)],
                health=[rng.choice((100, 100, 95, 80, 70, 50)) for _ in range(n)],
                cliques=[list(range(s, min(s + 4, n))) for s in range(0, n, 4)],
                links=mesh,
                numa=[0 if j < n // 2 else 1 for j in range(n)],
                shared=(shared := rng.random() < 0.1),
                # Ascend shares kept by vNPU templates half the time (booked as templates).
                enforcement="vnpu" if shared and vendor == "huawei" and i % 2 else "none",
                phase="NotReady" if rng.random() < 0.05 else "Ready",
                conditions=conditions,
            )
        )
    return nodes
