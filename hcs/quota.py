"""ComputeQuota admission: which quotas a pod counts against, and the charge.

One budget across vendors, in vendor-neutral units: `vram`, `tflops-fp16`, `tflops-fp32`,
`devices`. A quota applies to a pod when every scope matches (like ResourceQuota: `Terminating`
= `activeDeadlineSeconds` set, `NotTerminating` = not set, `PriorityClass` = any
`priorityClassName`, `{priority: X}` = priorityClassName X) and its `selector` matches the pod's
labels. Admission charges every applicable quota or none; over any hard limit the pod is denied
with the figures.

This book is local mode's (in memory). Charges are idempotent per admission request UID, since
the API server may send the same review again after a timeout.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from hcs.demand import PodDemand
from hcs.errors import HcsError
from hcs.models import ComputeQuota
from hcs.quantity import format_mib, format_milli

RESOURCES = ("vram", "tflops-fp16", "tflops-fp32", "devices")


class QuotaExceededError(HcsError):
    code = "QuotaExceeded"


def demand_amounts(demand: PodDemand) -> dict[str, int]:
    """What the pod adds to a quota, in engine units."""
    return {
        "vram": demand.total_vram_mib,
        "tflops-fp16": demand.total_fp16_milli_tflops,
        "tflops-fp32": demand.total_fp32_milli_tflops,
        "devices": demand.total_devices,
    }


def render(resource: str, amount: int) -> str:
    if resource == "vram":
        return format_mib(amount)
    if resource == "devices":
        return str(amount)
    return format_milli(amount)


def applies(quota: ComputeQuota, demand: PodDemand) -> bool:
    for scope in quota.scopes:
        if scope.kind == "Terminating" and not demand.terminating:
            return False
        if scope.kind == "NotTerminating" and demand.terminating:
            return False
        if scope.kind == "PriorityClass" and not demand.priority_class:
            return False
        if scope.kind == "Priority" and demand.priority_class != scope.priority:
            return False
    return quota.selector is None or quota.selector.matches(demand.labels)


@dataclass
class QuotaBook:
    """Local mode: quotas and their use in memory."""

    quotas: dict[tuple[str, str], ComputeQuota] = field(default_factory=dict)
    blocking = False

    def __post_init__(self) -> None:
        self.used: dict[tuple[str, str], dict[str, int]] = {
            key: {r: v or 0 for r, v in q.used.as_dict().items()} for key, q in self.quotas.items()
        }
        self._charged: OrderedDict[str, list[tuple[tuple[str, str], dict[str, int]]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def applicable(self, demand: PodDemand) -> Iterable[tuple[tuple[str, str], ComputeQuota]]:
        for key, quota in sorted(self.quotas.items()):
            if key[0] == demand.namespace and applies(quota, demand):
                yield key, quota

    def admit(self, demand: PodDemand, request_uid: str, *, dry_run: bool) -> list[str]:
        """Check every applicable quota and, unless `dry_run`, charge them all. Returns the
        names of the quotas charged; raises QuotaExceededError naming requested, used and hard."""
        amounts = demand_amounts(demand)
        with self._lock:
            if request_uid in self._charged:
                return [f"{ns}/{name}" for (ns, name), _ in self._charged[request_uid]]
            matched = list(self.applicable(demand))
            for key, quota in matched:
                used = self.used[key]
                for resource, hard in quota.hard.as_dict().items():
                    if hard is None or not amounts[resource]:
                        continue
                    if used[resource] + amounts[resource] > hard:
                        raise QuotaExceededError(
                            f"{key[0]}/{key[1]}: {resource} requested "
                            f"{render(resource, amounts[resource])}, used "
                            f"{render(resource, used[resource])}, hard {render(resource, hard)}"
                        )
            if dry_run:
                return [f"{ns}/{name}" for (ns, name), _ in matched]
            charges = []
            for key, _ in matched:
                for resource, amount in amounts.items():
                    self.used[key][resource] += amount
                charges.append((key, dict(amounts)))
            self._charged[request_uid] = charges
            if len(self._charged) > 10_000:
                self._charged.popitem(last=False)
            return [f"{ns}/{name}" for (ns, name), _ in charges]
