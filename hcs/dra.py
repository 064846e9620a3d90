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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from hcs.assignment import allocation
from hcs.demand import ContainerDemand, PodDemand
from hcs.errors import HcsError
from hcs.limiter import (
    VNPU_ENV,
    Enforcement,
    HamiPaths,
    choose_template,
    hami_core_contract,
    model_templates,
    sm_percent,
    uses_templates,
)
from hcs.models import ENFORCEMENT_LABEL, SHARING_LABEL, ComputeNode, Device
from hcs.quantity import format_mib, format_milli, milli_tflops, vram_mib
from hcs.state import device_cliques
from hcs.vendors import DRIVER_LIBRARY_ENV, VENDOR_NAMES, VendorProfile, VendorTable

DRIVER: Final = "compute.hcs.io"
API_VERSION: Final = "resource.k8s.io/v1"
MAX_DEVICES_PER_SLICE: Final = 128
PCI_ATTRIBUTE: Final = "resource.kubernetes.io/pciBusID"
NUMA_ATTRIBUTE: Final = "compute.hcs.io/numaNode"
INTERCONNECT: Final = "interconnect"
CDI_VERSION: Final = "0.6.0"
CDI_KIND: Final = f"{DRIVER}/device"
"""HCS's own CDI kind: `compute.hcs.io/device=<claim uid>-<request>`."""
CAPACITIES: Final = ("vram", "tflops_fp16", "tflops_fp32")
MAX_VALID_VALUES: Final = 10
"""requestPolicy.validValues holds at most 10 entries."""
SHARING_LABELS: Final = (SHARING_LABEL, ENFORCEMENT_LABEL)
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
        # Written qualified (the driver's own domain, the same attribute for CEL): kubelet's DRA
        # topology hints read an attribute whose name ends in "/numaNode".
        attrs[NUMA_ATTRIBUTE] = {"int": device.numa_node}
    bus = device.bus_id.lower()
    if _PCI.match(bus):
        attrs[PCI_ATTRIBUTE] = {"string": bus}
    return attrs


def _capacity(device: Device) -> dict[str, dict[str, Any]]:
    return {
        "vram": {"value": format_mib(device.vram_allocatable_mib)},
        "tflops_fp16": {"value": format_milli(device.fp16_milli_tflops)},
        "tflops_fp32": {"value": format_milli(device.fp32_milli_tflops)},
    }


def _valid_values(sizes: Sequence[int], full: int, fmt: Callable[[int], str]) -> list[str]:
    """Ascending, distinct, the full device last, at most MAX_VALID_VALUES (the smallest
    templates kept: a request above the last kept one takes the whole device)."""
    values = sorted({v for v in sizes if 0 < v < full})[: MAX_VALID_VALUES - 1]
    return [fmt(v) for v in [*values, full]]


def _shared(node: ComputeNode, device: Device, vendors: VendorTable) -> dict[str, Any]:
    """What makes a device of a shared node shareable by capacity (DRAConsumableCapacity):
    `allowMultipleAllocations`, and on vNPU nodes a request policy on `vram` that rounds a
    share's memory up to the chip's templates (a device whose chip has none is not shared);
    a template's AI cores go with its memory (the chips' templates give each core the same
    memory), so booking template memory books the cores. A claim without capacity requests
    consumes the whole device: no policy means the full capacity, and the policy's default is
    the full device."""
    capacity = _capacity(device)
    if not uses_templates(node):
        return {"allowMultipleAllocations": True, "capacity": capacity}
    options = model_templates(
        vendors, node.vendor, device.model, device.fp16_milli_tflops, device.fp32_milli_tflops
    )
    if not options:
        return {"capacity": capacity}
    capacity["vram"]["requestPolicy"] = {
        "default": format_mib(device.vram_allocatable_mib),
        "validValues": _valid_values(
            [t.vram_mib for t in options], device.vram_allocatable_mib, format_mib
        ),
    }
    return {"allowMultipleAllocations": True, "capacity": capacity}


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
    at most 128 per slice (every slice of the pool says how many there are). On a shared node
    (`hcs.io/device-sharing: shared` with a stated enforcement) devices are shared by capacity
    (`_shared`)."""
    vendors = vendors or VendorTable()
    cliques = device_cliques(node, vendors)
    devices = [
        {
            "name": device_name(node.vendor, d.id),
            "attributes": _attributes(node, d, cliques[i]),
            **(_shared(node, d, vendors) if node.shared else {"capacity": _capacity(d)}),
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
                "labels": {"app.kubernetes.io/managed-by": "hcs"},
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
    """`<node>-compute.hcs.io-<i>`, a DNS subdomain; a node name too long for that is cut and
    told apart by its hash (never cut to end in `-` or `.`)."""
    name = f"{node}-{DRIVER}-{index}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(node.encode()).hexdigest()[:10]
    return f"{node[:200].rstrip('-.')}-{digest}-{DRIVER}-{index}"


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
    both paths give a pod the same devices the same way; and the vendor's driver folders the
    webhook mounts in device plugin mode (read-only, with `HCS_DRIVER_LIBRARY_PATH`), which it
    cannot in DRA mode: the vendor is chosen at allocation."""
    answer = allocation(
        profile,
        [d.id for d in devices],
        {d.id: d.identity for d in devices if d.identity},
        strategies=("envvar",),
    )
    edits: dict[str, Any] = {"env": [f"{k}={v}" for k, v in answer.envs.items()]}
    if profile.ld_library_path:
        edits["env"].append(f"{DRIVER_LIBRARY_ENV}={':'.join(profile.ld_library_path)}")
    if answer.device_nodes:
        edits["deviceNodes"] = [{"path": p} for p in answer.device_nodes]
    if profile.mounts:
        edits["mounts"] = [
            {
                "hostPath": m.host_path,
                "containerPath": m.mount_path,
                "options": ["ro", "nosuid", "nodev", "bind"],
            }
            for m in profile.mounts
        ]
    return edits


def base_request(request: str) -> str:
    """The claim's request a result belongs to (`main` of `main/nvidia`): the name a
    container's `resources.claims[].request` gives, which kubelet matches exactly."""
    return request.split("/", 1)[0]


def enforcement_edits(enforcement: Enforcement | None) -> dict[str, Any]:
    """A limiter's contract as CDI containerEdits."""
    if enforcement is None:
        return {}
    edits: dict[str, Any] = {"env": [f"{k}={v}" for k, v in enforcement.envs.items()]}
    if enforcement.mounts:
        edits["mounts"] = [
            {
                "hostPath": host,
                "containerPath": path,
                "options": ["ro" if read_only else "rw", "nosuid", "nodev", "bind"],
            }
            for path, host, read_only in enforcement.mounts
        ]
    return edits


def merge_edits(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """containerEdits laid one after the other (lists joined in order)."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, values in part.items():
            out[key] = [*out.get(key, []), *values]
    return out


def claim_cdi(
    claim_uid: str, edits: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """HCS's CDI spec for one claim and the CDI id per request: one CDI device
    `<claim uid>-<request>` per request, whose edits give that request's devices all at once
    (one env list naming them all: per-device CDI devices would each set the env, and the last
    would win); kubelet gives a container the ids of its own request only."""
    spec = {
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "devices": [
            {"name": f"{claim_uid}-{request}", "containerEdits": dict(e)}
            for request, e in edits.items()
        ],
    }
    return spec, {request: f"{CDI_KIND}={claim_uid}-{request}" for request in edits}


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


def capacity_requests(c: ContainerDemand) -> dict[str, Any]:
    """A share's consumption per device on nodes that share by capacity, every capacity
    stated (one left out would consume the whole device); nothing for a container asking for
    no VRAM and no TFLOPS, which takes whole devices. On a node that does not share, the
    requests only filter, like the selector."""
    if c.whole or not (c.vram_mib or c.fp16_milli_tflops or c.fp32_milli_tflops):
        return {}
    return {
        "capacity": {
            "requests": {
                "vram": format_mib(c.vram_mib),
                "tflops_fp16": format_milli(c.fp16_milli_tflops),
                "tflops_fp32": format_milli(c.fp32_milli_tflops),
            }
        }
    }


def _takes_whole(c: ContainerDemand) -> bool:
    return c.whole or not (c.vram_mib or c.fp16_milli_tflops or c.fp32_milli_tflops)


def _covers(app: ContainerDemand, init: ContainerDemand) -> bool:
    """Does `app`'s request hold everything `init` asks for, device by device?"""
    if app.devices < init.devices:
        return False
    if _takes_whole(app):
        return True
    return not _takes_whole(init) and (
        app.vram_mib >= init.vram_mib
        and app.fp16_milli_tflops >= init.fp16_milli_tflops
        and app.fp32_milli_tflops >= init.fp32_milli_tflops
    )


def claim_requests(demand: PodDemand) -> dict[str, str]:
    """The claim request each requesting container uses: its own (named after it), except a
    run-to-completion init container that an app container's request covers, which uses the
    first such app's. A claim's devices are the pod's for its whole life, so an init
    container's own request would hold devices long after it ended; kubelet runs it before
    the apps, so the two never use the devices at once (as kubelet's device manager reuses an
    init container's devices for the apps)."""
    apps = [c for c in demand.all_containers if c.phase == "app"]
    out = {}
    for c in demand.all_containers:
        host = next((a for a in apps if _covers(a, c)), None) if c.phase == "init" else None
        out[c.name] = host.name if host is not None else c.name
    return out


def claim_template_spec(demand: PodDemand) -> dict[str, Any]:
    """A ResourceClaimTemplate's `spec` for a pod's `ai.compute/*` requests: one request per
    requesting container (an init container an app's request covers uses that one,
    `claim_requests`), each `firstAvailable` over the pod's vendors in its order (the
    preference, then the downgrade order), `count` devices of the vendor's class with the
    per-device capacities as a selector and as capacity requests (`capacity_requests`);
    `high-bandwidth` as a matchAttribute on the interconnect group."""
    uses = claim_requests(demand)
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
                    **capacity_requests(c),
                }
                for vendor in demand.allowed_vendors
            ],
        }
        for c in demand.all_containers
        if uses[c.name] == c.name
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


@dataclass(frozen=True)
class Share:
    """What a claim consumed of one device shared by capacity (`consumedCapacity`)."""

    vram_mib: int
    fp16_milli_tflops: int
    fp32_milli_tflops: int


def consumed(result: Mapping[str, Any]) -> Share | None:
    """The result's consumedCapacity (None: the device is not shared); HcsError naming the
    entry when it is not a quantity."""
    raw = result.get("consumedCapacity")
    if not raw:
        return None

    def read(name: str, parse: Callable[..., int]) -> int:
        value = raw.get(name, raw.get(f"{DRIVER}/{name}"))
        field = f"consumedCapacity.{name}"
        if value is None:
            raise HcsError(f"{field}: missing (every capacity is recorded)")
        return parse(value, field)

    return Share(
        read("vram", vram_mib), read("tflops_fp16", milli_tflops), read("tflops_fp32", milli_tflops)
    )


def is_part(share: Share | None, device: Device) -> bool:
    """Less than the whole device?"""
    return share is not None and (
        share.vram_mib < device.vram_allocatable_mib
        or share.fp16_milli_tflops < device.fp16_milli_tflops
        or share.fp32_milli_tflops < device.fp32_milli_tflops
    )


def share_enforcement(
    node: ComputeNode,
    vendors: VendorTable,
    given: Sequence[Device],
    shares: Sequence[Share | None],
    hami: HamiPaths | None,
) -> Enforcement | None:
    """The limiter's contract for one request's devices, from what the claim consumed (the
    same contract the device plugin hands a fractional container, hcs.limiter): None when
    every device was consumed whole, or the node's sharing is unenforced. HcsError when the
    share cannot be enforced as booked."""
    if not any(is_part(s, d) for s, d in zip(shares, given, strict=True)):
        return None
    if not node.shared:
        raise HcsError(
            "the claim holds a share of a device, but this node's ComputeNode no longer shares "
            "devices: nothing here would keep the share to its size (the claim must be "
            "allocated again)"
        )
    mode = node.share_enforcement
    parts = [
        s or Share(d.vram_allocatable_mib, d.fp16_milli_tflops, d.fp32_milli_tflops)
        for s, d in zip(shares, given, strict=True)
    ]
    if mode == "hami-core":
        if hami is None:
            raise HcsError("this node's shares are kept by HAMi-core, which is not installed here")
        percents = [
            sm_percent(s.fp16_milli_tflops, d.fp16_milli_tflops)
            for s, d in zip(parts, given, strict=True)
            if s.fp16_milli_tflops and d.fp16_milli_tflops
        ]
        return hami_core_contract(
            [s.vram_mib for s in parts],
            min(percents, default=100),
            **asdict(hami),
        )
    if mode == "vnpu":
        share, device = parts[0], given[0]
        chosen = choose_template(
            model_templates(
                vendors,
                node.vendor,
                device.model,
                device.fp16_milli_tflops,
                device.fp32_milli_tflops,
            ),
            share.vram_mib,
            share.fp16_milli_tflops,
            share.fp32_milli_tflops,
        )
        if chosen is None:
            return None
        if chosen.vram_mib != share.vram_mib:
            raise HcsError(
                f"the share of {device.id} consumed {format_mib(share.vram_mib)} VRAM and "
                f"{format_milli(share.fp16_milli_tflops)} FP16 TFLOPS, but the smallest vNPU "
                f"template holding that compute, {chosen.template}, holds "
                f"{format_mib(chosen.vram_mib)}: ask for {format_mib(chosen.vram_mib)} of "
                "ai.compute/vram so the books hold the template"
            )
        return Enforcement({VNPU_ENV: chosen.template}, ())
    return None  # "none": the node's owner allowed unenforced sharing


def with_sharing(
    discovered: Mapping[str, Any], published: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The discovered ComputeNode with the sharing labels of the one the agent published (one
    source for a node's sharing: the agent's flags); no published node: exclusive."""
    labels = {
        k: v
        for k, v in ((discovered.get("metadata") or {}).get("labels") or {}).items()
        if k not in SHARING_LABELS
    }
    theirs = ((published or {}).get("metadata") or {}).get("labels") or {}
    labels.update({k: theirs[k] for k in SHARING_LABELS if k in theirs})
    return {**discovered, "metadata": {**(discovered.get("metadata") or {}), "labels": labels}}
