"""The protos HCS wrote by hand against kubelet's published contracts: every message, field name,
number and type, and every service and method name, as kubelet has them. A wrong field number
breaks the wire silently, so the generated descriptors are compared with the published tables
(device plugin API v1beta1: shared/spec/DEVICE-PLUGIN-API.md; PodResources v1:
k8s.io/kubelet/pkg/apis/podresources/v1/api.proto)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from node.podresources.v1 import api_pb2 as podresources
from node.v1beta1 import api_pb2 as deviceplugin

T = FieldDescriptor
STR, BOOL, I32, I64, MSG = T.TYPE_STRING, T.TYPE_BOOL, T.TYPE_INT32, T.TYPE_INT64, T.TYPE_MESSAGE
REP = "repeated"
MAP = "map"

# message -> field -> (number, type, label or None); published by kubelet.
DEVICE_PLUGIN: dict[str, dict[str, tuple[int, int, str | None]]] = {
    "Empty": {},
    "DevicePluginOptions": {
        "pre_start_required": (1, BOOL, None),
        "get_preferred_allocation_available": (2, BOOL, None),
    },
    "RegisterRequest": {
        "version": (1, STR, None),
        "endpoint": (2, STR, None),
        "resource_name": (3, STR, None),
        "options": (4, MSG, None),
    },
    "ListAndWatchResponse": {"devices": (1, MSG, REP)},
    "TopologyInfo": {"nodes": (1, MSG, REP)},
    "NUMANode": {"ID": (1, I64, None)},
    "Device": {"ID": (1, STR, None), "health": (2, STR, None), "topology": (3, MSG, None)},
    "PreStartContainerRequest": {"devices_ids": (1, STR, REP)},
    "PreStartContainerResponse": {},
    "PreferredAllocationRequest": {"container_requests": (1, MSG, REP)},
    "ContainerPreferredAllocationRequest": {
        "available_deviceIDs": (1, STR, REP),
        "must_include_deviceIDs": (2, STR, REP),
        "allocation_size": (3, I32, None),
    },
    "PreferredAllocationResponse": {"container_responses": (1, MSG, REP)},
    "ContainerPreferredAllocationResponse": {"deviceIDs": (1, STR, REP)},
    "AllocateRequest": {"container_requests": (1, MSG, REP)},
    "ContainerAllocateRequest": {"devices_ids": (1, STR, REP)},
    "CDIDevice": {"name": (1, STR, None)},
    "AllocateResponse": {"container_responses": (1, MSG, REP)},
    "ContainerAllocateResponse": {
        "envs": (1, MSG, MAP),
        "mounts": (2, MSG, REP),
        "devices": (3, MSG, REP),
        "annotations": (4, MSG, MAP),
        "cdi_devices": (5, MSG, REP),
    },
    "Mount": {
        "container_path": (1, STR, None),
        "host_path": (2, STR, None),
        "read_only": (3, BOOL, None),
    },
    "DeviceSpec": {
        "container_path": (1, STR, None),
        "host_path": (2, STR, None),
        "permissions": (3, STR, None),
    },
}
DEVICE_PLUGIN_SERVICES = {
    "v1beta1.Registration": {"Register"},
    "v1beta1.DevicePlugin": {
        "GetDevicePluginOptions",
        "ListAndWatch",
        "GetPreferredAllocation",
        "Allocate",
        "PreStartContainer",
    },
}
# The subset of PodResources v1 HCS reads (proto3 skips the fields left out on the wire).
POD_RESOURCES: dict[str, dict[str, tuple[int, int, str | None]]] = {
    "ListPodResourcesRequest": {},
    "ListPodResourcesResponse": {"pod_resources": (1, MSG, REP)},
    "PodResources": {
        "name": (1, STR, None),
        "namespace": (2, STR, None),
        "containers": (3, MSG, REP),
    },
    "ContainerResources": {"name": (1, STR, None), "devices": (2, MSG, REP)},
    "ContainerDevices": {
        "resource_name": (1, STR, None),
        "device_ids": (2, STR, REP),
        "topology": (3, MSG, None),
    },
    "TopologyInfo": {"nodes": (1, MSG, REP)},
    "NUMANode": {"ID": (1, I64, None)},
}
POD_RESOURCES_SERVICES = {"v1.PodResourcesLister": {"List"}}


def _fields(message: Any) -> dict[str, tuple[int, int, str | None]]:
    out = {}
    for f in message.fields:
        label = None
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            label = MAP
        elif f.is_repeated:
            label = REP
        out[f.name] = (f.number, f.type, label)
    return out


@pytest.mark.parametrize(
    ("module", "package", "messages", "services"),
    [
        (deviceplugin, "v1beta1", DEVICE_PLUGIN, DEVICE_PLUGIN_SERVICES),
        (podresources, "v1", POD_RESOURCES, POD_RESOURCES_SERVICES),
    ],
    ids=["device-plugin-v1beta1", "podresources-v1"],
)
def test_the_proto_matches_kubelets_published_contract(
    module: Any,
    package: str,
    messages: dict[str, dict[str, tuple[int, int, str | None]]],
    services: dict[str, set[str]],
) -> None:
    file = module.DESCRIPTOR
    assert file.package == package
    assert set(file.message_types_by_name) == set(messages)
    for name, fields in messages.items():
        assert _fields(file.message_types_by_name[name]) == fields, name
    found = {s.full_name: {m.name for m in s.methods} for s in file.services_by_name.values()}
    assert found == services
