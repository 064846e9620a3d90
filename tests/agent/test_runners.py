"""How the agent gets tool output: NVML through a stand-in `pynvml` module that returns recorded
values, vendor detection only from a tool that actually runs, command fallbacks and failures.
Tools are real executables (scripts on PATH) printing recorded real output."""

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from node import nvml
from node.agent import AgentOptions, desired_node
from node.discovery import DiscoveryError, ToolRunner, detect_vendor, discover

REAL = Path(__file__).parent / "fixtures" / "real"


class NVMLError(Exception):
    pass


@dataclass
class Gpu:
    name: str
    uuid: str
    bus: str
    total: int
    used: int
    links: dict[int, str]  # link -> remote PCI bus id
    ecc: int | None = 0
    pending: int = 0
    temp: int = 40


def fake_pynvml(gpus: list[Gpu], *, init_fails: bool = False) -> Any:
    """The functions and constants of nvidia-ml-py the agent calls, over recorded values (an
    HGX H100's GPUs: bus ids, memory in bytes, UUIDs)."""

    def handle(i: int) -> Gpu:
        return gpus[i]

    def init() -> None:
        if init_fails:
            raise NVMLError("NVML Shared Library Not Found")

    def ecc(h: Gpu, kind: int, counter: int) -> int:
        assert (kind, counter) == (1, 0)
        if h.ecc is None:
            raise NVMLError("Not Supported")
        return h.ecc

    def link_state(h: Gpu, link: int) -> int:
        if link >= 18:
            raise NVMLError("Invalid Argument")
        return 1 if link in h.links else 0

    return SimpleNamespace(
        NVMLError=NVMLError,
        NVML_FEATURE_ENABLED=1,
        NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1,
        NVML_VOLATILE_ECC=0,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetName=lambda h: h.name,
        nvmlDeviceGetUUID=lambda h: h.uuid.encode(),  # older bindings return bytes
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=h.total, used=h.used),
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=h.bus),
        nvmlDeviceGetTotalEccErrors=ecc,
        nvmlDeviceGetRetiredPagesPendingStatus=lambda h: h.pending,
        nvmlDeviceGetTemperature=lambda h, sensor: h.temp,
        nvmlDeviceGetNvLinkState=link_state,
        nvmlDeviceGetNvLinkRemotePciInfo=lambda h, link: SimpleNamespace(busId=h.links[link]),
    )


H100 = 85520809984  # bytes, as NVML reports an H100 80GB HBM3 (81559 MiB)


def test_nvml_reads_devices_health_and_links_to_gpus_and_switches() -> None:
    switch = "00000000:A5:00.0"
    gpus = [
        Gpu(
            "NVIDIA H100 80GB HBM3",
            "GPU-0a",
            "00000000:18:00.0",
            H100,
            2**20 * 512,
            {0: switch, 1: switch},
        ),
        Gpu("NVIDIA H100 80GB HBM3", "GPU-0b", "00000000:2A:00.0", H100, 0, {0: switch}, ecc=3),
        Gpu(
            "NVIDIA H100 80GB HBM3", "GPU-0c", "00000000:3A:00.0", H100, 0, {2: "00000000:18:00.0"}
        ),
        Gpu("NVIDIA H100 80GB HBM3", "GPU-0d", "00000000:5D:00.0", H100, 0, {}, ecc=None, temp=86),
    ]
    found = nvml.discover(fake_pynvml(gpus))
    assert found is not None
    devices, topology = found
    assert [(d.id, d.identity, d.vram_mib, d.used_mib, d.bus_id) for d in devices][:2] == [
        ("0", "GPU-0a", 81559, 512, "0000:18:00.0"),
        ("1", "GPU-0b", 81559, 0, "0000:2A:00.0"),
    ]
    assert [d.health_score for d in devices] == [100, 40, 100, 70]  # ECC out, 86 °C stays
    # 0 and 1 share an NVSwitch; 2 has a direct link to 0 (its own row, so only 2 lists it).
    assert topology.links == {
        "GPU0": {"GPU1": "nvlink"},
        "GPU1": {"GPU0": "nvlink"},
        "GPU2": {"GPU0": "nvlink"},
        "GPU3": {},
    }


def test_without_nvml_the_agent_runs_nvidia_smi(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert nvml.discover(fake_pynvml([], init_fails=True)) is None
    monkeypatch.setattr(nvml, "load", lambda: fake_pynvml([], init_fails=True))
    tool(
        monkeypatch,
        tmp_path,
        "nvidia-smi",
        REAL / "nvidia/querygpu-diffcols-h100-80gb-hbm3-drv590.48.01.csv",
    )
    devices, _ = discover("nvidia", ToolRunner())
    assert devices[0].identity == "GPU-00000000-0000-0000-0000-000000000000"
    gpus = [Gpu("NVIDIA H200", "GPU-nvml", "00000000:18:00.0", 2**30, 0, {})]
    monkeypatch.setattr(nvml, "load", lambda: fake_pynvml(gpus))
    assert discover("nvidia", ToolRunner())[0][0].identity == "GPU-nvml"
    assert discover("nvidia", ToolRunner(), use_nvml=False)[0][0].identity == devices[0].identity


def tool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, output: Path | None, code: int = 0
) -> Path:
    """An executable `name` on PATH that prints `output` (and records its arguments)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    body = f"cat '{output}'\n" if output else ""
    script.write_text(f"#!/bin/sh\necho \"$@\" >> '{tmp_path}/{name}.args'\n{body}exit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    return script


def test_a_tool_that_exists_but_fails_does_not_pick_the_vendor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An empty hostPath for npu-smi on an NVIDIA node: present, but it does not run."""
    monkeypatch.setattr(nvml, "load", lambda: None)
    tool(monkeypatch, tmp_path, "npu-smi", None, code=126)
    assert detect_vendor(ToolRunner()) is None
    node, complete = desired_node(AgentOptions("n1"))
    assert not complete and node["status"]["conditions"][1]["reason"] == "NoVendorTool"
    tool(monkeypatch, tmp_path, "cnmon", REAL / "cambricon/cnmon-table-mlu370x8-x2-v5.10.13.txt")
    assert detect_vendor(ToolRunner()) == "cambricon"
    node, complete = desired_node(AgentOptions("n1"))
    assert complete and node["spec"]["vendor"] == "cambricon"


def test_a_given_vendor_skips_detection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tool(monkeypatch, tmp_path, "cnmon", REAL / "cambricon/cnmon-table-mlu370x8-x2-v5.10.13.txt")
    node, complete = desired_node(AgentOptions("n1", vendor="huawei"))
    assert not complete and "npu-smi not found" in node["status"]["conditions"][1]["message"]
    assert not (tmp_path / "cnmon.args").exists()  # the other vendor's tool never ran


def test_hy_smi_falls_back_to_the_memory_only_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A build that refuses one of the --show flags gets the plain memory query."""
    memory = REAL / "hygon/hy-smi-showmeminfo-vram-json-bw-c3000-x2-drv6.3.31.json"
    script = tool(monkeypatch, tmp_path, "hy-smi", memory)
    script.write_text(
        "#!/bin/sh\n"
        f"echo \"$@\" >> '{tmp_path}/hy-smi.args'\n"
        'case "$*" in *--showbus*) echo "unrecognized arguments: --showbus" >&2; exit 2;; esac\n'
        f"cat '{memory}'\n"
    )
    devices, _ = discover("hygon", ToolRunner())
    assert [d.vram_mib for d in devices] == [65520, 65520]
    calls = (tmp_path / "hy-smi.args").read_text().splitlines()
    assert calls == [
        "--showproductname --showbus --showtemp --showuniqueid --showmeminfo vram --json",
        "--showmeminfo vram --json",
    ]


def test_nvidia_smi_is_asked_for_its_header_and_named_columns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(nvml, "load", lambda: None)
    tool(
        monkeypatch,
        tmp_path,
        "nvidia-smi",
        REAL / "nvidia/querygpu-diffcols-h100-80gb-hbm3-drv590.48.01.csv",
    )
    discover("nvidia", ToolRunner())
    query, topo = (tmp_path / "nvidia-smi.args").read_text().splitlines()
    assert query.endswith("--format=csv,nounits") and "noheader" not in query
    assert "index,uuid,name,memory.total,memory.used,pci.bus_id" in query
    assert topo == "topo -m"


def test_a_tool_that_hangs_or_fails_is_a_discovery_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tool(monkeypatch, tmp_path, "cnmon", None, code=3)
    with pytest.raises(DiscoveryError, match="cnmon exited 3"):
        ToolRunner().output("cnmon")
    script.write_text("#!/bin/sh\nsleep 5\n")
    with pytest.raises(DiscoveryError, match=r"no answer within 0\.2 s"):
        ToolRunner(timeout=0.2).output("cnmon")
