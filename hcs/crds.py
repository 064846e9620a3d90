"""The CustomResourceDefinitions, generated here and nowhere else.

`python -m hcs.crds manifests/crds` writes them; a test fails when the files differ from what
this module generates, and another checks every example object against both these schemas and
the Python models (`hcs/models.py`), so the two cannot drift. Schemas are structural (every node
typed, except quantities, which are `x-kubernetes-int-or-string` with the Kubernetes quantity
pattern) and every field has a description, so `kubectl explain computenodes.spec.devices`
documents itself.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from hcs.models import (
    CONDITION_STATUSES,
    CONDITION_TYPES,
    LINK_TYPES,
    PHASES,
    QUOTA_SCOPES,
    SELECTOR_OPERATORS,
)
from hcs.vendors import VENDOR_NAMES

GROUP = "hcs.io"
VERSION = "v1alpha1"
# k8s.io/apimachinery's quantity grammar as a regular expression.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Schema = dict[str, Any]


def string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def integer(description: str, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, **extra}


def quantity(description: str) -> Schema:
    return {
        "description": description,
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
    }


def obj(
    description: str, properties: dict[str, Schema], required: list[str] | None = None
) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = required
    return schema


def array(description: str, items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "description": description, "items": items, **extra}


def string_map(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
    }


def resource_list(description: str) -> Schema:
    return obj(
        description,
        {
            "vram": quantity("Accelerator memory, e.g. 2000Gi."),
            "tflops-fp16": quantity('Dense FP16 compute in TFLOPS, e.g. "10000".'),
            "tflops-fp32": quantity('Dense FP32 compute in TFLOPS, e.g. "19.5".'),
            "devices": quantity("Number of devices."),
        },
    )


def label_selector(description: str) -> Schema:
    return obj(
        description,
        {
            "matchLabels": string_map("Labels a pod must carry, all of them."),
            "matchExpressions": array(
                "Label requirements, all of which must hold.",
                obj(
                    "A label requirement.",
                    {
                        "key": string("The label key."),
                        "operator": string(
                            "How the key's value is tested.", enum=list(SELECTOR_OPERATORS)
                        ),
                        "values": array("Values for In and NotIn.", {"type": "string"}),
                    },
                    ["key", "operator"],
                ),
            ),
        },
    )


def condition() -> Schema:
    return obj(
        "A condition of the node.",
        {
            "type": string("Which aspect this condition reports.", enum=list(CONDITION_TYPES)),
            "status": string("True, False or Unknown.", enum=list(CONDITION_STATUSES)),
            "reason": string("A CamelCase reason for the last transition."),
            "message": string("A human readable explanation."),
            "lastTransitionTime": string("When the status last changed.", format="date-time"),
        },
        ["type", "status"],
    )


def link() -> Schema:
    return obj(
        "A link from this device to others.",
        {
            "type": string("Link technology.", enum=list(LINK_TYPES)),
            "peers": array("IDs of the devices at the other end.", {"type": "string"}),
            "bandwidth": string('Bandwidth per direction, e.g. "600GB/s".'),
        },
        ["type", "peers", "bandwidth"],
    )


def device() -> Schema:
    return obj(
        "One accelerator device of the node.",
        {
            "id": string('Device ID as the vendor tool and device plugin name it ("0").'),
            "model": string("Device model, e.g. A100-80G, Ascend910B3."),
            "vram": quantity("Total device memory."),
            "vramAllocatable": quantity("Memory that may be given to pods."),
            "vramAllocated": quantity("Memory in use as the agent observes it."),
            "compute": obj(
                "Compute capacity of the device.",
                {
                    "fp16": quantity("Dense FP16 TFLOPS."),
                    "fp32": quantity("Dense FP32 TFLOPS."),
                },
                ["fp16", "fp32"],
            ),
            "topology": obj(
                "Where the device sits.",
                {
                    "busId": string("PCI bus ID, e.g. 0000:17:00.0."),
                    "numaNode": integer(
                        "NUMA node of the device (HCS extension; used by "
                        "hcs.io/topology-preference: low-latency).",
                        minimum=0,
                    ),
                    "links": array("High-bandwidth and other links to peer devices.", link()),
                },
                ["busId"],
            ),
            "healthScore": integer(
                "Health from 0 (failed) to 100; devices below the configured "
                "minimum (default 60) are not used.",
                minimum=0,
                maximum=100,
            ),
            "identity": string(
                "Stable identity of the physical device, kept across re-indexing: the GPU "
                "UUID (NVIDIA), pci:<address>, phy-id:<n> (Ascend) or uuid:/uid: as the tool "
                "reports it (HCS extension)."
            ),
            "unschedulable": {
                "type": "boolean",
                "description": "No new pod may use the device: the agent saw its ID move to "
                "another physical device while pods held it, until those pods are gone "
                "(HCS extension).",
            },
        },
        [
            "id",
            "model",
            "vram",
            "vramAllocatable",
            "vramAllocated",
            "compute",
            "topology",
            "healthScore",
        ],
    )


def compute_node_schema() -> Schema:
    return obj(
        "The accelerators of one Kubernetes Node (same name), published by the HCS agent.",
        {
            "apiVersion": string("hcs.io/v1alpha1."),
            "kind": string("ComputeNode."),
            "metadata": {
                "type": "object",
                "description": "Standard object metadata. The label "
                "hcs.io/device-sharing: shared lets pods split devices.",
            },
            "spec": obj(
                "What the node has.",
                {
                    "vendor": string(
                        "Hardware vendor of every device on the node.", enum=list(VENDOR_NAMES)
                    ),
                    "nodeSelector": string_map("Selects the Kubernetes Node this describes."),
                    "capacity": obj(
                        "Totals over the node's devices.",
                        {
                            "vram": quantity("Total device memory."),
                            "tflops-fp16": quantity("Total dense FP16 TFLOPS."),
                            "tflops-fp32": quantity("Total dense FP32 TFLOPS."),
                        },
                        ["vram", "tflops-fp16", "tflops-fp32"],
                    ),
                    "devices": array("The devices.", device(), maxItems=64),
                    "topology": obj(
                        "Interconnects of the node.",
                        {
                            "interconnects": array(
                                "Interconnect fabrics present on the node.",
                                obj(
                                    "An interconnect fabric.",
                                    {
                                        "type": string("Link technology.", enum=list(LINK_TYPES)),
                                        "bandwidth": string(
                                            'Bandwidth per device, e.g. "600GB/s".'
                                        ),
                                        "nvlinkVersion": string('NVLink generation, e.g. "4.0".'),
                                    },
                                    ["type"],
                                ),
                            ),
                        },
                    ),
                },
                ["vendor", "nodeSelector", "capacity", "devices"],
            ),
            "status": obj(
                "What the agent last observed.",
                {
                    "phase": string("Ready, NotReady or Draining.", enum=list(PHASES)),
                    "conditions": array(
                        "Ready, HardwareHealthy, AgentConnected, Schedulable.", condition()
                    ),
                    "lastHeartbeat": string("The agent's last report.", format="date-time"),
                },
            ),
        },
        ["spec"],
    )


def compute_quota_schema() -> Schema:
    scope = {
        "description": "PriorityClass, Terminating, NotTerminating, or {priority: <name>} "
        "(pods whose priorityClassName is that name).",
        "x-kubernetes-preserve-unknown-fields": True,
        "x-kubernetes-validations": [
            {
                "rule": "type(self) == string ? self in ['" + "', '".join(QUOTA_SCOPES) + "'] : "
                "(type(self) == map && self.size() == 1 && has(self.priority))",
                "message": "a scope is PriorityClass, Terminating, NotTerminating or "
                "{priority: <PriorityClass name>}",
            }
        ],
    }
    return obj(
        "Vendor-neutral accelerator quota for a namespace.",
        {
            "apiVersion": string("hcs.io/v1alpha1."),
            "kind": string("ComputeQuota."),
            "metadata": {"type": "object", "description": "Standard object metadata."},
            "spec": obj(
                "The limits.",
                {
                    "hard": resource_list(
                        "Hard limits; admission refuses pods that would exceed one."
                    ),
                    "scopes": array("Which pods count; all scopes must match.", scope),
                    "selector": label_selector("Only pods whose labels match count."),
                },
                ["hard"],
            ),
            "status": obj(
                "Usage, kept by the webhook and the quota controller.",
                {
                    "used": resource_list("What admitted pods use."),
                    "hard": resource_list("The hard limits in force."),
                },
            ),
        },
        ["spec"],
    )


def compute_task_schema() -> Schema:
    return obj(
        "A group of pods asking for compute together (gang scheduling, later).",
        {
            "apiVersion": string("hcs.io/v1alpha1."),
            "kind": string("ComputeTask."),
            "metadata": {"type": "object", "description": "Standard object metadata."},
            "spec": obj(
                "The group.",
                {
                    "minMember": integer("Pods that must be placed together.", minimum=1),
                    "selector": label_selector("The pods of the task."),
                    "request": resource_list("Compute for the whole task."),
                },
            ),
            "status": obj(
                "Progress of the task.",
                {
                    "phase": string(
                        "Pending, Running, Succeeded or Failed.",
                        enum=["Pending", "Running", "Succeeded", "Failed"],
                    ),
                    "placed": integer("Pods of the task placed so far.", minimum=0),
                },
            ),
        },
    )


def compute_topology_schema() -> Schema:
    return obj(
        "The fabric between nodes: zones, RoCE domains.",
        {
            "apiVersion": string("hcs.io/v1alpha1."),
            "kind": string("ComputeTopology."),
            "metadata": {"type": "object", "description": "Standard object metadata."},
            "spec": obj(
                "The fabric.",
                {
                    "zones": array(
                        "Groups of nodes sharing a fabric.",
                        obj(
                            "A zone.",
                            {
                                "name": string("Zone name."),
                                "nodes": array(
                                    "Names of the nodes in the zone.", {"type": "string"}
                                ),
                                "fabric": obj(
                                    "How the zone's nodes are connected.",
                                    {
                                        "type": string("Link technology.", enum=list(LINK_TYPES)),
                                        "bandwidth": string('Bandwidth per node, e.g. "400Gb/s".'),
                                    },
                                    ["type"],
                                ),
                            },
                            ["name", "nodes"],
                        ),
                    ),
                },
            ),
        },
    )


def _crd(
    kind: str,
    *,
    plural: str,
    short: str,
    scope: str,
    schema: Schema,
    columns: list[dict[str, str]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "hcs"}},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["hcs"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD."""
    return {
        "computenodes.yaml": _crd(
            "ComputeNode",
            plural="computenodes",
            short="cn",
            scope="Cluster",
            schema=compute_node_schema(),
            columns=[
                {"name": "Vendor", "type": "string", "jsonPath": ".spec.vendor"},
                {"name": "Devices", "type": "string", "jsonPath": ".spec.devices[*].id"},
                {"name": "VRAM", "type": "string", "jsonPath": ".spec.capacity.vram"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            ],
        ),
        "computequotas.yaml": _crd(
            "ComputeQuota",
            plural="computequotas",
            short="cq",
            scope="Namespaced",
            schema=compute_quota_schema(),
            columns=[
                {"name": "VRAM-Used", "type": "string", "jsonPath": ".status.used.vram"},
                {"name": "VRAM-Hard", "type": "string", "jsonPath": ".spec.hard.vram"},
                {
                    "name": "TFLOPS-Used",
                    "type": "string",
                    "jsonPath": ".status.used['tflops-fp16']",
                },
                {"name": "TFLOPS-Hard", "type": "string", "jsonPath": ".spec.hard['tflops-fp16']"},
            ],
        ),
        "computetasks.yaml": _crd(
            "ComputeTask",
            plural="computetasks",
            short="ctask",
            scope="Namespaced",
            schema=compute_task_schema(),
            columns=[
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            ],
        ),
        "computetopologies.yaml": _crd(
            "ComputeTopology",
            plural="computetopologies",
            short="ctopo",
            scope="Cluster",
            schema=compute_topology_schema(),
            columns=[],
        ),
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `python -m hcs.crds manifests/crds`; edit hcs/crds.py, not this.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hcs.crds OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, crd in crds().items():
        (out / name).write_text(render(crd), encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
