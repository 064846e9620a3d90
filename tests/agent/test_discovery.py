"""Vendor tool parsers on recorded outputs (tests/agent/fixtures/SOURCES.md), the ComputeNode
built from them, and `hcs agent --dry-run`."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from hcs.models import ComputeNode
from hcs_cli.main import main
from node.computenode import ModelFigures, build_compute_node
from node.discovery import (
    DiscoveryError,
    ToolRunner,
    Topology,
    discover,
    parse_cnmon,
    parse_hy_smi,
    parse_npu_smi,
    parse_npu_topo,
    parse_nvidia_smi,
    parse_nvidia_topo,
)

FIX = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


def read(name: str) -> str:
    return (FIX / name).read_text()


@pytest.mark.parametrize(
    ("parser", "fixture", "count", "first"),
    [
        (
            parse_nvidia_smi,
            "nvidia-smi-a100-nounits.csv",
            8,
            ("0", "NVIDIA A100-SXM4-80GB", 81920, 1024, "0000:07:00.0"),
        ),
        (
            parse_nvidia_smi,
            "nvidia-smi-h200-units.csv",
            2,
            ("0", "NVIDIA H200", 143771, 45558, "0000:18:00.0"),
        ),
        (parse_nvidia_smi, "nvidia-smi-t4-na.csv", 2, ("0", "Tesla T4", 15360, 0, "0000:3B:00.0")),
        (parse_npu_smi, "npu-smi-910b3.txt", 8, ("0", "910B3", 65536, 3318, "0000:C1:00.0")),
        (parse_npu_smi, "npu-smi-310p.txt", 1, ("0", "310P3", 21527, 1791, "0000:3B:00.0")),
        (parse_hy_smi, "hy-smi-k100-mib.json", 2, ("0", "K100_AI", 65520, 51920, "0000:23:00.0")),
        (parse_hy_smi, "hy-smi-z100-bytes.json", 1, ("0", "Z100L", 32752, 1, "")),
        (parse_cnmon, "cnmon-mlu370-x8.txt", 3, ("0", "MLU370-X8", 23374, 0, "0000:39:00.0")),
        (
            parse_cnmon,
            "cnmon-mlu370-s4-old.txt",
            1,
            ("0", "MLU370-S4", 23308, 2048, "0000:1A:00.0"),
        ),
    ],
)
def test_parsers_read_every_fixture(
    parser: Any, fixture: str, count: int, first: tuple[Any, ...]
) -> None:
    devices = parser(read(fixture))
    assert len(devices) == count
    d = devices[0]
    assert (d.id, d.name, d.vram_mib, d.used_mib, d.bus_id) == first


def test_health_scores_follow_the_documented_rules() -> None:
    scores = [d.health_score for d in parse_nvidia_smi(read("nvidia-smi-a100-nounits.csv"))]
    # ECC errors and a pending retired page take a device out; 87 °C alone does not.
    assert scores == [100, 100, 40, 40, 70, 100, 100, 100]
    assert [s >= 60 for s in scores] == [True, True, False, False, True, True, True, True]
    npu = [d.health_score for d in parse_npu_smi(read("npu-smi-910b3.txt"))]
    assert npu[2] == 70 and npu[6] == 40  # Warning, Critical
    mlu = [d.health_score for d in parse_cnmon(read("cnmon-mlu370-x8.txt"))]
    assert mlu == [100, 100, 40]
    assert [d.health_score for d in parse_nvidia_smi(read("nvidia-smi-t4-na.csv"))] == [100, 100]


def test_topologies() -> None:
    a100 = parse_nvidia_topo(read("nvidia-smi-topo-a100.txt"))
    gpus = {f"GPU{i}" for i in range(8)}
    assert all(set(a100.links[g]) == gpus - {g} for g in gpus)
    assert a100.numa == {f"GPU{i}": 0 if i < 4 else 1 for i in range(8)}
    pcie = parse_nvidia_topo(read("nvidia-smi-topo-pcie.txt"))
    assert not any(pcie.links.values())
    assert pcie.numa == {"GPU0": 0, "GPU1": 0, "GPU2": 0, "GPU3": 1}
    npu = parse_npu_topo(read("npu-smi-topo-910.txt"))
    assert set(npu.links["NPU0"]) == {"NPU1", "NPU2", "NPU3"}
    assert set(npu.links["NPU5"]) == {"NPU4", "NPU6", "NPU7"}


@pytest.mark.parametrize(
    ("parser", "fixture", "reason"),
    [
        (parse_nvidia_smi, "nvidia-smi-empty.csv", "no GPUs"),
        (parse_nvidia_smi, "nvidia-smi-malformed.csv", "not a --query-gpu header"),
        (parse_hy_smi, "hy-smi-malformed.json", "expected the JSON"),
        (parse_cnmon, "cnmon-malformed.txt", "neither the cnmon table"),
        (parse_npu_smi, "npu-smi-empty.txt", "no NPUs"),
        (parse_npu_smi, "npu-smi-malformed.txt", "no NPUs"),
        (parse_hy_smi, "hy-smi-empty.json", "no cards"),
    ],
)
def test_bad_outputs_are_discovery_errors_with_a_reason(
    parser: Any, fixture: str, reason: str
) -> None:
    with pytest.raises(DiscoveryError, match=reason):
        parser(read(fixture))


def test_a_missing_tool_is_a_discovery_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DiscoveryError, match="cnmon not found"):
        ToolRunner().output("cnmon")


@pytest.mark.parametrize(
    ("vendor", "tools", "fp16_milli", "linked"),
    [
        (
            "nvidia",
            {
                "nvidia-smi": "nvidia-smi-a100-nounits.csv",
                "nvidia-smi-topo": "nvidia-smi-topo-a100.txt",
            },
            8 * 312_000,
            8,
        ),
        (
            "huawei",
            {"npu-smi": "npu-smi-910b3.txt", "npu-smi-topo": "npu-smi-topo-910.txt"},
            8 * 313_000,
            8,
        ),
        ("hygon", {"hy-smi": "hy-smi-k100-mib.json"}, 0, 0),
        ("cambricon", {"cnmon": "cnmon-mlu370-x8.txt"}, 3 * 48_000, 0),
    ],
)
def test_the_compute_node_built_from_each_vendor_is_valid(
    vendor: Any, tools: dict[str, str], fp16_milli: int, linked: int
) -> None:
    devices, topology = discover(vendor, ToolRunner({t: FIX / f for t, f in tools.items()}))
    node = ComputeNode.from_dict(build_compute_node("n1", vendor, devices, topology))
    assert node.vendor == vendor and len(node.devices) == len(devices)
    assert node.capacity_fp16_milli_tflops == fp16_milli
    assert sum(1 for d in node.devices if d.links) == linked
    assert node.ready and node.condition_true("HardwareHealthy", default=False)


def test_unknown_models_get_no_invented_tflops() -> None:
    devices = parse_hy_smi(read("hy-smi-z100-bytes.json"))
    node = build_compute_node(
        "n1",
        "hygon",
        devices,
        Topology(),
        table={"K100-AI": ModelFigures("1", "1")},
    )
    assert node["spec"]["devices"][0]["compute"] == {"fp16": "0", "fp32": "0"}


def test_dry_run_turns_recorded_output_into_a_compute_node(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(
            [
                "agent",
                "--dry-run",
                "--node-name",
                "n1",
                "--tool-output",
                f"nvidia-smi={FIX / 'nvidia-smi-a100-nounits.csv'}",
                "--tool-output",
                f"nvidia-smi-topo={FIX / 'nvidia-smi-topo-a100.txt'}",
            ]
        )
        == 0
    )
    node = ComputeNode.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert node.name == "n1" and len(node.devices) == 8
    assert node.devices[0].links[0].type == "nvlink"


def test_dry_run_of_broken_hardware_reports_it_instead_of_crashing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(
            [
                "agent",
                "--dry-run",
                "--node-name",
                "n1",
                "--tool-output",
                f"nvidia-smi={FIX / 'nvidia-smi-malformed.csv'}",
            ]
        )
        == 0
    )
    node = ComputeNode.from_dict(yaml.safe_load(capsys.readouterr().out))
    hw = node.condition("HardwareHealthy")
    assert hw is not None and hw.status == "False" and hw.reason == "DiscoveryFailed"
    assert "not a --query-gpu header" in (hw.message or "")
    assert node.phase == "NotReady"


def test_dry_run_with_fake_devices_prints_a_valid_compute_node(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = ROOT / "examples" / "agent" / "fake-devices.yaml"
    assert main(["agent", "--dry-run", "--node-name", "worker-7", "--fake-devices", str(fake)]) == 0
    node = ComputeNode.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert node.name == "worker-7" and node.node_selector == {"kubernetes.io/hostname": "worker-7"}


def test_a_bad_tool_output_flag_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--dry-run", "--node-name", "n1", "--tool-output", "gpu-z=x"]) == 2
    assert "expected TOOL=FILE" in capsys.readouterr().err


def test_a_shared_node_publishes_its_sharing_mode_or_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fixtures = ROOT / "tests" / "agent" / "fixtures"
    base = [
        *("agent", "--dry-run", "--node-name", "n1", "--vendor", "nvidia", "--no-nvml"),
        *("--tool-output", f"nvidia-smi={fixtures / 'nvidia-smi-a100-nounits.csv'}"),
        *("--tool-output", f"nvidia-smi-topo={fixtures / 'nvidia-smi-topo-a100.txt'}"),
        *("--replicas", "4"),
    ]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "without --limiter: pods sharing a device would not be isolated" in err
    assert "--allow-unenforced-sharing" in err
    for extra, mode in (
        (["--limiter", "hami-core"], "hami-core"),
        (["--allow-unenforced-sharing"], "none"),
    ):
        assert main([*base, *extra]) == 0
        node = ComputeNode.from_dict(yaml.safe_load(capsys.readouterr().out))
        assert node.shared and node.share_enforcement == mode and node.device_slots == 4
    assert main([*base[:-2], "--limiter", "hami-core"]) == 0  # exclusive: no mode published
    node = ComputeNode.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert not node.shared and "hcs.io/share-enforcement" not in node.meta.labels
    assert main([*base, "--limiter", "vnpu"]) == 2  # vNPU templates are Ascend's
    assert "--limiter vnpu: enforces huawei devices only, not nvidia" in capsys.readouterr().err
