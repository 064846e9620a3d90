"""NVIDIA: `nvidia-smi --query-gpu=… --format=csv[,nounits]` and `nvidia-smi topo -m`.

The query is read by its header, never by column count: a query with other fields (or the same
fields in another order) either yields the right figures or names the column that is missing.
Values come with units (`--format=csv`: `81920 MiB`) or without (`nounits`), and `[N/A]` where
the GPU does not report a field.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Final

from node.devices import (
    DiscoveryError,
    RawDevice,
    Topology,
    is_unknown,
    mib,
    optional_float,
    optional_int,
    pci_address,
    read_matrix,
)

REQUIRED: Final = ("index", "uuid", "name", "memory.total", "memory.used", "pci.bus_id")
HEALTH: Final = (
    "ecc.errors.uncorrected.volatile.total",
    "retired_pages.pending",
    "temperature.gpu",
)
QUERY: Final = ",".join(REQUIRED + HEALTH)
"""The fields the agent asks for; REQUIRED ones must be in any output it is given."""


def _column(name: str) -> tuple[str, str]:
    """`memory.total [MiB]` -> ("memory.total", "MiB"); names are case-insensitive."""
    match = re.fullmatch(r"\s*([^\[]+?)\s*(?:\[([^\]]*)\])?\s*", name)
    assert match is not None
    return match[1].lower(), (match[2] or "")


def parse_nvidia_smi(text: str) -> list[RawDevice]:
    """`nvidia-smi --query-gpu=<fields incl. REQUIRED> --format=csv[,nounits]`, header first."""
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if any(r)]
    if not rows:
        raise DiscoveryError("nvidia-smi reported no GPUs")
    header = [_column(c) for c in rows[0]]
    names = [n for n, _ in header]
    if not set(names) & set(REQUIRED):
        first = ",".join(rows[0])[:80]
        raise DiscoveryError(
            "nvidia-smi: the first line is not a --query-gpu header (run it with "
            f"--format=csv or csv,nounits, without noheader): {first!r}"
        )
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise DiscoveryError(f"nvidia-smi: the query has no {', '.join(missing)} column")
    col = {n: i for i, n in enumerate(names)}
    unit = {n: u for n, u in header}
    devices = []
    for line_no, row in enumerate(rows[1:], 2):
        where = f"nvidia-smi line {line_no}"
        if len(row) != len(header):
            raise DiscoveryError(
                f"{where}: {len(row)} fields for {len(header)} columns: {','.join(row)[:80]!r}"
            )

        def cell(name: str, row: list[str] = row) -> str:
            return row[col[name]].strip()

        bus = cell("pci.bus_id")
        uuid = cell("uuid")
        devices.append(
            RawDevice(
                id=cell("index"),
                name=cell("name"),
                vram_mib=mib(cell("memory.total"), f"{where}: memory.total", unit["memory.total"]),
                used_mib=mib(cell("memory.used"), f"{where}: memory.used", unit["memory.used"]),
                bus_id=pci_address(bus) or bus,
                identity=None if is_unknown(uuid) else uuid,
                labels=(f"GPU{cell('index')}",),
                ecc_errors=(
                    optional_int(cell(HEALTH[0]), f"{where}: {HEALTH[0]}")
                    if HEALTH[0] in col
                    else None
                ),
                retired_pending=_retired(cell(HEALTH[1])) if HEALTH[1] in col else None,
                temperature_c=optional_float(cell(HEALTH[2])) if HEALTH[2] in col else None,
            )
        )
        if not devices[-1].id.isdigit():
            raise DiscoveryError(f"{where}: index {devices[-1].id!r} is not a number")
    if not devices:
        raise DiscoveryError("nvidia-smi reported no GPUs")
    return devices


def _retired(value: str) -> int | None:
    """`retired_pages.pending` is `Yes`/`No` on real drivers; a count is accepted too."""
    if is_unknown(value):
        return None
    if value.lower() in ("yes", "no"):
        return 1 if value.lower() == "yes" else 0
    return optional_int(value, "retired_pages.pending")


_LABEL: Final = re.compile(r"(GPU|NIC)\d+|[a-z][a-z0-9]*_[a-z]*\d+")
_KNOWN: Final = re.compile(r"X|SYS|SOC|NODE|PHB|PXB|PIX|PSB|N/A|NV\d+")


def parse_nvidia_topo(text: str) -> Topology:
    """NVLink peers from each GPU row's `NV#` cells (exactly those: a partial mesh stays
    partial); NUMA from the `NUMA Affinity` column. `SOC` is the old spelling of `SYS`."""
    matrix = read_matrix(text, lambda s: _LABEL.fullmatch(s) is not None, "nvidia-smi topo -m")
    gpus = [g for g in matrix.labels if g.startswith("GPU")]
    links: dict[str, dict[str, str]] = {}
    numa: dict[str, int] = {}
    unknown: set[str] = set()
    for g in gpus:
        row = matrix.cells.get(g)
        if row is None:
            continue
        links[g] = {
            peer: "nvlink"
            for peer, cell in zip(matrix.labels, row, strict=True)
            if peer in gpus and peer != g and re.fullmatch(r"NV\d+", cell)
        }
        unknown |= {c for c in row if not _KNOWN.fullmatch(c)}
        value = matrix.extra.get(g, {}).get("NUMA Affinity", "")
        if value.isdigit():
            numa[g] = int(value)
    notes = tuple(f"nvidia-smi topo -m: unknown link kind {u!r}" for u in sorted(unknown))
    return Topology(links, numa, notes)
