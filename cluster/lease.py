"""The per-node lock's I/O: take, read and release the node's Lease on the API server.

The rules (who holds a node, when a holder is stale) are pure and live in `hcs.nodelock`; this
module only talks to the API server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cluster.kubeio import CALL_TIMEOUT_S, read_json, read_pod
from hcs.nodelock import A_LOCK_POD, LOCK_NAMESPACE, NodeBusyError, holder_is_stale, lease_name


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeLock:
    """Take, read and release node locks through the API server (calls block)."""

    def __init__(self, api: client.ApiClient, namespace: str = LOCK_NAMESPACE) -> None:
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
