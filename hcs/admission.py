"""Pod admission: validate, route to a vendor, charge quota, and mutate (DESIGN §2 step 2).

`review` is a pure function from an AdmissionRequest to an AdmissionResponse; the HTTP layer
only decodes and encodes. The mutation is one JSON Patch that applies to the object exactly as
received (PROTOCOLS §B4): pointers escaped, a whole map or array added only when its parent is
absent (otherwise one `add` per key, or `/-` appends), every value real JSON. A pod that already
carries `hcs.io/assigned-vendor` gets no second patch, so `reinvocationPolicy: IfNeeded` is safe.

What the patch does, per requesting container: `ai.compute/*` requests and limits written equal
(Pod validation refuses an extended resource whose request differs from its limit, or that has a
request and no limit: the reference's own example would be refused otherwise); the vendor's
device-plugin resource (`nvidia.com/gpu: 2`); the device env as a downward-API reference to
`hcs.io/assigned-devices`, which bind writes before the kubelet starts the container; the logical
env (`CUDA_VISIBLE_DEVICES=0,1`); the driver mounts unless `hcs.io/inject-driver: "false"`.
Containers that asked for nothing get the vendor's guard env (`NVIDIA_VISIBLE_DEVICES=void`), and no
container may set a device-selection env to anything HCS did not give it (`device_env_problem`).
Names already present (env vars, volumes, mounts, annotations) are kept as the user wrote them.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, Protocol, TypedDict

from hcs.assignment import CONTAINER_PREFIX, container_key, logical_ids
from hcs.demand import (
    A_ASSIGNED_VENDOR,
    A_CLAIM_TEMPLATE,
    A_CLAIM_TEMPLATE_SPEC,
    A_ORIGINAL_IMAGES,
    A_REQUEST,
    ABSTRACT_RESOURCES,
    DEVICES,
    OUTPUT_ANNOTATIONS,
    VRAM,
    ContainerDemand,
    PodDemand,
    parse_pod,
)
from hcs.demand import (
    PREFIX as ABSTRACT_PREFIX,
)
from hcs.dra import claim_requests, claim_template_spec, template_name
from hcs.engine import EngineConfig, Route, compile_request, route_vendor
from hcs.errors import HcsError
from hcs.limiter import limiter_env
from hcs.state import ClusterState
from hcs.vendors import (
    DRIVER_LIBRARY_ENV,
    NO_DEVICE_VALUES,
    VENDOR_NAMES,
    HostMount,
    VendorProfile,
    VendorTable,
)

log = logging.getLogger("hcs.webhook")
ENVELOPE_VERSION = "admission.k8s.io/v1"
Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class AdmissionRequest(TypedDict, total=False):
    uid: str
    kind: dict[str, str]
    resource: dict[str, str]
    namespace: str
    operation: Operation
    object: dict[str, Any]
    dryRun: bool


class AdmissionStatus(TypedDict):
    code: int
    message: str


class AdmissionResponse(TypedDict, total=False):
    uid: str
    allowed: bool
    patchType: Literal["JSONPatch"]
    patch: str
    warnings: list[str]
    status: AdmissionStatus


class ReviewError(ValueError):
    """The body is not an AdmissionReview (HTTP 400)."""


def parse_review(body: Any) -> AdmissionRequest:
    if not isinstance(body, dict):
        raise ReviewError("expected an AdmissionReview object")
    if body.get("apiVersion") != ENVELOPE_VERSION or body.get("kind") != "AdmissionReview":
        raise ReviewError(
            f"expected apiVersion {ENVELOPE_VERSION} and kind AdmissionReview, got "
            f"{body.get('apiVersion')!r} / {body.get('kind')!r}"
        )
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ReviewError("AdmissionReview.request with a uid is required")
    for key, kinds, what in (
        ("kind", (dict,), "an object {group, version, kind}"),
        ("resource", (dict,), "an object {group, version, resource}"),
        ("operation", (str,), "CREATE, UPDATE, DELETE or CONNECT"),
        ("namespace", (str,), "a namespace name"),
        ("object", (dict,), "the object (a Pod)"),
        ("oldObject", (dict,), "the previous object"),
        ("dryRun", (bool,), "true or false"),
        ("userInfo", (dict,), "an object {username, groups}"),
    ):
        value = request.get(key)
        if value is not None and not isinstance(value, kinds):
            raise ReviewError(
                f"AdmissionReview.request.{key}: expected {what}, got {type(value).__name__} "
                f"{str(value)[:40]!r}"
            )
    return request  # type: ignore[return-value]


def envelope(response: AdmissionResponse) -> dict[str, Any]:
    return {"apiVersion": ENVELOPE_VERSION, "kind": "AdmissionReview", "response": response}


# --------------------------------------------------------------------------- JSON Patch


def pointer(*parts: str | int) -> str:
    """A JSON Pointer; `~` and `/` in a part are escaped (`hcs.io~1assigned-vendor`)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass
class PatchBuilder:
    ops: list[dict[str, Any]] = field(default_factory=list)

    def add(self, value: Any, *parts: str | int) -> None:
        self.ops.append({"op": "add", "path": pointer(*parts), "value": value})

    def set_entries(self, current: Any, entries: Mapping[str, Any], *parts: str | int) -> None:
        """Put `entries` into the map at `parts`: the whole map if it is absent, else one add
        per key (`add` overwrites a key; adding the whole map would wipe the others)."""
        if not entries:
            return
        if not isinstance(current, dict):
            self.add(dict(entries), *parts)
        else:
            for key, value in entries.items():
                self.add(value, *parts, key)

    def append(self, current: Any, items: list[Any], *parts: str | int) -> None:
        """Append `items` to the array at `parts`: the whole array if it is absent."""
        if not items:
            return
        if not isinstance(current, list):
            self.add(list(items), *parts)
        else:
            for item in items:
                self.add(item, *parts, "-")


# --------------------------------------------------------------------------- review


@dataclass
class AdmissionContext:
    state: ClusterState
    quotas: Quotas
    vendors: VendorTable = field(default_factory=VendorTable)
    engine: EngineConfig = field(default_factory=EngineConfig)
    scheduler_name: str | None = None
    """Set `spec.schedulerName` of admitted pods (the `hcs-scheduler` profile), if given."""
    namespace_labels: Callable[[str], Mapping[str, str]] | None = None
    """A namespace's labels (cluster mode: watched), for its Pod Security level."""
    dra: bool = False
    """`--dra`: `ai.compute/*` requests become a ResourceClaim (kube-scheduler allocates from
    the DRA driver's slices) instead of device-plugin resources (docs/dra.md)."""


class Quotas(Protocol):
    """Where admission charges ComputeQuota: in memory (local) or the API server (cluster)."""

    blocking: bool
    """True when `admit` makes network calls (run it off the event loop)."""

    def admit(self, demand: PodDemand, request_uid: str, *, dry_run: bool) -> list[str]: ...


@dataclass(frozen=True)
class Plan:
    """An admission decided but for the quota charge."""

    uid: str
    pod: Mapping[str, Any]
    demand: PodDemand
    route: Route
    dry_run: bool


def _deny(uid: str, code: int, message: str, pod: str = "?") -> AdmissionResponse:
    """A denial, logged at INFO: the pod, the error code and the field are in the line."""
    log.info(
        "deny pod=%s request=%s code=%s reason=%s",
        pod,
        uid,
        message.split(":", 1)[0],
        message,
    )
    return {"uid": uid, "allowed": False, "status": {"code": code, "message": message}}


def _who(request: AdmissionRequest) -> str:
    """`namespace/name` of the pod under review (generateName pods have no name yet)."""
    pod = request.get("object")
    meta = (pod.get("metadata") or {}) if isinstance(pod, dict) else {}
    name = meta.get("name") or (meta.get("generateName") or "") + "*"
    return f"{request.get('namespace') or meta.get('namespace') or 'default'}/{name}"


def review(request: AdmissionRequest, ctx: AdmissionContext) -> AdmissionResponse:
    """The whole decision in one call (the quota charge may block in cluster mode)."""
    plan = prepare(request, ctx)
    if not isinstance(plan, Plan):
        return plan
    return finish(plan, ctx, charge(plan, ctx))


def prepare(request: AdmissionRequest, ctx: AdmissionContext) -> AdmissionResponse | Plan:
    """Validate and route (reads the state: run it where the state is updated)."""
    uid = request["uid"]
    kind = (request.get("kind") or {}).get("kind")
    if kind != "Pod" or request.get("operation") != "CREATE":
        return {"uid": uid, "allowed": True}
    pod = request.get("object")
    if not isinstance(pod, dict):
        return _deny(uid, 400, "InvalidRequest: request.object: expected the Pod", _who(request))
    meta = pod.get("metadata") or {}
    namespace = request.get("namespace") or meta.get("namespace") or "default"
    # What HCS writes is HCS's: a pod created carrying it would be neither charged nor patched
    # (the webhook runs once per CREATE: reinvocationPolicy Never).
    annotations = meta.get("annotations") or {}
    written = sorted(
        k
        for k in (annotations if isinstance(annotations, dict) else {})
        if k in OUTPUT_ANNOTATIONS or str(k).startswith(CONTAINER_PREFIX)
    )
    if written:
        return _deny(
            uid,
            403,
            f"InvalidAnnotation: metadata.annotations[{written[0]}]: set by HCS when it admits "
            "and binds a pod, never by its creator; remove "
            + ("it" if len(written) == 1 else f"it and {', '.join(written[1:])}"),
            _who(request),
        )
    try:
        demand = parse_pod(pod, ctx.vendors, namespace=namespace)
    except HcsError as exc:
        return _deny(uid, 400, str(exc), _who(request))
    scheduler = (pod.get("spec") or {}).get("schedulerName")
    other = scheduler not in (None, "", "default-scheduler", ctx.scheduler_name, HCS_SCHEDULER)
    if other and _asks_ai_compute(pod):
        return _deny(
            uid,
            400,
            f'InvalidRequest: spec.schedulerName: "{scheduler}" does not place ai.compute/* '
            "requests (only HCS's hcs-scheduler profile reads them: the pod would wait Pending "
            'forever); leave schedulerName unset or set "hcs-scheduler", or ask '
            f"{scheduler} for the vendor's resource (nvidia.com/gpu: 1) instead",
            _who(request),
        )
    if not demand.asks_for_compute or other:
        # Pods for another scheduler that ask only vendor resources are left alone (its
        # scheduler places them; the device plugin counts them); the env rules still hold.
        wrong = device_env_problem(pod, demand, None, ctx.vendors)
        if wrong is not None:
            return _deny(uid, 400, wrong, _who(request))
        return {"uid": uid, "allowed": True}
    unservable = _unservable(pod, ctx.vendors)
    if unservable is not None:
        return _deny(uid, 400, unservable, _who(request))
    demand = _implied_preference(pod, demand, ctx.vendors)
    demand = _runnable(pod, demand, ctx.vendors)
    if not demand.allowed_vendors:
        return _deny(
            uid,
            403,
            "VendorNotSupported: spec.containers: the images run on no vendor the pod allows "
            f"(they run on {', '.join(demand.runs_on or ()) or 'no common vendor'}; "
            "hcs.io/image-rebinding with imageRules builds widens that)",
            _who(request),
        )
    try:
        route = route_vendor(ctx.state, compile_request(demand), ctx.engine)
    except HcsError as exc:
        return _deny(uid, 403, str(exc), _who(request))
    wrong = device_env_problem(pod, demand, ctx.vendors[route.vendor], ctx.vendors)
    if wrong is None and ctx.dra and dra_eligible(demand):
        wrong = claim_name_problem(pod)
    if wrong is not None:
        return _deny(uid, 400, wrong, _who(request))
    return Plan(uid, pod, demand, route, bool(request.get("dryRun")))


def claim_name_problem(pod: Mapping[str, Any]) -> str | None:
    """DRA mode adds the claim `hcs-compute` (checked before any quota charge): a pod whose own
    claim has that name would be refused by the API server for the duplicate, or worse, its
    claim mistaken for HCS's."""
    spec = pod.get("spec") or {}
    for i, ref in enumerate(spec.get("resourceClaims") or []):
        if isinstance(ref, dict) and ref.get("name") == CLAIM:
            return (
                f"InvalidRequest: spec.resourceClaims[{i}].name: {CLAIM!r} is the claim HCS adds "
                "for the pod's ai.compute/* requests; rename the pod's own claim"
            )
    return None


def _images(pod: Mapping[str, Any], demand: PodDemand) -> dict[int, str]:
    """The image of each requesting container, by container index."""
    containers = (pod.get("spec") or {}).get("containers") or []
    return {
        c.index: str(containers[c.index].get("image") or "")
        for c in demand.containers
        if c.index < len(containers)
    }


def _implied_preference(
    pod: Mapping[str, Any], demand: PodDemand, vendors: VendorTable
) -> PodDemand:
    """A pod that names no vendor goes where its images were built for (a CUDA image to
    NVIDIA), else to the configured default preference; downgrade only if the pod allows it."""
    if demand.preference or demand.fixed_vendor is not None:
        return demand
    implied = {
        rule.vendor
        for image in _images(pod, demand).values()
        if (rule := vendors.image_rule(image))
    }
    if len(implied) == 1:
        return replace(demand, preference=(implied.pop(),))
    if vendors.default_preference:
        return replace(demand, preference=vendors.default_preference)
    return demand


HCS_SCHEDULER = "hcs-scheduler"
"""The kube-scheduler profile HCS's extender serves (manifests/scheduler)."""


def _asks_ai_compute(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    return any(
        key.startswith(ABSTRACT_PREFIX)
        for kind in ("containers", "initContainers")
        for c in spec.get(kind) or []
        if isinstance(c, dict)
        for key in _resource_keys(c)
    )


def _unservable(pod: Mapping[str, Any], vendors: VendorTable) -> str | None:
    """A resource in a vendor's domain that no node of HCS advertises and HCS does not read
    (`nvidia.com/mig-1g.10gb`, `huawei.com/Ascend910-4c`): the pod could never be placed where
    HCS puts it, so it is refused naming what to ask instead."""
    spec = pod.get("spec") or {}
    for kind in ("containers", "initContainers"):
        for i, c in enumerate(spec.get(kind) or []):
            if not isinstance(c, dict):
                continue
            for key in _resource_keys(c):
                domain = key.split("/", 1)[0]
                profile = vendors.domain_vendor(domain)
                if profile is None or vendors.knows(key):
                    continue
                return (
                    f"InvalidRequest: spec.{kind}[{i}].resources[{key}]: no node HCS manages "
                    f"advertises {key}; ask for ai.compute/* (vram, tflops, devices) or "
                    f"{profile.resource}"
                )
    return None


def _runnable(pod: Mapping[str, Any], demand: PodDemand, vendors: VendorTable) -> PodDemand:
    """Only vendors every requesting container's image runs on: the vendor its image rule
    names, and with `hcs.io/image-rebinding` those the rule has a build for. A pod that names
    a vendor resource keeps it (the user chose)."""
    if demand.fixed_vendor is not None:
        return demand
    runs: set[str] | None = None
    for image in _images(pod, demand).values():
        rule = vendors.image_rule(image)
        if rule is None:
            continue
        here: set[str] = {rule.vendor}
        if demand.image_rebinding:
            here |= {v for v in VENDOR_NAMES if rule.build_for(v, image)}
        runs = here if runs is None else runs & here
    if runs is None:
        return demand
    return replace(demand, runs_on=tuple(v for v in VENDOR_NAMES if v in runs))


def _rebind_images(
    patch: PatchBuilder,
    pod: Mapping[str, Any],
    demand: PodDemand,
    vendor: str,
    vendors: VendorTable,
) -> tuple[dict[str, str], list[str]]:
    """`hcs.io/image-rebinding`: requesting containers whose image was built for another
    vendor get the routed vendor's build (imageRules); (originals, warnings). Without a build,
    or without rebinding, a warning says the image would not run there."""
    originals: dict[str, str] = {}
    warnings: list[str] = []
    names = {c.index: c.name for c in demand.containers}
    for i, image in _images(pod, demand).items():
        rule = vendors.image_rule(image)
        if rule is None and demand.image_rebinding:
            warnings.append(
                f"hcs: {names[i]}: image-rebinding is on, but no imageRules entry names "
                f"{image}; it runs unchanged on {vendor}"
            )
        if rule is None or rule.vendor == vendor:
            continue
        build = rule.build_for(vendor, image) if demand.image_rebinding else None
        if build is None:
            warnings.append(
                f"hcs: {names[i]}: {image} is built for {rule.vendor}; it would not run on "
                f"{vendor}" + ("" if demand.image_rebinding else " (hcs.io/image-rebinding is off)")
            )
            continue
        patch.ops.append(
            {"op": "replace", "path": pointer("spec", "containers", i, "image"), "value": build}
        )
        originals[names[i]] = image
    return originals, warnings


def _resource_keys(container: Mapping[str, Any]) -> list[str]:
    """The resource names in a container's requests and limits."""
    resources = container.get("resources") or {}
    return [
        str(k)
        for section in ("requests", "limits")
        if isinstance(resources, dict) and isinstance(resources.get(section), dict)
        for k in resources[section]
    ]


def _asked_vendors(container: Mapping[str, Any], vendors: VendorTable) -> set[str]:
    """The vendors whose device-plugin resource `container` names (requests or limits)."""
    return {
        p.name
        for k in _resource_keys(container)
        if (p := vendors.vendor_of_resource(k)) is not None
    }


def _hcs_device_ref(container: str) -> str:
    """The downward-API path of a container's own devices (what the device env points at)."""
    return f"metadata.annotations['{container_key(container)}']"


def _is_hcs_device_ref(entry: Mapping[str, Any], container: str) -> bool:
    """`entry` is exactly HCS's device env for `container`: a fieldRef to its own annotation
    (kube-apiserver defaults `fieldRef.apiVersion` to v1 before admission)."""
    source = entry.get("valueFrom")
    if entry.get("value") not in (None, "") or not isinstance(source, dict) or len(source) != 1:
        return False
    ref = source.get("fieldRef")
    return (
        isinstance(ref, dict)
        and ref.get("fieldPath") == _hcs_device_ref(container)
        and ref.get("apiVersion") in (None, "v1")
        and set(ref) <= {"fieldPath", "apiVersion"}
    )


def device_env_problem(
    pod: Mapping[str, Any],
    demand: PodDemand,
    routed: VendorProfile | None,
    vendors: VendorTable,
) -> str | None:
    """No container chooses its own devices (checked before any quota is charged).

    Kubelet applies the pod's env after the device plugin's, and the pod's value wins: under
    NVIDIA's `envvar` strategy `NVIDIA_VISIBLE_DEVICES=0,1,...,7` in any container shows it every
    GPU of the node. So, for every device-selection env of the vendor table
    (`VendorProfile.selection_envs`), by literal value or `valueFrom`:

    - a container that asks for no device of that vendor may set it only to a no-device value
      (`NO_DEVICE_VALUES`); a `valueFrom` is refused, since HCS cannot see its value;
    - a container that asks for that vendor's devices (app, init or sidecar) may set the
      device env only to HCS's own downward-API reference to its devices, and the logical env
      only to HCS's `0..k-1`.

    Nor sets a share limiter's setting (`hcs.limiter.limiter_env`: HAMi-core's limits and off
    switches, the vNPU template), in any container: the pod's value would win over the device
    plugin's and undo the share.

    Refused, never rewritten: the message names the container and the variable."""
    spec = pod.get("spec") or {}
    selection = vendors.selection_envs()
    patched = {(c.kind, c.index): c for c in demand.all_containers} if routed else {}
    for kind in ("initContainers", "containers"):
        items = spec.get(kind) or []
        for i, c in enumerate(items if isinstance(items, list) else []):
            if not isinstance(c, dict):
                continue
            name = str(c.get("name") or "")
            asked = _asked_vendors(c, vendors)
            mine = patched.get((kind, i))
            if mine is not None and routed is not None:
                asked.add(routed.name)
            for e in c.get("env") or []:
                var = e.get("name") if isinstance(e, dict) else None
                if isinstance(var, str) and limiter_env(var):
                    return (
                        f"InvalidRequest: spec.{kind}[{i}].env[{var}]: container {name} sets a "
                        "share limiter's setting (HAMi-core, vNPU), which only HCS's node side "
                        "sets from the booked share: the container's own value would override it "
                        "and widen or switch off the share; remove it"
                    )
                owner = selection.get(var) if isinstance(var, str) else None
                if owner is None or not isinstance(e, dict):
                    continue
                at = f"spec.{kind}[{i}].env[{var}]"
                value = e.get("value")
                literal = e.get("valueFrom") is None
                if owner.name not in asked:
                    if literal and str(value or "").strip().lower() in NO_DEVICE_VALUES:
                        continue
                    shown = f'"{value}"' if literal else "a valueFrom HCS cannot check"
                    guard = owner.guard_env[1] if owner.guard_env else ""
                    return (
                        f"InvalidRequest: {at}: container {name} asks for no {owner.name} device, "
                        f"so it may not choose {owner.name} devices ({shown}); remove it or set "
                        f'"{guard}"'
                    )
                if var == owner.device_env:
                    if _is_hcs_device_ref(e, name):
                        continue
                    want = f"valueFrom.fieldRef {_hcs_device_ref(name)}"
                elif mine is not None and var == owner.logical_env:
                    if literal and value == logical_ids(mine.devices):
                        continue
                    want = f'"{logical_ids(mine.devices)}"'
                elif mine is None and var == owner.logical_env and literal:
                    continue
                else:
                    want = "nothing"
                return (
                    f"InvalidRequest: {at}: set by HCS from the devices bound to container "
                    f"{name} (HCS sets {want}); remove it"
                )
    return None


def charge(plan: Plan, ctx: AdmissionContext) -> list[str] | AdmissionResponse:
    """Charge the namespace's ComputeQuotas: the quota names, or the denial."""
    try:
        return ctx.quotas.admit(plan.demand, plan.uid, dry_run=plan.dry_run)
    except HcsError as exc:
        return _deny(plan.uid, 403, str(exc), plan.demand.key)


def finish(
    plan: Plan, ctx: AdmissionContext, charged: list[str] | AdmissionResponse
) -> AdmissionResponse:
    if isinstance(charged, dict):
        return charged
    demand, route = plan.demand, plan.route
    labels = ctx.namespace_labels(demand.namespace) if ctx.namespace_labels else {}
    level = labels.get(PSA_ENFORCE, "privileged")
    hostpaths = level not in ("baseline", "restricted")
    profile = ctx.vendors[route.vendor]
    # The resource the chosen family's nodes advertise (their models decide: 310P nodes
    # advertise huawei.com/Ascend310P, not Ascend910); aliases are rewritten to it.
    resource = route.resource or profile.resource
    if resource != profile.resource:
        profile = replace(profile, resource=resource, aliases=(profile.resource, *profile.aliases))
    warnings: list[str] = []
    if ctx.dra and dra_eligible(demand):
        return _admitted(plan, mutate_dra(plan.pod, demand, ctx.scheduler_name), warnings)
    if ctx.dra:
        warnings.append(
            "hcs: DRA mode: a vendor resource name (nvidia.com/gpu, HAMi's) stays with the "
            "device plugin; ask ai.compute/* for a claim"
        )
    patch = mutate(
        plan.pod,
        demand,
        profile,
        ctx.scheduler_name,
        hostpaths=hostpaths,
    )
    originals, image_warnings = _rebind_images(patch, plan.pod, demand, route.vendor, ctx.vendors)
    if originals:  # mutate has made the annotations map exist: add the one key
        value = json.dumps(originals, separators=(",", ":"), sort_keys=True)
        patch.add(value, "metadata", "annotations", A_ORIGINAL_IMAGES)
    warnings += image_warnings
    if not hostpaths and demand.inject_driver and ctx.vendors[route.vendor].mounts:
        warnings.append(
            f"hcs: namespace {demand.namespace} enforces Pod Security {level}: no driver "
            "hostPaths mounted; the vendor runtime supplies the driver"
        )
    if route.downgraded and demand.preference:
        warnings.append(
            f"hcs: {demand.preference[0]} cannot hold the pod now, routed to "
            f"{route.vendor} (allow-downgrade)"
        )
    if not route.fits_now:
        warnings.append(f"hcs: no {route.vendor} node can hold the pod now; it waits Pending")
    hami = sorted({key for c in demand.all_containers for key in c.hami})
    if hami and not ctx.state.enforces_shares(route.vendor):
        warnings.append(
            f"hcs: {', '.join(hami)} became ai.compute/vram, but no {route.vendor} node enforces "
            "shares (hcs.io/share-enforcement): unlike under HAMi, nothing holds the containers "
            "to their memory"
        )
    log.info(
        "admit pod=%s/%s vendor=%s fits_now=%s downgraded=%s quotas=%s",
        demand.namespace,
        demand.name,
        route.vendor,
        route.fits_now,
        route.downgraded,
        ",".join(charged),
    )
    return _admitted(plan, patch, warnings)


def _admitted(plan: Plan, patch: PatchBuilder, warnings: list[str]) -> AdmissionResponse:
    response: AdmissionResponse = {
        "uid": plan.uid,
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(json.dumps(patch.ops).encode()).decode(),
    }
    if warnings:
        response["warnings"] = [w[:119] for w in warnings]
    return response


CLAIM: Final = "hcs-compute"
"""The pod's claim in DRA mode (`spec.resourceClaims[].name`)."""


def dra_eligible(demand: PodDemand) -> bool:
    """Only `ai.compute/*` requests become claims; vendor names stay with the device plugin."""
    return all(c.resource_name is None and not c.hami for c in demand.all_containers)


def mutate_dra(
    pod: Mapping[str, Any], demand: PodDemand, scheduler_name: str | None
) -> PatchBuilder:
    """DRA mode's patch: each requesting container's `ai.compute/*` removed and a claim on the
    pod's ResourceClaimTemplate added in its place (one request per container, named after
    it); the template (named by its shape, hcs.dra) is recorded for `hcs controller` to create
    in the namespace; the request is recorded as always (quota recounts read it)."""
    template = claim_template_spec(demand)
    name = template_name(template)
    patch = PatchBuilder()
    meta = pod.get("metadata") or {}
    patch.set_entries(
        meta.get("annotations"),
        {
            A_REQUEST: demand.request_annotation(),
            A_CLAIM_TEMPLATE: name,
            A_CLAIM_TEMPLATE_SPEC: json.dumps(template, separators=(",", ":"), sort_keys=True),
        },
        "metadata",
        "annotations",
    )
    spec = pod.get("spec") or {}
    uses = claim_requests(demand)
    for c in demand.all_containers:
        container = (spec.get(c.kind) or [])[c.index]
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            for key in resources.get(section) or {}:
                if str(key).startswith(ABSTRACT_PREFIX):
                    patch.ops.append(
                        {
                            "op": "remove",
                            "path": pointer("spec", c.kind, c.index, "resources", section, key),
                        }
                    )
        patch.append(
            resources.get("claims"),
            [{"name": CLAIM, "request": uses[c.name]}],
            "spec",
            c.kind,
            c.index,
            "resources",
            "claims",
        )
    patch.append(
        spec.get("resourceClaims"),
        [{"name": CLAIM, "resourceClaimTemplateName": name}],
        "spec",
        "resourceClaims",
    )
    if scheduler_name and spec.get("schedulerName") in (None, "", "default-scheduler"):
        patch.add(scheduler_name, "spec", "schedulerName")
    return patch


PSA_ENFORCE = "pod-security.kubernetes.io/enforce"


def mutate(
    pod: Mapping[str, Any],
    demand: PodDemand,
    profile: VendorProfile,
    scheduler_name: str | None,
    *,
    hostpaths: bool = True,
) -> PatchBuilder:
    """The JSON Patch for an admitted pod routed to `profile`'s vendor. Without `hostpaths`
    (the namespace's Pod Security level refuses them) no driver volume is mounted."""
    patch = PatchBuilder()
    meta = pod.get("metadata") or {}
    request = json.loads(demand.request_annotation())
    request["vendor"] = profile.name
    patch.set_entries(
        meta.get("annotations"),
        {
            A_ASSIGNED_VENDOR: profile.name,
            A_REQUEST: json.dumps(request, separators=(",", ":"), sort_keys=True),
        },
        "metadata",
        "annotations",
    )
    spec = pod.get("spec") or {}
    asking = {(c.kind, c.index): c for c in demand.all_containers}
    mounts = profile.mounts if demand.inject_driver and hostpaths else ()
    # Injected volumes never take a name the pod already uses (the pod's own `nvidia-driver`
    # emptyDir must not end up mounted at the driver path): the reference's name, else suffixed.
    taken = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    volume_of: dict[str, str] = {}
    for m in mounts:
        name, k = m.name, 1
        while name in taken:
            name, k = f"{m.name}-hcs{'' if k == 1 else k}", k + 1
        taken.add(name)
        volume_of[m.name] = name
    # Init containers (run-to-completion ones and native sidecars) are patched like app
    # containers when they ask; the others get the guard env.
    for kind in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(kind) or []):
            c = asking.get((kind, i))
            if c is None:
                if not any(profile.owns_resource(k) for k in _resource_keys(container)):
                    _guard(patch, container, profile, kind, i)
                continue
            _patch_requesting(
                patch, container, c, profile, (kind, i), mounts=mounts, volume_of=volume_of
            )
    patch.append(
        spec.get("volumes"),
        [{"name": volume_of[m.name], "hostPath": {"path": m.host_path}} for m in mounts],
        "spec",
        "volumes",
    )
    if scheduler_name and spec.get("schedulerName") in (None, "", "default-scheduler"):
        patch.add(scheduler_name, "spec", "schedulerName")
    if demand.inject_runtime and profile.runtime_class and not spec.get("runtimeClassName"):
        patch.add(profile.runtime_class, "spec", "runtimeClassName")
    return patch


def _patch_requesting(
    patch: PatchBuilder,
    container: Mapping[str, Any],
    c: ContainerDemand,
    profile: VendorProfile,
    where: tuple[str, int],
    *,
    mounts: tuple[HostMount, ...],
    volume_of: Mapping[str, str],
) -> None:
    """Resources, device env, logical env and driver mounts of one requesting container at
    `spec.<kind>[<i>]`."""
    kind, i = where
    env_names = {e.get("name") for e in container.get("env") or [] if isinstance(e, dict)}
    _resources(patch, container, c, profile, where)
    # The container's own devices (bind writes devices.hcs.io/<container>), and the logical
    # IDs 0..k-1 over them: the same entries the device plugin answers Allocate with.
    env: list[dict[str, Any]] = []
    if profile.device_env:
        env.append(
            {
                "name": profile.device_env,
                "valueFrom": {"fieldRef": {"fieldPath": _hcs_device_ref(c.name)}},
            }
        )
    if profile.logical_env:
        env.append({"name": profile.logical_env, "value": logical_ids(c.devices)})
    if mounts and profile.ld_library_path:
        _library_path(patch, container, profile, where, env)
    patch.append(
        container.get("env"),
        [e for e in env if e["name"] not in env_names],
        "spec",
        kind,
        i,
        "env",
    )
    mount_paths = {m.get("mountPath") for m in container.get("volumeMounts") or []}
    patch.append(
        container.get("volumeMounts"),
        [
            # Always read-only: /run/nvidia/driver is the node's driver root, and a
            # writable mount would let a tenant replace libcuda for every pod on the node.
            {"name": volume_of[m.name], "mountPath": m.mount_path, "readOnly": True}
            for m in mounts
            if m.mount_path not in mount_paths
        ],
        "spec",
        kind,
        i,
        "volumeMounts",
    )


def _library_path(
    patch: PatchBuilder,
    container: Mapping[str, Any],
    profile: VendorProfile,
    where: tuple[str, int],
    env: list[dict[str, Any]],
) -> None:
    """The driver's library folders, without ever dropping the image's own library path.

    A container env var replaces the image's ENV of the same name, and the webhook cannot see
    the image's value (NGC's cuda/compat, CANN's folders). So: where the pod spec itself sets
    LD_LIBRARY_PATH, the driver folders are put in front of its value; otherwise
    LD_LIBRARY_PATH is left to the image and the folders are offered as
    HCS_DRIVER_LIBRARY_PATH (the vendor runtime, or the entrypoint, makes them loadable)."""
    folders = ":".join(profile.ld_library_path)
    for j, e in enumerate(container.get("env") or []):
        if isinstance(e, dict) and e.get("name") == "LD_LIBRARY_PATH":
            value = e.get("value")
            if isinstance(value, str) and not value.startswith(folders):
                joined = f"{folders}:{value}" if value else folders
                patch.ops.append(
                    {
                        "op": "replace",
                        "path": pointer("spec", *where, "env", j, "value"),
                        "value": joined,
                    }
                )
            break
    env.append({"name": DRIVER_LIBRARY_ENV, "value": folders})


def _guard(
    patch: PatchBuilder, container: Mapping[str, Any], profile: VendorProfile, kind: str, i: int
) -> None:
    """The guard env on a container that asked for nothing (a CUDA base image sets
    NVIDIA_VISIBLE_DEVICES=all and would otherwise see every GPU of the node)."""
    env_names = {e.get("name") for e in container.get("env") or [] if isinstance(e, dict)}
    if profile.guard_env and profile.guard_env[0] not in env_names:
        name, value = profile.guard_env
        patch.append(container.get("env"), [{"name": name, "value": value}], "spec", kind, i, "env")


def _resources(
    patch: PatchBuilder,
    container: Mapping[str, Any],
    c: ContainerDemand,
    profile: VendorProfile,
    at: tuple[str, int],
) -> None:
    """`ai.compute/*` requests and limits made equal (request else limit), plus the vendor's
    device-plugin resource; legacy containers already carry theirs. HAMi's memory resources
    become `ai.compute/vram` (no node advertises them: kube-scheduler would keep the pod
    Pending)."""
    devices = c.devices
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    values: dict[str, Any] = {}
    for key in ABSTRACT_RESOURCES:
        value = requests.get(key, limits.get(key))
        if value is not None:
            values[key] = str(value)
    if c.vram_total is not None:
        values[VRAM] = c.vram_total
    where_res = ("spec", *at, "resources")
    for key in c.hami:
        for section, current in (("requests", requests), ("limits", limits)):
            if key in current:
                patch.ops.append({"op": "remove", "path": pointer(*where_res, section, key)})
    if values and DEVICES not in values:
        values[DEVICES] = str(devices)
    # The vendor resource is the name the chosen family advertises: an alias
    # (huawei.com/Ascend910B3, hygon.com/dcunum) is replaced by it, its model kept in
    # hcs.io/request, so what kube-scheduler checks is what the node serves.
    legacy = [str(k) for k in (*requests, *limits) if profile.owns_resource(str(k))]
    for key in dict.fromkeys(legacy):
        if key == profile.resource:
            continue
        for section, current in (("requests", requests), ("limits", limits)):
            if key in current:
                patch.ops.append({"op": "remove", "path": pointer(*where_res, section, key)})
    if legacy or values:
        values[profile.resource] = str(devices)
    changed_requests = {k: v for k, v in values.items() if requests.get(k) != v}
    changed_limits = {k: v for k, v in values.items() if limits.get(k) != v}
    where = ("spec", *at, "resources")
    if not isinstance(container.get("resources"), dict):
        if values:
            patch.add({"requests": dict(values), "limits": dict(values)}, *where)
        return
    patch.set_entries(resources.get("requests"), changed_requests, *where, "requests")
    patch.set_entries(resources.get("limits"), changed_limits, *where, "limits")
