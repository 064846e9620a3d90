"""Controllers: the cluster-wide bookkeeping no single request does.

- Heartbeat expiry: a ComputeNode whose agent has not reported for longer than the timeout gets
  `AgentConnected=False` and phase `NotReady`; when heartbeats return, `AgentConnected=True` and
  the phase follows `Ready` and `HardwareHealthy` again. (The extender also ages heartbeats
  itself; this makes the state visible to `kubectl get cn` and to everything else.)
- Quota recount: every ComputeQuota's `status.used` is recomputed from the live Pods it applies
  to, and `status.hard` copied from its spec. This repairs charges of pods that were admitted but
  never created, or that ended.
- Waiting pods: an admitted pod still unscheduled after a minute gets an Event
  (`WaitingForCompute`) saying why, node by node, from the same engine the extender runs; at most
  one every five minutes per pod.

The reconcile functions are pure (objects in, status updates out); `run_controllers` lists,
reconciles and writes each status with the `resourceVersion` read (a conflict waits for the
next round). `hcs controller` runs it, leader-elected with a Lease, so one replica writes.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from cluster.buildinfo import register_build_info
from cluster.kubeio import CALL_TIMEOUT_S, list_all, read_json
from hcs.demand import (
    A_CLAIM_TEMPLATE,
    A_CLAIM_TEMPLATE_SPEC,
    claimed_demand,
    parse_pod,
)
from hcs.dra import template_name
from hcs.engine import EngineConfig, Reason, compile_request, evaluate
from hcs.errors import HcsError
from hcs.ledger import Ledger
from hcs.models import API_GROUP, HEARTBEAT_TIMEOUT_S, ComputeNode, ComputeQuota, parse_time
from hcs.podbooks import allocation_from_pod
from hcs.quantity import MIB
from hcs.quota import RESOURCES, applies, demand_amounts, render
from hcs.state import ClusterState
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


def _heartbeat_age(node: Mapping[str, Any], now: float) -> float | None:
    beat = (node.get("status") or {}).get("lastHeartbeat")
    try:
        return now - parse_time(beat, "status.lastHeartbeat").timestamp() if beat else None
    except HcsError:
        return None


def agent_lost(node: Mapping[str, Any], now: float, timeout_s: float) -> bool:
    """No heartbeat, or one older than `timeout_s`."""
    age = _heartbeat_age(node, now)
    return age is None or age > timeout_s


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
        age = _heartbeat_age(node, now)
        connected = not agent_lost(node, now, timeout_s)
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


@dataclass(frozen=True)
class QuotaCount:
    """One ComputeQuota as the controller counted it from live pods."""

    raw: dict[str, Any]
    quota: ComputeQuota
    used: dict[str, int]
    """Resource -> amount in engine units (MiB, milli-TFLOPS, devices)."""
    status: dict[str, Any]
    """The status the quota should have."""

    @property
    def stale(self) -> bool:
        return self.status != (self.raw.get("status") or {})


def count_quotas(
    quotas: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    vendors: VendorTable | None = None,
) -> list[QuotaCount]:
    """Every valid ComputeQuota with its use recounted from the live Pods it applies to."""
    demands = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        try:
            demand = parse_pod(pod, vendors)
        except HcsError:
            continue  # never admitted; it holds nothing
        if not demand.asks_for_compute:  # admitted in DRA mode: its ai.compute is a claim now
            demand = claimed_demand(pod, vendors) or demand
        if demand.asks_for_compute:
            demands.append(demand)
    out = []
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
        out.append(QuotaCount(dict(raw), quota, used, status))
    return out


def claim_templates(pods: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """`namespace/name` -> the ResourceClaimTemplate DRA-mode pods refer to, from the spec the
    webhook recorded; a spec whose hash is not the name (edited since) is left out."""
    out: dict[str, dict[str, Any]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        name = annotations.get(A_CLAIM_TEMPLATE)
        if not name or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        try:
            spec = orjson.loads(annotations.get(A_CLAIM_TEMPLATE_SPEC) or "")
        except orjson.JSONDecodeError:
            spec = None
        if not isinstance(spec, dict) or template_name(spec) != name:
            log.warning(
                "pod %s/%s: its claim template spec does not match %s; not created",
                meta.get("namespace"),
                meta.get("name"),
                name,
            )
            continue
        namespace = str(meta.get("namespace") or "default")
        out[f"{namespace}/{name}"] = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "hcs"},
            },
            "spec": spec,  # a ResourceClaimTemplateSpec: {spec: {devices: ...}}
        }
    return out


def recount_quotas(
    quotas: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    vendors: VendorTable | None = None,
) -> list[Update]:
    """Status updates for the ComputeQuotas whose used or hard figures are wrong."""
    return [(c.raw, c.status) for c in count_quotas(quotas, pods, vendors) if c.stale]


def base_units(resource: str, amount: int) -> float:
    """Engine units to Prometheus base units: VRAM in bytes, TFLOPS, devices."""
    if resource == "vram":
        return float(amount * MIB)
    if resource == "devices":
        return float(amount)
    return amount / 1000


QUOTA_SERIES: Final[tuple[tuple[str, str, str, list[str]], ...]] = (
    ("vram", "vram", "_bytes", []),
    ("tflops-fp16", "tflops", "", ["precision"]),
    ("tflops-fp32", "tflops", "", ["precision"]),
    ("devices", "devices", "", []),
)
"""(quota resource, series name, unit suffix, extra labels): hcs_quota_vram_used_bytes,
hcs_quota_tflops_used{precision="fp16"}, hcs_quota_devices_used, and their _hard twins."""


class ControllerMetrics:
    """The controller's series, in a registry of its own (`hcs controller --metrics-port`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # One series per unit (Prometheus naming: the unit in the name, base units).
        labels = ["namespace", "quota"]
        self.quota: dict[tuple[str, str], Gauge] = {}
        gauges: dict[str, Gauge] = {}  # the two TFLOPS precisions share theirs
        for resource, name, unit, extra in QUOTA_SERIES:
            for kind, what in (("used", "use recounted from live pods"), ("hard", "limit")):
                full = f"hcs_quota_{name}_{kind}{unit}"
                if full not in gauges:
                    gauges[full] = Gauge(
                        full, f"ComputeQuota {what}: {name}", labels + extra, registry=self.registry
                    )
                self.quota[(resource, kind)] = gauges[full]
        register_build_info(self.registry, "controller")
        self.rounds = PromCounter(
            "hcs_controller_rounds",
            "Reconcile rounds, by result (ok, failed)",
            ["result"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "hcs_controller_leader",
            "1 while this replica holds the Lease and reconciles",
            registry=self.registry,
        )
        self.waiting_pods = Gauge(
            "hcs_controller_waiting_pods",
            "Admitted pods still unscheduled after the event threshold",
            registry=self.registry,
        )
        self.agents_lost = Gauge(
            "hcs_controller_agents_lost",
            "ComputeNodes whose agent heartbeat is older than the timeout",
            registry=self.registry,
        )

    def record_quotas(self, counts: Iterable[QuotaCount]) -> None:
        """Replace every quota series (a deleted quota's series disappear)."""
        for gauge in self.quota.values():
            gauge.clear()
        for c in counts:
            key = (c.quota.namespace, c.quota.name)
            for resource, hard in c.quota.hard.as_dict().items():
                if hard is None:
                    continue
                extra = (resource.removeprefix("tflops-"),) if resource.startswith("tflops") else ()
                for kind, amount in (("hard", hard), ("used", c.used[resource])):
                    gauge = self.quota[(resource, kind)]
                    gauge.labels(*key, *extra).set(base_units(resource, amount))


def waiting_pods(
    pods: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    now: float,
    *,
    after_s: float,
    vendors: VendorTable | None = None,
    config: EngineConfig | None = None,
) -> list[tuple[dict[str, Any], str]]:
    """(pod, explanation) for admitted pods still unscheduled after `after_s`: why no node can
    take them now, from the same engine the extender runs (allocations rebuilt from the Pods)."""
    candidates = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (pod.get("status") or {}).get("phase") != "Pending" or (pod.get("spec") or {}).get(
            "nodeName"
        ):
            continue
        if not (meta.get("annotations") or {}).get("hcs.io/assigned-vendor"):
            continue
        created = meta.get("creationTimestamp")
        try:
            age = now - parse_time(created, "creationTimestamp").timestamp() if created else 0
        except HcsError:
            age = 0
        if age >= after_s:
            candidates.append(pod)
    if not candidates:
        return []
    state = ClusterState(vendors=vendors or VendorTable())
    for raw in nodes:
        try:
            state.upsert_node(ComputeNode.from_dict(raw))
        except HcsError:
            continue
    ledger = Ledger(state)
    for pod in pods:
        try:
            alloc = allocation_from_pod(pod, state, vendors)
        except HcsError:
            continue
        if alloc is not None and (pod.get("status") or {}).get("phase") not in (
            "Succeeded",
            "Failed",
        ):
            ledger.restore(alloc, force=True)
    config = config or EngineConfig()
    out = []
    rows = state.all_rows()
    for pod in candidates:
        try:
            req = compile_request(parse_pod(pod, vendors))
        except HcsError as exc:
            out.append((dict(pod), f"HCS cannot place it: {exc}"))
            continue
        codes = evaluate(state, req, rows, config, now).codes
        counts = Counter(Reason(int(c)).name for c in codes if c)
        vendor = req.demand.allowed_vendors[0]
        if not counts and len(codes):
            text = f"{int((codes == 0).sum())} node(s) fit now; waiting for the scheduler"
        else:
            text = ", ".join(f"{n} node(s) {name}" for name, n in counts.most_common())
        out.append((dict(pod), f"waiting for {vendor} capacity: {text or 'no nodes'}"))
    return out


class ControllerRunner:
    """One reconcile round against the API server."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        vendors: VendorTable | None = None,
        wait_event_after_s: float = 60.0,
        wait_event_every_s: float = 300.0,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.resource: Any = client.ResourceV1Api(api)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.vendors = vendors
        self.wait_event_after_s = wait_event_after_s
        self.wait_event_every_s = wait_event_every_s
        self._reported: dict[str, float] = {}
        self.metrics = metrics

    def round(self, now: float | None = None) -> tuple[int, int]:
        """Returns (ComputeNodes updated, ComputeQuotas updated)."""
        now = time.time() if now is None else now
        # Read in pages (cluster.kubeio.list_pages): no list is one giant response.
        custom = self.custom.list_cluster_custom_object
        node_items = list_all(custom, API_GROUP, VERSION, "computenodes")
        node_updates = expire_heartbeats(node_items, now, self.heartbeat_timeout_s)
        for obj, status in node_updates:
            self._write(obj, status, "computenodes")
        quota_items = list_all(custom, API_GROUP, VERSION, "computequotas")
        pod_items = list_all(self.core.list_pod_for_all_namespaces)
        counts = count_quotas(quota_items, pod_items, self.vendors)
        quota_updates = [(c.raw, c.status) for c in counts if c.stale]
        for obj, status in quota_updates:
            self._write(obj, status, "computequotas")
        waiting = waiting_pods(
            pod_items,
            node_items,
            now,
            after_s=self.wait_event_after_s,
            vendors=self.vendors,
        )
        if self.metrics is not None:
            self.metrics.record_quotas(counts)
            self.metrics.waiting_pods.set(len(waiting))
            self.metrics.agents_lost.set(
                sum(1 for n in node_items if agent_lost(n, now, self.heartbeat_timeout_s))
            )
        self.ensure_claim_templates(pod_items)
        for pod, message in waiting:
            uid = str(pod["metadata"].get("uid"))
            if now - self._reported.get(uid, -1e18) >= self.wait_event_every_s:
                self._event(pod, message, now)
                self._reported[uid] = now
        return len(node_updates), len(quota_updates)

    def ensure_claim_templates(self, pods: Iterable[Mapping[str, Any]]) -> list[str]:
        """Create the ResourceClaimTemplate each DRA-mode pod refers to where it is missing
        (kube-scheduler waits for it): `namespace/name` of those created."""
        created = []
        for key, template in claim_templates(pods).items():
            namespace, _, name = key.partition("/")
            read = self.resource.read_namespaced_resource_claim_template
            if read_json(read, name, namespace) is not None:
                continue
            try:
                self.resource.create_namespaced_resource_claim_template(
                    namespace, template, _preload_content=False, _request_timeout=CALL_TIMEOUT_S
                )
                created.append(key)
                log.info("created ResourceClaimTemplate %s", key)
            except ApiException as exc:
                if exc.status != 409:  # another replica or round made it: the same one
                    raise
        return created

    def _event(self, pod: Mapping[str, Any], message: str, now: float) -> None:
        meta = pod["metadata"]
        stamp = _stamp(now)
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.hcs-", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": "WaitingForCompute",
            "message": message[:1000],
            "type": "Normal",
            "source": {"component": "hcs-controller"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            log.warning(
                "cannot post an event on %s/%s: %s", meta["namespace"], meta["name"], exc.reason
            )

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
    metrics = runner.metrics
    while True:
        try:
            nodes, quotas = runner.round()
            log.info("round done: %d ComputeNode(s), %d ComputeQuota(s) updated", nodes, quotas)
            if metrics is not None:
                metrics.rounds.labels("ok").inc()
        except (ApiException, OSError, HcsError) as exc:
            log.warning("round failed: %s", exc)
            if metrics is not None:
                metrics.rounds.labels("failed").inc()
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
        onstarted_leading=lambda: _lead(runner, interval),
        onstopped_leading=lambda: _follow(runner, f"lost the lease {namespace}/{name}"),
    )
    leaderelection.LeaderElection(config).run()


def _lead(runner: ControllerRunner, interval: float) -> None:
    if runner.metrics is not None:
        runner.metrics.leader.set(1)
    run_controllers(runner, interval)


def _follow(runner: ControllerRunner, why: str) -> None:
    log.warning("%s", why)
    if runner.metrics is not None:
        runner.metrics.leader.set(0)
