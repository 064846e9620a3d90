from pathlib import Path

import pytest
import yaml

from hcs.errors import InventoryError
from hcs.inventory import load_inventory
from hcs.synthetic import node_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(folder: Path, name: str, *docs: object, text: str | None = None) -> None:
    (folder / name).write_text(text if text is not None else yaml.safe_dump_all(docs))


def test_bundled_example_inventory_is_a_mixed_four_vendor_cluster() -> None:
    inv = load_inventory(EXAMPLES / "inventory")
    assert {n.vendor for n in inv.nodes.values()} == {"nvidia", "huawei", "hygon", "cambricon"}
    assert ("team-a", "team-a-quota") in inv.quotas
    assert inv.warnings == []


def test_multi_document_files_and_other_kinds_are_skipped_with_a_warning(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        node_dict("n1"),
        {"apiVersion": "v1", "kind": "ConfigMap"},
        node_dict("n2", "huawei"),
    )
    write(tmp_path, "b.yml", node_dict("n3", "hygon"))
    write(tmp_path, "notes.txt", text="not yaml: [")
    inv = load_inventory(tmp_path)
    assert sorted(inv.nodes) == ["n1", "n2", "n3"]
    assert inv.warnings == [
        "a.yaml#2: skipped ConfigMap (an inventory holds ComputeNode and ComputeQuota)"
    ]


def test_duplicate_names_are_rejected_naming_both_places(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", node_dict("n1"))
    write(tmp_path, "b.yaml", node_dict("n1", "huawei"))
    with pytest.raises(
        InventoryError,
        match=r"b.yaml#1: ComputeNode n1 is already defined at "
        r"a.yaml#1",
    ):
        load_inventory(tmp_path)


def test_every_bad_document_is_reported_with_file_and_field(tmp_path: Path) -> None:
    bad = node_dict("n1")
    bad["spec"]["devices"][3]["vram"] = "80 GB"
    write(tmp_path, "a.yaml", node_dict("ok"), bad)
    write(tmp_path, "b.yaml", text="kind: ComputeNode\nspec: [unclosed\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(tmp_path)
    text = str(info.value)
    assert "2 problem(s)" in text
    assert 'a.yaml#2: ComputeNode n1: spec.devices[3].vram: "80 GB" is not a quantity' in text
    assert "b.yaml:3:1: invalid YAML" in text


def test_missing_or_empty_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="not a folder"):
        load_inventory(tmp_path / "nope")
    with pytest.raises(InventoryError, match=r"no \.yaml or \.yml files"):
        load_inventory(tmp_path)
