"""One error hierarchy for HCS.

Every error carries a machine code (the same strings appear in filter reasons, admission denials,
logs and metric labels) and a human message that names the field at fault. Platform teams
complain that other schedulers silently ignore a wrong annotation; here every rejection says what
was wrong, where, and what would have been accepted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

ErrorCode = Literal[
    "InvalidQuantity",
    "InvalidAnnotation",
    "InvalidRequest",
    "InvalidObject",
    "InvalidInventory",
    "InvalidConfig",
    "VendorNotSupported",
    "InsufficientVRAM",
    "InsufficientTFLOPS",
    "InsufficientDevices",
    "DeviceUnhealthy",
    "NodeNotFound",
    "NotReady",
    "AgentNotConnected",
    "AllocationConflict",
    "NodeAdmitting",
    "QuotaExceeded",
]


class HcsError(Exception):
    """Base of every error HCS raises on purpose."""

    code: ErrorCode = "InvalidRequest"

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class QuantityError(HcsError):
    """A value that is not a valid Kubernetes quantity, or not valid for its field."""

    code: ErrorCode = "InvalidQuantity"

    def __init__(self, field: str, value: object, why: str) -> None:
        shown = f'"{value}"' if isinstance(value, str) else repr(value)
        where = f"{field}: " if field else ""
        super().__init__(f"{where}{shown} {why}")
        self.field = field
        self.value = value


class AnnotationError(HcsError):
    """An `hcs.io/` annotation with an unknown key or a value outside its allowed set."""

    code: ErrorCode = "InvalidAnnotation"


class RequestError(HcsError):
    """A Pod whose HCS request cannot be honoured as written (conflicts, unsupported shapes)."""

    code: ErrorCode = "InvalidRequest"


class ConfigError(HcsError):
    """A configuration file or flag HCS cannot use."""

    code: ErrorCode = "InvalidConfig"


class ValidationError(HcsError):
    """An object failed validation; `problems` lists every `(field path, message)` found."""

    code: ErrorCode = "InvalidObject"

    def __init__(self, what: str, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = "; ".join(f"{path}: {msg}" if path else msg for path, msg in self.problems)
        super().__init__(f"{what}: {lines}")
        self.what = what


class InventoryError(HcsError):
    """An inventory folder that cannot be loaded (bad YAML, duplicate names, invalid objects)."""

    code: ErrorCode = "InvalidInventory"


class PlacementError(HcsError):
    """An allocation that cannot be made (no longer fits, unknown node, conflicting binds)."""

    code: ErrorCode = "AllocationConflict"
