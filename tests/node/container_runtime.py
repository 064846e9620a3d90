"""Which GPUs a container really gets, imitating kubelet and the container runtime on an NVIDIA
node (rules of kubelet's container env and of the NVIDIA Container Toolkit; no HCS code):

- kubelet builds the container's env from the image's, then the device plugins' Allocate envs,
  then the pod spec's (downward-API references resolved): the later wins;
- containerd with CDI enabled injects the CRI `CDIDevices` and the devices named in
  `cdi.k8s.io/*` container annotations;
- the NVIDIA runtime (hook, legacy mode) takes the device list from mounts under
  `/var/run/nvidia-container-devices` when `accept-nvidia-visible-devices-as-volume-mounts` is
  on and there are any; otherwise from `NVIDIA_VISIBLE_DEVICES`, but only for privileged
  containers or with `accept-nvidia-visible-devices-envvar-when-unprivileged` (on by default);
  in CDI mode it reads its CDI annotations first. `all` is every GPU; `void`, `none`, empty or
  unset, none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEVICE_ENV = "NVIDIA_VISIBLE_DEVICES"
MOUNT_ROOT = "/var/run/nvidia-container-devices"
CDI_PREFIX = "cdi.k8s.io/"
KIND = "nvidia.com/gpu"


@dataclass(frozen=True)
class Toolkit:
    """`/etc/nvidia-container-runtime/config.toml`, as far as device selection goes."""

    accept_envvar_unprivileged: bool = True
    accept_volume_mounts: bool = False
    mode: str = "legacy"
    """`legacy` (the hook) or `cdi`."""


def container_env(
    image_env: Mapping[str, str],
    allocate_envs: Mapping[str, str],
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
) -> dict[str, str]:
    env = {**image_env, **allocate_envs}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    for e in container.get("env") or []:
        ref = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
        if ref.startswith("metadata.annotations['"):
            env[e["name"]] = annotations.get(ref[len("metadata.annotations['") : -2], "")
        elif "value" in e or not e.get("valueFrom"):
            env[e["name"]] = e.get("value", "")
    return env


def _named(names: Sequence[str], gpus: Sequence[str]) -> set[str]:
    """GPUs named by UUID or index; `all` is every one."""
    out: set[str] = set()
    for name in names:
        if name == "all":
            out |= set(gpus)
        elif name.isdigit() and int(name) < len(gpus):
            out.add(gpus[int(name)])
        elif name in gpus:
            out.add(name)
    return out


def _from_cdi(names: Sequence[str], gpus: Sequence[str]) -> set[str]:
    return _named([n.split("=", 1)[1] for n in names if n.startswith(f"{KIND}=")], gpus)


def visible_gpus(
    answer: Any,
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    gpus: Sequence[str],
    *,
    toolkit: Toolkit | None,
    containerd_cdi: bool = False,
    privileged: bool = False,
    image_env: Mapping[str, str] | None = None,
) -> set[str]:
    """The GPU UUIDs of the node that the container gets, given the plugin's
    ContainerAllocateResponse `answer` for it."""
    env = container_env(image_env or {}, dict(answer.envs), container, pod)
    cdi_annotations = [
        d for k, v in answer.annotations.items() if k.startswith(CDI_PREFIX) for d in v.split(",")
    ]
    seen: set[str] = set()
    if containerd_cdi:
        seen |= _from_cdi([d.name for d in answer.cdi_devices], gpus)
        seen |= _from_cdi(cdi_annotations, gpus)
    if toolkit is None:  # runc alone: device nodes only as the CDI specs gave them
        return seen
    if toolkit.mode == "cdi" and cdi_annotations:
        return seen | _from_cdi(cdi_annotations, gpus)
    if toolkit.accept_volume_mounts:
        mounted = [
            m.container_path[len(MOUNT_ROOT) + 1 :]
            for m in answer.mounts
            if m.container_path.startswith(MOUNT_ROOT + "/")
        ]
        if mounted:
            return seen | _named(mounted, gpus)
    value = env.get(DEVICE_ENV, "")
    if value in ("", "void", "none"):
        return seen
    if privileged or toolkit.accept_envvar_unprivileged:
        return seen | _named(value.split(","), gpus)
    return seen  # "Ignoring devices specified in NVIDIA_VISIBLE_DEVICES"
