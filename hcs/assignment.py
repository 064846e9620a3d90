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
from typing import Final

from hcs.demand import A_ALLOCATED, A_ASSIGNED_DEVICES
from hcs.errors import ConfigError
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


# NVIDIA's device-list strategies (its device plugin's --device-list-strategy), and how HCS's
# plugin answers for each. Kubelet applies the pod's own env after Allocate's, and the pod's value
# wins: under `envvar` a pod naming NVIDIA_VISIBLE_DEVICES itself chooses its GPUs. The others
# name the devices where a pod's env cannot reach: mounts the NVIDIA runtime reads (with
# `accept-nvidia-visible-devices-envvar-when-unprivileged = false`), or CDI devices the container
# runtime injects (annotations read by the NVIDIA runtime in CDI mode, or the CRI field).
STRATEGIES: Final = ("envvar", "volume-mounts", "cdi-annotations", "cdi-cri")
CDI_ANNOTATION_PREFIX: Final = "cdi.k8s.io/"


def default_strategies(profile: VendorProfile) -> tuple[str, ...]:
    """Where a pod's env cannot widen the devices: NVIDIA's volume mounts. Other vendors' devices
    are device nodes in Allocate's answer (the container's device cgroup), named by env too."""
    return ("volume-mounts",) if profile.device_list_mounts else ("envvar",)


def check_strategies(profile: VendorProfile, strategies: Sequence[str]) -> tuple[str, ...]:
    """The strategies, validated for the vendor (ConfigError naming the flag otherwise)."""
    chosen = tuple(dict.fromkeys(s.strip() for s in strategies if s.strip()))
    where = "--device-list-strategy"
    if not chosen:
        raise ConfigError(f"{where}: expected one or more of {', '.join(STRATEGIES)}")
    for s in chosen:
        if s not in STRATEGIES:
            raise ConfigError(f"{where}: {s!r} is not one of {', '.join(STRATEGIES)}")
        if s == "volume-mounts" and not profile.device_list_mounts:
            raise ConfigError(
                f"{where}: volume-mounts is NVIDIA's container runtime's; {profile.name} devices "
                "are device nodes in Allocate's answer (envvar)"
            )
        if s.startswith("cdi-") and not profile.cdi_kind:
            raise ConfigError(f"{where}: {s} needs a cdiKind for {profile.name} (vendor config)")
    return chosen


@dataclass(frozen=True)
class ContainerDevices:
    """What the runtime must give one container: env, device nodes, mounts, CDI devices."""

    envs: dict[str, str] = field(default_factory=dict)
    device_nodes: tuple[str, ...] = ()
    cdi_devices: tuple[str, ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()
    """(container path, host path), read-only: NVIDIA's volume-mount device list."""
    writable_mounts: tuple[tuple[str, str], ...] = ()
    """(container path, host path), read-write: a share limiter's state (hcs.limiter)."""
    annotations: dict[str, str] = field(default_factory=dict)
    """Container annotations: CDI devices for runtimes that read `cdi.k8s.io/*`."""


def logical_ids(count: int) -> str:
    """`0,1,…,count-1`: how the runtime inside the container numbers its own devices."""
    return ",".join(str(k) for k in range(count))


def allocation(
    profile: VendorProfile,
    device_ids: Sequence[str],
    identities: Mapping[str, str],
    *,
    strategies: Sequence[str] = ("envvar",),
) -> ContainerDevices:
    """Allocate's answer for a container given `device_ids` (the vendor table's entries), in
    each of `strategies` (checked by `check_strategies`)."""
    envs: dict[str, str] = {}
    named = [
        identities.get(d) or d if profile.device_env_form == "identities" else d for d in device_ids
    ]
    if profile.device_env and "envvar" in strategies:
        envs[profile.device_env] = ",".join(named)
    mounts: tuple[tuple[str, str], ...] = ()
    if profile.device_list_mounts and "volume-mounts" in strategies:
        # NVIDIA's plugin: the runtime reads the IDs from the mount points (host /dev/null).
        envs[profile.device_env] = profile.device_list_mounts
        mounts = tuple((f"{profile.device_list_mounts}/{n}", "/dev/null") for n in named)
    if profile.logical_env:
        envs[profile.logical_env] = logical_ids(len(device_ids))
    nodes = list(profile.control_nodes)
    for d in device_ids:
        render = str(128 + int(d)) if d.isdigit() else d
        nodes += [t.format(id=d, render=render) for t in profile.device_nodes]
    cdi_names = tuple(f"{profile.cdi_kind}={identities.get(d) or d}" for d in device_ids)
    annotations: dict[str, str] = {}
    if profile.cdi_kind and "cdi-annotations" in strategies:
        annotations[f"{CDI_ANNOTATION_PREFIX}hcs-device-plugin_{profile.name}"] = ",".join(
            cdi_names
        )
    cdi_devices = cdi_names if profile.cdi_kind and "cdi-cri" in strategies else ()
    return ContainerDevices(
        envs, tuple(dict.fromkeys(nodes)), cdi_devices, mounts, annotations=annotations
    )
