"""The HCS custom resources as validated, immutable Python models.

Objects arrive as Kubernetes JSON/YAML dicts (from a folder, the API server or a test). Building a
model validates the whole object and reports *every* problem with its field path
(`spec.devices[3].vram: "80 GB" is not a quantity ...`), the way `kubectl apply` reports schema
errors, instead of stopping at the first. Quantities are converted once, here, to the engine's
integer units: MiB for memory, milli-TFLOPS for compute.

The API reference's example objects load verbatim, including two liberties they take: a device
link may name peers that the (abbreviated) device list does not contain, and `capacity` need not
equal the sum of the listed devices. Both are kept as written; the engine places on devices.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, TypeVar, cast

from hcs import quantity
from hcs.errors import QuantityError, ValidationError
from hcs.vendors import VENDOR_NAMES, VendorName

API_GROUP: Final = "hcs.io"
API_VERSION: Final = "hcs.io/v1alpha1"
SHARING_LABEL: Final = "hcs.io/device-sharing"
ENFORCEMENT_LABEL: Final = "hcs.io/share-enforcement"
"""What keeps a container to its share on a shared node: a limiter (`hami-core`, `vnpu`), or
`none` (the node's owner allowed sharing nothing enforces: `--allow-unenforced-sharing`)."""
ENFORCEMENTS: Final = ("hami-core", "vnpu", "none")
SLOTS_LABEL: Final = "hcs.io/device-slots"
HEARTBEAT_INTERVAL_S: Final = 30.0
"""How often the agent publishes its ComputeNode's status (`hcs agent --interval`)."""
CLOCK_SKEW_S: Final = 30.0
"""How far the agent's clock (it writes lastHeartbeat) may be from the reader's."""
HEARTBEAT_TIMEOUT_S: Final = 3 * HEARTBEAT_INTERVAL_S + CLOCK_SKEW_S
"""A node is AgentNotConnected only after two missed beats (the third is due 3 intervals after
the last one seen) plus clock skew: one failed publish never marks it."""
"""Shared nodes: how many containers one device may serve (the device plugin's replicas)."""
LINK_TYPES: Final = ("nvlink", "hccs", "sio", "pcie", "roce", "xgmi", "mlulink")
PHASES: Final = ("Ready", "NotReady", "Draining")
CONDITION_TYPES: Final = ("Ready", "HardwareHealthy", "AgentConnected", "Schedulable")
CONDITION_STATUSES: Final = ("True", "False", "Unknown")
MAX_DEVICES: Final = 64
QUOTA_RESOURCES: Final = ("vram", "tflops-fp16", "tflops-fp32", "devices")
QUOTA_SCOPES: Final = ("PriorityClass", "Terminating", "NotTerminating")
SELECTOR_OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")
_DNS_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)

T = TypeVar("T")
H = TypeVar("H", bound=Hashable)

# A fleet repeats itself: the same device IDs, models, bus IDs, link lists and capacities on
# thousands of nodes. Sharing one object per distinct value keeps 50,000 nodes' models in
# memory at a fraction of the cost (the cache holds distinct values only, a few thousand).
_SHARED: dict[Hashable, Hashable] = {}
_s = sys.intern


def _share(value: H) -> H:
    return cast(H, _SHARED.setdefault(value, value))


class _Checker:
    """Reads fields out of nested dicts, recording a problem per bad field instead of raising."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def mapping(self, obj: Any, path: str, *, required: bool = True) -> dict[str, Any]:
        if obj is None:
            if required:
                self.problem(path, "is required")
            return {}
        if not isinstance(obj, dict):
            self.problem(path, f"expected an object, got {_type_name(obj)}")
            return {}
        return obj

    def sequence(self, obj: Any, path: str, *, required: bool = True) -> list[Any]:
        if obj is None:
            if required:
                self.problem(path, "is required")
            return []
        if not isinstance(obj, list):
            self.problem(path, f"expected a list, got {_type_name(obj)}")
            return []
        return obj

    def string(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        required: bool = True,
        choices: tuple[str, ...] | None = None,
    ) -> str | None:
        value = obj.get(key)
        at = _join(path, key)
        if value is None:
            if required:
                self.problem(at, "is required")
            return None
        if not isinstance(value, str):
            self.problem(at, f"expected a string, got {_type_name(value)} {value!r}")
            return None
        if choices is not None and value not in choices:
            self.problem(at, f'"{value}" is not one of {", ".join(choices)}')
            return None
        return value

    def convert(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        fn: Callable[..., T],
        *,
        required: bool = True,
        **kwargs: Any,
    ) -> T | None:
        value = obj.get(key)
        at = _join(path, key)
        if value is None:
            if required:
                self.problem(at, "is required")
            return None
        try:
            return fn(value, at, **kwargs)
        except QuantityError as exc:
            self.problem(at, str(exc.message).removeprefix(f"{at}: "))
            return None

    def string_map(self, obj: Any, path: str, *, required: bool = False) -> dict[str, str]:
        data = self.mapping(obj, path, required=required)
        out: dict[str, str] = {}
        for key, value in data.items():
            if not isinstance(value, str):
                self.problem(_join(path, key), f"expected a string, got {_type_name(value)}")
            else:
                out[str(key)] = value
        return out

    def raise_if_any(self, what: str) -> None:
        if self.problems:
            raise ValidationError(what, self.problems)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def parse_time(value: Any, path: str) -> datetime:
    """An RFC 3339 timestamp as Kubernetes writes it (`2026-01-21T10:00:00Z`)."""
    if isinstance(value, datetime):  # YAML may already have parsed it
        return value
    if not isinstance(value, str):
        raise QuantityError(path, value, "is not an RFC 3339 time such as 2026-01-21T10:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QuantityError(
            path, value, "is not an RFC 3339 time such as 2026-01-21T10:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise QuantityError(path, value, "has no time zone (use Z for UTC)")
    return parsed


def _health(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise QuantityError(path, value, "must be an integer from 0 to 100")
    return value


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    resource_version: str | None = None
    uid: str | None = None


def _metadata(ck: _Checker, obj: Mapping[str, Any], *, namespaced: bool) -> ObjectMeta:
    meta = ck.mapping(obj.get("metadata"), "metadata")
    name = ck.string(meta, "name", "metadata") or ""
    if name and not _DNS_SUBDOMAIN.match(name):
        ck.problem("metadata.name", f'"{name}" is not a valid name (lowercase DNS subdomain)')
    namespace = ck.string(meta, "namespace", "metadata", required=False)
    if not namespaced and namespace:
        ck.problem("metadata.namespace", "must be empty: this kind is cluster-scoped")
    return ObjectMeta(
        name=name,
        namespace=namespace if namespaced else None,
        labels=ck.string_map(meta.get("labels"), "metadata.labels"),
        annotations=ck.string_map(meta.get("annotations"), "metadata.annotations"),
        resource_version=ck.string(meta, "resourceVersion", "metadata", required=False),
        uid=ck.string(meta, "uid", "metadata", required=False),
    )


def _check_kind(ck: _Checker, obj: Mapping[str, Any], kind: str) -> None:
    if obj.get("kind") != kind:
        ck.problem("kind", f"expected {kind}, got {obj.get('kind')!r}")
    if obj.get("apiVersion") != API_VERSION:
        ck.problem("apiVersion", f"expected {API_VERSION}, got {obj.get('apiVersion')!r}")


# --------------------------------------------------------------------------- ComputeNode


@dataclass(frozen=True, slots=True)
class Link:
    type: str
    peers: tuple[str, ...]
    bandwidth: str


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    model: str
    vram_mib: int
    vram_allocatable_mib: int
    vram_allocated_mib: int
    fp16_milli_tflops: int
    fp32_milli_tflops: int
    bus_id: str
    links: tuple[Link, ...]
    health_score: int
    numa_node: int | None = None
    identity: str | None = None
    """Stable identity of the physical device (GPU UUID, PCI address, chip physical id)."""
    unschedulable: bool = False
    """No new pod may use the device (the agent saw it re-indexed while pods held it)."""


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = None


@dataclass(frozen=True)
class ComputeNode:
    meta: ObjectMeta
    vendor: VendorName
    node_selector: Mapping[str, str]
    capacity_vram_mib: int
    capacity_fp16_milli_tflops: int
    capacity_fp32_milli_tflops: int
    devices: tuple[Device, ...]
    interconnects: tuple[Mapping[str, Any], ...] = ()
    phase: str | None = None
    conditions: tuple[Condition, ...] = ()
    last_heartbeat: datetime | None = None

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def shared(self) -> bool:
        """Devices split between containers: label `hcs.io/device-sharing: shared` and a
        sharing mode (`hcs.io/share-enforcement`). A node asking to share with no mode stated
        is treated as exclusive: nothing says its shares are enforced or allowed unenforced."""
        return (
            self.meta.labels.get(SHARING_LABEL) == "shared"
            and self.meta.labels.get(ENFORCEMENT_LABEL) in ENFORCEMENTS
        )

    @property
    def share_enforcement(self) -> str:
        """How shares are kept on this node: hami-core, vnpu, none (allowed unenforced), or
        exclusive (devices are not split)."""
        return self.meta.labels.get(ENFORCEMENT_LABEL, "none") if self.shared else "exclusive"

    @property
    def device_slots(self) -> int | None:
        """Containers one device may serve on a shared node (`hcs.io/device-slots`), as many as
        the device plugin advertises replicas; None: no limit but VRAM."""
        value = self.meta.labels.get(SLOTS_LABEL)
        return int(value) if value is not None else None

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def condition_true(self, kind: str, *, default: bool) -> bool:
        """A condition's status; `default` when the object does not state it."""
        cond = self.condition(kind)
        return default if cond is None else cond.status == "True"

    @property
    def ready(self) -> bool:
        """The Ready condition (the phase when no condition says), Schedulable not False, and
        not Draining. The phase is a summary: a node whose agent stopped reporting is phase
        NotReady with Ready still True, and is reported as AgentNotConnected, its real cause."""
        ready_cond = self.condition("Ready")
        ready = ready_cond.status == "True" if ready_cond else self.phase != "NotReady"
        return (
            ready and self.phase != "Draining" and self.condition_true("Schedulable", default=True)
        )

    @classmethod
    def from_dict(cls, obj: Any) -> ComputeNode:
        ck = _Checker()
        obj = ck.mapping(obj, "")
        _check_kind(ck, obj, "ComputeNode")
        meta = _metadata(ck, obj, namespaced=False)
        if SHARING_LABEL in meta.labels and meta.labels[SHARING_LABEL] not in (
            "shared",
            "exclusive",
        ):
            ck.problem(
                f"metadata.labels[{SHARING_LABEL}]",
                f'"{meta.labels[SHARING_LABEL]}" is not one of shared, exclusive',
            )
        if ENFORCEMENT_LABEL in meta.labels and meta.labels[ENFORCEMENT_LABEL] not in ENFORCEMENTS:
            ck.problem(
                f"metadata.labels[{ENFORCEMENT_LABEL}]",
                f'"{meta.labels[ENFORCEMENT_LABEL]}" is not one of {", ".join(ENFORCEMENTS)}',
            )
        slots = meta.labels.get(SLOTS_LABEL)
        if slots is not None and not (slots.isdigit() and 1 <= int(slots) <= 1024):
            ck.problem(
                f"metadata.labels[{SLOTS_LABEL}]", f'"{slots}" is not a count from 1 to 1024'
            )
        spec = ck.mapping(obj.get("spec"), "spec")
        vendor = ck.string(spec, "vendor", "spec", choices=VENDOR_NAMES)
        selector = ck.string_map(spec.get("nodeSelector"), "spec.nodeSelector", required=True)
        cap = ck.mapping(spec.get("capacity"), "spec.capacity")
        cap_vram = ck.convert(cap, "vram", "spec.capacity", quantity.vram_mib, round_up=False)
        cap16 = ck.convert(
            cap, "tflops-fp16", "spec.capacity", quantity.milli_tflops, round_up=False
        )
        cap32 = ck.convert(
            cap, "tflops-fp32", "spec.capacity", quantity.milli_tflops, round_up=False
        )
        for extra in sorted(set(cap) - {"vram", "tflops-fp16", "tflops-fp32"}):
            ck.problem(
                f"spec.capacity.{extra}", "unknown field (expected vram, tflops-fp16, tflops-fp32)"
            )
        devices = tuple(
            d
            for i, raw in enumerate(ck.sequence(spec.get("devices"), "spec.devices"))
            if (d := _device(ck, raw, f"spec.devices[{i}]")) is not None
        )
        if len(devices) > MAX_DEVICES:
            ck.problem("spec.devices", f"{len(devices)} devices: at most {MAX_DEVICES} per node")
        seen: dict[str, int] = {}
        for i, dev in enumerate(devices):
            if dev.id in seen:
                ck.problem(
                    f"spec.devices[{i}].id",
                    f'"{dev.id}" duplicates spec.devices[{seen[dev.id]}].id',
                )
            seen.setdefault(dev.id, i)
        topo = ck.mapping(spec.get("topology"), "spec.topology", required=False)
        interconnects = tuple(
            ck.mapping(x, f"spec.topology.interconnects[{i}]")
            for i, x in enumerate(
                ck.sequence(
                    topo.get("interconnects"), "spec.topology.interconnects", required=False
                )
            )
        )
        status = ck.mapping(obj.get("status"), "status", required=False)
        phase = ck.string(status, "phase", "status", required=False, choices=PHASES)
        conditions = tuple(
            c
            for i, raw in enumerate(
                ck.sequence(status.get("conditions"), "status.conditions", required=False)
            )
            if (c := _condition(ck, raw, f"status.conditions[{i}]")) is not None
        )
        heartbeat = ck.convert(status, "lastHeartbeat", "status", parse_time, required=False)
        ck.raise_if_any(f"ComputeNode {meta.name or '<unnamed>'}")
        return cls(
            meta=meta,
            vendor=cast(VendorName, vendor),
            node_selector=selector,
            capacity_vram_mib=cast(int, cap_vram),
            capacity_fp16_milli_tflops=cast(int, cap16),
            capacity_fp32_milli_tflops=cast(int, cap32),
            devices=devices,
            interconnects=interconnects,
            phase=phase,
            conditions=conditions,
            last_heartbeat=heartbeat,
        )


def _device(ck: _Checker, raw: Any, path: str) -> Device | None:
    before = len(ck.problems)
    d = ck.mapping(raw, path)
    dev_id = ck.string(d, "id", path)
    model = ck.string(d, "model", path)
    vram = ck.convert(d, "vram", path, quantity.vram_mib, round_up=False)
    allocatable = ck.convert(d, "vramAllocatable", path, quantity.vram_mib, round_up=False)
    allocated = ck.convert(d, "vramAllocated", path, quantity.vram_mib)
    compute = ck.mapping(d.get("compute"), f"{path}.compute")
    fp16 = ck.convert(compute, "fp16", f"{path}.compute", quantity.milli_tflops, round_up=False)
    fp32 = ck.convert(compute, "fp32", f"{path}.compute", quantity.milli_tflops, round_up=False)
    topo = ck.mapping(d.get("topology"), f"{path}.topology")
    bus_id = ck.string(topo, "busId", f"{path}.topology")
    numa = topo.get("numaNode")
    if numa is not None and (isinstance(numa, bool) or not isinstance(numa, int) or numa < 0):
        ck.problem(f"{path}.topology.numaNode", "expected a non-negative integer")
        numa = None
    links = []
    for j, raw_link in enumerate(
        ck.sequence(topo.get("links"), f"{path}.topology.links", required=False)
    ):
        lp = f"{path}.topology.links[{j}]"
        lk = ck.mapping(raw_link, lp)
        ltype = ck.string(lk, "type", lp, choices=LINK_TYPES)
        peers = ck.sequence(lk.get("peers"), f"{lp}.peers")
        if not all(isinstance(p, str) for p in peers):
            ck.problem(f"{lp}.peers", "expected a list of device ID strings")
        bandwidth = ck.string(lk, "bandwidth", lp)
        if ltype and bandwidth is not None:
            links.append(_share(Link(_s(ltype), tuple(_s(str(p)) for p in peers), _s(bandwidth))))
    health = ck.convert(d, "healthScore", path, _health)
    identity = ck.string(d, "identity", path, required=False)
    unschedulable = d.get("unschedulable", False)
    if not isinstance(unschedulable, bool):
        ck.problem(f"{path}.unschedulable", "expected true or false")
    if vram is not None and allocatable is not None and allocatable > vram:
        ck.problem(f"{path}.vramAllocatable", "must not exceed vram")
    if len(ck.problems) > before:
        return None
    return Device(
        id=_s(cast(str, dev_id)),
        model=_s(cast(str, model)),
        vram_mib=_share(cast(int, vram)),
        vram_allocatable_mib=_share(cast(int, allocatable)),
        vram_allocated_mib=_share(cast(int, allocated)),
        fp16_milli_tflops=_share(cast(int, fp16)),
        fp32_milli_tflops=_share(cast(int, fp32)),
        bus_id=_s(cast(str, bus_id)),
        links=_share(tuple(links)),
        health_score=cast(int, health),
        numa_node=numa,
        identity=identity,
        unschedulable=unschedulable is True,
    )


def _condition(ck: _Checker, raw: Any, path: str) -> Condition | None:
    c = ck.mapping(raw, path)
    ctype = ck.string(c, "type", path, choices=CONDITION_TYPES)
    status = ck.string(c, "status", path, choices=CONDITION_STATUSES)
    reason = ck.string(c, "reason", path, required=False)
    message = ck.string(c, "message", path, required=False)
    when = ck.convert(c, "lastTransitionTime", path, parse_time, required=False)
    if ctype is None or status is None:
        return None
    return Condition(ctype, status, reason, message, when)


# --------------------------------------------------------------------------- ComputeQuota


@dataclass(frozen=True)
class ResourceAmounts:
    """Quota figures in engine units; None means "not limited" / "not stated"."""

    vram_mib: int | None = None
    fp16_milli_tflops: int | None = None
    fp32_milli_tflops: int | None = None
    devices: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "vram": self.vram_mib,
            "tflops-fp16": self.fp16_milli_tflops,
            "tflops-fp32": self.fp32_milli_tflops,
            "devices": self.devices,
        }


def _quota_did_you_mean(key: str) -> str:
    """A quota's names are the pod's without `ai.compute/` (`vram`, not `ai.compute/vram`)."""
    bare = key.removeprefix("ai.compute/")
    if bare in QUOTA_RESOURCES:
        return f" (did you mean {bare}? a ComputeQuota names resources without ai.compute/)"
    close = difflib.get_close_matches(bare, QUOTA_RESOURCES, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _resource_list(ck: _Checker, raw: Any, path: str, *, required: bool) -> ResourceAmounts:
    data = ck.mapping(raw, path, required=required)
    for key in sorted(set(data) - set(QUOTA_RESOURCES)):
        ck.problem(
            f"{path}[{key}]",
            f"unknown resource{_quota_did_you_mean(str(key))} "
            f"(expected {', '.join(QUOTA_RESOURCES)})",
        )
    return ResourceAmounts(
        vram_mib=ck.convert(data, "vram", path, quantity.vram_mib, required=False),
        fp16_milli_tflops=ck.convert(
            data, "tflops-fp16", path, quantity.milli_tflops, required=False
        ),
        fp32_milli_tflops=ck.convert(
            data, "tflops-fp32", path, quantity.milli_tflops, required=False
        ),
        devices=ck.convert(data, "devices", path, quantity.whole_count, required=False),
    )


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
            if req.operator == "In" and labels.get(req.key) not in req.values:
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
        return True


def _selector(ck: _Checker, raw: Any, path: str) -> LabelSelector | None:
    if raw is None:
        return None
    data = ck.mapping(raw, path)
    for key in sorted(set(data) - {"matchLabels", "matchExpressions"}):
        ck.problem(f"{path}.{key}", "unknown field (expected matchLabels, matchExpressions)")
    exprs = []
    for i, raw_expr in enumerate(
        ck.sequence(data.get("matchExpressions"), f"{path}.matchExpressions", required=False)
    ):
        ep = f"{path}.matchExpressions[{i}]"
        e = ck.mapping(raw_expr, ep)
        req_key = ck.string(e, "key", ep)
        op = ck.string(e, "operator", ep, choices=SELECTOR_OPERATORS)
        values = ck.sequence(e.get("values"), f"{ep}.values", required=False)
        if op in ("In", "NotIn") and not values:
            ck.problem(f"{ep}.values", f"must be non-empty for operator {op}")
        if req_key and op:
            exprs.append(LabelRequirement(req_key, cast(Any, op), tuple(str(v) for v in values)))
    return LabelSelector(
        ck.string_map(data.get("matchLabels"), f"{path}.matchLabels"), tuple(exprs)
    )


@dataclass(frozen=True)
class QuotaScope:
    """A scope: an enum string (`PriorityClass`, `Terminating`, `NotTerminating`) or the
    reference's object form `{priority: "high"}`, meaning pods whose priorityClassName is that."""

    kind: Literal["PriorityClass", "Terminating", "NotTerminating", "Priority"]
    priority: str | None = None


@dataclass(frozen=True)
class ComputeQuota:
    meta: ObjectMeta
    hard: ResourceAmounts
    scopes: tuple[QuotaScope, ...] = ()
    selector: LabelSelector | None = None
    used: ResourceAmounts = field(default_factory=ResourceAmounts)
    status_hard: ResourceAmounts = field(default_factory=ResourceAmounts)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace or "default"

    @classmethod
    def from_dict(cls, obj: Any) -> ComputeQuota:
        ck = _Checker()
        obj = ck.mapping(obj, "")
        _check_kind(ck, obj, "ComputeQuota")
        meta = _metadata(ck, obj, namespaced=True)
        spec = ck.mapping(obj.get("spec"), "spec")
        hard = _resource_list(ck, spec.get("hard"), "spec.hard", required=True)
        scopes = []
        for i, raw in enumerate(ck.sequence(spec.get("scopes"), "spec.scopes", required=False)):
            at = f"spec.scopes[{i}]"
            if isinstance(raw, str):
                if raw in QUOTA_SCOPES:
                    scopes.append(QuotaScope(cast(Any, raw)))
                else:
                    ck.problem(
                        at,
                        f'"{raw}" is not one of {", ".join(QUOTA_SCOPES)}, '
                        "or {priority: <PriorityClass name>}",
                    )
            elif (
                isinstance(raw, dict)
                and set(raw) == {"priority"}
                and isinstance(raw["priority"], str)
                and raw["priority"]
            ):
                scopes.append(QuotaScope("Priority", raw["priority"]))
            else:
                ck.problem(
                    at,
                    f"expected one of {', '.join(QUOTA_SCOPES)} or "
                    "{priority: <PriorityClass name>}",
                )
        selector = _selector(ck, spec.get("selector"), "spec.selector")
        status = ck.mapping(obj.get("status"), "status", required=False)
        used = _resource_list(ck, status.get("used"), "status.used", required=False)
        status_hard = _resource_list(ck, status.get("hard"), "status.hard", required=False)
        ck.raise_if_any(f"ComputeQuota {meta.namespace or 'default'}/{meta.name or '<unnamed>'}")
        return cls(meta, hard, tuple(scopes), selector, used, status_hard)


# --------------------------------------------------------------- ComputeTask, ComputeTopology


@dataclass(frozen=True)
class PlainObject:
    """ComputeTask and ComputeTopology: the reference names them but fixes no fields yet, so
    they are kept as metadata plus their spec and status, validated only for shape."""

    kind: str
    meta: ObjectMeta
    spec: Mapping[str, Any]
    status: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.meta.name


def _plain(obj: Any, kind: str, *, namespaced: bool) -> PlainObject:
    ck = _Checker()
    obj = ck.mapping(obj, "")
    _check_kind(ck, obj, kind)
    meta = _metadata(ck, obj, namespaced=namespaced)
    spec = ck.mapping(obj.get("spec"), "spec", required=False)
    status = ck.mapping(obj.get("status"), "status", required=False)
    ck.raise_if_any(f"{kind} {meta.name or '<unnamed>'}")
    return PlainObject(kind, meta, spec, status)


def compute_task_from_dict(obj: Any) -> PlainObject:
    return _plain(obj, "ComputeTask", namespaced=True)


def compute_topology_from_dict(obj: Any) -> PlainObject:
    return _plain(obj, "ComputeTopology", namespaced=False)
