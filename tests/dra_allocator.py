"""kube-scheduler's DRA allocation (structured parameters), imitated from its published rules
(spec/DRA-API.md) for tests; it imports nothing of HCS.

- Devices are considered slice by slice in slice-name order, each slice's devices in order:
  first fit.
- A device qualifies for a (sub)request when every selector of its DeviceClass and of the
  request is true. CEL sees `device.driver`, `device.attributes[domain][name]`,
  `device.capacity[domain][name]` (a Quantity) and `device.allowMultipleAllocations`;
  unqualified names belong to the driver's domain.
- `firstAvailable` subrequests are tried in order; the first that can be satisfied wins and
  the result's request is `<request>/<subrequest>`.
- `matchAttribute` constraints: every device of the listed requests has the same value.
- A device already allocated to another claim is not given again.

Kubernetes' CEL Quantity library is imitated: `quantity("40Gi")`, `a.compareTo(b)`,
`a.isGreaterThan(b)`, `a.isLessThan(b)`, with exact decimal arithmetic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

_Q = "\x00quantity:"
_SUFFIX: dict[str, Fraction] = {
    **{s: Fraction(2) ** (10 * i) for i, s in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")


def parse_quantity(text: str) -> Fraction:
    found = _QUANTITY.match(text.strip())
    if not found:
        raise ValueError(f"not a quantity: {text!r}")
    return Fraction(found.group(1)) * _SUFFIX[found.group(2) or ""]


def _value(q: Any) -> Fraction:
    return parse_quantity(str(q).removeprefix(_Q))


def _quantity(text: Any) -> Any:
    parse_quantity(str(text))
    return celtypes.StringType(_Q + str(text))


def _compare(a: Any, b: Any) -> Any:
    x, y = _value(a), _value(b)
    return celtypes.IntType((x > y) - (x < y))


FUNCTIONS: dict[str, Any] = {
    "quantity": _quantity,
    "compareTo": _compare,
    "isGreaterThan": lambda a, b: celtypes.BoolType(_value(a) > _value(b)),
    "isLessThan": lambda a, b: celtypes.BoolType(_value(a) < _value(b)),
}
_ENV = celpy.Environment()


def cel(expression: str, device: Mapping[str, Any]) -> bool:
    program = _ENV.program(_ENV.compile(expression), functions=FUNCTIONS)
    result = program.evaluate({"device": json_to_cel(dict(device))})
    if isinstance(result, Exception):
        raise result
    return bool(result)


def _domain(name: str, driver: str) -> tuple[str, str]:
    return (name.rsplit("/", 1)[0], name.rsplit("/", 1)[1]) if "/" in name else (driver, name)


def cel_device(driver: str, device: Mapping[str, Any]) -> dict[str, Any]:
    """The `device` variable CEL sees for one ResourceSlice device."""
    attributes: dict[str, dict[str, Any]] = {}
    for name, value in (device.get("attributes") or {}).items():
        domain, short = _domain(name, driver)
        ((_, v),) = value.items()
        attributes.setdefault(domain, {})[short] = v
    capacity: dict[str, dict[str, Any]] = {}
    for name, value in (device.get("capacity") or {}).items():
        domain, short = _domain(name, driver)
        capacity.setdefault(domain, {})[short] = _Q + str(value["value"])
    return {
        "driver": driver,
        "attributes": attributes,
        "capacity": capacity,
        "allowMultipleAllocations": bool(device.get("allowMultipleAllocations", False)),
    }


def _attribute(driver: str, device: Mapping[str, Any], qualified: str) -> Any:
    domain, short = _domain(qualified, driver)
    for name, value in (device.get("attributes") or {}).items():
        if _domain(name, driver) == (domain, short):
            return next(iter(value.values()))
    return None


def allocate(
    claim_spec: Mapping[str, Any],
    slices: Iterable[Mapping[str, Any]],
    classes: Mapping[str, Mapping[str, Any]],
    in_use: set[tuple[str, str, str]] = frozenset(),  # type: ignore[assignment]
) -> list[dict[str, str]] | None:
    """The allocation results for a claim, or None when it cannot be satisfied now."""
    ordered = [
        (s["spec"]["driver"], s["spec"]["pool"]["name"], d)
        for s in sorted(slices, key=lambda s: s["metadata"]["name"])
        for d in s["spec"].get("devices") or []
    ]
    devices = claim_spec.get("devices") or {}
    constraints = devices.get("constraints") or []
    taken: set[tuple[str, str, str]] = set(in_use)
    fixed: dict[int, Any] = {}  # constraint index -> the attribute value chosen
    results: list[dict[str, str]] = []
    for request in devices.get("requests") or []:
        options: Sequence[Mapping[str, Any]] = request.get("firstAvailable") or [
            {**request["exactly"], "name": None}
        ]
        for sub in options:
            picked = _pick(
                sub,
                request["name"],
                ordered=ordered,
                classes=classes,
                taken=taken,
                constraints=constraints,
                fixed=fixed,
            )
            if picked is not None:
                label = (
                    request["name"]
                    if sub.get("name") is None
                    else (f"{request['name']}/{sub['name']}")
                )
                for driver, pool, device in picked:
                    taken.add((driver, pool, device["name"]))
                    results.append(
                        {"request": label, "driver": driver, "pool": pool, "device": device["name"]}
                    )
                break
        else:
            return None
    return results


def _pick(
    sub: Mapping[str, Any],
    request: str,
    *,
    ordered: list[tuple[str, str, Mapping[str, Any]]],
    classes: Mapping[str, Mapping[str, Any]],
    taken: set[tuple[str, str, str]],
    constraints: list[Mapping[str, Any]],
    fixed: dict[int, Any],
) -> list[tuple[str, str, Mapping[str, Any]]] | None:
    cls = classes.get(sub["deviceClassName"])
    if cls is None:
        return None
    selectors = [s["cel"]["expression"] for s in (cls["spec"].get("selectors") or [])]
    selectors += [s["cel"]["expression"] for s in sub.get("selectors") or []]
    fits = [
        (driver, pool, d)
        for driver, pool, d in ordered
        if (driver, pool, d["name"]) not in taken
        and all(cel(e, cel_device(driver, d)) for e in selectors)
    ]
    count = int(sub.get("count", 1))
    applying = [i for i, c in enumerate(constraints) if request in (c.get("requests") or [])]
    if not applying:
        return fits[:count] if len(fits) >= count else None
    # The first value (in device order) that gives enough devices and agrees with what the
    # constraint's earlier requests fixed.
    for _, _, d in fits:
        values = {i: _attribute(fits[0][0], d, constraints[i]["matchAttribute"]) for i in applying}
        if any(v is None or (i in fixed and fixed[i] != v) for i, v in values.items()):
            continue
        group = [
            f
            for f in fits
            if all(
                _attribute(f[0], f[2], constraints[i]["matchAttribute"]) == v
                for i, v in values.items()
            )
        ]
        if len(group) >= count:
            fixed.update(values)
            return group[:count]
    return None
