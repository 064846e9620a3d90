"""Huawei Ascend: `npu-smi info` and `npu-smi info -t topo`.

`npu-smi info` prints, per chip, an NPU row (`| NPU Name | Health | Power Temp Hugepages |`)
and a chip row (`| Chip [Device|Phy-ID] | Bus-Id | AICore Memory-Usage [HBM-Usage] |`). The
layouts seen on real machines:

- `Chip` (910A, 910B): one chip per NPU; the device is the NPU id.
- `Chip Device` (310, 310P): an NPU (card) may carry several chips, NPU ids run 0, 32, 32768 …;
  the device is the chip's `Device` number, which `/dev/davinciN` and the device plugin use.
- `Chip Phy-ID` (A3, 910_93): two chips per NPU, the NPU row repeated for each; the device is
  the chip's physical id, which `npu-smi info -t topo` names `Phy-IDn`.

Each chip is one schedulable device. Memory is the HBM column when the table has one, else
Memory-Usage. Older tables have no Hugepages column; usage cells may read `61609/ 65536`.
The process table that follows (`| NPU Chip | Process id | …`, or "No running processes found
in NPU N") is not devices and is skipped.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Final

from node.devices import (
    DiscoveryError,
    RawDevice,
    Topology,
    check_unique,
    optional_float,
    pci_address,
    pci_identity,
    read_matrix,
)

_BUS: Final = re.compile(r"[0-9A-Fa-fx]{4,8}:[0-9A-Fa-fx]{2}:[0-9A-Fa-fx]{2}\.[0-7x]")


@dataclass
class _Npu:
    npu_id: str
    name: str
    health: str
    temperature: float | None


@dataclass
class _Chip:
    npu: _Npu
    chip: str
    second: str | None
    """The Device or Phy-ID number, in those layouts."""
    bus: str
    usage: str


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_npu_smi(text: str) -> list[RawDevice]:
    """Every chip of `npu-smi info` as a device with a unique id (see the module doc)."""
    chip_kind: str | None = None  # "Device", "Phy-ID" or "" (chip only)
    usage_cols: list[str] = []
    temp_at = 1
    npu: _Npu | None = None
    found: list[_Chip] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        first = cells[0].split()
        if len(cells) >= 4 or any("Process" in c for c in cells):
            if chip_kind is not None and found:
                break  # the process table: no devices after it
            continue
        if len(cells) < 3 or not first:
            continue  # "No running processes found in NPU N", banner lines
        if first[0] == "NPU" and "Name" in first:
            temp_at = _position(cells[2], "Temp")
            continue
        if first[0] == "Chip":
            chip_kind = first[1] if len(first) > 1 else ""
            usage_cols = re.findall(r"(\w+)-Usage", cells[2])
            continue
        if not first[0].isdigit() or chip_kind is None:
            continue
        if _BUS.fullmatch(cells[1]):
            if npu is None:
                raise DiscoveryError(f"npu-smi: chip row before any NPU row: {line.strip()!r}")
            second = first[1] if len(first) > 1 else None
            found.append(_Chip(npu, first[0], second, cells[1], cells[2]))
        else:
            values = cells[2].split()
            temp = values[temp_at] if temp_at < len(values) else ""
            npu = _Npu(first[0], " ".join(first[1:]), cells[1], optional_float(temp))
    if not found:
        raise DiscoveryError("npu-smi reported no NPUs (no NPU/chip rows in the table)")
    if chip_kind not in ("", "Device", "Phy-ID"):
        raise DiscoveryError(f"npu-smi: unknown chip layout 'Chip {chip_kind}'")
    chips_of: dict[str, int] = {}
    for c in found:
        chips_of[c.npu.npu_id] = chips_of.get(c.npu.npu_id, 0) + 1
    devices = [_device(c, chip_kind, usage_cols, chips_of[c.npu.npu_id] == 1) for c in found]
    # Chips behind one PCI function (Atlas 300I Duo) share the address: the chip index, stable
    # within its card, tells them apart.
    counts = Counter(d.identity for d in devices if d.identity)
    devices = [
        replace(d, identity=f"{d.identity}/chip{c.chip}")
        if d.identity and counts[d.identity] > 1
        else d
        for d, c in zip(devices, found, strict=True)
    ]
    return check_unique(devices, "npu-smi")


def _position(header: str, word: str) -> int:
    """Index of the column containing `word` among the header's whitespace-separated names."""
    names = header.split()
    return next((i for i, name in enumerate(names) if word in name), 1)


def _device(c: _Chip, kind: str, usage_cols: list[str], single: bool) -> RawDevice:
    n, chip, second, bus, usage = c.npu, c.chip, c.second, c.bus, c.usage
    where = f"npu-smi: NPU {n.npu_id} chip {chip}"
    pairs = re.findall(r"(\d+)\s*/\s*(\d+)", usage)
    column = "HBM" if "HBM" in usage_cols else "Memory"
    at = usage_cols.index(column) if column in usage_cols else len(pairs) - 1
    if not pairs or at >= len(pairs):
        raise DiscoveryError(f"{where}: no {column}-Usage figures in {usage!r}")
    used, total = (int(x) for x in pairs[at])
    if kind in ("Device", "Phy-ID"):
        if second is None or not second.isdigit():
            raise DiscoveryError(f"{where}: no {kind} number in the chip row")
        dev_id = second
    else:
        dev_id = n.npu_id if single else f"{n.npu_id}-{chip}"
    labels = [f"NPU{n.npu_id}"] if single else []
    if kind == "Phy-ID":
        labels.append(f"Phy-ID{dev_id}")
    identity = pci_identity(bus) or (f"phy-id:{dev_id}" if kind == "Phy-ID" else None)
    hint = None
    if kind == "Phy-ID" and re.fullmatch(r"(Ascend)?910", n.name) and not single:
        hint = "Ascend910_93"  # A3 prints the bare family name; two dies per NPU tell it
    return RawDevice(
        id=dev_id,
        name=n.name,
        vram_mib=total,
        used_mib=used,
        bus_id=pci_address(bus) or bus,
        identity=identity,
        labels=tuple(labels),
        model_hint=hint,
        temperature_c=n.temperature,
        tool_health=n.health,
    )


# ------------------------------------------------------------------------------------ topology

# Cells of `npu-smi info -t topo`. HCCS_SW is HCCS through the A3 supernode switch; SIO joins
# the two dies of one A3 NPU. Both are high-bandwidth links; the rest are PCIe paths.
LINK_KINDS: Final = {"HCCS": "hccs", "HCCS_SW": "hccs", "SIO": "sio"}
PATH_KINDS: Final = frozenset({"X", "PIX", "PXB", "PHB", "SYS", "NODE", "NA"})
_LABEL: Final = re.compile(r"NPU\d+|Phy-ID\d+")


def parse_npu_topo(text: str) -> Topology:
    """High-bandwidth peers per chip (`NPUn` or `Phy-IDn` labels); unknown cells reported."""
    matrix = read_matrix(text, lambda s: _LABEL.fullmatch(s) is not None, "npu-smi info -t topo")
    links: dict[str, dict[str, str]] = {}
    unknown: set[str] = set()
    for label in matrix.labels:
        row = matrix.cells.get(label)
        if row is None:
            continue
        links[label] = {
            peer: LINK_KINDS[cell]
            for peer, cell in zip(matrix.labels, row, strict=True)
            if cell in LINK_KINDS and peer != label
        }
        unknown |= {c for c in row if c not in LINK_KINDS and c not in PATH_KINDS}
    notes = tuple(f"npu-smi info -t topo: unknown link kind {u!r}" for u in sorted(unknown))
    return Topology(links, {}, notes)
