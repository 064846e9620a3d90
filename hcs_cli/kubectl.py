"""`kubectl hcs`: a kubectl plugin (the console script `kubectl-hcs`) that shows the live books.

    kubectl hcs top nodes [--vendor V]       devices, VRAM, TFLOPS used and free per node, vendor
    kubectl hcs top quota [-n NS | -A]       ComputeQuota used against hard
    kubectl hcs explain pod NAME [-n NS]     why a pod is pending, node by node
    kubectl hcs simulate -f pod.yaml         where pods would land now (nothing is written)

Everything is computed by the extender's own code on a fresh list of ComputeNodes and Pods
(`ClusterSync.snapshot`): the same charges, the same engine, the same reasons. Nothing is
written to the cluster. The kubeconfig is read as kubectl reads it ($KUBECONFIG, ~/.kube/config,
--kubeconfig, --context); inside a pod without one, the pod's service account is used.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from cluster.kubeio import read_pod
from cluster.sync import VERSION, ClusterSync, load_api
from hcs import __version__
from hcs.demand import (
    A_ASSIGNED_DEVICES,
    A_ASSIGNED_NODE,
    A_ASSIGNED_VENDOR,
    PodDemand,
    parse_pod,
)
from hcs.engine import EngineConfig
from hcs.errors import ConfigError, HcsError, ValidationError
from hcs.models import API_GROUP, ComputeQuota
from hcs.quantity import format_mib
from hcs.report import Use, documents, node_report, quota_report, vendor_report
from hcs.scheduling import SchedulerService, error_code
from hcs.simulate import explain, pods_from_paths, simulate
from hcs.state import ClusterState
from hcs.vendors import VENDOR_NAMES, VendorTable, load_vendor_table
from hcs_cli.options import engine_options, heartbeat_option, reader_left
from hcs_cli.output import FORMATS, emit, explanation_rows, print_placements, table

CALL_TIMEOUT_S = 30.0
VIEWER_ROLE = "hcs-viewer"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)"
    )
    common.add_argument("--context", metavar="NAME", help="kubeconfig context (default: current)")
    common.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default="table",
        help="table (default), wide (more columns), json or yaml (one document)",
    )
    # The extender's own settings: pass the values it runs with (the defaults are its defaults).
    engine = argparse.ArgumentParser(add_help=False)
    engine_options(engine)
    heartbeat_option(engine)

    parser = argparse.ArgumentParser(
        prog="kubectl hcs",
        description="HCS on the live cluster: what is used and free, why a pod is pending, "
        "where a pod would land. Read-only; needs the hcs-viewer ClusterRole "
        "(manifests/rbac.yaml).",
    )
    parser.add_argument("--version", action="version", version=f"kubectl-hcs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    top = sub.add_parser(
        "top",
        help="used and free devices, VRAM and TFLOPS per node and vendor; quota use",
        description="kubectl hcs top nodes | kubectl hcs top quota",
    )
    what = top.add_subparsers(dest="what", required=True, metavar="nodes|quota")
    p = what.add_parser(
        "nodes",
        parents=[common, engine],
        help="per node and per vendor: devices used/total, VRAM and TFLOPS used and free",
        description="One row per ComputeNode (devices used/total and unhealthy, VRAM and "
        "TFLOPS allocated by HCS and free), then one row per vendor (the sums). Free figures "
        "are what filter sees: allocatable minus the larger of the agent's reported use and "
        "HCS's charges.",
    )
    p.add_argument("--vendor", choices=VENDOR_NAMES, help="only this vendor's nodes")
    p = what.add_parser(
        "quota",
        parents=[common],
        help="ComputeQuota used against hard, per resource",
        description="One row per limited resource of each ComputeQuota: used (its "
        "status.used, kept by the webhook and recounted by the controller), hard, percent.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", metavar="NS", help="this namespace (default: the context's)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")

    p = sub.add_parser(
        "explain",
        parents=[common, engine],
        help="why a pod is pending, node by node",
        description="Evaluate a pod against every node on the live books and print each "
        "node's outcome, score and figures, best first. A bound pod shows where it is.",
    )
    p.add_argument("kind", choices=("pod", "pods", "po"), metavar="pod", help="pod")
    p.add_argument("name", metavar="NAME", help="NAME, or NS/NAME")
    p.add_argument("-n", "--namespace", metavar="NS", help="(default: the context's)")

    p = sub.add_parser(
        "simulate",
        parents=[common, engine],
        help="where pods would land now (nothing is written)",
        description="Route and place pods one after another on the live books, as the "
        "webhook and the extender would now, and print where each lands or why not. "
        "Deployments and Jobs contribute their pod template, once per replica.",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="PATH",
        help="Pod YAML file or folder (repeatable)",
    )
    p.add_argument("-n", "--namespace", metavar="NS", help="for pods that name none")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:  # `kubectl hcs … | head`: not the API server's fault
        return reader_left()
    except HcsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ApiException as exc:
        print(f"error: {_api_message(exc)}", file=sys.stderr)
        return 1
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        host = client.Configuration.get_default_copy().host
        print(f"error: cannot reach the API server at {host}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "simulate":  # read the files before asking the cluster anything
        for name in args.filename:
            if not Path(name).exists():
                raise ConfigError(f"-f {name}: no such file or folder (expected Pod YAML)")
        pods = pods_from_paths(args.filename)
    api = load_api(
        args.kubeconfig,
        hint="pass --kubeconfig FILE or set KUBECONFIG",
        context=args.context,
        in_cluster_first=False,
    )
    if args.command == "top" and args.what == "quota":
        return _top_quota(api, args)
    vendors = load_vendor_table(args.vendor_config)
    config = EngineConfig(
        min_health=args.min_health,
        strategy=args.strategy,
        heartbeat_max_age_s=args.heartbeat_timeout,
    )
    if args.command == "top":
        return _top_nodes(_books(api, config, vendors), config, args)
    if args.command == "explain":
        return _explain(api, config, vendors, args)
    books = _books(api, config, vendors)
    namespace = args.namespace or _context_namespace(args)
    for _, pod in pods:
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
    print_placements(simulate(books, pods, config, vendors), _doc_format(args.output))
    return 0


# ------------------------------------------------------------------ the books


def _books(api: client.ApiClient, config: EngineConfig, vendors: VendorTable) -> ClusterState:
    """ComputeNodes and active Pods, listed once and charged as the extender charges them."""
    service = SchedulerService(ClusterState(vendors=vendors), config, vendors)
    try:
        ClusterSync(service, api).snapshot()
    except ApiException as exc:
        if exc.status == 404:
            raise _not_installed("computenodes") from None
        raise
    return service.state


def _not_installed(plural: str) -> HcsError:
    return HcsError(
        f"the cluster does not serve {plural}.{API_GROUP}: are HCS's CRDs installed? "
        "(kubectl apply -k manifests/)",
        code="InvalidConfig",
    )


def _context_namespace(args: argparse.Namespace) -> str:
    """The namespace of the kubeconfig context in use, as kubectl picks it."""
    try:
        contexts, current = kube_config.list_kube_config_contexts(config_file=args.kubeconfig)
    except (kube_config.ConfigException, OSError):  # in a pod, no kubeconfig
        return "default"
    if args.context:
        current = next((c for c in contexts if c.get("name") == args.context), current)
    return str(((current or {}).get("context") or {}).get("namespace") or "default")


def _doc_format(output: str) -> str:
    return output if output in ("json", "yaml") else "table"


def _api_message(exc: ApiException) -> str:
    try:
        message = str(orjson.loads(exc.body or b"{}").get("message") or exc.reason)
    except orjson.JSONDecodeError:
        message = str(exc.reason)
    if exc.status == 403:
        return (
            f"forbidden: {message} (kubectl hcs reads ComputeNodes, ComputeQuotas and Pods: "
            f"bind the {VIEWER_ROLE} ClusterRole from manifests/rbac.yaml)"
        )
    return f"{exc.status} {message}"


# ------------------------------------------------------------------ top


def _gib(mib: int) -> str:
    """VRAM for people: exact when whole (`80Gi`), else to a tenth of a GiB."""
    if mib == 0:
        return "0"
    return format_mib(mib) if mib % 1024 == 0 or mib < 1024 else f"{mib / 1024:.1f}Gi"


def _tf(milli: int) -> str:
    return f"{milli / 1000:.1f}".removesuffix(".0")


def _use_rows(uses: Sequence[Use], first: str, *, wide: bool, vendor_rows: bool) -> list[list[str]]:
    head = [first, "STATUS" if not vendor_rows else "NODES"]
    if not vendor_rows:
        head[1:1] = ["VENDOR"]
        head += ["SHARING"]
    # VRAM-OTHER: in use by what HCS did not place, so USED + FREE + OTHER = VRAM.
    head += ["DEVICES", "UNHEALTHY", "VRAM-USED", "VRAM-FREE", "VRAM-OTHER", "VRAM"]
    head += ["FP16-USED", "FP16-FREE"]
    if wide:
        head += ["FP16", "FP32-USED", "FP32-FREE", "FP32"]
    rows = [head]
    for u in uses:
        row = [u.name] + ([] if vendor_rows else [u.vendor])
        row += [u.status] if not vendor_rows else [f"{u.nodes_ready}/{u.nodes} ready"]
        row += [] if vendor_rows else [u.sharing]
        row += [
            f"{u.devices_used}/{u.devices}",
            str(u.devices_unhealthy),
            _gib(u.vram_used_mib),
            _gib(u.vram_free_mib),
            _gib(u.vram_other_mib),
            _gib(u.vram_mib),
            _tf(u.fp16_used_mtf),
            _tf(u.fp16_free_mtf),
        ]
        if wide:
            row += [_tf(u.fp16_mtf), _tf(u.fp32_used_mtf), _tf(u.fp32_free_mtf), _tf(u.fp32_mtf)]
        rows.append(row)
    return rows


def _top_nodes(books: ClusterState, config: EngineConfig, args: argparse.Namespace) -> int:
    nodes = node_report(books, config, vendor=args.vendor)
    vendors = [v for v in vendor_report(books, config) if args.vendor in (None, v.vendor)]
    if args.output in ("json", "yaml"):
        emit({"nodes": documents(nodes), "vendors": documents(vendors)}, args.output)
        return 0
    if not nodes:
        which = f"{args.vendor} " if args.vendor else ""
        print(f"No {which}ComputeNodes (is the HCS agent running on the accelerator nodes?)")
        return 0
    wide = args.output == "wide"
    print(table(_use_rows(nodes, "NAME", wide=wide, vendor_rows=False)))
    print()
    print(table(_use_rows(vendors, "VENDOR", wide=wide, vendor_rows=True)))
    return 0


def _top_quota(api: client.ApiClient, args: argparse.Namespace) -> int:
    custom = client.CustomObjectsApi(api)
    listed: Any
    try:
        if args.all_namespaces:
            listed = custom.list_cluster_custom_object(
                API_GROUP, VERSION, "computequotas", _request_timeout=CALL_TIMEOUT_S
            )
        else:
            listed = custom.list_namespaced_custom_object(
                API_GROUP,
                VERSION,
                args.namespace or _context_namespace(args),
                "computequotas",
                _request_timeout=CALL_TIMEOUT_S,
            )
    except ApiException as exc:
        if exc.status == 404:
            raise _not_installed("computequotas") from None
        raise
    quotas = []
    for obj in listed.get("items") or []:
        try:
            quotas.append(ComputeQuota.from_dict(obj))
        except ValidationError as exc:
            print(f"warning: skipping an invalid {exc}", file=sys.stderr)
    rows = quota_report(quotas)
    if args.output in ("json", "yaml"):
        emit(documents(rows), args.output)
        return 0
    if not rows:
        where = "any namespace" if args.all_namespaces else "this namespace"
        print(f"No ComputeQuotas in {where}")
        return 0
    lines = [["NAMESPACE", "NAME", "RESOURCE", "USED", "HARD", "USE"]]
    for r in rows:
        used = "not counted yet" if r.used is None else r.used
        lines.append(
            [
                r.namespace,
                r.name,
                r.resource,
                used,
                r.hard,
                "" if r.percent is None else f"{r.percent}%",
            ]
        )
    print(table(lines))
    return 0


# ------------------------------------------------------------------ explain


def _explain(
    api: client.ApiClient, config: EngineConfig, vendors: VendorTable, args: argparse.Namespace
) -> int:
    namespace, _, name = args.name.rpartition("/")
    if namespace and args.namespace and namespace != args.namespace:
        raise ConfigError(f"pod {args.name}: contradicts -n {args.namespace}")
    namespace = namespace or args.namespace or _context_namespace(args)
    pod = read_pod(client.CoreV1Api(api), namespace, name, CALL_TIMEOUT_S)
    if pod is None:
        raise ConfigError(f"pod {namespace}/{name}: not found")
    doc = _pod_summary(pod, vendors)
    fmt = _doc_format(args.output)
    if doc["state"] == "pending":
        books = _books(api, config, vendors)
        rows = explain(books, pod, config, vendors)
        fitting = [r for r in rows if r["fits"]]
        doc["nodes"] = rows
        doc["verdict"] = _verdict(rows, fitting)
    if fmt != "table":
        emit(doc, fmt)
        return 0
    print(f"Pod {doc['pod']}: {doc['phase']}, {doc['message']}")
    for key in ("asks", "vendor", "scheduler"):
        if doc.get(key):
            print(f"  {key}: {doc[key]}")
    if "nodes" in doc:
        print()
        if doc["nodes"]:
            print(table(explanation_rows(doc["nodes"])))
            print()
        print(doc["verdict"])
    return 0


def _pod_summary(pod: dict[str, Any], vendors: VendorTable) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    node = (pod.get("spec") or {}).get("nodeName")
    doc: dict[str, Any] = {
        "pod": f"{meta.get('namespace')}/{meta.get('name')}",
        "phase": phase,
        "node": node,
        "vendor": annotations.get(A_ASSIGNED_VENDOR),
    }
    scheduled = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None
    )
    if scheduled and scheduled.get("status") == "False":
        doc["scheduler"] = f"{scheduled.get('reason')}: {scheduled.get('message')}"
    try:
        demand = parse_pod(pod, vendors)
    except HcsError as exc:
        doc.update(state="invalid", message=f"HCS cannot read its request: {exc}")
        return doc
    if not demand.asks_for_compute:
        doc.update(state="not-hcs", message="asks nothing of HCS; HCS does not hold it back")
        return doc
    doc["asks"] = _describe(demand)
    if node:
        devices = annotations.get(A_ASSIGNED_DEVICES) or "no HCS assignment"
        doc.update(state="bound", message=f"bound to {node} ({devices})")
        if annotations.get(A_ASSIGNED_NODE) not in (None, node):
            doc["message"] += f"; HCS assigned {annotations[A_ASSIGNED_NODE]}"
        return doc
    if phase != "Pending":
        doc.update(state="done", message=f"{phase}, not waiting for a node")
        return doc
    doc.update(state="pending", message="waiting for a node")
    return doc


def _describe(demand: PodDemand) -> str:
    parts = []
    for c in sorted(demand.containers, key=lambda c: c.index):
        what = f"{c.devices} device(s)"
        if c.vram_mib:
            what += f" x {format_mib(c.vram_mib)}" + ("" if c.whole else " (shared)")
        parts.append(f"{c.name}: {what}")
    allowed = demand.allowed_vendors
    vendors = " or ".join(allowed) if len(allowed) < len(VENDOR_NAMES) else "any vendor"
    return "; ".join(parts) + f" on {vendors}"


def _verdict(rows: list[dict[str, Any]], fitting: list[dict[str, Any]]) -> str:
    if not rows:
        return "No ComputeNodes: no node can hold it (is the HCS agent running?)"
    if fitting:
        best = fitting[0]
        return (
            f"{len(fitting)} of {len(rows)} nodes fit now (best: {best['node']}, score "
            f"{best['score']}); kube-scheduler places it at its next attempt unless another "
            "pod takes the room first"
        )
    reasons = Counter(error_code(str(r["reason"])) for r in rows)
    counts = ", ".join(f"{n} {code}" for code, n in reasons.most_common())
    return f"0 of {len(rows)} nodes fit now: {counts}"


if __name__ == "__main__":
    sys.exit(main())
