"""Wire formats of the kube-scheduler extender protocol (PROTOCOLS §A2), as TypedDicts.

The scheduler's Go types have no JSON tags, so the keys are PascalCase, exactly as below. It
decodes our replies case-insensitively, and its own requests may be written by any encoder, so
incoming keys are matched case-insensitively (`normalize_keys`); outgoing keys are always these.
Embedded Pod and Node objects are ordinary Kubernetes JSON (lowerCamel) and are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict


class NodeList(TypedDict):
    metadata: dict[str, Any]
    items: list[dict[str, Any]]


class ExtenderArgs(TypedDict):
    Pod: dict[str, Any]
    Nodes: NodeList | None
    NodeNames: list[str] | None


class ExtenderFilterResult(TypedDict):
    NodeNames: list[str] | None
    Nodes: NodeList | None
    FailedNodes: dict[str, str]
    FailedAndUnresolvableNodes: dict[str, str]
    Error: str


class HostPriority(TypedDict):
    Host: str
    Score: int


class ExtenderBindingArgs(TypedDict):
    PodName: str
    PodNamespace: str
    PodUID: str
    Node: str


class ExtenderBindingResult(TypedDict):
    Error: str


class MetaPod(TypedDict):
    UID: str


class MetaVictims(TypedDict):
    Pods: list[MetaPod]
    NumPDBViolations: int


class ExtenderPreemptionResult(TypedDict):
    NodeNameToMetaVictims: dict[str, MetaVictims]


class WireError(ValueError):
    """A request that is not what the protocol says (missing key, wrong type)."""


def normalize_keys(obj: Any, what: str) -> dict[str, Any]:
    """The object's keys lower-cased (the scheduler's decoder is case-insensitive)."""
    if not isinstance(obj, Mapping):
        raise WireError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return {str(k).lower(): v for k, v in obj.items()}


def filter_error(message: str) -> ExtenderFilterResult:
    """A filter reply that fails the call with `message` (HTTP 200: non-200 bodies are lost)."""
    return {
        "NodeNames": None,
        "Nodes": None,
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {},
        "Error": message,
    }
