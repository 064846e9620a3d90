"""Kubelet's PodResources API (v1, `/var/lib/kubelet/pod-resources/kubelet.sock`): which device
IDs kubelet assigned to each container, the node's truth after the fact (how dcgm-exporter maps
GPUs to pods). The device plugin reconciles its records with it (node.deviceplugin)."""

from __future__ import annotations

from pathlib import Path

import grpc

from node.podresources.v1 import api_pb2, api_pb2_grpc

SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")


def list_devices(
    socket: Path, resource: str, timeout: float = 5.0
) -> dict[tuple[str, str], dict[str, list[str]]]:
    """(namespace, pod) -> container -> the device IDs of `resource` kubelet assigned."""
    out: dict[tuple[str, str], dict[str, list[str]]] = {}
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        answer = api_pb2_grpc.PodResourcesListerStub(channel).List(
            api_pb2.ListPodResourcesRequest(), timeout=timeout
        )
    for pod in answer.pod_resources:
        for c in pod.containers:
            ids = [i for d in c.devices if d.resource_name == resource for i in d.device_ids]
            if ids:
                out.setdefault((pod.namespace, pod.name), {})[c.name] = ids
    return out
