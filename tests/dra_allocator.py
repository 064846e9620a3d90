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
- A device already allocated to another claim is not given again, unless it allows multiple
  allocations (`allowMultipleAllocations`, DRAConsumableCapacity): then it is given as long as
  what every allocation consumed, per capacity, stays within the capacity's value.
- Consumption (CapacityRequirements, CapacityRequestPolicy): a requested capacity is rounded
  up by the capacity's request policy (`validValues`: the smallest value at least the request,
  none above: not eligible; `validRange`: at least `min`, up to `min + n*step`, above `max`:
  not eligible); a capacity not requested consumes the policy's `default`, or the whole value
  without a policy. On a device that does not allow multiple allocations the requests only
  filter (value >= request) and the device is taken whole. The results on shared devices carry
  `shareID` and `consumedCapacity` (every capacity, zeros included).

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


Key = tuple[str, str, str]
"""(driver, pool, device)."""


class InUse:
    """What earlier claims hold: whole devices, and per shared device what they consumed."""

    def __init__(self) -> None:
        self.whole: set[Key] = set()
        self.consumed: dict[Key, dict[str, Fraction]] = {}
        self.shares = 0

    def record(self, results: Iterable[Mapping[str, Any]]) -> None:
        for r in results:
            key = (r["driver"], r["pool"], r["device"])
            if "consumedCapacity" in r:
                used = self.consumed.setdefault(key, {})
                for name, q in r["consumedCapacity"].items():
                    used[name] = used.get(name, Fraction(0)) + parse_quantity(q)
            else:
                self.whole.add(key)

    def release(self, results: Iterable[Mapping[str, Any]]) -> None:
        for r in results:
            key = (r["driver"], r["pool"], r["device"])
            if "consumedCapacity" in r:
                used = self.consumed[key]
                for name, q in r["consumedCapacity"].items():
                    used[name] -= parse_quantity(q)
                if not any(used.values()):
                    del self.consumed[key]
            else:
                self.whole.discard(key)


def _format(q: Fraction) -> str:
    """A consumed amount as the API writes a Quantity (whole Mi where it is, else exact)."""
    mi = q / 2**20
    if q and mi.denominator == 1 and q >= 2**20:
        return f"{int(mi)}Mi"
    if q.denominator == 1:
        return str(int(q))
    milli = q * 1000
    if milli.denominator == 1:
        return f"{int(milli)}m"
    raise ValueError(f"not representable: {q}")


def _consumption(
    device: Mapping[str, Any], driver: str, requests: Mapping[str, str]
) -> dict[str, Fraction] | None:
    """What the (sub)request consumes of each capacity of a shared device, or None when the
    policy refuses it."""
    wanted = {_domain(k, driver): parse_quantity(v) for k, v in requests.items()}
    out: dict[str, Fraction] = {}
    for name, cap in (device.get("capacity") or {}).items():
        value = parse_quantity(cap["value"])
        policy = cap.get("requestPolicy") or {}
        key = _domain(name, driver)
        if key not in wanted:
            out[name] = parse_quantity(policy["default"]) if "default" in policy else value
            continue
        amount = wanted[key]
        if "validValues" in policy:
            fits = [v for v in map(parse_quantity, policy["validValues"]) if v >= amount]
            if not fits:
                return None
            amount = min(fits)
        elif "validRange" in policy:
            bounds = policy["validRange"]
            low = parse_quantity(bounds["min"])
            amount = max(amount, low)
            if "step" in bounds:
                step = parse_quantity(bounds["step"])
                n = -((low - amount) // step)  # ceil((amount - low) / step)
                amount = low + n * step
            if "max" in bounds and amount > parse_quantity(bounds["max"]):
                return None
        out[name] = amount
    return out


def _fits(
    key: Key,
    device: Mapping[str, Any],
    sub: Mapping[str, Any],
    used: InUse,
    pending: Mapping[Key, Mapping[str, Fraction]],
) -> dict[str, Fraction] | bool:
    """False: not eligible; True: eligible whole; a mapping: eligible consuming that."""
    requests = (sub.get("capacity") or {}).get("requests") or {}
    capacity = device.get("capacity") or {}
    driver = key[0]
    if not device.get("allowMultipleAllocations"):
        if key in used.whole or key in used.consumed or key in pending:
            return False
        for name, q in requests.items():
            found = [c for n, c in capacity.items() if _domain(n, driver) == _domain(name, driver)]
            if not found or parse_quantity(found[0]["value"]) < parse_quantity(q):
                return False
        return True
    if key in used.whole:
        return False
    for name in requests:
        if not any(_domain(n, driver) == _domain(name, driver) for n in capacity):
            return False
    consumption = _consumption(device, driver, requests)
    if consumption is None:
        return False
    before = used.consumed.get(key, {})
    extra = pending.get(key, {})
    for name, amount in consumption.items():
        total = before.get(name, Fraction(0)) + extra.get(name, Fraction(0)) + amount
        if total > parse_quantity(capacity[name]["value"]):
            return False
    return consumption


def allocate(
    claim_spec: Mapping[str, Any],
    slices: Iterable[Mapping[str, Any]],
    classes: Mapping[str, Mapping[str, Any]],
    in_use: InUse | None = None,
) -> list[dict[str, Any]] | None:
    """The allocation results for a claim, or None when it cannot be satisfied now (the
    caller records the results in `in_use`)."""
    used = in_use or InUse()
    ordered = [
        (s["spec"]["driver"], s["spec"]["pool"]["name"], d)
        for s in sorted(slices, key=lambda s: s["metadata"]["name"])
        for d in s["spec"].get("devices") or []
    ]
    devices = claim_spec.get("devices") or {}
    constraints = devices.get("constraints") or []
    pending: dict[Key, dict[str, Fraction]] = {}
    fixed: dict[int, Any] = {}  # constraint index -> the attribute value chosen
    results: list[dict[str, Any]] = []
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
                used=used,
                pending=pending,
                constraints=constraints,
                fixed=fixed,
            )
            if picked is not None:
                label = (
                    request["name"]
                    if sub.get("name") is None
                    else (f"{request['name']}/{sub['name']}")
                )
                for (driver, pool, device), consumption in picked:
                    key = (driver, pool, device["name"])
                    result: dict[str, Any] = {
                        "request": label,
                        "driver": driver,
                        "pool": pool,
                        "device": device["name"],
                    }
                    if consumption is None:
                        pending[key] = {}
                    else:
                        used.shares += 1
                        mine = pending.setdefault(key, {})
                        for name, amount in consumption.items():
                            mine[name] = mine.get(name, Fraction(0)) + amount
                        result["shareID"] = f"share-{used.shares:05d}"
                        result["consumedCapacity"] = {n: _format(a) for n, a in consumption.items()}
                    results.append(result)
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
    used: InUse,
    pending: Mapping[Key, Mapping[str, Fraction]],
    constraints: list[Mapping[str, Any]],
    fixed: dict[int, Any],
) -> list[tuple[tuple[str, str, Mapping[str, Any]], dict[str, Fraction] | None]] | None:
    cls = classes.get(sub["deviceClassName"])
    if cls is None:
        return None
    selectors = [s["cel"]["expression"] for s in (cls["spec"].get("selectors") or [])]
    selectors += [s["cel"]["expression"] for s in sub.get("selectors") or []]
    fits: list[tuple[tuple[str, str, Mapping[str, Any]], dict[str, Fraction] | None]] = []
    for driver, pool, d in ordered:
        verdict = _fits((driver, pool, d["name"]), d, sub, used, pending)
        if verdict is False or not all(cel(e, cel_device(driver, d)) for e in selectors):
            continue
        fits.append(((driver, pool, d), None if verdict is True else verdict))
    count = int(sub.get("count", 1))
    applying = [i for i, c in enumerate(constraints) if request in (c.get("requests") or [])]
    if not applying:
        return fits[:count] if len(fits) >= count else None
    # The first value (in device order) that gives enough devices and agrees with what the
    # constraint's earlier requests fixed.
    for (driver, _, d), _ in fits:
        values = {i: _attribute(driver, d, constraints[i]["matchAttribute"]) for i in applying}
        if any(v is None or (i in fixed and fixed[i] != v) for i, v in values.items()):
            continue
        group = [
            f
            for f in fits
            if all(
                _attribute(f[0][0], f[0][2], constraints[i]["matchAttribute"]) == v
                for i, v in values.items()
            )
        ]
        if len(group) >= count:
            fixed.update(values)
            return group[:count]
    return None
