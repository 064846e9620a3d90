"""Wire formats of the kube-scheduler extender protocol (PROTOCOLS §A2), as TypedDicts.

The scheduler's Go types have no JSON tags, so the keys are PascalCase, exactly as below. It
decodes our replies case-insensitively, and its own requests may be written by any encoder, so
incoming keys are matched case-insensitively (`normalize_keys`); outgoing keys are always these.
Embedded Pod and Node objects are ordinary Kubernetes JSON (lowerCamel) and are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import orjson


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


def name_fragments(names: Sequence[object]) -> list[bytes] | None:
    """Each name as JSON writes it between its quotes, from one orjson encoding of the list
    (C speed, no loop per name); None when a name is not a string or needs escaping, which
    node names (DNS subdomains) never do: the caller then encodes plainly."""
    if not names:
        return []
    encoded = orjson.dumps(names if isinstance(names, list) else list(names))
    if b"\\" in encoded or not (encoded.startswith(b'["') and encoded.endswith(b'"]')):
        return None
    parts = encoded[2:-2].split(b'","')
    return parts if len(parts) == len(names) else None


def encode_names(fragments: list[bytes]) -> bytes:
    """A JSON array of names from their fragments (`name_fragments`)."""
    return b'["' + b'","'.join(fragments) + b'"]' if fragments else b"[]"


def encode_name_map(groups: list[tuple[list[bytes], str]]) -> bytes:
    """`{"node-a":"msg1","node-b":"msg1","node-c":"msg2"}` from (name fragments, message)
    groups (`name_fragments`).

    Thousands of failing nodes share a handful of messages; building a dict entry per node
    costs more than the engine, so each group is one `bytes.join` in C.
    """
    parts = []
    for fragments, message in groups:
        if not fragments:
            continue
        value = b'":' + orjson.dumps(message) + b',"'
        parts.append(b'"' + value.join(fragments) + value[:-2])
    return b"{" + b",".join(parts) + b"}"


def encode_host_scores(groups: list[tuple[list[bytes], int]]) -> bytes:
    """`[{"Host":"a","Score":7},...]` from (host name fragments, score) groups (order is free:
    the scheduler reads the reply by host)."""
    parts = []
    for fragments, score in groups:
        if not fragments:
            continue
        tail = b'","Score":' + str(int(score)).encode() + b"}"
        parts.append(b'{"Host":"' + (tail + b',{"Host":"').join(fragments) + tail)
    return b"[" + b",".join(parts) + b"]"


_NODE_NAMES_KEY = b'"NodeNames":'
_WHITESPACE = b" \t\r\n"


def split_node_names(body: bytes) -> tuple[bytes, bytes] | None:
    """Split an ExtenderArgs body into (the body with `NodeNames` set to null, the raw bytes of
    the NodeNames array), when NodeNames is the object's last key, as Go's encoder writes it
    (fields in declaration order: Pod, Nodes, NodeNames). None when the body is shaped
    otherwise; the caller then decodes it whole.

    kube-scheduler sends the same candidate list pod after pod: the array's bytes can be matched
    against the previous call's instead of decoding thousands of names again. A match cannot come
    from inside a string value (its quotes would be escaped); a `NodeNames` key nested in the Pod
    comes before the top-level one, and anything else fails to parse and falls back.
    """
    at = body.rfind(_NODE_NAMES_KEY)
    if at < 0:
        return None
    end = len(body.rstrip(_WHITESPACE)) - 1
    if end <= at or body[end] != ord("}"):
        return None
    segment = body[at + len(_NODE_NAMES_KEY) : end].strip(_WHITESPACE)
    if not segment.startswith(b"[") or not segment.endswith(b"]"):
        return None
    return body[:at] + b'"NodeNames":null}', segment
