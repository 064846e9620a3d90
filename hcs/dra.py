"""HCS as a DRA driver (`compute.hcs.io`): the objects and files it writes, as pure functions.

- `resource_slices`: a node's devices as ResourceSlices (`resource.k8s.io/v1`), one pool per
  node, in the same units as `ai.compute/*` (VRAM, FP16 and FP32 TFLOPS) so one CEL selector
  reads every vendor's devices alike.
- `device_classes`: `compute.hcs.io` (any vendor) and `<vendor>.compute.hcs.io`, from the
  vendor table.
- `cdi_edits`: what a container given some of the node's devices gets through CDI: the same
  env and device nodes as the device plugin's Allocate (`hcs.assignment.allocation`), so a pod's
  devices are the same whichever path gave them.

Facts on the API and CDI: spec/DRA-API.md; docs/dra.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from hcs.assignment import allocation
from hcs.demand import ContainerDemand, PodDemand
from hcs.models import ComputeNode, Device
from hcs.quantity import format_mib, format_milli
from hcs.state import device_cliques
from hcs.vendors import VENDOR_NAMES, VendorProfile, VendorTable

DRIVER: Final = "compute.hcs.io"
API_VERSION: Final = "resource.k8s.io/v1"
MAX_DEVICES_PER_SLICE: Final = 128
PCI_ATTRIBUTE: Final = "resource.kubernetes.io/pciBusID"
INTERCONNECT: Final = "interconnect"
CDI_VERSION: Final = "0.6.0"
CDI_KIND: Final = f"{DRIVER}/device"
"""HCS's own CDI kind: `compute.hcs.io/device=<claim uid>-<device>`."""
NVIDIA_CDI_KIND: Final = "nvidia.com/gpu"
"""The NVIDIA Container Toolkit's own spec, used where the node has it."""

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_PCI = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def device_name(vendor: str, device_id: str) -> str:
    """A DNS label for a device: `<vendor>-<id>` lower-cased, other characters as `-`."""
    name = _NOT_LABEL.sub("-", f"{vendor}-{device_id}".lower()).strip("-")
    return name[:63].rstrip("-")


def _attributes(node: ComputeNode, device: Device, clique: int) -> dict[str, dict[str, Any]]:
    attrs: dict[str, dict[str, Any]] = {
        "vendor": {"string": node.vendor},
        # Devices joined all to all by NVLink, HCCS, … share it (`high-bandwidth` claims match
        # on it); a device without such links is a group of its own.
        INTERCONNECT: {"string": f"{node.name}-{clique}"[:64]},
        "model": {"string": device.model[:64]},
        "index": {"string": device.id[:64]},
        # NVIDIA's UUID; the vendor's own id elsewhere (chip physical id, PCI address).
        "uuid": {"string": (device.identity or device.id)[:64]},
    }
    if device.numa_node is not None:
        attrs["numaNode"] = {"int": device.numa_node}
    bus = device.bus_id.lower()
    if _PCI.match(bus):
        attrs[PCI_ATTRIBUTE] = {"string": bus}
    return attrs


def _capacity(device: Device) -> dict[str, dict[str, str]]:
    return {
        "vram": {"value": format_mib(device.vram_allocatable_mib)},
        "tflops_fp16": {"value": format_milli(device.fp16_milli_tflops)},
        "tflops_fp32": {"value": format_milli(device.fp32_milli_tflops)},
    }


def usable(device: Device, min_health: int) -> bool:
    """Published: healthy enough and not re-indexed under running pods."""
    return device.health_score >= min_health and not device.unschedulable


def resource_slices(
    node: ComputeNode,
    generation: int,
    *,
    min_health: int = 60,
    vendors: VendorTable | None = None,
) -> list[dict[str, Any]]:
    """The node's ResourceSlices: pool `<node>` at `generation`, its usable devices in order,
    at most 128 per slice (every slice of the pool says how many there are)."""
    cliques = device_cliques(node, vendors or VendorTable())
    devices = [
        {
            "name": device_name(node.vendor, d.id),
            "attributes": _attributes(node, d, cliques[i]),
            "capacity": _capacity(d),
        }
        for i, d in enumerate(node.devices)
        if usable(d, min_health)
    ]
    chunks = [
        devices[i : i + MAX_DEVICES_PER_SLICE]
        for i in range(0, len(devices), MAX_DEVICES_PER_SLICE)
    ] or [[]]
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            "metadata": {
                "name": slice_name(node.name, i),
                "labels": {"app.kubernetes.io/managed-by": "hcs", "hcs.io/node": node.name},
            },
            "spec": {
                "driver": DRIVER,
                "nodeName": node.name,
                "pool": {
                    "name": node.name,
                    "generation": generation,
                    "resourceSliceCount": len(chunks),
                },
                "devices": chunk,
            },
        }
        for i, chunk in enumerate(chunks)
    ]


def slice_name(node: str, index: int) -> str:
    return f"{node}-{DRIVER}-{index}"[:253]


def slices_changed(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> bool:
    """Do the published slices differ from these, other than by the pool's generation?"""

    def body(slices: Sequence[Mapping[str, Any]]) -> list[Any]:
        out = []
        for s in slices:
            spec = dict(s.get("spec") or {})
            pool = dict(spec.get("pool") or {})
            pool.pop("generation", None)
            out.append({**spec, "pool": pool})
        return out

    return body(old) != body(new)


def vendor_selector(vendor: str) -> str:
    """CEL: a device of this driver and vendor (the attribute is always published)."""
    return f'device.driver == "{DRIVER}" && device.attributes["{DRIVER}"].vendor == "{vendor}"'


def device_classes(vendors: VendorTable) -> list[dict[str, Any]]:
    """`compute.hcs.io` for any vendor, `<vendor>.compute.hcs.io` for each."""

    def cls(name: str, expression: str) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "DeviceClass",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "hcs"}},
            "spec": {"selectors": [{"cel": {"expression": expression}}]},
        }

    out = [cls(DRIVER, f'device.driver == "{DRIVER}"')]
    out += [cls(f"{v}.{DRIVER}", vendor_selector(v)) for v in VENDOR_NAMES if v in vendors.profiles]
    return out


def cdi_edits(profile: VendorProfile, devices: Sequence[Device]) -> dict[str, Any]:
    """containerEdits giving a container exactly `devices` (in that order): env and device
    nodes from the device plugin's own answer (`hcs.assignment.allocation`, env strategy), so
    both paths give a pod the same devices the same way."""
    answer = allocation(
        profile,
        [d.id for d in devices],
        {d.id: d.identity for d in devices if d.identity},
        strategies=("envvar",),
    )
    edits: dict[str, Any] = {"env": [f"{k}={v}" for k, v in answer.envs.items()]}
    if answer.device_nodes:
        edits["deviceNodes"] = [{"path": p} for p in answer.device_nodes]
    return edits


def claim_cdi(
    claim_uid: str, profile: VendorProfile, devices: Sequence[Device]
) -> tuple[dict[str, Any], str]:
    """HCS's CDI spec for one claim and the CDI id of its one device `<claim uid>`, whose edits
    give every allocated device at once (one env list naming them all: per-device CDI devices
    would each set the env, and the last would win)."""
    spec = {
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "devices": [{"name": claim_uid, "containerEdits": cdi_edits(profile, devices)}],
    }
    return spec, f"{CDI_KIND}={claim_uid}"


def cdi_spec_file(claim_uid: str) -> str:
    """The claim's spec file name in the CDI folder (`/var/run/cdi`)."""
    return f"{DRIVER}-{claim_uid}.json"


def _at_least(capacity: str, amount: str) -> str:
    return f'device.capacity["{DRIVER}"].{capacity}.compareTo(quantity("{amount}")) >= 0'


def device_selector(c: ContainerDemand) -> list[dict[str, Any]]:
    """CEL on one device's capacities: what the container asks per device (nothing for whole
    devices: any device of the class will do)."""
    if c.whole:
        return []
    terms = [_at_least("vram", format_mib(c.vram_mib))] if c.vram_mib else []
    if c.fp16_milli_tflops:
        terms.append(_at_least("tflops_fp16", format_milli(c.fp16_milli_tflops)))
    if c.fp32_milli_tflops:
        terms.append(_at_least("tflops_fp32", format_milli(c.fp32_milli_tflops)))
    return [{"cel": {"expression": " && ".join(terms)}}] if terms else []


def claim_template_spec(demand: PodDemand) -> dict[str, Any]:
    """A ResourceClaimTemplate's `spec` for a pod's `ai.compute/*` requests: one request per
    requesting container, each `firstAvailable` over the pod's vendors in its order (the
    preference, then the downgrade order), `count` devices of the vendor's class with the
    per-device capacities; `high-bandwidth` as a matchAttribute on the interconnect group."""
    requests = [
        {
            "name": c.name,
            "firstAvailable": [
                {
                    "name": vendor,
                    "deviceClassName": f"{vendor}.{DRIVER}",
                    "allocationMode": "ExactCount",
                    "count": c.devices,
                    **({"selectors": sel} if (sel := device_selector(c)) else {}),
                }
                for vendor in demand.allowed_vendors
            ],
        }
        for c in demand.all_containers
    ]
    devices: dict[str, Any] = {"requests": requests}
    if demand.topology == "high-bandwidth":
        devices["constraints"] = [
            {
                "requests": [r["name"] for r in requests],
                "matchAttribute": f"{DRIVER}/{INTERCONNECT}",
            }
        ]
    return {"spec": {"devices": devices}}


def template_name(spec: Mapping[str, Any]) -> str:
    """Named by the request's shape: the pods of one ReplicaSet share one template."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return f"hcs-compute-{digest[:12]}"
