"""Controllers: the cluster-wide bookkeeping no single request does.

- Heartbeat expiry: a ComputeNode whose agent has not reported for longer than the timeout gets
  `AgentConnected=False` and phase `NotReady`; when heartbeats return, `AgentConnected=True` and
  the phase follows `Ready` and `HardwareHealthy` again. (The extender also ages heartbeats
  itself; this makes the state visible to `kubectl get cn` and to everything else.)
- Quota recount: every ComputeQuota's `status.used` is recomputed from the live Pods it applies
  to, and `status.hard` copied from its spec. This repairs charges of pods that were admitted but
  never created, or that ended.

The reconcile functions are pure (objects in, status updates out); `run_controllers` lists,
reconciles and writes each status with the `resourceVersion` read (a conflict waits for the
next round). `hcs controller` runs it, leader-elected with a Lease, so one replica writes.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from hcs.demand import parse_pod
from hcs.errors import HcsError
from hcs.models import API_GROUP, ComputeQuota, parse_time
from hcs.quota import RESOURCES, applies, demand_amounts, render
from hcs.vendors import VendorTable

log = logging.getLogger("hcs.controller")
VERSION = "v1alpha1"
Update = tuple[dict[str, Any], dict[str, Any]]
"""(the object as read, its new status)."""


def _stamp(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set(
    conditions: list[dict[str, Any]],
    kind: str,
    *,
    ok: bool,
    reason: str,
    message: str,
    now: float,
) -> list[dict[str, Any]]:
    status = "True" if ok else "False"
    out = [c for c in conditions if c.get("type") != kind]
    out.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": _stamp(now),
        }
    )
    return out


def expire_heartbeats(
    nodes: Iterable[Mapping[str, Any]], now: float, timeout_s: float
) -> list[Update]:
    """Status updates for the ComputeNodes whose connectedness changed."""
    updates = []
    for node in nodes:
        status = dict(node.get("status") or {})
        conditions = list(status.get("conditions") or [])
        current = next((c for c in conditions if c.get("type") == "AgentConnected"), None)
        was = current is None or current.get("status") != "False"
        beat = status.get("lastHeartbeat")
        try:
            age = now - parse_time(beat, "status.lastHeartbeat").timestamp() if beat else None
        except HcsError:
            age = None
        connected = age is not None and age <= timeout_s
        if connected == was:
            continue
        if connected:
            conditions = _set(
                conditions,
                "AgentConnected",
                ok=True,
                reason="HeartbeatReceived",
                message="the agent reports again",
                now=now,
            )
            healthy = all(
                c.get("status") != "False"
                for c in conditions
                if c.get("type") in ("Ready", "HardwareHealthy")
            )
            status["phase"] = "Ready" if healthy else "NotReady"
        else:
            told = "never" if age is None else f"{age:.0f}s ago"
            conditions = _set(
                conditions,
                "AgentConnected",
                ok=False,
                reason="HeartbeatTimeout",
                message=f"last heartbeat {told}; timeout {timeout_s:g}s",
                now=now,
            )
            status["phase"] = "NotReady"
        status["conditions"] = conditions
        updates.append((dict(node), status))
    return updates


def recount_quotas(
    quotas: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    vendors: VendorTable | None = None,
) -> list[Update]:
    """Status updates for the ComputeQuotas whose used or hard figures are wrong."""
    demands = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        try:
            demand = parse_pod(pod, vendors)
        except HcsError:
            continue  # never admitted; it holds nothing
        if demand.asks_for_compute:
            demands.append(demand)
    updates = []
    for raw in quotas:
        try:
            quota = ComputeQuota.from_dict(raw)
        except HcsError as exc:
            log.warning("skipping invalid %s", exc)
            continue
        used = dict.fromkeys(RESOURCES, 0)
        for demand in demands:
            if demand.namespace == quota.namespace and applies(quota, demand):
                for resource, amount in demand_amounts(demand).items():
                    used[resource] += amount
        status = dict(raw.get("status") or {})
        status["used"] = {r: render(r, v) for r, v in used.items()}
        status["hard"] = {r: render(r, v) for r, v in quota.hard.as_dict().items() if v is not None}
        if status != (raw.get("status") or {}):
            updates.append((dict(raw), status))
    return updates


class ControllerRunner:
    """One reconcile round against the API server."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        heartbeat_timeout_s: float = 90.0,
        vendors: VendorTable | None = None,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.vendors = vendors

    def round(self, now: float | None = None) -> tuple[int, int]:
        """Returns (ComputeNodes updated, ComputeQuotas updated)."""
        now = time.time() if now is None else now
        nodes: Any = self.custom.list_cluster_custom_object(API_GROUP, VERSION, "computenodes")
        node_updates = expire_heartbeats(nodes.get("items") or [], now, self.heartbeat_timeout_s)
        for obj, status in node_updates:
            self._write(obj, status, "computenodes")
        quotas: Any = self.custom.list_cluster_custom_object(API_GROUP, VERSION, "computequotas")
        pods: Any = self.core.list_pod_for_all_namespaces(_preload_content=False)
        pod_items = orjson.loads(pods.data).get("items") or []
        quota_updates = recount_quotas(quotas.get("items") or [], pod_items, self.vendors)
        for obj, status in quota_updates:
            self._write(obj, status, "computequotas")
        return len(node_updates), len(quota_updates)

    def _write(self, obj: Mapping[str, Any], status: dict[str, Any], plural: str) -> None:
        meta = obj["metadata"]
        body = {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "metadata": {
                "name": meta["name"],
                "resourceVersion": meta["resourceVersion"],
                **({"namespace": meta["namespace"]} if "namespace" in meta else {}),
            },
            "spec": obj.get("spec"),
            "status": status,
        }
        try:
            if "namespace" in meta:
                self.custom.replace_namespaced_custom_object_status(
                    API_GROUP, VERSION, meta["namespace"], plural, meta["name"], body
                )
            else:
                self.custom.replace_cluster_custom_object_status(
                    API_GROUP, VERSION, plural, meta["name"], body
                )
            log.info("%s %s: status updated", plural, meta["name"])
        except ApiException as exc:
            if exc.status != 409:
                raise
            log.info("%s %s changed meanwhile; next round", plural, meta["name"])


def run_controllers(runner: ControllerRunner, interval: float, *, once: bool = False) -> None:
    """Reconcile every `interval` seconds; a failed round is logged and retried next time."""
    while True:
        try:
            nodes, quotas = runner.round()
            log.info("round done: %d ComputeNode(s), %d ComputeQuota(s) updated", nodes, quotas)
        except (ApiException, OSError, HcsError) as exc:
            log.warning("round failed: %s", exc)
        if once:
            return
        time.sleep(interval)


def run_leader_elected(
    runner: ControllerRunner, interval: float, *, namespace: str, name: str, identity: str
) -> None:
    """Run the controllers only while holding the Lease `namespace/name` (one writer)."""
    config = electionconfig.Config(
        LeaseLock(name, namespace, identity),
        lease_duration=15,
        renew_deadline=10,
        retry_period=2,
        onstarted_leading=lambda: run_controllers(runner, interval),
        onstopped_leading=lambda: log.warning("lost the lease %s/%s", namespace, name),
    )
    leaderelection.LeaderElection(config).run()
