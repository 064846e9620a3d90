"""Tables and documents for the `hcs` and `kubectl hcs` commands: one look for both."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

from hcs.simulate import Placement

FORMATS = ("table", "wide", "json", "yaml")


def emit(doc: Any, fmt: str) -> None:
    """Print `doc` as one JSON or YAML document."""
    if fmt == "yaml":
        print(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), end="")
    else:
        print(json.dumps(doc, indent=2, ensure_ascii=False))


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def placement_rows(placements: Sequence[Placement]) -> list[list[str]]:
    rows = [["POD", "VENDOR", "NODE", "DEVICES", "SCORE", "OUTCOME"]]
    for p in placements:
        rows.append(
            [
                p.pod,
                p.vendor,
                p.node,
                p.devices,
                "" if p.score is None else str(p.score),
                p.outcome or ("placed" + (f" ({p.note})" if p.note else "")),
            ]
        )
    return rows


def placement_document(p: Placement) -> dict[str, Any]:
    """One placement as a document: `placed` says it, `outcome` says it in words too (the
    table's OUTCOME), the devices as a list."""
    return {
        "pod": p.pod,
        "placed": not p.outcome,
        "vendor": p.vendor or None,
        "node": p.node or None,
        "devices": [d for d in p.devices.split(",") if d],
        "score": p.score,
        "outcome": p.outcome or "placed",
        "note": p.note,
    }


def print_placements(placements: Sequence[Placement], fmt: str = "table") -> None:
    if fmt in ("json", "yaml"):  # one document
        emit([placement_document(p) for p in placements], fmt)
        return
    print(table(placement_rows(placements)))
    placed = sum(1 for p in placements if not p.outcome)
    print(f"\n{placed} of {len(placements)} pods placed")


def explanation_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    lines = [
        [
            "NODE",
            "FITS",
            "SCORE",
            "DEVICES",
            "FREE",
            "HEALTHY-FREE",
            "MAX-FREE-VRAM",
            "FITTING",
            "REASON",
        ]
    ]
    for r in rows:
        lines.append(
            [
                r["node"],
                "yes" if r["fits"] else "no",
                str(r["score"]),
                str(r["devices"]),
                str(r["free_devices"]),
                str(r["healthy_free_devices"]),
                r["max_free_vram"],
                str(r["fitting_devices"]),
                r["reason"],
            ]
        )
    return lines


def print_explanation(rows: Sequence[dict[str, Any]], fmt: str = "table") -> None:
    if fmt in ("json", "yaml"):
        emit(list(rows), fmt)
        return
    print(table(explanation_rows(rows)))
