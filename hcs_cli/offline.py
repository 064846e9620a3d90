"""`hcs simulate`, `hcs explain` and `hcs validate`: tools over files, no cluster needed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hcs.demand import parse_pod, resources_key_problems
from hcs.engine import EngineConfig
from hcs.errors import ConfigError, HcsError, ValidationError
from hcs.inventory import load_documents, load_inventory
from hcs.models import ComputeNode, ComputeQuota
from hcs.simulate import WORKLOAD_KINDS, explain, pod_templates, pods_from_paths, simulate
from hcs.state import ClusterState
from hcs.vendors import VendorTable
from hcs_cli.options import (
    engine_args,
)
from hcs_cli.output import emit, print_explanation, print_placements


def add_parsers(sub: Any) -> None:
    """The file commands."""
    p = sub.add_parser(
        "simulate",
        help="place a stream of pods on an inventory, print a table",
        description="Place pods one after another on an inventory (filter, "
        "prioritize, bind with device selection) and print where "
        "each landed or why it could not.",
    )
    engine_args(p)
    p.add_argument(
        "--pods",
        required=True,
        nargs="+",
        metavar="PATH",
        help="Pod YAML files or folders (Deployments and Jobs contribute their "
        "pod template, once per replica)",
    )
    p.set_defaults(run=run_simulate)
    p = sub.add_parser(
        "explain",
        help="why a pod can or cannot be placed, node by node",
        description="Evaluate one pod against every node of an inventory and "
        "print each node's outcome, score and figures.",
    )
    engine_args(p)
    p.add_argument(
        "--pod",
        required=True,
        metavar="FILE",
        help="a YAML file of Pods (each is explained in turn)",
    )
    p.set_defaults(run=run_explain)
    p = sub.add_parser(
        "validate",
        help="check ComputeNode, ComputeQuota and Pod YAML",
        description="Validate every document of the given YAML files; exit 1 if any is invalid.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--vendor-config", metavar="FILE", help="YAML overriding vendor profiles")
    p.set_defaults(run=run_validate)


def _config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(min_health=args.min_health, strategy=args.strategy)


def _state(args: argparse.Namespace, vendors: VendorTable) -> ClusterState:
    inv = load_inventory(args.inventory)
    for warning in inv.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return ClusterState.from_nodes(inv.nodes.values(), vendors)


def run_simulate(args: argparse.Namespace, vendors: VendorTable) -> int:
    placements = simulate(_state(args, vendors), pods_from_paths(args.pods), _config(args), vendors)
    print_placements(placements, args.output)
    return 0


def run_explain(args: argparse.Namespace, vendors: VendorTable) -> int:
    state = _state(args, vendors)
    if not Path(args.pod).is_file():
        raise ConfigError(f"--pod {args.pod}: no such file (expected a YAML file of Pods)")
    explained = []
    for place, pod in pods_from_paths([args.pod]):
        name = (pod.get("metadata") or {}).get("name") or place
        rows = explain(state, pod, _config(args), vendors)
        if args.output == "table":
            print(f"# {name}")
            print_explanation(rows)
        explained.append({"pod": name, "nodes": rows})
    if args.output != "table":  # one document for every pod of the file
        emit(explained, args.output)
    return 0


def run_validate(args: argparse.Namespace, vendors: VendorTable) -> int:
    """Every document of every file checked; exit 1 when anything is invalid (an unknown key in
    a pod's resources, a bad pod template, an empty file, a document that is not an object)."""
    bad = 0
    expanded: list[str] = []
    for file in args.files:  # a folder means its YAML files, recursively
        folder = Path(file)
        if folder.is_dir():
            expanded += sorted(str(f) for f in folder.rglob("*.y*ml") if f.is_file())
        else:
            expanded.append(file)
    for file in expanded:
        try:
            docs = load_documents(Path(file))
        except HcsError as exc:
            print(f"INVALID {exc.message}")
            bad += 1
            continue
        if not docs:
            print(f"INVALID {file}: empty (no YAML document)")
            bad += 1
        for place, doc in docs:
            problems = _problems(doc, vendors)
            if problems is None:
                kind = doc.get("kind") if isinstance(doc, dict) else None
                print(f"skipped {place}: {kind}: no pod template, not an HCS object")
            elif problems:
                bad += 1
                print(f"INVALID {place}: {_kind(doc)}")
                for problem in problems:
                    print(f"          {problem}")
            else:
                print(f"ok      {place}: {_kind(doc)}")
    return 1 if bad else 0


def _kind(doc: Any) -> str:
    return str(doc.get("kind")) if isinstance(doc, dict) else type(doc).__name__


def _problems(doc: Any, vendors: VendorTable) -> list[str] | None:
    """What is wrong with one document ([] nothing), or None for a kind HCS has nothing to say
    about (a ConfigMap)."""
    if not isinstance(doc, dict):
        return [f"expected a Kubernetes object (a mapping), got {type(doc).__name__}"]
    kind = doc.get("kind")
    if not kind:
        return ["kind: missing"]
    try:
        if kind == "ComputeNode":
            ComputeNode.from_dict(doc)
            return []
        if kind == "ComputeQuota":
            ComputeQuota.from_dict(doc)
            return []
    except ValidationError as exc:
        return [f"{path}: {msg}" for path, msg in exc.problems] or [exc.what]
    except HcsError as exc:
        return [str(exc)]
    if kind == "Pod":
        pods = [("", doc)]
    else:
        pods = [(path, {"kind": "Pod", **template}) for path, template in pod_templates(doc)]
        if not pods:
            return ["no pod template (spec.template)"] if kind in WORKLOAD_KINDS else None
    problems = []
    for path, pod in pods:
        prefix = f"{path}: " if path else ""
        problems += [prefix + p for p in resources_key_problems(pod)]
        try:
            parse_pod(pod, vendors)
        except HcsError as exc:
            problems.append(prefix + str(exc))
    return problems
