"""The format rules of issue 9, each on the smallest output that shows it: matrix cell layouts,
partial meshes in the engine, chip layouts, cnmon generations, validation, the model table."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from hcs.demand import parse_pod
from hcs.engine import EngineConfig, compile_request, select_devices
from hcs.errors import ConfigError
from hcs.models import ComputeNode
from hcs.state import ClusterState
from node.agent import AgentOptions, desired_node, load_model_table
from node.cambricon import parse_cnmon
from node.computenode import MODEL_TABLE, ModelFigures, build_compute_node, figures_for
from node.devices import DiscoveryError, RawDevice, Topology, strip_ansi
from node.nvidia import parse_nvidia_smi, parse_nvidia_topo

REAL = Path(__file__).parent / "fixtures" / "real"

TABBED = (
    "\t\x1b[4mGPU0\tGPU1\tGPU2\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tNV4\tPIX\tNODE\t\t1\t\tN/A\n"
    "GPU1\tNV4\t X \tSYS\tSYS\t0-7,16-23\t0\t\tN/A\n"
    "GPU2\tPIX\tSYS\t X \tSYS\t8-15\t\t\tN/A\n"
    "NIC0\tNODE\tSYS\tSYS\t X \n"
    "\nLegend:\n\n  X    = Self\n\nNIC Legend:\n\n  NIC0: mlx5_0\n"
)


@pytest.mark.parametrize("expand", [False, True], ids=["tabs", "tabs-expanded-to-spaces"])
def test_matrix_cells_by_position_with_empty_cells(expand: bool) -> None:
    """An empty CPU Affinity must not shift NUMA Affinity; GPU NUMA ID is not NUMA affinity."""
    # A terminal expands the TABs after it has drawn the underline: the escapes take no room.
    text = strip_ansi(TABBED).expandtabs(8) if expand else TABBED
    topo = parse_nvidia_topo(text)
    assert topo.links == {"GPU0": {"GPU1": "nvlink"}, "GPU1": {"GPU0": "nvlink"}, "GPU2": {}}
    assert topo.numa == {"GPU0": 1, "GPU1": 0}
    assert topo.notes == ()


def test_old_drivers_soc_legend_and_nic_names_in_the_header() -> None:
    text = (
        "\tGPU0\tGPU1\tmlx5_0\tCPU Affinity\n"
        "GPU0\t X \tSOC\tPHB\t0-11\n"
        "GPU1\tSOC\t X \tSOC\t12-23\n"
        "mlx5_0\tPHB\tSOC\t X \t\n"
        "\nLegend:\n\n  SOC  = Connection traversing PCIe and the SMP link between CPU sockets\n"
    )
    topo = parse_nvidia_topo(text)
    assert topo.links == {"GPU0": {}, "GPU1": {}} and topo.numa == {} and topo.notes == ()


def test_unknown_matrix_cells_are_reported_not_dropped() -> None:
    text = "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tC2C\t0-7\nGPU1\tC2C\t X \t0-7\n"
    assert parse_nvidia_topo(text).notes == ("nvidia-smi topo -m: unknown link kind 'C2C'",)


def test_a_matrix_without_a_header_is_a_discovery_error() -> None:
    with pytest.raises(DiscoveryError, match="no matrix header"):
        parse_nvidia_topo("NVIDIA-SMI has failed because it couldn't communicate with the driver")


def _dgx1() -> ComputeNode:
    topo = parse_nvidia_topo((REAL / "nvidia/topo-v100x8-dgx1-nv1nv2-numa.txt").read_text())
    devices = [
        RawDevice(
            str(i), "Tesla V100-SXM2-32GB", 32768, 0, f"0000:{i + 16:02x}:00.0", labels=(f"GPU{i}",)
        )
        for i in range(8)
    ]
    return ComputeNode.from_dict(build_compute_node("dgx1", "nvidia", devices, topo))


def _pod(n: int) -> Any:
    return parse_pod(
        {
            "metadata": {
                "name": "p",
                "uid": "u",
                "annotations": {"hcs.io/topology-preference": "high-bandwidth"},
            },
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "resources": {
                            "requests": {"ai.compute/vram": f"{n}Gi", "ai.compute/devices": str(n)}
                        },
                    }
                ]
            },
        }
    )


def test_a_partial_mesh_is_grouped_only_where_every_pair_is_linked() -> None:
    """DGX-1: NVLink from each GPU to four others; only 0-3 and 4-7 are all-to-all."""
    state = ClusterState.from_nodes([_dgx1()])
    row = state.index["dgx1"]
    assert state.dev_clique[row, :8].tolist() == [0, 0, 0, 0, 4, 4, 4, 4]
    [(_, chosen)] = select_devices(state, compile_request(_pod(4)), "dgx1", EngineConfig())
    assert set(chosen) in ({0, 1, 2, 3}, {4, 5, 6, 7})


def test_a_chain_of_links_is_not_one_group() -> None:
    """0-1-2-3 linked in a line: {0,1} and {2,3}, not a group of four."""
    devices = [RawDevice(str(i), "NVIDIA A100-SXM4-80GB", 81920, 0, "") for i in range(4)]
    chain = {str(i): {str(j): "nvlink" for j in (i - 1, i + 1) if 0 <= j < 4} for i in range(4)}
    node = ComputeNode.from_dict(build_compute_node("c", "nvidia", devices, Topology(chain)))
    state = ClusterState.from_nodes([node])
    assert state.dev_clique[state.index["c"], :4].tolist() == [0, 0, 2, 2]


CNMON_V4 = """\
+------------------------------------------------------------------------------+
| CNMON v4.20.11                                               Driver v4.20.11 |
+-------------------------------+----------------------+-----------------------+
| Card  VF  Name       Firmware |        Inited Driver | Util        Ecc-Error |
| Fan   Temp      Pwr:Usage/Cap |         Memory-Usage |         vMemory-Usage |
|===============================+======================+=======================|
| 0     /   MLU270-X5K   v1.1.4 |          On v4.20.11 | 0%                N/A |
| 0%    35C        20 W/ 150 W  |   0 MiB/ 16384 MiB   |     N/A               |
+-------------------------------+----------------------+-----------------------+
"""


def test_cnmon_v4_has_no_bus_id_column() -> None:
    [card] = parse_cnmon(CNMON_V4)
    assert (card.id, card.name, card.vram_mib, card.bus_id, card.identity) == (
        "0",
        "MLU270-X5K",
        16384,
        "",
        None,
    )
    node = build_compute_node("m", "cambricon", [card], Topology())
    assert node["spec"]["devices"][0]["topology"]["busId"] == "unknown-0"


CNMON_INFO = """\
Card 0
    Product Name                   : MLU370-X4
    UUID                           : MLU-20001012-1916-0000-0000-000000000000
    Firmware                       : v1.1.6
    Driver                         : v5.10.26
    PCIe
        Domain ID                  : 0
        Bus num                    : 0x39
        Device                     : 0
        Function                   : 0
    Physical Memory Usage          :
        Total                      : 24576 MiB
        Used                       : 512 MiB
        Free                       : 24064 MiB
    Temperature                    :
        Board                      : 30 C
        Chip                       : 41 C
Card 1
    Product Name                   : MLU370-X4
    Physical Memory Usage          :
        Total                      : 24576 MiB
        Used                       : 0 MiB
"""


def test_cnmon_info_blocks() -> None:
    """Written in the `Key : value` block shape of cnmon info (the real excerpt has only the
    first lines of a card; see test_a_partial_cnmon_info_is_a_clear_failure)."""
    first, second = parse_cnmon(CNMON_INFO)
    assert (first.id, first.name, first.vram_mib, first.used_mib) == ("0", "MLU370-X4", 24576, 512)
    assert first.bus_id == "0000:39:00.0" and first.temperature_c == 41.0
    assert first.identity == "uuid:MLU-20001012-1916-0000-0000-000000000000"
    assert (second.id, second.vram_mib, second.identity) == ("1", 24576, None)


def test_cnmon_info_without_memory_names_it() -> None:
    excerpt = (REAL / "cambricon/cnmon-info-excerpt-mlu370x8-v5.10.26-partial.txt").read_text()
    with pytest.raises(DiscoveryError, match="Physical Memory Usage"):
        parse_cnmon(excerpt)


def test_npu_usage_cells_without_a_space_and_hccs_through_a_switch() -> None:
    from node.ascend import parse_npu_smi, parse_npu_topo

    text = (REAL / "ascend/npu-smi-910b3x8-24.1rc1.txt").read_text()
    devices = parse_npu_smi(text.replace("3318 / 65536", "61609/ 65536"))
    assert (devices[0].used_mib, devices[0].vram_mib) == (61609, 65536)
    topo = (REAL / "ascend/topo-a3-910_9362-2chips-phyid-sio.txt").read_text()
    switched = parse_npu_topo(topo.replace("SIO ", "HCCS_SW ").replace(" SIO", " HCCS_SW"))
    assert switched.links["Phy-ID12"] == {"Phy-ID13": "hccs"} and not switched.notes


def test_two_chips_behind_one_pci_address_keep_distinct_identities() -> None:
    """Atlas 300I Duo style: one NPU row, then two chips on the same bus id."""
    from node.ascend import parse_npu_smi

    text = (REAL / "ascend/npu-smi-310p3x8-24.1.0.1-ids-0-32-32768.txt").read_text()
    duo = text.replace(
        "| 0       1                     | 0000:02:00.0",
        "| 1       1                     | 0000:01:00.0",
    )
    duo = duo.replace("| 32      310P3 ", "| 0       310P3 ")
    devices = parse_npu_smi(duo)
    assert [d.identity for d in devices[:2]] == ["pci:0000:01:00.0/chip0", "pci:0000:01:00.0/chip1"]
    assert devices[2].identity == "pci:0000:04:00.0"


def test_duplicate_chip_ids_are_a_discovery_error() -> None:
    table = (REAL / "cambricon/cnmon-table-mlu370x8-x2-v5.10.13.txt").read_text()
    with pytest.raises(DiscoveryError, match="device IDs 0 appear more than once"):
        parse_cnmon(table.replace("| 1     /   MLU370-X8", "| 0     /   MLU370-X8"))


def test_a_compute_node_that_fails_validation_is_published_as_discovery_failed() -> None:
    opts = AgentOptions(
        "n1",
        tool_outputs={"cnmon": REAL / "cambricon/cnmon-table-mlu370x8-x2-v5.10.13.txt"},
        model_table={"MLU370-X8": ModelFigures("lots", "1")},
    )
    node, complete = desired_node(opts)
    assert not complete
    hw = next(c for c in node["status"]["conditions"] if c["type"] == "HardwareHealthy")
    assert hw["reason"] == "DiscoveryFailed" and "not form a valid ComputeNode" in hw["message"]
    assert "lots" in hw["message"]


def test_a_bad_model_table_file_names_the_model_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text(yaml.safe_dump({"MLU370-X8": {"fp16": "lots", "fp32": "1"}}))
    with pytest.raises(ConfigError, match=r"MLU370-X8\.fp16"):
        load_model_table(str(bad))


def test_every_model_figure_cites_its_source() -> None:
    assert all(f.source and f.source != "site configuration" for f in MODEL_TABLE.values())
    for model in ("Ascend910B4-1", "Ascend310", "Ascend310P3", "Ascend910_93", "MLU370-X4", "BW"):
        assert model in MODEL_TABLE


@pytest.mark.parametrize(
    ("vendor", "name", "key", "fp16"),
    [
        ("nvidia", "NVIDIA H200-141C", "H200", "989"),  # full-GPU vGPU profile
        ("nvidia", "GRID A100-20C", "A100-40G", "156"),  # half of a 40 GB A100
        ("nvidia", "NVIDIA A100-SXM4-80GB", "A100-80G", "312"),  # not a vGPU name
        ("hygon", "K100_AI", "K100-AI", "0"),
        ("hygon", "BW", "BW", "0"),
        ("huawei", "910B4-1", "Ascend910B4-1", "280"),
        ("cambricon", "MLU370-X4", "MLU370-X4", "96"),
    ],
)
def test_model_names_as_tools_print_them(vendor: Any, name: str, key: str, fp16: str) -> None:
    found, figures = figures_for(vendor, RawDevice("0", name, 1, 0, ""), MODEL_TABLE)
    assert found == key and figures is not None and figures.fp16 == fp16


def test_nvidia_query_needs_a_header_line() -> None:
    with pytest.raises(DiscoveryError, match="not a --query-gpu header"):
        parse_nvidia_smi("0, GPU-1, NVIDIA H200, 143771, 0, 00000000:18:00.0\n")
    with pytest.raises(DiscoveryError, match="5 fields for 6 columns"):
        parse_nvidia_smi(
            "index, uuid, name, memory.total [MiB], memory.used [MiB], pci.bus_id\n0, a, b, 1, 2\n"
        )
