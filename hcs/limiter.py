"""Handing a booked share to the enforcement layer the node's owner installed (pure rules).

HAMi-core (`libvgpu.so`, NVIDIA; facts in docs/node.md, "Enforced shares"): a container of a
fractional pod gets, in Allocate's answer,
- `CUDA_DEVICE_MEMORY_LIMIT_<i>=<MiB>m` for its i-th visible device (i counts within the
  container, in the order of its devices), HCS's VRAM booking for that container and device;
- `CUDA_DEVICE_SM_LIMIT=<percent>`: the share of the device's FP16 TFLOPS it booked (100 when it
  booked none);
- `CUDA_DEVICE_MEMORY_SHARED_CACHE`: a path of its own, in its own folder;
- mounts: the library read-only at exactly `/usr/local/vgpu/libvgpu.so`, its own host folder at
  `/usr/local/vgpu/containers` (read-write), the node's `/tmp/vgpulock` (read-write), and
  `/etc/ld.so.preload` read-only, naming the library.
A container that books whole devices gets none of it: nothing to share, nothing to limit.

vNPU (Ascend): the chip is cut into fixed templates (`ASCEND_VNPU_SPECS=<template>` beside
`ASCEND_VISIBLE_DEVICES`, applied by Ascend Docker Runtime). A share is booked as the smallest
template of the chip (vendor table, `share_templates`) that holds its memory and its TFLOPS, a
template's TFLOPS being its AI cores' part of the chip's; a share no template holds takes
whole devices. The engine, the reference, the books read back from pods and the plugin all take
the template from `template_options` and `choose_template`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from hcs.demand import ContainerDemand, parse_pod
from hcs.errors import HcsError
from hcs.models import ComputeNode
from hcs.vendors import ChipTemplates, VendorTable

Limiter = Literal["hami-core", "vnpu"]
LIMITERS: Final = ("hami-core", "vnpu")
LIMITER_VENDOR: Final[Mapping[str, str]] = {"hami-core": "nvidia", "vnpu": "huawei"}
HAMI_LIBRARY: Final = "libvgpu.so"
HAMI_LIBRARY_PATH: Final = "/usr/local/vgpu/libvgpu.so"
"""Exactly here inside the container: other paths crash cuDNN 9 applications."""
HAMI_CONTAINER_DIR: Final = "/usr/local/vgpu/containers"
HAMI_LOCK_DIR: Final = "/tmp/vgpulock"
LD_SO_PRELOAD: Final = "/etc/ld.so.preload"
VNPU_ENV: Final = "ASCEND_VNPU_SPECS"
LIMITER_ENVS: Final = (
    "CUDA_DEVICE_MEMORY_SHARED_CACHE",
    "CUDA_DISABLE_CONTROL",
    "GPU_CORE_UTILIZATION_POLICY",
    VNPU_ENV,
)
"""Settings of the share limiters (HAMi-core's cache, its off switches, the vNPU template) that
only HCS's node side sets: a container's own value would override the device plugin's (kubelet
applies the pod's env after it) and widen or switch off the share."""
LIMITER_ENV_PREFIXES: Final = ("CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT")
"""HAMi-core's limits, with or without the `_<i>` device suffix."""


def limiter_env(name: str) -> bool:
    """Is `name` a share limiter's setting (`LIMITER_ENVS`, `LIMITER_ENV_PREFIXES`)?"""
    return name in LIMITER_ENVS or name.startswith(LIMITER_ENV_PREFIXES)


TEMPLATE_LIMITERS: Final = frozenset({"vnpu"})
"""Sharing modes whose shares are fixed templates (booked as the template, not the request)."""


@dataclass(frozen=True)
class TemplateBooking:
    """A template as booked on one node: its name and what it holds of a device there."""

    template: str
    vram_mib: int
    fp16_milli_tflops: int
    fp32_milli_tflops: int


def chip_options(
    chip: ChipTemplates | None, fp16_cap_mtf: int, fp32_cap_mtf: int
) -> tuple[TemplateBooking, ...]:
    """The templates of `chip` on a device of those TFLOPS, smallest first."""
    if chip is None:
        return ()
    return tuple(
        TemplateBooking(
            t.name,
            t.memory_mib,
            fp16_cap_mtf * t.ai_cores // chip.ai_cores,
            fp32_cap_mtf * t.ai_cores // chip.ai_cores,
        )
        for t in chip.templates
    )


def model_templates(
    vendors: VendorTable, vendor: str, model: str, fp16_cap_mtf: int, fp32_cap_mtf: int
) -> tuple[TemplateBooking, ...]:
    """The templates of a device of `model` and those TFLOPS, smallest first (none: its chip
    has no template in the vendor table)."""
    return chip_options(vendors[vendor].templates_for(model), fp16_cap_mtf, fp32_cap_mtf)


def uses_templates(node: ComputeNode) -> bool:
    """Are `node`'s shares fixed templates (a shared node whose limiter is vNPU)?"""
    return node.shared and node.share_enforcement in TEMPLATE_LIMITERS


def template_options(node: ComputeNode, vendors: VendorTable) -> tuple[TemplateBooking, ...]:
    """The templates a share can be booked as on `node` (its first device's model and size);
    empty when its shares are not templates, or its chip has none (shares then take whole
    devices)."""
    if not uses_templates(node) or not node.devices:
        return ()
    first = node.devices[0]
    return model_templates(
        vendors, node.vendor, first.model, first.fp16_milli_tflops, first.fp32_milli_tflops
    )


def choose_template(
    options: Sequence[TemplateBooking], vram_mib: int, fp16_mtf: int, fp32_mtf: int
) -> TemplateBooking | None:
    """The smallest template holding the share, or None (the share takes whole devices)."""
    return next(
        (
            t
            for t in options
            if t.vram_mib >= vram_mib
            and t.fp16_milli_tflops >= fp16_mtf
            and t.fp32_milli_tflops >= fp32_mtf
        ),
        None,
    )


@dataclass(frozen=True)
class DeviceSize:
    """What the plugin knows of a device's size (the agent's ComputeNode)."""

    vram_mib: int
    fp16_milli_tflops: int


@dataclass(frozen=True)
class HamiPaths:
    """The host paths HAMi-core's contract mounts for one container (device plugin) or one
    claim request (DRA driver): the library's folder, its own folder, the node's lock folder,
    the file naming the library for /etc/ld.so.preload."""

    library_dir: str
    container_dir: str
    lock_dir: str
    preload_file: str


@dataclass(frozen=True)
class Enforcement:
    envs: dict[str, str]
    mounts: tuple[tuple[str, str, bool], ...]
    """(container path, host path, read-only)."""


class LimiterError(HcsError):
    code = "InvalidRequest"


def container_demand(
    pod: Mapping[str, Any], container: str, vendors: VendorTable
) -> ContainerDemand | None:
    """The container's per-device booking, as HCS parsed the pod (None: it asks for nothing)."""
    demand = parse_pod(pod, vendors)
    for c in demand.all_containers:
        if c.name == container:
            return c
    return None


def is_share(demand: ContainerDemand, sizes: Sequence[DeviceSize]) -> bool:
    """Does the container book less than the whole of some device it was given?"""
    if demand.whole:
        return False
    return any(
        demand.vram_mib < s.vram_mib
        or 0 < demand.fp16_milli_tflops < s.fp16_milli_tflops
        or (demand.vram_mib == 0 and demand.fp16_milli_tflops == 0)
        for s in sizes
    )


def hami_core(
    demand: ContainerDemand,
    sizes: Sequence[DeviceSize],
    *,
    library_dir: str,
    container_dir: str,
    lock_dir: str,
    preload_file: str,
) -> Enforcement | None:
    """HAMi-core's contract for one container given `sizes` (its devices, in its order);
    None for a whole-device container. `container_dir` is the container's own host folder,
    `lock_dir` the node's lock folder HAMi-core's processes share, `preload_file` a host file
    holding HAMI_LIBRARY_PATH."""
    if not sizes or not is_share(demand, sizes):
        return None
    limits = [demand.vram_mib if demand.vram_mib else s.vram_mib for s in sizes]
    smallest = min(s.fp16_milli_tflops for s in sizes)
    if demand.fp16_milli_tflops and smallest:
        percent = sm_percent(demand.fp16_milli_tflops, smallest)
    else:
        percent = 100
    return hami_core_contract(
        limits,
        percent,
        library_dir=library_dir,
        container_dir=container_dir,
        lock_dir=lock_dir,
        preload_file=preload_file,
    )


def sm_percent(booked_milli_tflops: int, device_milli_tflops: int) -> int:
    """HAMi-core's compute share: the booked part of the device's FP16 TFLOPS, 1..100."""
    return max(1, min(100, booked_milli_tflops * 100 // device_milli_tflops))


def hami_core_contract(
    limits_mib: Sequence[int],
    percent: int,
    *,
    library_dir: str,
    container_dir: str,
    lock_dir: str,
    preload_file: str,
) -> Enforcement:
    """HAMi-core's env and mounts: `limits_mib[i]` for the container's i-th device, `percent`
    of each device's compute (the device plugin's Allocate and the DRA driver's CDI edits)."""
    envs = {f"CUDA_DEVICE_MEMORY_LIMIT_{i}": f"{limit}m" for i, limit in enumerate(limits_mib)}
    envs["CUDA_DEVICE_SM_LIMIT"] = str(percent)
    envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = f"{HAMI_CONTAINER_DIR}/cudevshr.cache"
    mounts = (
        (HAMI_LIBRARY_PATH, f"{library_dir.rstrip('/')}/{HAMI_LIBRARY}", True),
        (HAMI_CONTAINER_DIR, container_dir, False),
        (HAMI_LOCK_DIR, lock_dir, False),
        (LD_SO_PRELOAD, preload_file, True),
    )
    return Enforcement(envs, mounts)


def vnpu(
    demand: ContainerDemand, options: Sequence[TemplateBooking], sizes: Sequence[DeviceSize]
) -> Enforcement | None:
    """vNPU's contract for one container: `ASCEND_VNPU_SPECS` naming the template HCS booked;
    None for a whole-device container, or a share no template holds (it was given whole
    devices)."""
    if not sizes or not is_share(demand, sizes):
        return None
    chosen = choose_template(
        options, demand.vram_mib, demand.fp16_milli_tflops, demand.fp32_milli_tflops
    )
    if chosen is None:
        return None
    return Enforcement({VNPU_ENV: chosen.template}, ())
