"""Inventory from a folder: ComputeNode and ComputeQuota objects in multi-document YAML files.

This is local mode (DESIGN §7): try HCS without a cluster. Every file ending in .yaml or .yml is
read, in name order, and every document in it. Errors name the file, the document and the field
(`nodes.yaml#3 spec.devices[1].vram: ...`) and all of them are reported together; other kinds
are skipped with a warning; a name defined twice is an error naming both places.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hcs.errors import InventoryError, ValidationError
from hcs.models import ComputeNode, ComputeQuota

log = logging.getLogger("hcs.inventory")


@dataclass
class Inventory:
    nodes: dict[str, ComputeNode] = field(default_factory=dict)
    quotas: dict[tuple[str, str], ComputeQuota] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# libyaml's safe loader where PyYAML was built with it (the wheels are): the same documents and
# error marks, several times faster on large inventories.
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_documents(path: Path) -> list[tuple[str, Any]]:
    """(place, document) for each non-empty YAML document of one file; YAML errors name the
    line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{path}: cannot read: {exc}") from exc
    try:
        docs = list(yaml.load_all(text, Loader=SAFE_LOADER))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(f"{path}{where}: invalid YAML: {problem}") from exc
    return [(f"{path.name}#{i + 1}", doc) for i, doc in enumerate(docs) if doc is not None]


def load_inventory(folder: str | Path) -> Inventory:
    """Read every *.yaml / *.yml under `folder` (not recursive)."""
    root = Path(folder)
    if not root.is_dir():
        raise InventoryError(f"{root}: not a folder (expected a folder of YAML files)")
    files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise InventoryError(f"{root}: no .yaml or .yml files")
    inv = Inventory()
    problems: list[str] = []
    node_places: dict[str, str] = {}
    quota_places: dict[tuple[str, str], str] = {}
    for path in files:
        try:
            docs = load_documents(path)
        except InventoryError as exc:
            problems.append(exc.message)
            continue
        for place, doc in docs:
            kind = doc.get("kind") if isinstance(doc, dict) else None
            try:
                if kind == "ComputeNode":
                    node = ComputeNode.from_dict(doc)
                    if node.name in node_places:
                        problems.append(
                            f"{place}: ComputeNode {node.name} is already defined "
                            f"at {node_places[node.name]}"
                        )
                        continue
                    node_places[node.name] = place
                    inv.nodes[node.name] = node
                elif kind == "ComputeQuota":
                    quota = ComputeQuota.from_dict(doc)
                    key = (quota.namespace, quota.name)
                    if key in quota_places:
                        problems.append(
                            f"{place}: ComputeQuota {key[0]}/{key[1]} is already "
                            f"defined at {quota_places[key]}"
                        )
                        continue
                    quota_places[key] = place
                    inv.quotas[key] = quota
                else:
                    shown = kind if isinstance(kind, str) else "a document without a kind"
                    msg = (
                        f"{place}: skipped {shown} (an inventory holds ComputeNode and "
                        "ComputeQuota)"
                    )
                    inv.warnings.append(msg)
                    log.warning(msg)
            except ValidationError as exc:
                problems.append(f"{place}: {exc.message}")
    if problems:
        raise InventoryError(f"{root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return inv
