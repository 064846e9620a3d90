"""HAMi-core's contract and vNPU templates from a container's booking (hcs.limiter), and
the books the engine keeps for template shares."""

from __future__ import annotations

from typing import Any

import pytest

from hcs.demand import ContainerDemand, parse_pod
from hcs.engine import EngineConfig
from hcs.errors import ConfigError, PlacementError
from hcs.ledger import Ledger
from hcs.limiter import DeviceSize, chip_options, hami_core, is_share, vnpu
from hcs.models import ComputeNode
from hcs.podbooks import allocation_from_pod
from hcs.state import ClusterState
from hcs.synthetic import node_dict
from hcs.vendors import VendorTable, vendor_table_from_dict

A100 = DeviceSize(vram_mib=80 * 1024, fp16_milli_tflops=312_000)
KW = {
    "library_dir": "/opt/vgpu",
    "container_dir": "/s/c/u_c",
    "lock_dir": "/s/l",
    "preload_file": "/s/p",
}


def container(limits: dict[str, str]) -> ContainerDemand:
    pod = {
        "metadata": {"name": "p", "namespace": "n", "uid": "u"},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
    }
    (c,) = parse_pod(pod).containers
    return c


def test_two_devices_get_one_limit_each_and_the_compute_share() -> None:
    c = container(
        {"ai.compute/vram": "40Gi", "ai.compute/devices": "2", "ai.compute/tflops-fp16": "156"}
    )
    out = hami_core(c, [A100, A100], **KW)
    assert out is not None
    assert out.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "20480m"  # 40Gi over two devices
    assert out.envs["CUDA_DEVICE_MEMORY_LIMIT_1"] == "20480m"
    assert out.envs["CUDA_DEVICE_SM_LIMIT"] == "25"  # 78 of 312 TFLOPS per device
    assert ("/usr/local/vgpu/libvgpu.so", "/opt/vgpu/libvgpu.so", True) in out.mounts
    assert ("/etc/ld.so.preload", "/s/p", True) in out.mounts


def test_whole_devices_get_no_limit() -> None:
    assert hami_core(container({"nvidia.com/gpu": "1"}), [A100], **KW) is None
    full = container({"ai.compute/vram": "80Gi"})
    assert not is_share(full, [A100])
    assert hami_core(full, [A100], **KW) is None


# --------------------------------------------------------------------------- vNPU templates


def ascend_state(enforcement: str, model: str = "Ascend910B3", n: int = 2) -> ClusterState:
    raw = node_dict("npu-1", "huawei", n, shared=True, enforcement=enforcement)
    for dev in raw["spec"]["devices"]:
        dev["model"] = model
        if model.startswith("Ascend310P"):
            dev["vram"] = dev["vramAllocatable"] = "24Gi"
            dev["compute"] = {"fp16": "140", "fp32": "0"}
    return ClusterState.from_nodes([ComputeNode.from_dict(raw)])


def pod(uid: str, limits: dict[str, str], containers: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": uid, "namespace": "n", "uid": uid},
        "spec": {
            "containers": [
                {"name": f"c{i}", "resources": {"limits": limits}} for i in range(containers)
            ]
        },
    }


def charges(state: ClusterState, limits: dict[str, str], uid: str = "p") -> list[tuple[int, int]]:
    alloc = Ledger(state, EngineConfig()).assume(parse_pod(pod(uid, limits)), "npu-1")
    return [(c.vram_mib, c.fp16_milli_tflops) for c in alloc.charges]


def test_a_share_on_a_vnpu_node_is_booked_as_the_smallest_template_that_holds_it() -> None:
    state = ascend_state("vnpu")
    # 910B3: 64Gi, 313 TFLOPS, 20 AI cores; vir05_1c_16g = 5 cores, vir10_3c_32g = 10 cores.
    assert charges(state, {"ai.compute/vram": "10Gi"}, "a") == [(16384, 78_250)]
    assert charges(state, {"ai.compute/vram": "20Gi"}, "b") == [(32768, 156_500)]
    # Memory fits the small template but the compute does not: the next one.
    assert charges(state, {"ai.compute/vram": "8Gi", "ai.compute/tflops-fp16": "100"}, "c") == [
        (32768, 156_500)
    ]


def test_a_share_no_template_holds_takes_a_whole_device() -> None:
    state = ascend_state("vnpu")
    assert charges(state, {"ai.compute/vram": "40Gi"}) == [(64 * 1024, 313_000)]
    row = state.index["npu-1"]
    assert int(state.dev_holders[row].sum()) == 1
    # The device is held whole: another share cannot land beside it.
    charges(state, {"ai.compute/vram": "4Gi"}, "q")
    slots = [state.device_ids[row].index(c.device_id) for c in state.allocations["q"].charges]
    assert slots != [state.device_ids[row].index(state.allocations["p"].charges[0].device_id)]


def test_the_same_share_is_booked_as_asked_under_hami_core_or_unenforced() -> None:
    for mode in ("none", "hami-core"):
        assert charges(ascend_state(mode), {"ai.compute/vram": "10Gi"}) == [(10240, 0)]


def test_a_chip_without_templates_takes_whole_devices() -> None:
    state = ascend_state("vnpu", model="Ascend910B4")
    assert charges(state, {"ai.compute/vram": "4Gi"}) == [(64 * 1024, 313_000)]


def test_templates_fill_a_chip_as_the_chip_would() -> None:
    """Four 16g templates fill a 64Gi 910B3: the fifth share goes to the other chip."""
    state = ascend_state("vnpu", n=1)
    for i in range(4):
        charges(state, {"ai.compute/vram": "1Gi"}, f"p{i}")
    with pytest.raises(PlacementError) as err:
        charges(state, {"ai.compute/vram": "1Gi"}, "p4")
    assert err.value.code in ("InsufficientVRAM", "InsufficientTFLOPS")


def test_books_read_back_from_a_pod_use_the_template_too() -> None:
    state = ascend_state("vnpu")
    placed = pod("r", {"ai.compute/vram": "10Gi"})
    device = state.device_ids[state.index["npu-1"]][1]
    placed["metadata"]["annotations"] = {
        "hcs.io/assigned-node": "npu-1",
        "hcs.io/assigned-devices": device,
    }
    alloc = allocation_from_pod(placed, state)
    assert alloc is not None
    assert [(c.vram_mib, c.fp16_milli_tflops) for c in alloc.charges] == [(16384, 78_250)]


def test_vnpu_names_the_booked_template_and_nothing_for_whole_devices() -> None:
    table = VendorTable()
    chip = table["huawei"].templates_for("Ascend310P3")
    options = chip_options(chip, 140_000, 0)
    size = DeviceSize(vram_mib=24 * 1024, fp16_milli_tflops=140_000)
    small = container({"ai.compute/vram": "3Gi"})
    out = vnpu(small, options, [size])
    assert out is not None and out.envs == {"ASCEND_VNPU_SPECS": "vir01"}
    assert vnpu(container({"ai.compute/vram": "5Gi"}), options, [size]).envs == {  # type: ignore[union-attr]
        "ASCEND_VNPU_SPECS": "vir02"
    }
    assert vnpu(container({"ai.compute/vram": "13Gi"}), options, [size]) is None
    assert vnpu(container({"huawei.com/Ascend310P": "1"}), options, [size]) is None


def test_template_overrides_are_checked_and_sorted() -> None:
    table = vendor_table_from_dict(
        {
            "vendors": {
                "huawei": {
                    "shareTemplates": {
                        "Ascend910B4*": {
                            "aiCores": 20,
                            "templates": {
                                "vir10_3c_16g": {"aiCores": 10, "memory": "16Gi"},
                                "vir05_1c_8g": {"aiCores": 5, "memory": "8Gi"},
                            },
                        }
                    }
                }
            }
        }
    )
    chip = table["huawei"].templates_for("Ascend910B4")
    assert chip is not None
    assert [t.name for t in chip.templates] == ["vir05_1c_8g", "vir10_3c_16g"]
    bad = [
        ({"Ascend910B4": {"aiCores": 20}}, "Ascend910B4: expected {aiCores"),
        (
            {"X": {"aiCores": 8, "templates": {"v": {"aiCores": 9, "memory": "1Gi"}}}},
            "templates.v.aiCores: 9 is more than the chip's 8",
        ),
        (
            {"X": {"aiCores": 8, "templates": {"v": {"aiCores": 1, "memory": "lots"}}}},
            "templates.v.memory",
        ),
        ({"X": {"aiCores": 0, "templates": {}}}, "X.aiCores: 0 must be a whole number above 0"),
    ]
    for value, words in bad:
        with pytest.raises(ConfigError) as err:
            vendor_table_from_dict({"vendors": {"huawei": {"shareTemplates": value}}})
        assert words in err.value.message, err.value.message
