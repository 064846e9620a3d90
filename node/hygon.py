"""Hygon DCU: the JSON of `hy-smi` (or `rocm-smi`, which it derives from) with `--json`.

One object per card (`card0`, `card1`, …); which keys appear depends on the `--show…` flags and
the DTK version, and their case varies: `vram Total Memory (MiB)` (hy-smi), `VRAM Total Memory
(B)` (rocm-smi), `Card Series` / `Card series`, `DCU use (%)` / `HCU use (%)`. Keys are matched
case-insensitively and by unit suffix. A card without its total memory is a DiscoveryError
naming the key; a name, bus or temperature that is absent only leaves that figure unknown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final

from node.devices import (
    DiscoveryError,
    RawDevice,
    is_unknown,
    mib,
    optional_float,
    pci_address,
    pci_identity,
)

_MEMORY: Final = re.compile(r"vram total (used )?memory \((b|kib|mib|gib|kb|mb|gb)\)")
_NAME_KEYS: Final = ("card series", "device name", "card model", "product name")


def _norm(key: str) -> str:
    return re.sub(r"\s+", " ", key.strip().lower())


def parse_hy_smi(text: str) -> list[RawDevice]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        first = text.strip().splitlines()[0][:60] if text.strip() else "empty output"
        raise DiscoveryError(
            f"hy-smi: expected the JSON of `--json` ({exc.msg} at line {exc.lineno}; "
            f"the output starts {first!r})"
        ) from None
    if not isinstance(data, dict):
        raise DiscoveryError("hy-smi: expected a JSON object of cards")
    cards = sorted(
        ((int(m[1]), info) for key, info in data.items() if (m := re.fullmatch(r"card(\d+)", key))),
        key=lambda c: c[0],
    )
    if not cards:
        raise DiscoveryError("hy-smi reported no cards (no `cardN` objects)")
    return [_card(number, info) for number, info in cards]


def _card(number: int, info: object) -> RawDevice:
    where = f"hy-smi: card{number}"
    if not isinstance(info, Mapping):
        raise DiscoveryError(f"{where}: expected an object")
    values = {_norm(str(k)): str(v).strip() for k, v in info.items() if str(k).strip()}
    total = used = None
    for key, value in values.items():
        match = _MEMORY.fullmatch(key)
        if match is None:
            continue
        amount = mib(value, f"{where}: {key}", match[2])
        if match[1]:
            used = amount
        else:
            total = amount
    if total is None:
        raise DiscoveryError(f"{where}: no `vram Total Memory (MiB)` or `(B)` value")
    name = next(
        (
            values[k]
            for k in _NAME_KEYS
            if k in values and not is_unknown(values[k]) and not values[k].startswith("0x")
        ),
        "unknown",
    )
    bus = values.get("pci bus", "")
    temperature = next(
        (
            optional_float(values[k])
            for k in (
                "temperature (sensor junction) (c)",
                "temperature (sensor edge) (c)",
                "temperature (sensor hotspot) (c)",
            )
            if k in values
        ),
        None,
    )
    unique = values.get("unique id", "")
    identity = f"uid:{unique.lower()}" if unique and not is_unknown(unique) else pci_identity(bus)
    return RawDevice(
        id=str(number),
        name=name,
        vram_mib=total,
        used_mib=used or 0,
        bus_id=pci_address(bus) or bus,
        identity=identity,
        labels=(f"card{number}",),
        temperature_c=temperature,
    )
