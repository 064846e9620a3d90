"""What a vendor tool told us about the node's devices, before it becomes a ComputeNode.

Every parser returns `RawDevice`s and a `Topology`; nothing here knows a tool's layout. The rules
shared by all tools live here: number and unit reading, PCI address normalisation, the health
score, and the link matrix that `nvidia-smi topo -m` and `npu-smi info -t topo` both print.

Health score (0-100), from what the tool reports; the scheduler uses devices scoring at least
60 (`--min-health`):
- start at 100;
- uncorrected ECC errors (volatile) > 0: -60; retired pages pending: -60. Either alone takes
  the device out (40): its memory is corrupting or about to lose pages;
- temperature >= 85 °C: -30, >= 80 °C: -15. Alone it never takes a device out (70 at worst): a
  busy device runs hot;
- the tool's own health column: Warning -30, anything else but OK (Alarm, Critical): -60;
- never below 0. Unknown fields (`[N/A]`) count as fine.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from hcs.errors import HcsError


class DiscoveryError(HcsError):
    """The hardware could not be read: the tool is missing, failed, or printed something that
    does not give every figure a ComputeNode needs. Published as DiscoveryFailed."""

    code = "DeviceUnhealthy"


@dataclass(frozen=True)
class RawDevice:
    id: str
    """The ID as the vendor's device plugin and env vars name it (`0`, NPU id, chip id)."""
    name: str
    """The model as the tool prints it (`NVIDIA A100-SXM4-80GB`, `910B3`)."""
    vram_mib: int
    used_mib: int
    bus_id: str
    identity: str | None = None
    """Stable identity of the physical device: the GPU UUID, the PCI address, or the chip's
    physical id. Survives re-indexing; None when the tool does not show one."""
    labels: tuple[str, ...] = ()
    """Names of this device in the tool's topology matrix (`GPU3`, `NPU6`, `Phy-ID12`)."""
    model_hint: str | None = None
    """The model table key when the layout, not the name, tells the model (Ascend A3)."""
    ecc_errors: int | None = None
    retired_pending: int | None = None
    temperature_c: float | None = None
    tool_health: str | None = None

    @property
    def health_score(self) -> int:
        score = 100
        if self.ecc_errors:
            score -= 60
        if self.retired_pending:
            score -= 60
        if self.temperature_c is not None:
            if self.temperature_c >= 85:
                score -= 30
            elif self.temperature_c >= 80:
                score -= 15
        if self.tool_health is not None and self.tool_health.upper() != "OK":
            score -= 30 if self.tool_health.lower() == "warning" else 60
        return max(score, 0)


@dataclass(frozen=True)
class Topology:
    links: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Per device label, its high-bandwidth peers (label -> link type), exactly as its own row
    of the matrix marks them."""
    numa: Mapping[str, int] = field(default_factory=dict)
    """NUMA node per device label, where the tool states one."""
    notes: tuple[str, ...] = ()
    """What the tool printed that HCS does not understand (unknown link kinds, ...)."""


# ------------------------------------------------------------------------------------ values

_UNKNOWN: Final = frozenset({"", "N/A", "NA", "[N/A]", "-", "--", "UNKNOWN", "[NOT SUPPORTED]"})
_UNIT_MIB: Final = {
    "": 1.0,
    "b": 1 / 2**20,
    "kib": 1 / 1024,
    "kb": 1 / 1024,
    "mib": 1.0,
    "mb": 1.0,  # the tools mean MiB when they print MB (npu-smi, cnmon)
    "gib": 1024.0,
    "gb": 1024.0,
}


def is_unknown(value: str) -> bool:
    return value.strip().upper() in _UNKNOWN or value.strip().startswith("[")


def number(value: str, what: str) -> float:
    """A plain number (`43`, `101.8`); DiscoveryError naming `what` otherwise."""
    try:
        return float(value.strip())
    except ValueError:
        raise DiscoveryError(f"{what}: {value.strip()!r} is not a number") from None


def optional_int(value: str, what: str) -> int | None:
    """A count, or None when the tool says it does not know (`[N/A]`, `N/A`)."""
    if is_unknown(value):
        return None
    return int(number(value, what))


def optional_float(value: str) -> float | None:
    """A reading with an optional unit (`41C`, `46.0`), None when absent or unreadable."""
    match = re.match(r"\s*(-?\d+(?:\.\d+)?)", value)
    return float(match[1]) if match else None


def mib(value: str, what: str, unit: str = "") -> int:
    """Memory in MiB from `81920`, `81920 MiB`, `23374MiB`, `17163091968` with unit `B` ..."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", value, re.IGNORECASE)
    if match is None:
        raise DiscoveryError(f"{what}: {value.strip()!r} is not an amount of memory")
    scale = _UNIT_MIB.get((match[2] or unit).lower())
    if scale is None:
        raise DiscoveryError(f"{what}: unknown memory unit {match[2] or unit!r}")
    return int(float(match[1]) * scale)


_PCI = re.compile(r"(?:([0-9A-Fa-f]{4,8}):)?([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])")


def pci_address(value: str) -> str | None:
    """`00000000:18:00.0` -> `0000:18:00.0`; None for anything that is not a full address
    (redacted `0000:xx:00.0`, `N/A`, a driver version)."""
    match = _PCI.fullmatch(value.strip())
    if match is None:
        return None
    domain = (match[1] or "0000")[-4:]
    return f"{domain}:{match[2]}:{match[3]}.{match[4]}"


def pci_identity(bus_id: str) -> str | None:
    """The identity a PCI address gives (`pci:0000:18:00.0`, lower case), if it is one."""
    address = pci_address(bus_id)
    return f"pci:{address.lower()}" if address else None


def check_unique(devices: Sequence[RawDevice], tool: str) -> list[RawDevice]:
    """Device IDs must be unique: two devices with one ID cannot be told apart at the node."""
    seen: dict[str, int] = {}
    for dev in devices:
        seen[dev.id] = seen.get(dev.id, 0) + 1
    dupes = sorted(i for i, n in seen.items() if n > 1)
    if dupes:
        raise DiscoveryError(f"{tool}: device IDs {', '.join(dupes)} appear more than once")
    return list(devices)


# ------------------------------------------------------------------------------------ matrix

_ANSI: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """Drivers 590+ underline the `topo -m` header with ANSI escapes even into a file."""
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class Matrix:
    """A `topo -m` style matrix: device labels, each row's cells and trailing columns."""

    labels: tuple[str, ...]
    """Matrix column labels in order (devices, then NICs)."""
    cells: Mapping[str, tuple[str, ...]]
    """Per row label, one cell per matrix column."""
    extra: Mapping[str, Mapping[str, str]]
    """Per row label, the trailing columns by name (`CPU Affinity`, `NUMA Affinity`)."""


def _split_header(line: str) -> list[str]:
    return [c for c in re.split(r"\t|\s{2,}", line.strip()) if c]


def _tab_cells(line: str, origin: int) -> list[str]:
    """Cells of a line whose tabs were expanded to spaces (8 columns): a cell starts at every
    tab stop that follows a blank. Gives what splitting the original on TABs would give."""
    text = line[origin:]
    cuts = [0]
    for pos in range(8, len(text), 8):
        if text[pos - 1] == " ":
            cuts.append(pos)
    cuts.append(len(text))
    # A cell longer than 8 columns runs past a tab stop without a blank before it: no cut.
    return [text[a:b].strip() for a, b in itertools.pairwise(cuts)]


def read_matrix(text: str, is_label: Callable[[str], bool], tool: str) -> Matrix:
    """Parse a link matrix. Handles TAB-separated cells, the same expanded to spaces, space
    aligned columns of other widths, ANSI-wrapped headers, empty trailing cells (an empty
    `CPU Affinity` on Slurm cpusets or Windows) and NIC rows."""
    lines = [line.rstrip("\n") for line in strip_ansi(text).splitlines()]
    header_at = None
    for i, line in enumerate(lines):
        names = _split_header(line)
        if names and is_label(names[0]) and (len(names) == 1 or _is_column(names[1], is_label)):
            header_at = i
            break
    if header_at is None:
        raise DiscoveryError(f"{tool}: no matrix header (a line naming the devices) found")
    header_line = lines[header_at]
    names = _split_header(header_line)
    n_matrix = next(
        (k for k, name in enumerate(names) if "Affinity" in name or "NUMA" in name), len(names)
    )
    labels = tuple(names[:n_matrix])
    trailing = names[n_matrix:]
    rows = [
        line
        for line in lines[header_at + 1 :]
        if line.split() and line.split()[0] in labels and len(line.split()) > 1
    ]
    origin = min((len(r) - len(r.lstrip()) for r in rows), default=0)
    header_starts = [m.start() - origin for m in re.finditer(r"\S+(?: \S+)*", header_line)]
    expanded = "\t" not in header_line and all(s % 8 == 0 for s in header_starts[:n_matrix])
    cells: dict[str, tuple[str, ...]] = {}
    extra: dict[str, dict[str, str]] = {}
    for row in rows:
        tokens = row.split()
        label, matrix = tokens[0], tokens[1 : 1 + len(labels)]
        if len(matrix) < len(labels):
            raise DiscoveryError(
                f"{tool}: row {label} has {len(matrix)} cells for {len(labels)} columns"
            )
        cells[label] = tuple(matrix)
        if "\t" in row:
            tail = row.split("\t")[1 + len(labels) :]
        elif expanded:
            tail = _tab_cells(row, origin)[1 + len(labels) :]
        else:
            tail = tokens[1 + len(labels) :]
        extra[label] = {name: tail[k].strip() for k, name in enumerate(trailing) if k < len(tail)}
    return Matrix(labels, cells, extra)


def _is_column(name: str, is_label: Callable[[str], bool]) -> bool:
    """A header's second entry is another device or a trailing column; a row's is a cell."""
    return is_label(name) or "Affinity" in name or "NUMA" in name
