"""Offline placement: run pods through filter, prioritize and bind on an inventory.

Pure functions behind `hcs simulate` and `hcs explain`: they return rows, the CLI prints them.
Pods are placed one at a time, as kube-scheduler does: filter over every node, the best score
wins (ties broken by name, for a deterministic table), and the ledger charges the devices so the
next pod sees them taken.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from hcs.demand import parse_pod
from hcs.engine import EngineConfig, Reason, compile_request, evaluate, route_vendor, score_percent
from hcs.errors import HcsError, InventoryError
from hcs.inventory import load_documents
from hcs.ledger import Ledger
from hcs.quantity import format_mib
from hcs.state import ClusterState
from hcs.vendors import VendorTable


@dataclass(frozen=True)
class Placement:
    pod: str
    vendor: str = ""
    node: str = ""
    devices: str = ""
    score: int | None = None
    outcome: str = ""
    """Empty when placed; otherwise why not (reason counts or the request error)."""
    note: str = ""


def pods_from_paths(paths: Iterable[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """Pods (and the pod templates of Deployments, Jobs, ...) from YAML files or folders."""
    out: list[tuple[str, dict[str, Any]]] = []
    for raw in paths:
        path = Path(raw)
        files = (
            sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            if path.is_dir()
            else [path]
        )
        if not files:
            raise InventoryError(f"{path}: no .yaml or .yml files")
        for file in files:
            for place, doc in load_documents(file):
                out.extend(_pods_of(place, doc))
    return out


WORKLOAD_KINDS: Final = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "PodTemplate"}
)
"""Built-in kinds that must hold a pod template."""


def pod_templates(doc: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every pod template in a workload object, with its path: the built-in ones
    (`spec.template`, a CronJob's `spec.jobTemplate.spec.template`) and those of other
    projects' objects (Kubeflow's `spec.pytorchReplicaSpecs.Worker.template`, Ray's
    `spec.workerGroupSpecs[0].template`, ...): any `template` whose `spec` lists containers."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            at = f"{path}.{key}" if path else str(key)
            if (
                key == "template"
                and isinstance(value, dict)
                and isinstance(value.get("spec"), dict)
                and "containers" in value["spec"]
            ):
                found.append((at, value))
            else:
                found += pod_templates(value, at)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            found += pod_templates(item, f"{path}[{i}]")
    return found


def _pods_of(place: str, doc: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(doc, dict):
        return []
    if doc.get("kind") == "Pod":
        return [(place, doc)]
    spec = doc.get("spec") or {}
    template = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get(
        "template"
    )
    if not isinstance(template, dict):
        return []
    replicas = spec.get("replicas", 1) if isinstance(spec.get("replicas", 1), int) else 1
    meta = doc.get("metadata") or {}
    pods = []
    for i in range(replicas):
        tmeta = dict(template.get("metadata") or {})
        tmeta["name"] = f"{meta.get('name', 'pod')}-{i}"
        tmeta.setdefault("namespace", meta.get("namespace"))
        pods.append(
            (
                f"{place}[{i}]",
                {"kind": "Pod", "metadata": tmeta, "spec": template.get("spec") or {}},
            )
        )
    return pods


def simulate(
    state: ClusterState,
    pods: Iterable[tuple[str, Mapping[str, Any]]],
    config: EngineConfig,
    vendors: VendorTable | None = None,
) -> list[Placement]:
    ledger = Ledger(state, config)
    rows = state.all_rows()
    names = [state.node_names[r] or "" for r in rows.tolist()]
    order = np.argsort(np.array(names, dtype=object), kind="stable")
    uid = itertools.count(1)
    out = []
    for place, pod in pods:
        meta = dict(pod.get("metadata") or {})
        meta.setdefault("uid", f"sim-{next(uid)}")
        label = f"{meta.get('namespace') or 'default'}/{meta.get('name') or place}"
        try:
            demand = parse_pod({**pod, "metadata": meta}, vendors)
        except HcsError as exc:
            out.append(Placement(label, outcome=str(exc)))
            continue
        if not demand.asks_for_compute:
            out.append(Placement(label, outcome="asks nothing of HCS"))
            continue
        try:
            route = route_vendor(state, compile_request(demand), config)
        except HcsError as exc:
            out.append(Placement(label, outcome=f"denied at admission: {exc}"))
            continue
        # What the webhook does: the routed vendor becomes the pod's only vendor.
        demand = replace(demand, fixed_vendor=route.vendor)
        req = compile_request(demand)
        ev = evaluate(state, req, rows, config)
        scores = score_percent(state, req, ev, config)
        fits = np.flatnonzero(ev.codes[order] == 0)
        if len(fits) == 0:
            counts = Counter(Reason(int(c)).name for c in ev.codes)
            out.append(
                Placement(
                    label,
                    outcome="unschedulable: "
                    + ", ".join(f"{n} node(s) {name}" for name, n in counts.most_common()),
                )
            )
            continue
        ranked = order[fits]
        best = ranked[int(np.argmax(scores[ranked]))]
        node = names[best]
        try:
            alloc = ledger.confirm(ledger.assume(demand, node).uid)
        except HcsError as exc:
            out.append(Placement(label, outcome=f"bind failed: {exc}"))
            continue
        note = f"downgraded from {demand.preference[0]}" if route.downgraded else ""
        out.append(
            Placement(
                label, alloc.vendor, node, alloc.devices_annotation(), int(scores[best]), note=note
            )
        )
    return out


def explain(
    state: ClusterState,
    pod: Mapping[str, Any],
    config: EngineConfig,
    vendors: VendorTable | None = None,
) -> list[dict[str, Any]]:
    """One row per node: outcome, score and the figures behind it, best first."""
    demand = parse_pod(pod, vendors)
    req = compile_request(demand)
    rows = state.all_rows()
    names = [state.node_names[r] or "" for r in rows.tolist()]
    ev = evaluate(state, req, rows, config)
    scores = score_percent(state, req, ev, config)
    figs = ev.figures
    table = []
    # Quantities as Kubernetes quantity strings (`80Gi`), as the API and `kubectl hcs` write them.
    for i, name in enumerate(names):
        code = Reason(int(ev.codes[i]))
        table.append(
            {
                "node": name,
                "fits": code is Reason.Fits,
                "score": int(scores[i]),
                "reason": "" if code is Reason.Fits else req.message(code, config),
                **{k: int(v[i]) for k, v in figs.items() if k != "max_free_vram_mib"},
                "max_free_vram": format_mib(int(figs["max_free_vram_mib"][i])),
            }
        )
    table.sort(key=lambda r: (not r["fits"], -int(r["score"]), str(r["node"])))
    return table
