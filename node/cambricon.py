"""Cambricon MLU: the `cnmon` table (the agent's command) and `cnmon info` key/value blocks.

`cnmon` with no arguments prints two table rows per card: `Card VF Name Firmware | Bus-Id |
Util Ecc-Error` and `Fan Temp Pwr | Memory-Usage | …`. CNMON v4 tables have `Inited Driver`
where v5 has `Bus-Id`: the bus is taken only from a column the header calls Bus-Id. `cnmon info`
prints indented `Key : value` lines per card (`Product Name : MLU370-X8`), with sections such
as `Physical Memory Usage :` holding `Total : 23374 MiB`. The agent runs the table (it has every
figure a ComputeNode needs, in one short output); both are accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from node.devices import (
    DiscoveryError,
    RawDevice,
    check_unique,
    is_unknown,
    mib,
    optional_float,
    optional_int,
    pci_address,
    pci_identity,
)


def parse_cnmon(text: str) -> list[RawDevice]:
    """Either output of cnmon (see the module doc)."""
    if re.search(r"^\|\s*Card\b.*\|", text, re.MULTILINE):
        return _table(text)
    if re.search(r"^\s*Product Name\s*:", text, re.MULTILINE):
        return _info(text)
    first = text.strip().splitlines()[0][:80] if text.strip() else "empty output"
    raise DiscoveryError(
        f"cnmon: neither the cnmon table nor `cnmon info` blocks (output starts {first!r})"
    )


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _memory(cell: str, where: str) -> tuple[int, int]:
    match = re.search(r"(\d+)\s*([KMG]i?B)?\s*/\s*(\d+)\s*([KMG]i?B)", cell)
    if match is None:
        raise DiscoveryError(f"{where}: no memory figures in {cell!r}")
    return mib(match[1], where, match[2] or match[4]), mib(match[3], where, match[4])


def _table(text: str) -> list[RawDevice]:
    rows = [_cells(line) for line in text.splitlines() if line.startswith("|") and "|" in line[1:]]
    bus_column = False
    devices = []
    i = 0
    while i < len(rows):
        row = rows[i]
        first = row[0].split()
        if first and first[0].startswith("Processes"):
            break
        if len(row) >= 3 and first[:1] == ["Card"]:
            bus_column = "Bus" in row[1]
        elif len(row) >= 3 and first and first[0].isdigit() and i + 1 < len(rows):
            devices.append(_table_card(row, rows[i + 1], bus_column))
            i += 1
        i += 1
    if not devices:
        raise DiscoveryError("cnmon reported no cards (no card rows in the table)")
    return check_unique(devices, "cnmon")


def _table_card(row: list[str], nxt: list[str], bus_column: bool) -> RawDevice:
    tokens = row[0].split()
    where = f"cnmon: card {tokens[0]}"
    if len(tokens) < 3 or len(nxt) < 2:
        raise DiscoveryError(f"{where}: the card rows are incomplete: {' | '.join(row)!r}")
    name = tokens[2]
    used, total = _memory(nxt[1], where)
    bus = row[1] if bus_column else ""
    ecc = row[2].split()[-1] if len(row) > 2 and row[2].split() else "N/A"
    temp = re.search(r"(\d+(?:\.\d+)?)\s*C\b", nxt[0])
    return RawDevice(
        id=tokens[0],
        name=name,
        vram_mib=total,
        used_mib=used,
        bus_id=pci_address(bus) or "",
        identity=pci_identity(bus),
        labels=(f"MLU{tokens[0]}",),
        ecc_errors=optional_int(ecc, f"{where}: Ecc-Error"),
        temperature_c=float(temp[1]) if temp else None,
    )


@dataclass
class _Block:
    card: str
    values: dict[tuple[str, str], str] = field(default_factory=dict)

    def get(self, section: str, *keys: str) -> str | None:
        for (sec, key), value in self.values.items():
            if section in sec and key in keys:
                return value
        return None


def _info(text: str) -> list[RawDevice]:
    blocks: list[_Block] = []
    section_stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        card = re.fullmatch(r"\s*Card\s*:?\s*(\d+)\s*:?\s*", line)
        if card:
            blocks.append(_Block(card[1]))
            section_stack = []
            continue
        match = re.fullmatch(r"\s*([^:]+?)\s*:\s*(.*?)\s*", line)
        key, value = (match[1].lower(), match[2]) if match else (line.strip().lower(), "")
        while section_stack and section_stack[-1][0] >= indent:
            section_stack.pop()
        if not value:
            section_stack.append((indent, key))
            continue
        if key == "product name" and (not blocks or ("", "product name") in blocks[-1].values):
            blocks.append(_Block(str(len(blocks))))  # no `Card N` lines: one block per product
        if not blocks:
            continue
        section = section_stack[-1][1] if section_stack else ""
        blocks[-1].values.setdefault((section, key), value)
    devices = [_info_card(b) for b in blocks]
    if not devices:
        raise DiscoveryError("cnmon info reported no cards")
    return check_unique(devices, "cnmon info")


def _info_card(b: _Block) -> RawDevice:
    where = f"cnmon info: card {b.card}"
    name = b.get("", "product name")
    total = b.get("physical memory", "total")
    if name is None:
        raise DiscoveryError(f"{where}: no Product Name")
    if total is None:
        raise DiscoveryError(f"{where}: no `Physical Memory Usage` Total (the output is partial)")
    used = b.get("physical memory", "used") or "0 MiB"
    bus = b.get("", "bus id", "pcie bus id", "bus-id") or ""
    if not bus and b.get("pci", "bus num") is not None:
        parts = [b.get("pci", k) or "0" for k in ("domain id", "bus num", "device", "function")]
        try:
            d, bn, dv, fn = (int(p, 16) if p.startswith("0x") else int(p) for p in parts)
            bus = f"{d:04x}:{bn:02x}:{dv:02x}.{fn:x}"
        except ValueError:
            bus = ""
    uuid = b.get("", "uuid") or ""
    temperature = b.get("temperature", "chip") or b.get("temperature", "board")
    ecc = b.get("ecc", "multiple bit ecc error", "multi-bit ecc error", "two bit ecc error")
    return RawDevice(
        id=b.card,
        name=name,
        vram_mib=mib(total, f"{where}: Physical Memory Usage Total"),
        used_mib=mib(used, f"{where}: Physical Memory Usage Used"),
        bus_id=pci_address(bus) or "",
        identity=(f"uuid:{uuid}" if uuid and not is_unknown(uuid) else pci_identity(bus)),
        labels=(f"MLU{b.card}",),
        ecc_errors=optional_int(ecc, f"{where}: ECC") if ecc is not None else None,
        temperature_c=optional_float(temperature) if temperature else None,
    )
