"""Which devices a container gets on its node: the device plugin's rules, pure (no gRPC, no API
server). `node.deviceplugin` is the shell that feeds them kubelet's calls and the node's pods.

Kubelet never says which pod an `Allocate` serves, and its own rules decide which device IDs it
offers (`spec/KUBELET-DEVICE-MANAGER.md`): reuse of the pod's earlier init containers' devices
first, then devices aligned to the NUMA node the topology manager chose, then the plugin's
preference, then any. So:

- **Identify** the container for certain. The candidates are the pending pods bound to the node
  (no container status yet, not being deleted), each at its next requesting container in
  kubelet's order that `hcs.io/allocated` does not record yet. A candidate of the requested size
  whose HCS assignment is exactly kubelet's IDs is the one; else the only candidate of that size
  that may take those devices; a repeated Allocate (kubelet restarted) is answered only when no
  pending container of that size exists and exactly one record holds exactly those IDs.
  Anything else is refused with a message: never a guess.
- **Kubelet's choice wins; HCS's books follow.** A container may take a device HCS proposed for
  it, one its own pod already holds (kubelet's reuse of init containers' devices), or one no
  other pod holds or is booked for (kubelet's topology alignment chose other devices). The
  record says what it really got: `devices.hcs.io/<container>`, the pod-wide
  `hcs.io/assigned-devices` and `hcs.io/allocated`, in one patch, which the extender's watch
  follows. Refused only when kubelet's offer names a device another pod holds.
- **Preference**: HCS's proposal where kubelet's offer contains it; else, within the offer, the
  devices that may be taken, on the NUMA node of those kubelet must include, then in ID order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from hcs.assignment import A_ALLOCATED, container_devices, container_key, held_ids
from hcs.demand import A_ASSIGNED_DEVICES, A_ASSIGNED_NODE, A_ASSIGNED_VENDOR
from hcs.errors import HcsError
from hcs.reuse import Need, Phase, reusable_for

REPLICA: Final = "::"


class AllocateError(HcsError):
    """The pod kubelet is admitting cannot be identified for certain, or the devices it offers
    belong to another pod."""

    code = "InvalidRequest"


@dataclass(frozen=True)
class NodeDevice:
    """One device of the node as the plugin advertises it."""

    id: str
    healthy: bool
    numa: int | None = None
    identity: str | None = None
    model: str = ""
    vram_mib: int = 0
    fp16_milli_tflops: int = 0
    fp32_milli_tflops: int = 0


def device_of(kubelet_id: str) -> str:
    """The device behind a kubelet device ID (`3`, or the replica `3::1` on shared nodes)."""
    return kubelet_id.split(REPLICA, 1)[0]


def kubelet_ids(devices: Sequence[NodeDevice], replicas: int) -> list[tuple[str, NodeDevice]]:
    """(kubelet device ID, device): the device itself, or its replicas when shared."""
    if replicas <= 1:
        return [(d.id, d) for d in devices]
    return [(f"{d.id}{REPLICA}{k}", d) for d in devices for k in range(replicas)]


def _count(value: Any) -> int:
    try:
        return int(str(value)) if value is not None else 0
    except ValueError:
        return 0


def requesting(pod: Mapping[str, Any], resource: str) -> list[Need]:
    """The containers asking for `resource`, in kubelet's order (init containers first)."""
    spec = pod.get("spec") or {}
    out = []
    for kind in ("initContainers", "containers"):
        for c in spec.get(kind) or []:
            res = c.get("resources") or {}
            count = _count(
                (res.get("limits") or {}).get(resource) or (res.get("requests") or {}).get(resource)
            )
            if count <= 0:
                continue
            phase: Phase = "app"
            if kind == "initContainers":
                phase = "sidecar" if c.get("restartPolicy") == "Always" else "init"
            out.append(Need(str(c.get("name")), count, phase))
    return out


def allocated(pod: Mapping[str, Any]) -> dict[str, list[str]]:
    """`hcs.io/allocated`: container -> the kubelet device IDs Allocate answered for."""
    raw = _annotations(pod).get(A_ALLOCATED) or "{}"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def _uid(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def live(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods that hold or may hold devices: not Succeeded or Failed."""
    return [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


@dataclass(frozen=True)
class Want:
    """A pending pod's next container that kubelet may be allocating."""

    pod: Mapping[str, Any]
    container: str
    count: int
    assigned: tuple[str, ...] | None
    """HCS's proposal for the container (device IDs); None for a pod placed without HCS."""
    reusable: tuple[str, ...]
    """Kubelet device IDs kubelet offers it from reuse (its pod's earlier init containers)."""
    needs: tuple[Need, ...]

    @property
    def key(self) -> str:
        return pod_key(self.pod)

    @property
    def by_hcs(self) -> bool:
        return self.assigned is not None


def pending(pods: Iterable[Mapping[str, Any]], resource: str) -> list[Want]:
    """Every pending pod's next container asking for `resource` (kubelet's order)."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("containerStatuses") or status.get("initContainerStatuses"):
            continue  # already admitted by kubelet
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        done = allocated(pod)
        assigned = container_devices(_annotations(pod))
        needs = requesting(pod, resource)
        for n in needs:
            if n.name not in done:
                reuse = tuple(reusable_for(needs, done, n.name))
                out.append(Want(pod, n.name, n.count, assigned.get(n.name), reuse, tuple(needs)))
                break
    return out


def _pod_devices(pod: Mapping[str, Any]) -> set[str]:
    """Devices a pod holds or is booked for: its annotations and what kubelet allocated it."""
    held = held_ids(_annotations(pod))
    for ids in allocated(pod).values():
        held |= {device_of(i) for i in ids}
    return held


@dataclass(frozen=True)
class Books:
    """The node's books, from its live pods."""

    pods: tuple[Mapping[str, Any], ...]
    devices: tuple[NodeDevice, ...]

    def others(self, uid: str) -> set[str]:
        """Devices held or booked by pods other than `uid`."""
        out: set[str] = set()
        for p in self.pods:
            if _uid(p) != uid:
                out |= _pod_devices(p)
        return out

    def may_take(self, want: Want) -> set[str]:
        """Devices `want`'s container may be given: HCS's proposal, its own pod's, or free."""
        uid = _uid(want.pod)
        own = _pod_devices(want.pod) | set(want.assigned or ())
        healthy = {d.id for d in self.devices if d.healthy}
        return own | (healthy - self.others(uid))


@dataclass(frozen=True)
class Decision:
    """What Allocate answers for a container, and what to record on its pod."""

    want: Want
    devices: tuple[str, ...]
    """Device IDs, in answer order."""
    annotations: dict[str, str]
    """One merge patch on the pod: the container's real devices, the pod-wide list, and
    `hcs.io/allocated`."""
    release: bool
    """Every requesting container of an HCS-bound pod is now allocated: free the node lock."""
    moved: bool
    """Kubelet's devices differ from HCS's proposal (alignment or reuse): the books follow."""


@dataclass(frozen=True)
class Repeat:
    """A repeated Allocate of a container already recorded (kubelet restarted)."""

    pod: Mapping[str, Any]
    container: str
    devices: tuple[str, ...]


def _ordered(kubelet: Sequence[str], proposal: tuple[str, ...] | None) -> tuple[str, ...]:
    devices = tuple(dict.fromkeys(device_of(k) for k in kubelet))
    if proposal is not None and sorted(proposal) == sorted(devices):
        return proposal
    return devices


def decide_allocate(
    books: Books,
    resource: str,
    kubelet: Sequence[str],
    *,
    node: str,
    vendor: str,
) -> Decision | Repeat:
    """Allocate for one container: identify it for certain and decide what it gets."""
    known = {d.id for d in books.devices}
    devices = tuple(dict.fromkeys(device_of(k) for k in kubelet))
    unknown = [d for d in devices if d not in known]
    if unknown:
        raise AllocateError(f"{node}: kubelet asked for unknown devices {unknown}")
    wants = pending(books.pods, resource)
    sized = [w for w in wants if w.count == len(kubelet)]
    exact = [w for w in sized if w.assigned is not None and sorted(w.assigned) == sorted(devices)]
    fitting = [w for w in sized if set(devices) <= books.may_take(w)]
    if len(exact) == 1:
        want = exact[0]
    elif not exact and len(fitting) == 1:
        want = fitting[0]
    elif not sized:
        repeat = _repeat(books, kubelet)
        if repeat is not None:
            return repeat
        shown = ", ".join(f"{w.key} ({w.container}: {w.count})" for w in wants) or "none"
        raise AllocateError(
            f"{node}: cannot tell for certain which pod kubelet is admitting with {resource} "
            f"{list(kubelet)}: no pending pod asks for {len(kubelet)} (pending: {shown})"
        )
    elif not fitting:
        holders = _holders(books, devices, {_uid(w.pod) for w in sized})
        raise AllocateError(
            f"{node}: kubelet offers {list(kubelet)} for "
            f"{', '.join(f'{w.key} ({w.container})' for w in sized)}, but {holders}: refusing "
            "rather than giving a container devices another pod holds"
        )
    else:
        shown = ", ".join(f"{w.key} ({w.container})" for w in (exact or fitting))
        raise AllocateError(
            f"{node}: cannot tell for certain which pod kubelet is admitting with {resource} "
            f"{list(kubelet)}: several pods could be ({shown})"
        )
    return _record(want, kubelet, node=node, vendor=vendor)


def _holders(books: Books, devices: Sequence[str], mine: set[str]) -> str:
    parts = []
    for d in devices:
        who = [pod_key(p) for p in books.pods if _uid(p) not in mine and d in _pod_devices(p)]
        if who:
            parts.append(f"device {d} is held by {', '.join(who)}")
    return "; ".join(parts) or "those devices are not free"


def _repeat(books: Books, kubelet: Sequence[str]) -> Repeat | None:
    found = [
        (p, c)
        for p in books.pods
        for c, ids in allocated(p).items()
        if sorted(ids) == sorted(kubelet)
    ]
    if len(found) != 1:
        return None
    pod, container = found[0]
    devices = container_devices(_annotations(pod)).get(container)
    if devices is None:
        return None
    return Repeat(pod, container, tuple(devices))


def _record(want: Want, kubelet: Sequence[str], *, node: str, vendor: str) -> Decision:
    devices = _ordered(kubelet, want.assigned)
    annotations = _annotations(want.pod)
    done = {**allocated(want.pod), want.container: list(kubelet)}
    per = container_devices(annotations)
    per[want.container] = devices
    order = [n.name for n in want.needs]
    pod_wide = list(dict.fromkeys(d for name in order for d in per.get(name, ())))
    record = {
        A_ALLOCATED: orjson.dumps(done).decode(),
        container_key(want.container): ",".join(devices),
        A_ASSIGNED_DEVICES: ",".join(pod_wide),
    }
    if not want.by_hcs:
        # Placed without HCS: the assignment makes the extender's ledger count it.
        record |= {A_ASSIGNED_NODE: node, A_ASSIGNED_VENDOR: vendor}
    moved = want.assigned is not None and sorted(want.assigned) != sorted(devices)
    release = want.by_hcs and set(order) <= set(done)
    return Decision(want, devices, record, release, moved)


def prefer(
    books: Books, resource: str, available: Sequence[str], must: Sequence[str], size: int
) -> list[str] | None:
    """GetPreferredAllocation: kubelet IDs among `available` for the container being admitted;
    empty (no preference) when nothing fits; None when the container is not certain."""
    wants = [w for w in pending(books.pods, resource) if w.count == size]
    if len(wants) != 1:
        return None
    want = wants[0]
    by_device: dict[str, list[str]] = {}
    for k in available:
        by_device.setdefault(device_of(k), []).append(k)
    chosen = list(must)
    taken = {device_of(k) for k in chosen}
    if want.assigned is not None and all(by_device.get(d) for d in want.assigned):
        candidates = [d for d in want.assigned if d not in taken]
    else:
        allowed = books.may_take(want)
        numa = {d.id: d.numa for d in books.devices}
        anchor = {numa.get(device_of(k)) for k in must} or {
            numa.get(d) for d in (want.assigned or ())
        }
        proposed = set(want.assigned or ())
        candidates = sorted(
            (d for d in by_device if d in allowed and d not in taken),
            key=lambda d: (numa.get(d) not in anchor, d not in proposed, _id_key(d)),
        )
    for d in candidates:
        if len(chosen) >= size:
            break
        chosen.append(sorted(by_device[d])[0])
        taken.add(d)
    return chosen if len(chosen) == size else []


def _id_key(device: str) -> tuple[int, int | str]:
    return (0, int(device)) if device.isdigit() else (1, device)


def reconcile(
    books: Books,
    resource: str,
    given: Mapping[tuple[str, str], Mapping[str, Sequence[str]]],
    *,
    node: str,
    vendor: str,
) -> list[Decision]:
    """The records to write so the books say what kubelet really gave (`given`: kubelet's
    PodResources, (namespace, name) -> container -> kubelet device IDs of `resource`): for every
    live pod, each requesting container whose `hcs.io/allocated` misses or differs from
    kubelet's. Kubelet's word is final here: it has admitted those containers already."""
    out = []
    for pod in books.pods:
        meta = pod.get("metadata") or {}
        real = given.get((str(meta.get("namespace")), str(meta.get("name"))))
        if not real:
            continue
        needs = tuple(requesting(pod, resource))
        current: Mapping[str, Any] = pod
        for n in needs:
            ids = list(real.get(n.name) or ())
            if not ids or sorted(allocated(current).get(n.name) or []) == sorted(ids):
                continue
            proposal = container_devices(_annotations(current)).get(n.name)
            want = Want(current, n.name, n.count, proposal, (), needs)
            decision = _record(want, ids, node=node, vendor=vendor)
            out.append(decision)
            merged = {**_annotations(current), **decision.annotations}
            current = {
                **current,
                "metadata": {**(current.get("metadata") or {}), "annotations": merged},
            }
    return out
