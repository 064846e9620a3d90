"""Device assignments per container, and what a container with devices gets: one source for the
extender's Binding, the webhook's env and the device plugin's Allocate answer.

Bind writes, in one Binding, the reference's pod-wide `hcs.io/assigned-devices` and, per
requesting container, `devices.hcs.io/<container>` (the container's own device IDs, in the
order chosen). A container name is a DNS label, so it is always a valid annotation name under
the `devices.hcs.io/` prefix. The webhook points each container's device env at its own
annotation (downward API) and counts its logical env over its own devices; the plugin answers
Allocate from the same annotation, so the two cannot disagree.

The plugin records what kubelet allocated in `hcs.io/allocated` (JSON: container -> kubelet
device IDs), which lets a repeated Allocate (kubelet restarted) get the same answer and tells the
extender that the node lock of that pod may go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hcs.demand import A_ALLOCATED, A_ASSIGNED_DEVICES
from hcs.vendors import VendorProfile

__all__ = ["A_ALLOCATED", "CONTAINER_PREFIX", "ContainerDevices", "allocation"]

CONTAINER_PREFIX = "devices.hcs.io/"


def container_key(container: str) -> str:
    """The annotation naming `container`'s devices (`devices.hcs.io/trainer`)."""
    return CONTAINER_PREFIX + container


def container_devices(annotations: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Container -> device IDs, from a pod's annotations."""
    return {
        key.removeprefix(CONTAINER_PREFIX): tuple(d for d in value.split(",") if d)
        for key, value in annotations.items()
        if key.startswith(CONTAINER_PREFIX)
    }


def held_ids(annotations: Mapping[str, str]) -> set[str]:
    """Every device ID a pod holds in HCS's books: the per-container annotations and
    `hcs.io/assigned-devices`."""
    held = {d.strip() for d in str(annotations.get(A_ASSIGNED_DEVICES) or "").split(",")}
    for ids in container_devices(annotations).values():
        held |= set(ids)
    held.discard("")
    return held


def container_annotations(per_container: Sequence[tuple[str, Sequence[str]]]) -> dict[str, str]:
    """The per-container annotations for (container, device IDs) pairs."""
    return {container_key(name): ",".join(ids) for name, ids in per_container}


@dataclass(frozen=True)
class ContainerDevices:
    """What the runtime must give one container: env, device nodes and CDI devices."""

    envs: dict[str, str] = field(default_factory=dict)
    device_nodes: tuple[str, ...] = ()
    cdi_devices: tuple[str, ...] = ()


def logical_ids(count: int) -> str:
    """`0,1,…,count-1`: how the runtime inside the container numbers its own devices."""
    return ",".join(str(k) for k in range(count))


def allocation(
    profile: VendorProfile,
    device_ids: Sequence[str],
    identities: Mapping[str, str],
    *,
    cdi: bool = False,
) -> ContainerDevices:
    """Allocate's answer for a container given `device_ids` (the vendor table's entries)."""
    envs: dict[str, str] = {}
    if profile.device_env:
        if profile.device_env_form == "identities":
            envs[profile.device_env] = ",".join(identities.get(d) or d for d in device_ids)
        else:
            envs[profile.device_env] = ",".join(device_ids)
    if profile.logical_env:
        envs[profile.logical_env] = logical_ids(len(device_ids))
    nodes = list(profile.control_nodes)
    for d in device_ids:
        render = str(128 + int(d)) if d.isdigit() else d
        nodes += [t.format(id=d, render=render) for t in profile.device_nodes]
    cdi_devices: tuple[str, ...] = ()
    if cdi and profile.cdi_kind:
        cdi_devices = tuple(f"{profile.cdi_kind}={identities.get(d) or d}" for d in device_ids)
    return ContainerDevices(envs, tuple(dict.fromkeys(nodes)), cdi_devices)
