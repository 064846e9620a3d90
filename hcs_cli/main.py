"""The `hcs` command.

Subcommands that exist today: `extender`, `simulate`, `explain`, `validate`. The webhook,
`serve`, `agent` and `certs` arrive with their issues and are not listed until they work, so
`hcs --help` never promises what is not there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from extender.server import cluster_service, local_service, serve
from hcs import __version__
from hcs.demand import parse_pod
from hcs.engine import STRATEGIES, EngineConfig
from hcs.errors import HcsError, ValidationError
from hcs.inventory import load_documents, load_inventory
from hcs.models import ComputeNode, ComputeQuota
from hcs.simulate import Placement, explain, pods_from_paths, simulate
from hcs.state import ClusterState
from hcs.vendors import VendorTable, load_vendor_table


def _engine_args(
    p: argparse.ArgumentParser, *, json_flag: bool = True, cluster: bool = False
) -> None:
    p.add_argument(
        "--inventory",
        required=not cluster,
        metavar="DIR",
        help="folder of ComputeNode / ComputeQuota YAML files"
        + (" (local mode; without it: cluster mode through the API server)" if cluster else ""),
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="binpack",
        help="score nodes by packing VRAM tightly or spreading it (default binpack)",
    )
    p.add_argument(
        "--min-health",
        type=int,
        default=60,
        metavar="N",
        help="devices with healthScore below N are not used (default 60)",
    )
    p.add_argument(
        "--vendor-config",
        metavar="FILE",
        help="YAML overriding vendor profiles (device-plugin names, env, mounts)",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcs",
        description="HCS, the Hetero-Compute-Router: vendor-neutral accelerator scheduling "
        "for Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"hcs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "extender",
        help="run the kube-scheduler extender (HTTP)",
        description="Serve POST /filter, /prioritize, /bind, /preempt and GET /healthz, "
        "/readyz, /metrics, /version for kube-scheduler. With --inventory: local mode "
        "(allocations kept in memory); without: cluster mode (watches ComputeNodes and Pods, "
        "creates Bindings).",
    )
    _engine_args(p, json_flag=False, cluster=True)
    p.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="cluster mode: kubeconfig to use (default: in-cluster, then ~/.kube/config)",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="cluster mode: /readyz fails when a watch has been silent this long "
        "(default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="cluster mode: a ComputeNode whose agent heartbeat is older is "
        "AgentNotConnected (default %(default)s)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8888, help="port (default %(default)s)")
    p.add_argument(
        "--max-body-mb",
        type=int,
        default=256,
        metavar="MB",
        help="largest request body accepted (default %(default)s)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    p = sub.add_parser(
        "simulate",
        help="place a stream of pods on an inventory, print a table",
        description="Place pods one after another on an inventory (filter, "
        "prioritize, bind with device selection) and print where "
        "each landed or why it could not.",
    )
    _engine_args(p)
    p.add_argument(
        "--pods",
        required=True,
        nargs="+",
        metavar="PATH",
        help="Pod YAML files or folders (Deployments and Jobs contribute their "
        "pod template, once per replica)",
    )

    p = sub.add_parser(
        "explain",
        help="why a pod can or cannot be placed, node by node",
        description="Evaluate one pod against every node of an inventory and "
        "print each node's outcome, score and figures.",
    )
    _engine_args(p)
    p.add_argument(
        "--pod",
        required=True,
        metavar="FILE",
        help="a YAML file of Pods (each is explained in turn)",
    )

    p = sub.add_parser(
        "validate",
        help="check ComputeNode, ComputeQuota and Pod YAML",
        description="Validate every document of the given YAML files; exit 1 if any is invalid.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--vendor-config", metavar="FILE", help="YAML overriding vendor profiles")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        vendors = load_vendor_table(args.vendor_config)
        if args.command == "validate":
            return _validate(args.files, vendors)
        config = EngineConfig(min_health=args.min_health, strategy=args.strategy)
        if args.command == "extender":
            logging.basicConfig(
                level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
            )
            if args.inventory:
                service, sync = local_service(args.inventory, config, vendors), None
            else:
                config = replace(config, heartbeat_max_age_s=args.heartbeat_timeout)
                service, sync = cluster_service(
                    config, vendors, args.kubeconfig, stale_after_s=args.stale_after
                )
            serve(service, args.host, args.port, sync=sync, max_body=args.max_body_mb * 2**20)
            return 0
        inv = load_inventory(args.inventory)
        for warning in inv.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        state = ClusterState.from_nodes(inv.nodes.values(), vendors)
        if args.command == "simulate":
            placements = simulate(state, pods_from_paths(args.pods), config, vendors)
            _print_placements(placements, as_json=args.json)
            return 0
        for place, pod in pods_from_paths([args.pod]):
            name = (pod.get("metadata") or {}).get("name") or place
            if not args.json:
                print(f"# {name}")
            _print_explanation(explain(state, pod, config, vendors), as_json=args.json)
        return 0
    except HcsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _validate(files: Sequence[str], vendors: VendorTable) -> int:
    bad = 0
    for file in files:
        try:
            docs = load_documents(Path(file))
        except HcsError as exc:
            print(f"INVALID {exc.message}")
            bad += 1
            continue
        for place, doc in docs:
            kind = doc.get("kind") if isinstance(doc, dict) else None
            try:
                if kind == "ComputeNode":
                    ComputeNode.from_dict(doc)
                elif kind == "ComputeQuota":
                    ComputeQuota.from_dict(doc)
                elif kind == "Pod":
                    parse_pod(doc, vendors)
                else:
                    print(f"skipped {place}: {kind or 'no kind'}")
                    continue
                print(f"ok      {place}: {kind}")
            except ValidationError as exc:
                bad += 1
                print(f"INVALID {place}: {exc.what}")
                for path, msg in exc.problems:
                    print(f"          {path}: {msg}")
            except HcsError as exc:
                bad += 1
                print(f"INVALID {place}: {exc}")
    return 1 if bad else 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _print_placements(placements: list[Placement], *, as_json: bool) -> None:
    if as_json:
        for p in placements:
            print(json.dumps(p.__dict__))
        return
    rows = [["POD", "VENDOR", "NODE", "DEVICES", "SCORE", "OUTCOME"]]
    for p in placements:
        rows.append(
            [
                p.pod,
                p.vendor,
                p.node,
                p.devices,
                "" if p.score is None else str(p.score),
                p.outcome or ("placed" + (f" ({p.note})" if p.note else "")),
            ]
        )
    print(_table(rows))
    placed = sum(1 for p in placements if not p.outcome)
    print(f"\n{placed} of {len(placements)} pods placed")


def _print_explanation(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = [
        [
            "NODE",
            "FITS",
            "SCORE",
            "DEVICES",
            "FREE",
            "HEALTHY-FREE",
            "MAX-FREE-VRAM",
            "FITTING",
            "REASON",
        ]
    ]
    for r in rows:
        table.append(
            [
                r["node"],
                "yes" if r["fits"] else "no",
                str(r["score"]),
                str(r["devices"]),
                str(r["free_devices"]),
                str(r["healthy_free_devices"]),
                f"{r['max_free_vram_mib']}Mi",
                str(r["fitting_devices"]),
                r["reason"],
            ]
        )
    print(_table(table))


if __name__ == "__main__":
    sys.exit(main())
