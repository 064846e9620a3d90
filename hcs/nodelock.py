"""The per-node lock between bind and Allocate: a `coordination.k8s.io` Lease per node.

Kubelet's device plugin API never says which pod an Allocate serves. HCS makes the answer
certain: bind takes the node's Lease (`hcs-node-<node>` in `hcs-node-locks`) with the pod's UID
as `holderIdentity` before it creates the Binding, so at most one pod bound by HCS is between
bind and Allocate on a node; the device plugin releases the Lease once Allocate has run for all
of that pod's containers.

There is no timed expiry: a holder keeps the lock while it is pending on the node and not yet
allocated. The next bind takes the lock over (compare-and-swap on the Lease's resourceVersion)
only when the holder is gone: deleted, bound elsewhere, no longer Pending, being deleted, or
allocated for every container (`hcs.io/allocated`) although the release did not land.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from hcs.assignment import A_ALLOCATED, container_devices
from hcs.errors import HcsError

A_LOCK_POD = "hcs.io/pod"
LEASE_PREFIX = "hcs-node-"
LOCK_NAMESPACE = "hcs-node-locks"
"""The node locks' namespace: apart from hcs-system, so the node agents' role on Leases (release
their node's lock) never reaches the leader leases hcs-system/hcs-scheduler and hcs-controller."""


class NodeBusyError(HcsError):
    """Another pod holds the node's lock. The extender's bind waits its turn in the node's queue
    for a bounded time (`--bind-wait`); past it, kube-scheduler retries the bind later."""

    code = "NodeAdmitting"


def lease_name(node: str) -> str:
    return LEASE_PREFIX + node


def holder_is_stale(pod: Mapping[str, Any] | None, uid: str, node: str) -> str | None:
    """Why the lock holder `uid` no longer holds the node (None: it still does)."""
    if pod is None:
        return "its pod is gone"
    meta = pod.get("metadata") or {}
    if meta.get("uid") != uid:
        return "its pod was re-created"
    if (pod.get("spec") or {}).get("nodeName") not in (None, "", node):
        return "its pod is bound to another node"
    if meta.get("deletionTimestamp"):
        return "its pod is being deleted"
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    if phase != "Pending":
        return f"its pod is {phase}"
    annotations = meta.get("annotations") or {}
    wanted = set(container_devices(annotations))
    try:
        done = set(orjson.loads(annotations.get(A_ALLOCATED) or "{}"))
    except orjson.JSONDecodeError:
        done = set()
    if wanted and wanted <= done:
        return "its pod is allocated"
    return None
