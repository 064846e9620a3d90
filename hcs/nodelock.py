"""The per-node lock between bind and Allocate: a `coordination.k8s.io` Lease per node.

Kubelet's device plugin API never says which pod an Allocate serves. HCS makes the answer
certain: bind takes the node's Lease (`hcs-node-<node>` in the HCS namespace) with the pod's UID
as `holderIdentity` before it creates the Binding, so at most one pod bound by HCS is between
bind and Allocate on a node; the device plugin releases the Lease once Allocate has run for all
of that pod's containers.

There is no timed expiry: a holder keeps the lock while it is pending on the node and not yet
allocated. The next bind takes the lock over (compare-and-swap on the Lease's resourceVersion)
only when the holder is gone: deleted, bound elsewhere, no longer Pending, being deleted, or
allocated for every container (`hcs.io/allocated`) although the release did not land.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hcs.assignment import A_ALLOCATED, container_devices
from hcs.errors import HcsError
from hcs.kubeio import CALL_TIMEOUT_S, read_json, read_pod

A_LOCK_POD = "hcs.io/pod"
LEASE_PREFIX = "hcs-node-"


class NodeBusyError(HcsError):
    """Another pod holds the node's lock: kube-scheduler retries the bind later."""

    code = "InsufficientDevices"


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


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeLock:
    """Take, read and release node locks through the API server (calls block)."""

    def __init__(self, api: client.ApiClient, namespace: str = "hcs-system") -> None:
        self.leases = client.CoordinationV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    def read(self, node: str) -> dict[str, Any] | None:
        return read_json(self.leases.read_namespaced_lease, lease_name(node), self.namespace)

    def holder(self, node: str) -> tuple[str, str] | None:
        """(pod UID, `namespace/name`) of the pod holding `node`, None when free."""
        lease = self.read(node)
        uid = ((lease or {}).get("spec") or {}).get("holderIdentity")
        if not uid:
            return None
        pod = ((lease or {}).get("metadata", {}).get("annotations") or {}).get(A_LOCK_POD, "")
        return str(uid), str(pod)

    def acquire(self, node: str, namespace: str, name: str, uid: str, *, tries: int = 4) -> None:
        """Take `node` for pod `namespace/name` (`uid`); NodeBusyError if a live pod holds it."""
        for _ in range(tries):
            lease = self.read(node)
            if lease is None:
                try:
                    self.leases.create_namespaced_lease(
                        self.namespace,
                        self._body(node, namespace, name, uid),
                        _preload_content=False,
                        _request_timeout=CALL_TIMEOUT_S,
                    )
                    return
                except ApiException as exc:
                    if exc.status == 409:
                        continue  # created meanwhile: read it
                    raise
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            if holder and holder != uid:
                ref = ((lease.get("metadata") or {}).get("annotations") or {}).get(A_LOCK_POD, "")
                pod = self._pod(ref)
                if holder_is_stale(pod, holder, node) is None:
                    raise NodeBusyError(
                        f"node {node} is admitting pod {ref} ({holder}); the bind is retried "
                        "when its devices are allocated"
                    )
            try:
                self._replace(node, lease, self._body(node, namespace, name, uid))
                return
            except ApiException as exc:
                if exc.status == 409:
                    continue  # someone else wrote first: read again
                raise
        raise NodeBusyError(f"node {node}: its lock kept changing; the bind is retried")

    def release(self, node: str, uid: str) -> bool:
        """Free `node` if `uid` still holds it; False when someone else does (or nobody)."""
        for _ in range(4):
            lease = self.read(node)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != uid:
                return False
            body = self._body(node, "", "", "")
            try:
                self._replace(node, lease, body)
                return True
            except ApiException as exc:
                if exc.status != 409:
                    raise
        return False

    def _replace(self, node: str, lease: Mapping[str, Any], body: Any) -> None:
        body["metadata"]["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
        self.leases.replace_namespaced_lease(
            lease_name(node),
            self.namespace,
            body,
            _preload_content=False,
            _request_timeout=CALL_TIMEOUT_S,
        )

    def _pod(self, ref: str) -> dict[str, Any] | None:
        namespace, _, name = ref.partition("/")
        return read_pod(self.core, namespace, name) if namespace and name else None

    def _body(self, node: str, namespace: str, name: str, uid: str) -> Any:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": lease_name(node),
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/part-of": "hcs"},
                "annotations": {A_LOCK_POD: f"{namespace}/{name}" if uid else ""},
            },
            "spec": {"holderIdentity": uid, "acquireTime": _now() if uid else None},
        }
