"""Every output recorded on a real machine (fixtures/real/SOURCES.md) through the agent's contract,
`hcs agent --dry-run --tool-output TOOL=FILE`: a correct ComputeNode, or DiscoveryFailed naming
what is missing. Never a Ready node with wrong figures."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from hcs.models import ComputeNode
from hcs_cli.main import main
from tests.agent.queries import query_csv

REAL = Path(__file__).parent / "fixtures" / "real"


def dry_run(capsys: pytest.CaptureFixture[str], *tools: str, vendor: str | None = None) -> Any:
    args = ["agent", "--dry-run", "--node-name", "n1", "--no-nvml"]
    if vendor:
        args += ["--vendor", vendor]
    for tool in tools:
        name, _, file = tool.partition("=")
        args += ["--tool-output", f"{name}={REAL / file}"]
    assert main(args) == 0
    node = yaml.safe_load(capsys.readouterr().out)
    ComputeNode.from_dict(node)  # whatever is published is a valid ComputeNode
    return node


def failed_because(node: Any) -> str:
    hw = next(c for c in node["status"]["conditions"] if c["type"] == "HardwareHealthy")
    assert node["status"]["phase"] == "NotReady" and hw["status"] == "False"
    assert hw["reason"] == "DiscoveryFailed" and not node["spec"]["devices"]
    return str(hw["message"])


def ready(node: Any) -> list[dict[str, Any]]:
    assert node["status"]["phase"] == "Ready"
    devices: list[dict[str, Any]] = node["spec"]["devices"]
    return devices


def peers(dev: dict[str, Any], kind: str = "nvlink") -> list[str]:
    links = dev["topology"].get("links", [])
    return [p for link in links if link["type"] == kind for p in link["peers"]]


# ------------------------------------------------------------------------------------ NVIDIA


def test_a_query_with_212_columns_is_read_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(capsys, "nvidia-smi=nvidia/querygpu-diffcols-h100-80gb-hbm3-drv590.48.01.csv")
    [gpu] = ready(node)
    assert gpu["model"] == "H100-SXM" and gpu["vram"] == "81559Mi"
    assert gpu["topology"]["busId"] == "0000:00:09.0"
    assert gpu["identity"] == "GPU-00000000-0000-0000-0000-000000000000"
    assert gpu["compute"] == {"fp16": "989", "fp32": "67"} and gpu["healthScore"] == 100


def test_a_query_without_the_required_columns_names_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = dry_run(capsys, "nvidia-smi=nvidia/querygpu-diffcols-rtxa6000x2-6cols-units.csv")
    assert "no uuid, pci.bus_id column" in failed_because(node)


def test_query_columns_in_any_order_with_or_without_units(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The real H100 capture (units on), its columns reversed and its units stripped (what
    `csv,nounits` prints), reads the same."""
    text = (REAL / "nvidia/querygpu-diffcols-h100-80gb-hbm3-drv590.48.01.csv").read_text()
    header, row = (line.split(", ") for line in text.splitlines()[:2])
    assert row[header.index("memory.total [MiB]")] == "81559 MiB"
    nounits = [
        v.removesuffix(" MiB") if "[MiB]" in h else v for h, v in zip(header, row, strict=True)
    ]
    reordered = tmp_path / "q.csv"
    reordered.write_text(", ".join(header[::-1]) + "\n" + ", ".join(nounits[::-1]) + "\n")
    original = dry_run(
        capsys, "nvidia-smi=nvidia/querygpu-diffcols-h100-80gb-hbm3-drv590.48.01.csv"
    )
    again = dry_run(capsys, f"nvidia-smi={reordered}")
    assert again["spec"] == original["spec"]


def _a100_query(tmp_path: Path, n: int = 8, name: str = "NVIDIA A100-SXM4-80GB") -> Path:
    return query_csv(tmp_path / "query.csv", [f"GPU-{i:08d}-aaaa" for i in range(n)], name)


def test_a100_matrix_with_nics_gives_every_peer_and_numa(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    node = dry_run(
        capsys,
        f"nvidia-smi={_a100_query(tmp_path)}",
        "nvidia-smi-topo=nvidia/topo-a100x8-nv12-4nic-numa.txt",
    )
    devices = ready(node)
    assert len(devices) == 8  # the NIC rows are not devices
    for dev in devices:
        i = int(dev["id"])
        assert peers(dev) == [str(j) for j in range(8) if j != i]
        assert dev["topology"]["numaNode"] == (0 if i < 4 else 1)


def test_dgx1_hybrid_cube_mesh_keeps_each_gpus_own_peers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    node = dry_run(
        capsys,
        f"nvidia-smi={_a100_query(tmp_path, name='Tesla V100-SXM2-32GB')}",
        "nvidia-smi-topo=nvidia/topo-v100x8-dgx1-nv1nv2-numa.txt",
    )
    by_id = {d["id"]: d for d in ready(node)}
    assert peers(by_id["0"]) == ["1", "2", "3", "4"]
    assert peers(by_id["5"]) == ["1", "4", "6", "7"]
    assert peers(by_id["7"]) == ["3", "4", "5", "6"]
    assert [by_id[str(i)]["topology"]["numaNode"] for i in range(8)] == [0] * 4 + [1] * 4


@pytest.mark.parametrize(
    ("topo", "numa"),
    [
        ("topo-h100-1gpu-ansi-drv590.txt", 0),
        ("topo-win-rtx2080s-ansi-empty-affinity-drv610.txt", None),
    ],
)
def test_ansi_headers_and_empty_affinity_cells(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, topo: str, numa: int | None
) -> None:
    node = dry_run(
        capsys, f"nvidia-smi={_a100_query(tmp_path, 1)}", f"nvidia-smi-topo=nvidia/{topo}"
    )
    [gpu] = ready(node)
    assert gpu["topology"].get("numaNode") == numa and "links" not in gpu["topology"]


def test_the_default_nvidia_smi_table_is_not_a_query(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(capsys, "nvidia-smi=nvidia/smi-table-h100x4-ref.txt")
    assert "not a --query-gpu header" in failed_because(node)


# ------------------------------------------------------------------------------------ Ascend


def test_310p_chip_device_layout_gives_unique_ids(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(capsys, "npu-smi=ascend/npu-smi-310p3x8-24.1.0.1-ids-0-32-32768.txt")
    devices = ready(node)
    assert [d["id"] for d in devices] == [str(i) for i in range(8)]
    assert {d["model"] for d in devices} == {"Ascend310P3"}
    assert devices[3]["vram"] == "21527Mi" and devices[3]["vramAllocated"] == "1846Mi"
    assert devices[3]["topology"]["busId"] == "0000:81:00.0"
    assert node["spec"]["capacity"]["tflops-fp16"] == str(8 * 70)


def test_four_310_chips_on_one_card_without_hugepages(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(capsys, "npu-smi=ascend/npu-smi-310x4-atlas3000-20.2.0-oldlayout.txt")
    devices = ready(node)
    assert [(d["id"], d["vram"], d["topology"]["busId"]) for d in devices] == [
        ("0", "8192Mi", "0000:DA:00.0"),
        ("1", "8192Mi", "0000:DC:00.0"),
        ("2", "8192Mi", "0000:DD:00.0"),
        ("3", "8192Mi", "0000:DB:00.0"),
    ]
    assert {d["model"] for d in devices} == {"Ascend310"}


def test_process_rows_are_not_npus_and_hbm_wins_over_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = dry_run(capsys, "npu-smi=ascend/npu-smi-910a-x8-24.1rc2-processes.txt")
    devices = ready(node)
    assert [d["id"] for d in devices] == [str(i) for i in range(8)]
    assert {d["vram"] for d in devices} == {"32768Mi"}  # HBM, not the 15137 MB of DDR
    assert [d["healthScore"] for d in devices] == [100, 100, 100, 70, 100, 100, 100, 70]
    # Huawei's document prints the model as "xxx": unknown, so no TFLOPS are invented.
    assert node["spec"]["capacity"]["tflops-fp16"] == "0"
    hw = next(c for c in node["status"]["conditions"] if c["type"] == "HardwareHealthy")
    assert "model 'xxx' unknown" in hw["message"]


def test_910b3_with_its_hccs_mesh(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(
        capsys,
        "npu-smi=ascend/npu-smi-910b3x8-24.1rc1.txt",
        "npu-smi-topo=ascend/topo-910b3x8-hccs-fullmesh.txt",
    )
    devices = ready(node)
    assert all(peers(d, "hccs") == [str(j) for j in range(8) if str(j) != d["id"]] for d in devices)
    assert devices[7]["vramAllocated"] == "3315Mi" and devices[0]["model"] == "Ascend910B3"


def test_910b4_1_with_redacted_bus_ids(capsys: pytest.CaptureFixture[str]) -> None:
    devices = ready(dry_run(capsys, "npu-smi=ascend/npu-smi-910b4-1-x2-25.2.0-busid-redacted.txt"))
    assert [(d["id"], d["model"], d["vram"]) for d in devices] == [
        ("0", "Ascend910B4-1", "65536Mi"),
        ("1", "Ascend910B4-1", "65536Mi"),
    ]
    assert all("identity" not in d for d in devices)  # a redacted address identifies nothing


def test_a3_two_chips_per_npu_by_physical_id(capsys: pytest.CaptureFixture[str]) -> None:
    devices = ready(dry_run(capsys, "npu-smi=ascend/npu-smi-a3-910_93-chip-phyid-24.1rc3.txt"))
    assert [(d["id"], d["model"], d["vram"], d["identity"]) for d in devices] == [
        ("0", "Ascend910_93", "65536Mi", "pci:0000:9d:00.0"),
        ("1", "Ascend910_93", "65536Mi", "pci:0000:9f:00.0"),
    ]


def test_a3_topology_by_physical_id_with_sio(tmp_path: Path) -> None:
    from node.ascend import parse_npu_topo

    text = (REAL / "ascend/topo-a3-910_9362-2chips-phyid-sio.txt").read_text()
    topo = parse_npu_topo(text)
    assert topo.links == {"Phy-ID12": {"Phy-ID13": "sio"}, "Phy-ID13": {"Phy-ID12": "sio"}}
    assert not topo.notes
    odd = parse_npu_topo(text.replace("SIO ", "UB  ").replace(" SIO", " UB"))
    assert odd.notes == ("npu-smi info -t topo: unknown link kind 'UB'",)


# ------------------------------------------------------------------------------------ Hygon


def test_hy_smi_memory_only_json(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(capsys, "hy-smi=hygon/hy-smi-showmeminfo-vram-json-bw-c3000-x2-drv6.3.31.json")
    devices = ready(node)
    assert [(d["id"], d["vram"], d["vramAllocated"]) for d in devices] == [
        ("0", "65520Mi", "9703Mi"),
        ("1", "65520Mi", "9651Mi"),
    ]
    assert node["spec"]["capacity"]["tflops-fp16"] == "0"


def test_rocm_smi_json_of_a_hygon_dcu(capsys: pytest.CaptureFixture[str]) -> None:
    [dcu] = ready(dry_run(capsys, "hy-smi=hygon/rocm-smi-json-hygon-k100ai-dtk24.04.3.json"))
    assert (dcu["vram"], dcu["vramAllocated"], dcu["identity"]) == (
        "65520Mi",
        "2Mi",
        "uid:7100fa8866904061",
    )
    assert dcu["model"] == "DCU xxxx"  # redacted by its reporter: unknown, 0 TFLOPS


def test_rocm_smi_json_in_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(capsys, "hy-smi=hygon/rocm-smi-json-amd-rx7800xt-rocm6.2.4.json", vendor="hygon")
    [card] = ready(node)
    assert (card["vram"], card["vramAllocated"]) == (
        f"{17163091968 // 2**20}Mi",
        f"{11615076352 // 2**20}Mi",
    )


def test_the_plain_hy_smi_table_is_a_clear_failure(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(capsys, "hy-smi=hygon/hy-smi-plain-table-dcu-k100ai-x4-dtk24.04.1.txt")
    assert "expected the JSON of `--json`" in failed_because(node)


# ------------------------------------------------------------------------------------ Cambricon


def test_cnmon_table(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(capsys, "cnmon=cambricon/cnmon-table-mlu370x8-x2-v5.10.13.txt")
    assert [(d["id"], d["model"], d["vram"], d["topology"]["busId"]) for d in ready(node)] == [
        ("0", "MLU370-X8", "23374Mi", "0000:39:00.0"),
        ("1", "MLU370-X8", "23374Mi", "0000:3D:00.0"),
    ]
    assert node["spec"]["capacity"]["tflops-fp16"] == "96"  # two chips of one X8 card


def test_a_partial_cnmon_info_is_a_clear_failure(capsys: pytest.CaptureFixture[str]) -> None:
    node = dry_run(capsys, "cnmon=cambricon/cnmon-info-excerpt-mlu370x8-v5.10.26-partial.txt")
    assert "no `Physical Memory Usage` Total" in failed_because(node)


def test_every_real_file_is_covered() -> None:
    """A file added to fixtures/real must get a test here."""
    source = Path(__file__).read_text()
    for path in REAL.rglob("*"):
        if path.is_file() and path.name != "SOURCES.md":
            assert path.name in source, f"{path.name} has no test"
