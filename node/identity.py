"""Device identity across heartbeats: a re-index must never move an allocation.

Device IDs are indices (`nvidia-smi` index, NPU id): when a GPU falls off the bus, the GPUs after
it are renumbered, and the pods that hold ID `3` (through `hcs.io/assigned-devices`) would be
charged to a different physical GPU. The agent therefore publishes each device's stable identity
(UUID, PCI address, chip physical id) and compares it with the ComputeNode it published before:

- an ID whose identity changed is *moved*: it is reported (log line and the Schedulable
  condition's message) and published `unschedulable: true` while any pod on the node still
  holds that ID, so nothing new is placed on a device whose ledger belongs to another one;
- an ID marked before keeps its mark, as long as its identity is unchanged and pods hold it;
- when the agent cannot tell which IDs pods hold (no pod list), every moved ID counts as held.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from hcs.assignment import held_ids
from hcs.demand import A_ASSIGNED_DEVICES
from node.devices import RawDevice


def unschedulable_devices(
    previous: Mapping[str, Any] | None,
    devices: Sequence[RawDevice],
    held: Collection[str] | None,
) -> dict[str, str]:
    """Device ID -> why no new pod may use it. `previous` is the ComputeNode published before
    (Kubernetes JSON, or None); `held` the IDs live pods on the node hold (None: unknown)."""
    before = [d for d in ((previous or {}).get("spec") or {}).get("devices") or [] if "id" in d]
    identity_before = {str(d["id"]): d.get("identity") for d in before}
    marked_before = {str(d["id"]) for d in before if d.get("unschedulable") is True}
    id_before = {d.get("identity"): str(d["id"]) for d in before if d.get("identity")}
    out: dict[str, str] = {}
    for dev in devices:
        old = identity_before.get(dev.id)
        if dev.identity and old and old != dev.identity:
            was = id_before.get(dev.identity)
            moved_from = f" (it was device {was})" if was else ""
            out[dev.id] = (
                f"re-indexed: ID {dev.id} was {old}, is now {dev.identity}{moved_from}; "
                "unschedulable until the pods holding it are gone"
            )
        elif dev.id in marked_before and (old is None or old == dev.identity):
            out[dev.id] = "re-indexed earlier; unschedulable until the pods holding it are gone"
    if held is None:
        return out
    return {i: why for i, why in out.items() if i in held}


def held_device_ids(
    pods: Sequence[Mapping[str, Any]], is_accelerator: Callable[[str], bool]
) -> set[str] | None:
    """IDs held by the live pods of one node, from `hcs.io/assigned-devices`. None when some
    live pod holds accelerator resources without that annotation (placed without HCS): its
    devices are unknown."""
    held: set[str] = set()
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        if annotations.get(A_ASSIGNED_DEVICES):
            held |= held_ids(annotations)
            continue
        for c in (pod.get("spec") or {}).get("containers") or []:
            limits = ((c.get("resources") or {}).get("limits")) or {}
            if any(is_accelerator(r) for r in limits):
                return None
    return held
