"""NVIDIA through NVML (`nvidia-ml-py`, NVIDIA's own binding), where libnvidia-ml loads.

NVML gives what nvidia-smi prints and more, without text to parse: per GPU the UUID, memory,
PCI address, uncorrected volatile ECC errors, pending page retirement, temperature, and per
NVLink whether it is up and the PCI address of the device at the other end. A link whose far
end is another GPU of the node makes the two peers; a far end that is not a GPU is an NVSwitch,
and GPUs on a common switch are peers of each other (DGX/HGX systems).

`discover()` returns None when the binding is not installed or the library does not load (no
driver in the container): the agent then runs nvidia-smi.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from node.devices import RawDevice, Topology, pci_address

log = logging.getLogger("hcs.agent")
MAX_LINKS = 18  # NVML_NVLINK_MAX_LINKS on current drivers (H100: 18 links)


def load() -> Any | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(lib: Any, call: Any, *args: Any) -> Any:
    """A field this GPU may not support (ECC on GeForce, links that do not exist)."""
    try:
        return call(*args)
    except lib.NVMLError:
        return None


def discover(lib: Any | None = None) -> tuple[list[RawDevice], Topology] | None:
    lib = lib if lib is not None else load()
    if lib is None:
        return None
    try:
        lib.nvmlInit()
    except lib.NVMLError as exc:
        log.info("NVML not available (%s): using nvidia-smi", exc)
        return None
    try:
        return _read(lib)
    except lib.NVMLError as exc:
        log.warning("NVML failed while reading the GPUs (%s): using nvidia-smi", exc)
        return None
    finally:
        _optional(lib, lib.nvmlShutdown)


def _read(lib: Any) -> tuple[list[RawDevice], Topology]:
    devices = []
    remote: dict[str, set[str]] = {}
    for i in range(lib.nvmlDeviceGetCount()):
        h = lib.nvmlDeviceGetHandleByIndex(i)
        memory = lib.nvmlDeviceGetMemoryInfo(h)
        bus = pci_address(_text(lib.nvmlDeviceGetPciInfo(h).busId)) or ""
        ecc = _optional(
            lib,
            lib.nvmlDeviceGetTotalEccErrors,
            h,
            lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            lib.NVML_VOLATILE_ECC,
        )
        pending = _optional(lib, lib.nvmlDeviceGetRetiredPagesPendingStatus, h)
        temp = _optional(lib, lib.nvmlDeviceGetTemperature, h, lib.NVML_TEMPERATURE_GPU)
        devices.append(
            RawDevice(
                id=str(i),
                name=_text(lib.nvmlDeviceGetName(h)),
                vram_mib=int(memory.total) // 2**20,
                used_mib=int(memory.used) // 2**20,
                bus_id=bus,
                identity=_text(lib.nvmlDeviceGetUUID(h)),
                labels=(f"GPU{i}",),
                ecc_errors=None if ecc is None else int(ecc),
                retired_pending=None
                if pending is None
                else int(pending == lib.NVML_FEATURE_ENABLED),
                temperature_c=None if temp is None else float(temp),
            )
        )
        far = set()
        for link in range(MAX_LINKS):
            state = _optional(lib, lib.nvmlDeviceGetNvLinkState, h, link)
            if state != lib.NVML_FEATURE_ENABLED:
                continue
            info = _optional(lib, lib.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
            address = pci_address(_text(info.busId)) if info is not None else None
            if address:
                far.add(address.lower())
        remote[f"GPU{i}"] = far
    gpu_of = {d.bus_id.lower(): d.labels[0] for d in devices if d.bus_id}
    links: dict[str, dict[str, str]] = {}
    for label, far in remote.items():
        peers = {gpu_of[a] for a in far if a in gpu_of}
        switches = far - gpu_of.keys()
        peers |= {other for other, f in remote.items() if switches & (f - gpu_of.keys())}
        links[label] = {p: "nvlink" for p in sorted(peers) if p != label}
    numa = {d.labels[0]: n for d in devices if (n := _numa(d.bus_id)) is not None}
    return devices, Topology(links, numa)


def _numa(bus: str) -> int | None:
    """The kernel's NUMA node of the PCI device (-1 when the platform has none)."""
    try:
        value = int(Path(f"/sys/bus/pci/devices/{bus.lower()}/numa_node").read_text())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None
