"""Kubernetes resource quantities, parsed exactly.

The grammar is apimachinery's (`k8s.io/apimachinery/pkg/api/resource`):

    <quantity>  ::= <signed number> <suffix>
    <number>    ::= digits | digits "." digits | digits "." | "." digits
    <suffix>    ::= binary SI (Ki Mi Gi Ti Pi Ei) | decimal SI (n u m "" k M G T P E)
                  | decimal exponent ("e" | "E" <signed integer>)

Values are kept as `fractions.Fraction` until they are converted to the engine's integer units
(MiB for memory, milli-TFLOPS for compute, whole devices), so `19.5`, `500m` and `80Gi` never take
a float round trip. Requests round *up* (asking for 1.5 MiB needs 2 MiB), capacities round *down*
(a device never advertises more than it has).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Final

from hcs.errors import QuantityError

_BINARY: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: Final = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY_RE: Final = re.compile(
    r"^(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<exp>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$"
)
MIB: Final = 2**20
_INT64_MAX: Final = 2**63 - 1
EXPECTED: Final = "a Kubernetes quantity such as 80Gi, 16384Mi, 312, 19.5, 500m or 1e3"
# Kubernetes itself caps exponents; anything larger is a typo, and Fraction(10**huge) would hang.
_MAX_EXPONENT: Final = 30


def parse_quantity(value: object, field: str = "") -> Fraction:
    """Parse a quantity (string, or a YAML/JSON number) to an exact Fraction.

    `field` names where the value came from, for the error message.
    Raises QuantityError naming the value and why it is not a quantity.
    """
    if isinstance(value, bool) or value is None:
        raise QuantityError(field, value, f"is not a quantity (expected {EXPECTED})")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(field, value, "is not a finite number")
        # repr() gives the shortest string that round-trips, i.e. what the user wrote in YAML.
        return parse_quantity(repr(value), field)
    if not isinstance(value, str):
        raise QuantityError(field, value, f"is not a quantity (expected {EXPECTED})")
    cached = _PARSED.get(value)
    if cached is not None:
        return cached
    parsed = _parse_text(value, field)
    if len(_PARSED) < _PARSED_LIMIT:
        _PARSED[value] = parsed
    return parsed


# Pods repeat a handful of quantity strings ("24Gi", "2", "312"); Fractions are immutable, so
# a parse can be shared. Bounded: past the limit new strings are parsed every time.
_PARSED: dict[str, Fraction] = {}
_PARSED_LIMIT: Final = 4096


def _parse_text(value: str, field: str) -> Fraction:
    text = value
    if text != text.strip():
        raise QuantityError(field, value, f"has surrounding spaces (expected {EXPECTED})")
    match = _QUANTITY_RE.match(text)
    if match is None:
        why = _explain_bad_quantity(text)
        raise QuantityError(field, value, f"is not a quantity: {why} (expected {EXPECTED})")
    number = Fraction(match["number"])
    if match["exp"] is not None:
        exponent = int(match["exp"][1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(field, value, f"has an exponent beyond ±{_MAX_EXPONENT}")
        number *= Fraction(10) ** exponent
    else:
        suffix = match["suffix"] or ""
        number *= _BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix]
    return -number if match["sign"] == "-" else number


def _explain_bad_quantity(text: str) -> str:
    if not text:
        return "it is empty"
    if " " in text:
        return "it contains a space"
    if text.endswith(("B", "b")) or text.endswith(("KB", "MB", "GB", "TB")):
        return "byte units are written Ki/Mi/Gi (binary) or k/M/G (decimal), without B"
    if text[-1:] == "K":
        return "kilo is a lowercase k (or Ki for 1024)"
    return "unrecognised number or suffix"


def _non_negative(q: Fraction, value: object, field: str) -> Fraction:
    if q < 0:
        raise QuantityError(field, value, "must not be negative")
    return q


def _checked_int(n: int, value: object, field: str) -> int:
    if n > _INT64_MAX:
        raise QuantityError(field, value, "is too large")
    return n


def vram_mib(value: object, field: str = "", *, round_up: bool = True) -> int:
    """A memory quantity in whole MiB: requests round up, capacities (`round_up=False`) down."""
    q = _non_negative(parse_quantity(value, field), value, field) / MIB
    n = math.ceil(q) if round_up else math.floor(q)
    return _checked_int(n, value, field)


def milli_tflops(value: object, field: str = "", *, round_up: bool = True) -> int:
    """A TFLOPS quantity in integer milli-TFLOPS (`"19.5"` -> 19500, `"500m"` -> 500)."""
    q = _non_negative(parse_quantity(value, field), value, field) * 1000
    n = math.ceil(q) if round_up else math.floor(q)
    return _checked_int(n, value, field)


def whole_count(value: object, field: str = "") -> int:
    """A whole, non-negative count (`ai.compute/devices`, `nvidia.com/gpu`)."""
    q = _non_negative(parse_quantity(value, field), value, field)
    if q.denominator != 1:
        raise QuantityError(field, value, "must be a whole number")
    return _checked_int(int(q), value, field)


def format_mib(mib: int) -> str:
    """Render MiB as the shortest exact Kubernetes quantity (`81920` -> `80Gi`)."""
    for suffix, factor in (("Ti", 2**20), ("Gi", 2**10)):
        if mib and mib % factor == 0:
            return f"{mib // factor}{suffix}"
    return f"{mib}Mi"


def format_milli(milli: int) -> str:
    """Render milli-units as a Kubernetes quantity (`19500` -> `19.5`, `500` -> `500m`)."""
    if milli % 1000 == 0:
        return str(milli // 1000)
    if milli % 100 == 0 and milli >= 1000:
        return f"{milli // 1000}.{(milli % 1000) // 100}"
    return f"{milli}m"
