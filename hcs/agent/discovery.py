"""Device discovery: parsers of each vendor tool's machine-readable output, and a thin runner.

Parsers are pure (text in, devices out) and tested on recorded outputs; a tool that is missing,
fails, or prints something unparseable raises DiscoveryError with the tool and the reason, which
the agent reports as `HardwareHealthy=False`, never as a crash.

Units differ by tool: nvidia-smi MiB (`nounits`, or values suffixed ` MiB`), npu-smi MB (taken as
MiB, as the tool means), hy-smi MiB or bytes by DTK version, cnmon MiB.

Health score (0-100), from what the tool reports:
- start at 100;
- uncorrected ECC errors (volatile) > 0: -40;  retired pages pending > 0: -30;
- temperature >= 85 °C: -30, >= 80 °C: -15;
- the tool's own health column: Warning -30, anything else but OK (Alarm, Critical): -60;
- never below 0. Unknown fields (`[N/A]`) count as fine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hcs.errors import HcsError
from hcs.vendors import VendorName

TOOLS: Final = ("nvidia-smi", "nvidia-smi-topo", "npu-smi", "npu-smi-topo", "hy-smi", "cnmon")
COMMANDS: Final[dict[str, list[str]]] = {
    "nvidia-smi": [
        "nvidia-smi",
        "--query-gpu=index,uuid,name,memory.total,memory.used,"
        "pci.bus_id,ecc.errors.uncorrected.volatile.total,retired_pages.pending,"
        "temperature.gpu",
        "--format=csv,noheader,nounits",
    ],
    "nvidia-smi-topo": ["nvidia-smi", "topo", "-m"],
    "npu-smi": ["npu-smi", "info"],
    "npu-smi-topo": ["npu-smi", "info", "-t", "topo"],
    "hy-smi": ["hy-smi", "--showmeminfo", "vram", "--json"],
    "cnmon": ["cnmon", "info"],
}
VENDOR_TOOLS: Final[dict[VendorName, tuple[str, str | None]]] = {
    "nvidia": ("nvidia-smi", "nvidia-smi-topo"),
    "huawei": ("npu-smi", "npu-smi-topo"),
    "hygon": ("hy-smi", None),
    "cambricon": ("cnmon", None),
}
LINK_OF: Final[dict[VendorName, str]] = {
    "nvidia": "nvlink",
    "huawei": "hccs",
    "hygon": "xgmi",
    "cambricon": "mlulink",
}


class DiscoveryError(HcsError):
    """The hardware could not be read: the tool is missing, failed, or printed nonsense."""

    code = "DeviceUnhealthy"


@dataclass(frozen=True)
class RawDevice:
    id: str
    name: str
    """The model as the tool prints it (`NVIDIA A100-SXM4-80GB`)."""
    vram_mib: int
    used_mib: int
    bus_id: str
    ecc_errors: int | None = None
    retired_pending: int | None = None
    temperature_c: float | None = None
    tool_health: str | None = None

    @property
    def health_score(self) -> int:
        score = 100
        if self.ecc_errors:
            score -= 40
        if self.retired_pending:
            score -= 30
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
    cliques: tuple[tuple[str, ...], ...] = ()
    """Groups of device IDs joined by the vendor's high-bandwidth link."""
    numa: Mapping[str, int] = field(default_factory=dict)


def _int_or_none(value: str) -> int | None:
    value = value.strip()
    if not value or value.startswith("[") or value.upper() in ("N/A", "NA"):
        return None
    return int(float(value))


def _mib(value: str, what: str) -> int:
    value = value.strip().removesuffix("MiB").strip()
    try:
        return int(float(value))
    except ValueError:
        raise DiscoveryError(f"{what}: {value!r} is not a number of MiB") from None


# ------------------------------------------------------------------------------------ NVIDIA


def parse_nvidia_smi(text: str) -> list[RawDevice]:
    """`nvidia-smi --query-gpu=… --format=csv[,noheader][,nounits]`: 6 or 9 columns."""
    devices = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("index"):
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) not in (6, 9):
            raise DiscoveryError(
                f"nvidia-smi line {n}: expected 6 or 9 comma-separated fields, "
                f"got {len(cells)}: {line[:80]!r}"
            )
        where = f"nvidia-smi line {n}"
        ecc = retired = temp = None
        if len(cells) == 9:
            try:
                ecc, retired = _int_or_none(cells[6]), _int_or_none(cells[7])
                temp_value = _int_or_none(cells[8])
                temp = float(temp_value) if temp_value is not None else None
            except ValueError:
                raise DiscoveryError(f"{where}: health fields are not numbers") from None
        devices.append(
            RawDevice(
                id=cells[0],
                name=cells[2],
                vram_mib=_mib(cells[3], where),
                used_mib=_mib(cells[4], where),
                bus_id=_pci(cells[5]),
                ecc_errors=ecc,
                retired_pending=retired,
                temperature_c=temp,
            )
        )
    if not devices:
        raise DiscoveryError("nvidia-smi reported no GPUs")
    return devices


def _pci(bus: str) -> str:
    """nvidia-smi prints an 8-digit PCI domain (`00000000:18:00.0`); keep the usual 4."""
    bus = bus.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}:.*", bus):
        return bus[4:]
    return bus


def _matrix(text: str, prefix: str) -> tuple[list[str], dict[str, list[str]]]:
    """Rows of a `topo -m` matrix: header names and each device row's cells."""
    lines = [line for line in text.splitlines() if line.strip()]
    header_line = next(
        (line for line in lines if line.split() and line.split()[0].startswith(prefix)), None
    )
    if header_line is None:
        raise DiscoveryError(f"topology matrix: no {prefix}* header")
    header = [
        h
        for h in re.split(r"\s+", header_line.strip())
        if re.fullmatch(re.escape(prefix) + r"\d+", h)
    ]
    rows = {}
    for line in lines:
        cells = re.split(r"\s+", line.strip())
        if cells and cells[0] in header and cells is not header:
            rows[cells[0]] = cells[1 : 1 + len(header)]
    return header, rows


def parse_nvidia_topo(text: str) -> Topology:
    """NVLink cliques from the `NV#` cells; NUMA from the `NUMA Affinity` column."""
    header, rows = _matrix(text, "GPU")
    linked = {
        g: {header[j] for j, cell in enumerate(cells) if cell.startswith("NV")}
        for g, cells in rows.items()
    }
    numa = {}
    for line in text.splitlines():
        cells = re.split(r"\s+", line.strip())
        if cells and cells[0] in header:
            tail = cells[1 + len(header) :]
            # The columns after the matrix: NICs, then CPU Affinity, NUMA Affinity (a number).
            tail = [
                c for c in tail if not c.startswith(("NV", "PIX", "PXB", "PHB", "NODE", "SYS", "X"))
            ]
            if len(tail) >= 2 and tail[1].isdigit():
                numa[cells[0].removeprefix("GPU")] = int(tail[1])
    return Topology(_components(linked, "GPU"), numa)


def _components(linked: Mapping[str, set[str]], prefix: str) -> tuple[tuple[str, ...], ...]:
    seen: set[str] = set()
    groups = []
    for start in sorted(linked, key=lambda g: int(g.removeprefix(prefix))):
        if start in seen or not linked[start]:
            continue
        stack, group = [start], set()
        while stack:
            cur = stack.pop()
            if cur in group:
                continue
            group.add(cur)
            stack.extend(linked.get(cur, ()))
        seen |= group
        groups.append(tuple(sorted((g.removeprefix(prefix) for g in group), key=int)))
    return tuple(groups)


# ------------------------------------------------------------------------------------ Ascend


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|="):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def parse_npu_smi(text: str) -> list[RawDevice]:
    """`npu-smi info`: two table rows per NPU (id, name, health / chip, bus, memory)."""
    rows = _table_rows(text)
    devices = []
    for i, row in enumerate(rows):
        first = row[0].split()
        if len(row) < 3 or len(first) < 2 or not first[0].isdigit() or i + 1 >= len(rows):
            continue
        nxt = rows[i + 1]
        if len(nxt) < 3:
            continue
        npu_id, name, health = first[0], first[1], row[1]
        temps = row[2].split()
        temperature = float(temps[1]) if len(temps) > 1 and _is_number(temps[1]) else None
        usages = re.findall(r"(\d+)\s*/\s*(\d+)", nxt[2])
        if not usages:
            raise DiscoveryError(f"npu-smi: NPU {npu_id}: no memory figures in {nxt[2]!r}")
        used, total = (int(x) for x in usages[-1])  # HBM when present, else Memory-Usage
        devices.append(
            RawDevice(
                npu_id, name, total, used, nxt[1], tool_health=health, temperature_c=temperature
            )
        )
    if not devices:
        raise DiscoveryError("npu-smi reported no NPUs")
    return devices


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def parse_npu_topo(text: str) -> Topology:
    header, rows = _matrix(text, "NPU")
    linked = {
        n: {header[j] for j, cell in enumerate(cells) if cell == "HCCS"}
        for n, cells in rows.items()
    }
    return Topology(_components(linked, "NPU"))


# ------------------------------------------------------------------------------------ Hygon


def parse_hy_smi(text: str) -> list[RawDevice]:
    """`hy-smi --showmeminfo vram --json`: one object per card, memory in MiB or bytes."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DiscoveryError(f"hy-smi: not JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise DiscoveryError("hy-smi reported no cards")
    devices: list[RawDevice] = []
    for card, info in sorted(data.items(), key=lambda kv: kv[0]):
        if not isinstance(info, dict):
            raise DiscoveryError(f"hy-smi: {card}: expected an object")
        number = re.sub(r"\D", "", card) or str(len(devices))
        total = _hy_memory(info, "VRAM Total Memory", card)
        used = _hy_memory(info, "VRAM Total Used Memory", card, required=False)
        temp = next((v for k, v in info.items() if k.startswith("Temperature")), None)
        devices.append(
            RawDevice(
                number,
                str(info.get("Card series") or "unknown"),
                total,
                used,
                str(info.get("PCI Bus") or ""),
                temperature_c=float(temp) if temp and _is_number(temp) else None,
            )
        )
    return devices


def _hy_memory(info: Mapping[str, object], key: str, card: str, *, required: bool = True) -> int:
    for suffix, divisor in ((" (MiB)", 1), (" (B)", 2**20)):
        if key + suffix in info:
            raw = str(info[key + suffix])
            if not _is_number(raw):
                raise DiscoveryError(f"hy-smi: {card}: {key}{suffix}: {raw!r} is not a number")
            return int(float(raw)) // divisor
    if required:
        raise DiscoveryError(f"hy-smi: {card}: no {key}")
    return 0


# ------------------------------------------------------------------------------------ Cambricon


def parse_cnmon(text: str) -> list[RawDevice]:
    """`cnmon info`: two table rows per card (id, name, bus, ECC / temperature, memory)."""
    rows = [r for r in _table_rows(text) if len(r) >= 3]
    devices = []
    for i, row in enumerate(rows):
        first = row[0].split()
        if len(first) < 3 or not first[0].isdigit() or i + 1 >= len(rows):
            continue
        nxt = rows[i + 1]
        memory = re.search(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB", nxt[1])
        if memory is None:
            raise DiscoveryError(f"cnmon: card {first[0]}: no memory figures in {nxt[1]!r}")
        ecc = row[2].split()[-1] if row[2].split() else "N/A"
        temp = re.search(r"(\d+)C", nxt[0])
        devices.append(
            RawDevice(
                first[0],
                first[2],
                int(memory[2]),
                int(memory[1]),
                row[1],
                ecc_errors=_int_or_none(ecc),
                temperature_c=float(temp[1]) if temp else None,
            )
        )
    if not devices:
        raise DiscoveryError("cnmon reported no cards")
    return devices


# ------------------------------------------------------------------------------------ running

PARSERS: Final = {
    "nvidia-smi": parse_nvidia_smi,
    "npu-smi": parse_npu_smi,
    "hy-smi": parse_hy_smi,
    "cnmon": parse_cnmon,
}
TOPOLOGY_PARSERS: Final = {"nvidia-smi-topo": parse_nvidia_topo, "npu-smi-topo": parse_npu_topo}
SEARCH_PATHS: Final = {"hy-smi": "/opt/hyhal/bin/hy-smi", "npu-smi": "/usr/local/bin/npu-smi"}


def tool_output(tool: str, saved: Mapping[str, Path], timeout: float = 30.0) -> str:
    """The tool's output: from a saved file (`--tool-output TOOL=FILE`) or by running it."""
    if tool in saved:
        try:
            return saved[tool].read_text(encoding="utf-8")
        except OSError as exc:
            raise DiscoveryError(f"{tool}: cannot read {saved[tool]}: {exc}") from None
    command = list(COMMANDS[tool])
    binary = shutil.which(command[0]) or (
        SEARCH_PATHS.get(command[0]) if Path(SEARCH_PATHS.get(command[0], "/-")).exists() else None
    )
    if binary is None:
        raise DiscoveryError(f"{command[0]} not found (is the driver installed and mounted?)")
    command[0] = binary
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiscoveryError(f"{' '.join(COMMANDS[tool])}: {exc}") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise DiscoveryError(
            f"{' '.join(COMMANDS[tool])} exited {done.returncode}: "
            f"{message[0] if message else 'no output'}"
        )
    return done.stdout


def detect_vendor(saved: Mapping[str, Path]) -> VendorName | None:
    """The vendor whose tool was given or is installed."""
    for vendor, (tool, _) in VENDOR_TOOLS.items():
        if tool in saved:
            return vendor
    for vendor, (tool, _) in VENDOR_TOOLS.items():
        binary = COMMANDS[tool][0]
        if shutil.which(binary) or Path(SEARCH_PATHS.get(binary, "/-")).exists():
            return vendor
    return None


def discover(vendor: VendorName, saved: Mapping[str, Path]) -> tuple[list[RawDevice], Topology]:
    """Devices and topology of this node. Raises DiscoveryError; a topology tool that fails
    only loses the topology (devices still count)."""
    tool, topo_tool = VENDOR_TOOLS[vendor]
    devices = PARSERS[tool](tool_output(tool, saved))
    topology = Topology()
    if topo_tool is not None and (topo_tool in saved or tool not in saved):
        try:
            topology = TOPOLOGY_PARSERS[topo_tool](tool_output(topo_tool, saved))
        except DiscoveryError:
            topology = Topology()
    return devices, topology
