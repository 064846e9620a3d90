"""From a Pod to what it asks of HCS (DESIGN §4).

Per container a resource's value is its request, else its limit; `ai.compute/devices` defaults to
1 and the other amounts are split evenly over the devices. Legacy vendor resources
(`nvidia.com/gpu: 2`) mean that many whole devices of that vendor. Every `hcs.io/` annotation is
checked: an unknown key or value is an error that names the key and lists what is allowed, because
an ignored typo is how a pod silently lands on the wrong hardware.

The parse is done once per pod and yields a frozen PodDemand the engine consumes as small arrays.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Final, Literal

from hcs import quantity
from hcs.errors import AnnotationError, HcsError, QuantityError, RequestError
from hcs.reuse import Need, Phase, distinct_devices
from hcs.vendors import VENDOR_NAMES, VendorName, VendorProfile, VendorTable

PREFIX: Final = "ai.compute/"
VRAM: Final = "ai.compute/vram"
FP16: Final = "ai.compute/tflops-fp16"
FP32: Final = "ai.compute/tflops-fp32"
DEVICES: Final = "ai.compute/devices"
ABSTRACT_RESOURCES: Final = (VRAM, FP16, FP32, DEVICES)

ANNOTATION_DOMAIN: Final = "hcs.io"
HCS_PREFIX: Final = "hcs.io/"
"""The prefix of every HCS annotation but the per-container `devices.hcs.io/<container>`."""
A_VENDOR_PREFERENCE: Final = "hcs.io/vendor-preference"
A_ALLOW_DOWNGRADE: Final = "hcs.io/allow-downgrade"
A_TOPOLOGY: Final = "hcs.io/topology-preference"
A_INJECT_DRIVER: Final = "hcs.io/inject-driver"
A_INJECT_RUNTIME: Final = "hcs.io/inject-runtime"
A_IMAGE_REBINDING: Final = "hcs.io/image-rebinding"
A_ASSIGNED_VENDOR: Final = "hcs.io/assigned-vendor"
A_ASSIGNED_DEVICES: Final = "hcs.io/assigned-devices"
A_ASSIGNED_NODE: Final = "hcs.io/assigned-node"
A_SCHEDULING_SCORE: Final = "hcs.io/scheduling-score"
A_REQUEST: Final = "hcs.io/request"
A_ORIGINAL_IMAGES: Final = "hcs.io/original-images"
"""Written by the webhook when it rebinds images: container -> the image it asked for."""
A_ALLOCATED: Final = "hcs.io/allocated"
"""Written by the device plugin: container -> kubelet device IDs allocated (hcs.assignment)."""
A_CLAIM_TEMPLATE: Final = "hcs.io/claim-template"
"""Written by the webhook in DRA mode: the ResourceClaimTemplate the pod's claim is made from."""
A_CLAIM_TEMPLATE_SPEC: Final = "hcs.io/claim-template-spec"
"""Its spec (JSON), for `hcs controller` to create it; named by its hash (hcs.dra)."""
INPUT_ANNOTATIONS: Final = (
    A_VENDOR_PREFERENCE,
    A_ALLOW_DOWNGRADE,
    A_TOPOLOGY,
    A_INJECT_DRIVER,
    A_INJECT_RUNTIME,
    A_IMAGE_REBINDING,
)
OUTPUT_ANNOTATIONS: Final = (
    A_ASSIGNED_VENDOR,
    A_ASSIGNED_DEVICES,
    A_ASSIGNED_NODE,
    A_SCHEDULING_SCORE,
    A_REQUEST,
    A_ALLOCATED,
    A_ORIGINAL_IMAGES,
    A_CLAIM_TEMPLATE,
    A_CLAIM_TEMPLATE_SPEC,
)
KNOWN_ANNOTATIONS: Final = INPUT_ANNOTATIONS + OUTPUT_ANNOTATIONS
_INPUT_NAMES: Final = tuple(a.split("/", 1)[1] for a in INPUT_ANNOTATIONS)
BOOLEAN_ANNOTATIONS: Final = (
    A_ALLOW_DOWNGRADE,
    A_INJECT_DRIVER,
    A_INJECT_RUNTIME,
    A_IMAGE_REBINDING,
)
TOPOLOGY_PREFERENCES: Final = ("high-bandwidth", "low-latency")

Topology = Literal["high-bandwidth", "low-latency"]


@dataclass(frozen=True)
class ContainerDemand:
    """What one container needs, per device, in engine units."""

    name: str
    index: int
    devices: int
    vram_mib: int
    fp16_milli_tflops: int
    fp32_milli_tflops: int
    whole: bool = False
    """Whole devices (a legacy `nvidia.com/gpu` request): the device must be entirely free."""
    limits: Mapping[str, str] = field(default_factory=dict)
    """The container's original `ai.compute/*` limits, kept for `hcs.io/request`."""
    hami: tuple[str, ...] = ()
    """HAMi resources read as ai.compute (the webhook rewrites them: no node advertises them)."""
    vram_total: str | None = None
    """The VRAM those HAMi resources amount to (`8000Mi` for 2 devices x 4000), for the patch."""
    resource_name: str | None = None
    """The vendor's whole-device resource the container names (`nvidia.com/gpu`, an alias)."""
    kind: Literal["containers", "initContainers"] = "containers"
    """The list of the pod spec it is in; `index` counts within that list."""
    restartable: bool = False
    """An init container with `restartPolicy: Always` (a native sidecar): it keeps its devices
    for the pod's life, like an app container."""

    @property
    def phase(self) -> Phase:
        """Kubelet's view: a run-to-completion init container, a sidecar, or an app."""
        if self.kind == "containers":
            return "app"
        return "sidecar" if self.restartable else "init"

    @property
    def total_vram_mib(self) -> int:
        return self.devices * self.vram_mib

    @property
    def total_fp16_milli_tflops(self) -> int:
        return self.devices * self.fp16_milli_tflops

    @property
    def total_fp32_milli_tflops(self) -> int:
        return self.devices * self.fp32_milli_tflops


@dataclass(frozen=True)
class PodDemand:
    namespace: str
    name: str
    uid: str
    containers: tuple[ContainerDemand, ...]
    preference: tuple[VendorName, ...] = ()
    """The ordered vendor preference; empty means any vendor."""
    fixed_vendor: VendorName | None = None
    """Set by `hcs.io/assigned-vendor` or a legacy vendor resource: no other vendor will do."""
    allow_downgrade: bool = False
    topology: Topology | None = None
    inject_driver: bool = True
    inject_runtime: bool = True
    image_rebinding: bool = False
    priority_class: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    terminating: bool = False

    init_containers: tuple[ContainerDemand, ...] = ()
    """Requesting init containers (run-to-completion ones and native sidecars), in spec order."""
    resource: str | None = None
    """The device-plugin name the pod's node must advertise (its vendor resource, read through
    the vendor table's aliases); None: any family of the vendor."""
    runs_on: tuple[VendorName, ...] | None = None
    """Vendors the requesting containers' images run on (the vendor table's image rules, and
    their builds when `hcs.io/image-rebinding` is on); None: not known."""
    model: str | None = None
    """A device model pattern the node's devices must match (an alias such as
    `huawei.com/Ascend910B3` means `Ascend910B3*`), kept in `hcs.io/request` once rewritten."""

    @property
    def asks_for_compute(self) -> bool:
        return bool(self.containers or self.init_containers)

    @property
    def all_containers(self) -> tuple[ContainerDemand, ...]:
        """Every requesting container in kubelet's allocation order: init containers first."""
        return self.init_containers + self.containers

    @property
    def needs(self) -> list[Need]:
        return [Need(c.name, c.devices, c.phase) for c in self.all_containers]

    @cached_property
    def placement(self) -> tuple[ContainerDemand, ...]:
        """What the engine places, each with devices of its own: the app containers and
        sidecars, plus the devices run-to-completion init containers need beyond what they
        hand on to them (kubelet's reuse, hcs.reuse). A device an init container passes to an
        app container must carry both, so when init containers ask for devices every placed
        device carries the largest per-device amounts of any of them (a conservative booking
        that matters only on shared nodes; whole-device requests stay whole)."""
        init = self.init_booking()
        if init is None:
            return self.containers + self.init_containers
        vram, fp16, fp32, whole = (
            init.vram_mib,
            init.fp16_milli_tflops,
            init.fp32_milli_tflops,
            init.whole,
        )
        lasting = [
            replace(
                c,
                vram_mib=max(c.vram_mib, vram),
                fp16_milli_tflops=max(c.fp16_milli_tflops, fp16),
                fp32_milli_tflops=max(c.fp32_milli_tflops, fp32),
                whole=c.whole or whole,
            )
            for c in self.all_containers
            if c.phase != "init"
        ]
        extra = distinct_devices(self.needs) - sum(c.devices for c in lasting)
        if extra > 0:
            lasting.append(replace(init, devices=extra))
        return tuple(lasting)

    def init_booking(self) -> ContainerDemand | None:
        """What a device of the run-to-completion init containers carries: the largest of
        their per-device amounts (they run one after another), under the largest one's name;
        None without such init containers."""
        inits = [c for c in self.init_containers if not c.restartable]
        if not inits:
            return None
        return replace(
            max(inits, key=lambda c: c.devices),
            vram_mib=max(c.vram_mib for c in inits),
            fp16_milli_tflops=max(c.fp16_milli_tflops for c in inits),
            fp32_milli_tflops=max(c.fp32_milli_tflops for c in inits),
            whole=any(c.whole for c in inits),
        )

    def _effective(self, amount: Callable[[ContainerDemand], int]) -> int:
        """The pod's request of one resource as the scheduler counts it:
        max(largest init container plus the sidecars started before it, apps + sidecars)."""
        sidecars = peak = 0
        for c in self.init_containers:
            if c.restartable:
                sidecars += amount(c)
                peak = max(peak, sidecars)
            else:
                peak = max(peak, sidecars + amount(c))
        return max(peak, sum(amount(c) for c in self.containers) + sidecars)

    @property
    def allowed_vendors(self) -> tuple[VendorName, ...]:
        """Vendors whose nodes may host the pod, preferred first (and, where its images are
        known, only those the images run on: `runs_on`)."""
        if self.fixed_vendor is not None:
            return (self.fixed_vendor,)
        if not self.preference:
            allowed = VENDOR_NAMES
        elif self.allow_downgrade:
            rest = tuple(v for v in VENDOR_NAMES if v not in self.preference)
            allowed = self.preference + rest
        else:
            allowed = self.preference
        if self.runs_on is not None:
            allowed = tuple(v for v in allowed if v in self.runs_on)
        return allowed

    @property
    def preferred_vendor(self) -> VendorName | None:
        if self.fixed_vendor is not None:
            return self.fixed_vendor
        return self.preference[0] if self.preference else None

    @property
    def total_devices(self) -> int:
        """Distinct devices the pod holds (kubelet's reuse: hcs.reuse)."""
        return distinct_devices(self.needs)

    @property
    def total_vram_mib(self) -> int:
        return self._effective(lambda c: c.total_vram_mib)

    @property
    def total_fp16_milli_tflops(self) -> int:
        return self._effective(lambda c: c.total_fp16_milli_tflops)

    @property
    def total_fp32_milli_tflops(self) -> int:
        return self._effective(lambda c: c.total_fp32_milli_tflops)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def request_annotation(self) -> str:
        """The normalized request written to `hcs.io/request` (compact, sorted JSON)."""
        body = {
            "containers": [
                {
                    "name": c.name,
                    "devices": c.devices,
                    "vramPerDevice": quantity.format_mib(c.vram_mib),
                    "tflopsFp16PerDevice": quantity.format_milli(c.fp16_milli_tflops),
                    "tflopsFp32PerDevice": quantity.format_milli(c.fp32_milli_tflops),
                    **({"wholeDevice": True} if c.whole else {}),
                    **({"limits": dict(c.limits)} if c.limits else {}),
                    **({"phase": c.phase} if c.phase != "app" else {}),
                }
                for c in self.all_containers
            ],
            "vendors": list(self.allowed_vendors),
            **({"model": self.model} if self.model else {}),
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True)


def parse_pod(
    pod: Mapping[str, Any], vendors: VendorTable | None = None, *, namespace: str | None = None
) -> PodDemand:
    """Parse a Pod dict (Kubernetes JSON) into a PodDemand.

    `namespace` overrides `metadata.namespace` (an AdmissionReview carries it outside the object).
    Raises QuantityError, AnnotationError or RequestError naming the field at fault.
    """
    vendors = vendors or VendorTable()
    if not isinstance(pod, Mapping):
        raise RequestError("Pod: expected an object")
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        raise RequestError("Pod: metadata and spec must be objects")
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    if not isinstance(annotations, Mapping):
        raise AnnotationError("metadata.annotations: expected an object of strings")
    name = str(meta.get("name") or meta.get("generateName") or "")
    ns = namespace or str(meta.get("namespace") or "default")

    opts = _parse_annotations(annotations)
    legacy_vendors: dict[VendorName, str] = {}
    parsed_lists: dict[str, list[ContainerDemand]] = {"containers": [], "initContainers": []}
    for kind in ("initContainers", "containers"):
        raw_containers = spec.get(kind) or []
        if not isinstance(raw_containers, list):
            raise RequestError(f"spec.{kind}: expected a list")
        for i, c in enumerate(raw_containers):
            parsed = _parse_container(c, i, vendors, legacy_vendors, kind)
            if parsed is not None:
                parsed_lists[kind].append(parsed)
    containers = parsed_lists["containers"]

    fixed: VendorName | None = opts.assigned_vendor
    if len(legacy_vendors) > 1:
        shown = ", ".join(f"{res} ({v})" for v, res in legacy_vendors.items())
        raise RequestError(
            f"spec.containers: the pod asks for devices of several vendors "
            f"({shown}); a pod runs on one vendor's node"
        )
    if legacy_vendors:
        legacy = next(iter(legacy_vendors))
        if fixed is not None and fixed != legacy:
            raise RequestError(
                f'{A_ASSIGNED_VENDOR}: "{fixed}" contradicts the resource '
                f"{legacy_vendors[legacy]} ({legacy})"
            )
        if opts.preference and legacy not in opts.preference and not opts.allow_downgrade:
            raise RequestError(
                f'{A_VENDOR_PREFERENCE}: "{",".join(opts.preference)}" excludes {legacy}, '
                f"but the pod asks for {legacy_vendors[legacy]}"
            )
        fixed = legacy
    resource, model = _family(parsed_lists, vendors[fixed] if fixed else None, annotations)
    return PodDemand(
        namespace=ns,
        name=name,
        uid=str(meta.get("uid") or ""),
        containers=tuple(containers),
        init_containers=tuple(parsed_lists["initContainers"]),
        resource=resource,
        model=model,
        preference=opts.preference,
        fixed_vendor=fixed,
        allow_downgrade=opts.allow_downgrade,
        topology=opts.topology,
        inject_driver=opts.inject_driver,
        inject_runtime=opts.inject_runtime,
        image_rebinding=opts.image_rebinding,
        priority_class=spec.get("priorityClassName") or None,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
        # The quota scope's meaning, as for ResourceQuota: activeDeadlineSeconds is set.
        terminating=spec.get("activeDeadlineSeconds") is not None,
    )


def _family(
    lists: Mapping[str, list[ContainerDemand]],
    profile: VendorProfile | None,
    annotations: Mapping[str, Any],
) -> tuple[str | None, str | None]:
    """The advertised name and model pattern the pod's vendor resources ask for (every
    container must agree); the model recorded in `hcs.io/request` when the webhook rewrote an
    alias."""
    targets: dict[tuple[str | None, str | None], str] = {}
    if profile is not None:
        for c in (*lists["initContainers"], *lists["containers"]):
            if c.resource_name is not None:
                targets.setdefault(profile.target(c.resource_name), c.resource_name)
    if len(targets) > 1:
        shown = ", ".join(sorted(targets.values()))
        raise RequestError(
            f"spec.containers: the containers ask for different device families ({shown}); "
            "a pod's devices are of one family: name the same resource in each"
        )
    resource, model = next(iter(targets), (None, None))
    if model is None:
        try:
            recorded = json.loads(str(annotations.get(A_REQUEST) or "{}"))
        except ValueError:
            recorded = {}
        if isinstance(recorded, dict) and isinstance(recorded.get("model"), str):
            model = recorded["model"]
    return resource, model


def _parse_container(
    c: Any,
    i: int,
    vendors: VendorTable,
    legacy_vendors: dict[VendorName, str],
    kind: Literal["containers", "initContainers"] = "containers",
) -> ContainerDemand | None:
    path = f"spec.{kind}[{i}]"
    if not isinstance(c, Mapping):
        raise RequestError(f"{path}: expected an object")
    resources = c.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    if not isinstance(requests, Mapping) or not isinstance(limits, Mapping):
        raise RequestError(f"{path}.resources: requests and limits must be objects")
    hami: list[str] = []
    hami_mib = 0
    for section, values in (("requests", requests), ("limits", limits)):
        for key, value in values.items():
            at = f"{path}.resources.{section}[{key}]"
            owner = vendors.hami_vendor(str(key))
            if owner is None:
                continue
            refusal = owner.refusal(str(key))
            if refusal is not None:
                raise RequestError(f"{at}: HAMi's {key} is {refusal} instead")
            mib = quantity.whole_count(value, at)
            if key not in hami:
                hami.append(str(key))
            hami_mib = max(hami_mib, mib)
            # HAMi's resource names its vendor, as a device resource does.
            legacy_vendors.setdefault(owner.name, str(key))
    for section, values in (("requests", requests), ("limits", limits)):
        for key in values:
            if str(key).startswith(PREFIX) and key not in ABSTRACT_RESOURCES:
                raise RequestError(
                    f"{path}.resources.{section}[{key}]: unknown resource"
                    f"{_did_you_mean(str(key), ABSTRACT_RESOURCES)} (expected one of "
                    f"{', '.join(ABSTRACT_RESOURCES)})"
                )
    amounts: dict[str, Any] = {}
    for key in ABSTRACT_RESOURCES:
        req, lim = requests.get(key), limits.get(key)
        rp, lp = f"{path}.resources.requests[{key}]", f"{path}.resources.limits[{key}]"
        parsed_req = quantity.parse_quantity(req, rp) if req is not None else None
        parsed_lim = quantity.parse_quantity(lim, lp) if lim is not None else None
        if parsed_req is not None and parsed_lim is not None and parsed_lim < parsed_req:
            raise QuantityError(lp, lim, f"is less than the request {req}")
        for value, at, parsed in ((req, rp, parsed_req), (lim, lp, parsed_lim)):
            # kube-apiserver's Pod validation: extended resources must be whole numbers. A pod
            # admitted (and charged) with 0.5 would then be refused, its charge leaking.
            if parsed is not None and parsed.denominator != 1:
                raise QuantityError(
                    at,
                    value,
                    "is not a whole number: Kubernetes accepts only whole quantities for "
                    f"extended resources (ask for {math.ceil(parsed)}, or in smaller units)",
                )
        if req is not None:
            amounts[key] = (req, rp)
        elif lim is not None:
            amounts[key] = (lim, lp)

    legacy_count = 0
    legacy_resource: str | None = None
    for section, values in (("limits", limits), ("requests", requests)):
        for key, value in values.items():
            profile = vendors.vendor_of_resource(str(key))
            if profile is None:
                continue
            count = quantity.whole_count(value, f"{path}.resources.{section}[{key}]")
            if legacy_resource is not None and legacy_resource != key:
                mine = vendors.vendor_of_resource(legacy_resource)
                if mine is not None and mine.name == profile.name:
                    raise RequestError(
                        f"{path}.resources: both {legacy_resource} and {key} ask "
                        f"for {profile.name} devices; use one"
                    )
            legacy_vendors.setdefault(profile.name, str(key))
            legacy_count = max(legacy_count, count)
            legacy_resource = str(key)
    resource_name = legacy_resource
    vram_total = None
    if hami:
        if VRAM in amounts:
            raise RequestError(
                f"{path}.resources: both {hami[0]} (HAMi) and {VRAM} ask for memory; use one"
            )
        # HAMi's memory resources are MiB per device: the container's total is that times
        # its device count (HAMi's device resource, default 1).
        vram_total = f"{hami_mib * (legacy_count or 1)}Mi"
        amounts[VRAM] = (vram_total, f"{path}.resources.limits[{hami[0]}]")
    if not amounts and legacy_count == 0:
        return None

    if DEVICES in amounts:
        value, at = amounts[DEVICES]
        devices = quantity.whole_count(value, at)
        if devices < 1:
            raise QuantityError(at, value, "must be at least 1")
        if legacy_count and legacy_count != devices:
            raise RequestError(
                f"{at}: {devices} devices contradicts {legacy_resource}: {legacy_count}"
            )
    else:
        devices = legacy_count or 1
    whole = not (set(amounts) - {DEVICES})  # only counts: whole devices

    def per_device(key: str, convert: Any) -> int:
        if key not in amounts:
            return 0
        value, at = amounts[key]
        total: int = convert(value, at)
        return -(-total // devices)  # ceil: every device must carry its share

    return ContainerDemand(
        name=str(c.get("name") or f"container-{i}"),
        index=i,
        kind=kind,
        restartable=kind == "initContainers" and c.get("restartPolicy") == "Always",
        resource_name=resource_name,
        devices=devices,
        vram_mib=per_device(VRAM, quantity.vram_mib),
        fp16_milli_tflops=per_device(FP16, quantity.milli_tflops),
        fp32_milli_tflops=per_device(FP32, quantity.milli_tflops),
        whole=whole,
        limits={str(k): str(v) for k, v in limits.items() if str(k).startswith(PREFIX)},
        hami=tuple(hami),
        vram_total=vram_total,
    )


@dataclass(frozen=True)
class _Options:
    preference: tuple[VendorName, ...] = ()
    allow_downgrade: bool = False
    topology: Topology | None = None
    inject_driver: bool = True
    inject_runtime: bool = True
    image_rebinding: bool = False
    assigned_vendor: VendorName | None = None


RESOURCES_KEYS: Final = ("requests", "limits", "claims")
"""The keys of a container's `resources` (core/v1 ResourceRequirements)."""


def resources_key_problems(pod: Mapping[str, Any]) -> list[str]:
    """Unknown keys in each container's `resources` (`requets:`), each named with its path:
    the API server would drop them with only a warning and the pod would ask for nothing."""
    spec = pod.get("spec") if isinstance(pod, Mapping) else None
    problems = []
    for kind in ("initContainers", "containers"):
        containers = spec.get(kind) if isinstance(spec, Mapping) else None
        for i, c in enumerate(containers if isinstance(containers, list) else []):
            resources = c.get("resources") if isinstance(c, Mapping) else None
            if not isinstance(resources, Mapping):
                continue
            name = c.get("name") or i
            for key in resources:
                if key not in RESOURCES_KEYS:
                    problems.append(
                        f"spec.{kind}[{name}].resources.{key}: unknown key"
                        f"{_did_you_mean(str(key), RESOURCES_KEYS)} (expected "
                        f"{', '.join(RESOURCES_KEYS)})"
                    )
    return problems


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _parse_annotations(annotations: Mapping[str, Any]) -> _Options:
    for raw_key in annotations:
        key = str(raw_key)
        domain, slash, name = key.partition("/")
        # A plausible typo of an HCS key (`hsc.io/vendor-preference`, `hcs.com/allow-downgrade`)
        # would be silently ignored: say so. Other domains (`ecs.io/…`, `acs.io/…`) are not ours.
        if (
            slash
            and domain != ANNOTATION_DOMAIN
            and difflib.SequenceMatcher(None, domain, ANNOTATION_DOMAIN).ratio() >= 0.6
            and (close := difflib.get_close_matches(name, _INPUT_NAMES, n=1, cutoff=0.8))
        ):
            raise AnnotationError(
                f"metadata.annotations[{key}]: not an HCS annotation (did you mean "
                f"{ANNOTATION_DOMAIN}/{close[0]}?); HCS reads only {ANNOTATION_DOMAIN}/ annotations"
            )
        if domain == ANNOTATION_DOMAIN and slash and key not in KNOWN_ANNOTATIONS:
            raise AnnotationError(
                f"metadata.annotations[{key}]: unknown HCS annotation"
                f"{_did_you_mean(key, KNOWN_ANNOTATIONS)} (known: {', '.join(INPUT_ANNOTATIONS)};"
                f" set by HCS: {', '.join(OUTPUT_ANNOTATIONS)})"
            )
        if domain == ANNOTATION_DOMAIN and not isinstance(annotations[key], str):
            raise AnnotationError(
                f"metadata.annotations[{key}]: expected a string value, got "
                f"{annotations[key]!r} (quote it in YAML)"
            )

    def boolean(key: str, default: bool) -> bool:
        raw = annotations.get(key)
        if raw is None:
            return default
        low = str(raw).strip().lower()
        if low not in ("true", "false"):
            raise AnnotationError(f'metadata.annotations[{key}]: "{raw}" is not one of true, false')
        return low == "true"

    preference: tuple[VendorName, ...] = ()
    raw_pref = annotations.get(A_VENDOR_PREFERENCE)
    if raw_pref is not None:
        preference = _parse_vendor_list(str(raw_pref))
    topology = annotations.get(A_TOPOLOGY)
    if topology is not None and topology not in TOPOLOGY_PREFERENCES:
        raise AnnotationError(
            f'metadata.annotations[{A_TOPOLOGY}]: "{topology}" is not one of '
            f"{', '.join(TOPOLOGY_PREFERENCES)}"
        )
    assigned = annotations.get(A_ASSIGNED_VENDOR)
    if assigned is not None and assigned not in VENDOR_NAMES:
        raise AnnotationError(
            f'metadata.annotations[{A_ASSIGNED_VENDOR}]: "{assigned}" is not '
            f"one of {', '.join(VENDOR_NAMES)}"
        )
    score = annotations.get(A_SCHEDULING_SCORE)
    if score is not None and not str(score).isdigit():
        raise AnnotationError(
            f'metadata.annotations[{A_SCHEDULING_SCORE}]: "{score}" is not a non-negative integer'
        )
    return _Options(
        preference=preference,
        allow_downgrade=boolean(A_ALLOW_DOWNGRADE, False),
        topology=topology,
        inject_driver=boolean(A_INJECT_DRIVER, True),
        inject_runtime=boolean(A_INJECT_RUNTIME, True),
        image_rebinding=boolean(A_IMAGE_REBINDING, False),
        assigned_vendor=assigned,
    )


def _parse_vendor_list(raw: str) -> tuple[VendorName, ...]:
    allowed = f"{', '.join(VENDOR_NAMES)}, any, or an ordered comma list such as nvidia,huawei"
    items = [part.strip() for part in raw.split(",")]
    if not raw.strip() or any(not p for p in items):
        raise AnnotationError(
            f'metadata.annotations[{A_VENDOR_PREFERENCE}]: "{raw}" is not one of {allowed}'
        )
    if "any" in items:
        if items != ["any"]:
            raise AnnotationError(
                f'metadata.annotations[{A_VENDOR_PREFERENCE}]: "any" cannot be '
                "combined with named vendors"
            )
        return ()
    out: list[VendorName] = []
    for item in items:
        if item not in VENDOR_NAMES:
            raise AnnotationError(
                f'metadata.annotations[{A_VENDOR_PREFERENCE}]: "{item}" is not a vendor'
                f"{_did_you_mean(item, VENDOR_NAMES)} (expected {allowed})"
            )
        if item in out:
            raise AnnotationError(
                f'metadata.annotations[{A_VENDOR_PREFERENCE}]: "{item}" is listed twice'
            )
        out.append(item)
    return tuple(out)


def claimed_demand(pod: Mapping[str, Any], vendors: VendorTable | None = None) -> PodDemand | None:
    """What a pod admitted in DRA mode asks, though its `ai.compute/*` became a claim: rebuilt
    from the `hcs.io/request` the webhook wrote (so quota recounts charge it as admission did).
    None for any other pod."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if A_CLAIM_TEMPLATE not in annotations or A_REQUEST not in annotations:
        return None
    try:
        body = json.loads(annotations[A_REQUEST])
        base = parse_pod(pod, vendors)
        app: list[ContainerDemand] = []
        init: list[ContainerDemand] = []
        for c in body["containers"]:
            phase = c.get("phase", "app")
            target = app if phase == "app" else init
            target.append(
                ContainerDemand(
                    name=str(c["name"]),
                    index=len(target),
                    devices=int(c["devices"]),
                    vram_mib=quantity.vram_mib(c["vramPerDevice"]),
                    fp16_milli_tflops=quantity.milli_tflops(c["tflopsFp16PerDevice"]),
                    fp32_milli_tflops=quantity.milli_tflops(c["tflopsFp32PerDevice"]),
                    whole=bool(c.get("wholeDevice", False)),
                    kind="containers" if phase == "app" else "initContainers",
                    restartable=phase == "sidecar",
                )
            )
    except (HcsError, KeyError, TypeError, ValueError):
        return None
    return replace(base, containers=tuple(app), init_containers=tuple(init))
