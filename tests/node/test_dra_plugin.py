"""`hcs dra-plugin` against an imitated kubelet over kubelet's real gRPC protos: plugin
registration through plugins_registry, NodePrepareResources / NodeUnprepareResources (v1 and
v1beta1) answering CDI ids for exactly the allocated devices, idempotent; ResourceSlices on the
in-test API server, the pool's generation bumped when the devices change."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from hcs.dra import DRIVER, resource_slices
from hcs.errors import HcsError
from hcs.models import ComputeNode
from hcs.vendors import VendorTable
from node.dra.v1 import api_pb2 as v1
from node.dra.v1 import api_pb2_grpc as v1_grpc
from node.dra.v1beta1 import api_pb2 as v1beta1
from node.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from node.draplugin import DraPlugin, KubeDra, Preparer, SlicePublisher
from node.pluginregistration.v1 import api_pb2 as reg
from node.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from tests.fake_apiserver import CLAIMS, NODES, SLICES, FakeApiServer
from tests.node.harness import api_client, compute_node
from tests.node.kubelet import short_dir


@dataclass
class Node:
    fake: FakeApiServer
    plugin: DraPlugin
    kubelet_dir: Path
    cdi_dir: Path
    nvidia_dir: Path
    state: dict[str, Any]


class ImitatedKubelet:
    """What kubelet's plugin manager and DRA manager do: find the registration socket, GetInfo,
    dial the endpoint, say the registration succeeded, then call the DRA service of the newest
    version both sides support."""

    def __init__(self, kubelet_dir: Path) -> None:
        self.registry = kubelet_dir / "plugins_registry"

    def register(self, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while not list(self.registry.glob("*.sock")):
            assert time.monotonic() < deadline, "no registration socket"
            time.sleep(0.02)
        (sock,) = self.registry.glob("*.sock")
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            stub = reg_grpc.RegistrationStub(channel)
            info = stub.GetInfo(reg.InfoRequest(), timeout=5)
            assert info.type == "DRAPlugin"
            assert Path(info.endpoint).exists()
            stub.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True), timeout=5)
        return info

    def prepare(
        self, info: reg.PluginInfo, *claims: tuple[str, str, str], beta: bool = False
    ) -> Any:
        pb, grpc_mod = (v1beta1, v1beta1_grpc) if beta else (v1, v1_grpc)
        with grpc.insecure_channel(f"unix://{info.endpoint}") as channel:
            return grpc_mod.DRAPluginStub(channel).NodePrepareResources(
                pb.NodePrepareResourcesRequest(
                    claims=[pb.Claim(namespace=n, uid=u, name=m) for n, u, m in claims]
                ),
                timeout=5,
            )

    @staticmethod
    def cdi_ids(prepared: Any, request: str) -> list[str]:
        """The CDI ids kubelet hands the runtime for a container whose `resources.claims[]`
        names this claim and `request` ("" for the whole claim): those of every device whose
        request names hold it exactly, or that names none (kubelet's cdiDevicesAsList)."""
        return [
            cdi
            for device in prepared.devices
            if not request or not device.request_names or request in device.request_names
            for cdi in device.cdi_device_ids
        ]

    def unprepare(self, info: Any, *claims: tuple[str, str, str]) -> Any:
        with grpc.insecure_channel(f"unix://{info.endpoint}") as channel:
            return v1_grpc.DRAPluginStub(channel).NodeUnprepareResources(
                v1.NodeUnprepareResourcesRequest(
                    claims=[v1.Claim(namespace=n, uid=u, name=m) for n, u, m in claims]
                ),
                timeout=5,
            )


def claim(name: str, uid: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "ml", "uid": uid},
        "spec": {"devices": {"requests": [{"name": "gpus"}]}},
        "status": {"allocation": {"devices": {"results": results}}},
    }


def result(device: str, pool: str, driver: str = DRIVER, request: str = "gpus") -> dict[str, str]:
    return {"request": request, "driver": driver, "pool": pool, "device": device}


@pytest.fixture
def make_node(aiohttp_server: Any) -> Iterator[Any]:
    started: list[tuple[DraPlugin, threading.Thread, Path]] = []

    async def make(vendor: str, name: str) -> Node:
        fake = FakeApiServer()
        server = await aiohttp_server(fake.app())
        api = api_client(str(server.make_url("")).rstrip("/"))
        root = short_dir()
        state: dict[str, Any] = {"node": ComputeNode.from_dict(compute_node(name, vendor, 8))}
        kube = KubeDra(api)
        preparer = Preparer(
            name,
            VendorTable(),
            kube,
            root / "cdi",
            lambda: state["node"],
            nvidia_cdi_dirs=(root / "etc-cdi",),
        )
        kubelet = root / "kubelet"
        plugin = DraPlugin(
            preparer,
            SlicePublisher(name, kube),
            kubelet / "plugins" / DRIVER,
            kubelet / "plugins_registry",
            interval=0.1,
        )
        thread = threading.Thread(target=plugin.run, kwargs={"poll": 0.02}, daemon=True)
        thread.start()
        started.append((plugin, thread, root))
        return Node(fake, plugin, root / "kubelet", root / "cdi", root / "etc-cdi", state)

    yield make
    for plugin, thread, root in started:
        plugin.stopping.set()
        thread.join(10)
        shutil.rmtree(root, ignore_errors=True)


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_register_prepare_and_unprepare_exactly_the_allocated_devices(make_node: Any) -> None:
    node = await make_node("huawei", "npu-1")
    kubelet = ImitatedKubelet(node.kubelet_dir)
    info = await asyncio.to_thread(kubelet.register)
    assert info.name == DRIVER
    assert list(info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    await wait_until(lambda: node.plugin.registered)
    node.fake.put(
        CLAIMS,
        claim(
            "train-gpus",
            "u-1",
            [
                result("huawei-3", "npu-1"),
                result("huawei-5", "npu-1"),
                result("gpu-0", "other-node", driver="gpu.nvidia.com"),  # not ours
            ],
        ),
    )
    answer = await asyncio.to_thread(
        kubelet.prepare, info, ("ml", "u-1", "train-gpus"), ("ml", "u-9", "gone")
    )
    mine = answer.claims["u-1"]
    assert mine.error == ""
    assert [(d.pool_name, d.device_name) for d in mine.devices] == [
        ("npu-1", "huawei-3"),
        ("npu-1", "huawei-5"),
    ]
    assert all(list(d.request_names) == ["gpus"] for d in mine.devices)
    assert kubelet.cdi_ids(mine, "gpus") == [f"{DRIVER}/device=u-1-gpus"]
    assert "not found" in answer.claims["u-9"].error  # its own error, the other still answered
    spec_file = node.cdi_dir / f"{DRIVER}-u-1.json"
    spec = json.loads(spec_file.read_text())
    (device,) = spec["devices"]
    assert device["name"] == "u-1-gpus" and spec["kind"] == f"{DRIVER}/device"
    env = dict(e.split("=", 1) for e in device["containerEdits"]["env"])
    assert env["ASCEND_VISIBLE_DEVICES"] == "3,5" and env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1"
    paths = [n["path"] for n in device["containerEdits"]["deviceNodes"]]
    assert "/dev/davinci3" in paths and "/dev/davinci5" in paths and "/dev/davinci0" not in paths

    before = spec_file.read_bytes()
    again = await asyncio.to_thread(kubelet.prepare, info, ("ml", "u-1", "train-gpus"), beta=True)
    assert [d.device_name for d in again.claims["u-1"].devices] == ["huawei-3", "huawei-5"]
    assert spec_file.read_bytes() == before  # idempotent, and v1beta1 answers the same

    node.fake.delete(CLAIMS, "ml/train-gpus")  # unprepare may come after the claim is gone
    for _ in range(2):  # and twice
        done = await asyncio.to_thread(kubelet.unprepare, info, ("ml", "u-1", "train-gpus"))
        assert done.claims["u-1"].error == ""
        assert not spec_file.exists()


async def test_a_claim_recreated_under_the_same_name_is_refused(make_node: Any) -> None:
    node = await make_node("hygon", "dcu-1")
    kubelet = ImitatedKubelet(node.kubelet_dir)
    info = await asyncio.to_thread(kubelet.register)
    node.fake.put(CLAIMS, claim("c", "u-new", [result("hygon-1", "dcu-1")]))
    answer = await asyncio.to_thread(kubelet.prepare, info, ("ml", "u-old", "c"))
    assert "re-created" in answer.claims["u-old"].error
    assert not list(node.cdi_dir.glob("*.json"))


async def test_nvidia_devices_are_named_in_nvidias_own_cdi_spec_when_the_node_has_it(
    make_node: Any,
) -> None:
    node = await make_node("nvidia", "gpu-1")
    node.nvidia_dir.mkdir(parents=True)
    uuids = [f"GPU-gpu-1-{i}" for i in range(8)]
    (node.nvidia_dir / "nvidia.yaml").write_text(
        json.dumps(
            {
                "cdiVersion": "0.5.0",
                "kind": "nvidia.com/gpu",
                "devices": [{"name": n, "containerEdits": {}} for n in [*uuids, "all"]],
            }
        )
    )
    kubelet = ImitatedKubelet(node.kubelet_dir)
    info = await asyncio.to_thread(kubelet.register)
    node.fake.put(CLAIMS, claim("c", "u-2", [result("nvidia-6", "gpu-1")]))
    answer = await asyncio.to_thread(kubelet.prepare, info, ("ml", "u-2", "c"))
    (dev,) = answer.claims["u-2"].devices
    assert list(dev.cdi_device_ids) == ["nvidia.com/gpu=GPU-gpu-1-6"]
    assert not list(node.cdi_dir.glob("*.json"))  # nothing of HCS's own
    (node.nvidia_dir / "nvidia.yaml").unlink()  # no NVIDIA spec: HCS's, naming the UUID
    answer = await asyncio.to_thread(kubelet.prepare, info, ("ml", "u-2", "c"))
    (dev,) = answer.claims["u-2"].devices
    assert list(dev.cdi_device_ids) == [f"{DRIVER}/device=u-2-gpus"]
    spec = json.loads((node.cdi_dir / f"{DRIVER}-u-2.json").read_text())
    assert "NVIDIA_VISIBLE_DEVICES=GPU-gpu-1-6" in spec["devices"][0]["containerEdits"]["env"]


async def test_slices_follow_the_devices_with_a_new_generation(make_node: Any) -> None:
    node = await make_node("huawei", "npu-2")

    def published() -> list[dict[str, Any]]:
        return [s for s in node.fake.objects[SLICES].values() if s["spec"]["nodeName"] == "npu-2"]

    await wait_until(lambda: len(published()) == 1)
    (first,) = published()
    assert first["spec"]["pool"]["generation"] == 1
    assert len(first["spec"]["devices"]) == 8
    await asyncio.sleep(0.3)  # several rounds, nothing changed: nothing written
    assert published()[0]["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    raw = compute_node("npu-2", "huawei", 8, health=[100] * 7 + [10])
    node.state["node"] = ComputeNode.from_dict(raw)
    await wait_until(lambda: published()[0]["spec"]["pool"]["generation"] == 2)
    names = [d["name"] for d in published()[0]["spec"]["devices"]]
    assert len(names) == 7 and "huawei-7" not in names


async def test_the_dra_plugin_command_registers_and_publishes(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """`hcs dra-plugin` as a started process: discovery from a real npu-smi output, slices on the
    API server, registration with the imitated kubelet, SIGTERM ends it with exit 0. The
    devices are shared as the agent's ComputeNode says, and follow it when it changes."""
    from tests.fake_apiserver import write_kubeconfig
    from tests.processes import Started

    real = Path(__file__).resolve().parents[1] / "agent" / "fixtures" / "real" / "ascend"
    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")))
    fake.put(NODES, compute_node("npu-9", "huawei", 8, shared=True, enforcement="vnpu"))
    root = short_dir()
    process = Started(
        "dra-plugin",
        *("--node-name", "npu-9", "--vendor", "huawei"),
        *("--tool-output", f"npu-smi={real / 'npu-smi-910b3x8-24.1rc1.txt'}"),
        *("--registry-dir", str(root / "kubelet" / "plugins_registry")),
        *("--plugin-dir", str(root / "kubelet" / "plugins" / DRIVER)),
        *("--cdi-dir", str(root / "cdi")),
        *("--kubeconfig", str(kubeconfig), "--interval", "0.2"),
    )
    try:
        await asyncio.to_thread(process.wait_for, r"DRA driver compute.hcs.io: serving")
        info = await asyncio.to_thread(ImitatedKubelet(root / "kubelet").register)
        assert info.endpoint == str(root / "kubelet" / "plugins" / DRIVER / "dra.sock")
        await wait_until(lambda: bool(fake.objects[SLICES]), timeout=30)
        (published,) = fake.objects[SLICES].values()
        assert published["spec"]["nodeName"] == "npu-9"
        assert len(published["spec"]["devices"]) == 8
        first = published["spec"]["devices"][0]
        assert first["capacity"]["vram"]["value"].endswith("i")
        # 910B3: shared by vNPU templates, as the agent published.
        assert first["allowMultipleAllocations"] is True
        assert first["capacity"]["vram"]["requestPolicy"]["validValues"][:2] == ["16Gi", "32Gi"]
        fake.put(NODES, compute_node("npu-9", "huawei", 8))  # the agent now exclusive

        def exclusive() -> bool:
            (s,) = fake.objects[SLICES].values()
            return not any("allowMultipleAllocations" in d for d in s["spec"]["devices"])

        await wait_until(exclusive, timeout=30)
        (now,) = fake.objects[SLICES].values()
        assert now["spec"]["pool"]["generation"] > published["spec"]["pool"]["generation"]
    finally:
        code, err = await asyncio.to_thread(process.stop)
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0, err


def test_dry_run_prints_the_slices(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from hcs_cli.main import main

    real = Path(__file__).resolve().parents[1] / "agent" / "fixtures" / "real" / "ascend"
    argv = ["dra-plugin", "--node-name", "n1", "--vendor", "huawei"]
    argv += ["--tool-output", f"npu-smi={real / 'npu-smi-910b3x8-24.1rc1.txt'}", "--dry-run"]
    assert main(argv) == 0
    (published,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert published["kind"] == "ResourceSlice" and published["spec"]["nodeName"] == "n1"
    assert [d["name"] for d in published["spec"]["devices"]] == [f"huawei-{i}" for i in range(8)]


def test_prepare_reads_the_last_discovery_and_never_runs_the_tool(tmp_path: Path) -> None:
    from node.draplugin import LastDiscovery

    runs: list[int] = []
    cn = ComputeNode.from_dict(compute_node("npu-3", "huawei", 8))

    def discover() -> ComputeNode:
        runs.append(1)
        return cn

    class Claims:
        def read_claim(self, namespace: str, name: str) -> dict[str, Any]:
            return claim(name, "u-7", [result("huawei-1", "npu-3")])

    discovery = LastDiscovery(discover)
    preparer = Preparer("npu-3", VendorTable(), Claims(), tmp_path / "cdi", discovery)
    discovery.refresh()  # the plugin's round
    for _ in range(3):
        assert [p.device for p in preparer.prepare("ml", "u-7", "c")] == ["huawei-1"]
    assert len(runs) == 1


def test_shares_need_their_limiter_and_survive_an_unreadable_compute_node() -> None:
    from node.draplugin import PublishedSharing

    raw = compute_node("gpu-5", "nvidia", 2)
    answers: list[Any] = [compute_node("gpu-5", "nvidia", 2, shared=True, enforcement="hami-core")]

    def read() -> Any:
        answer = answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    with_library = PublishedSharing(lambda: raw, read, hami_installed=True)
    assert with_library() is not None and with_library.last is not None
    node = with_library()
    assert node is not None and node.share_enforcement == "hami-core"
    answers[0] = OSError("connection refused")  # the API server away: as last read
    node = with_library()
    assert node is not None and node.share_enforcement == "hami-core"
    answers[0] = compute_node("gpu-5", "nvidia", 2, shared=True, enforcement="hami-core")
    without = PublishedSharing(lambda: raw, read)  # HAMi-core not installed: never shared
    node = without()
    assert node is not None and not node.shared
    (s,) = resource_slices(node, 1)
    assert not any("allowMultipleAllocations" in d for d in s["spec"]["devices"])


def test_a_share_on_nvidias_own_cdi_devices_adds_only_the_limiter(tmp_path: Path) -> None:
    """With NVIDIA's spec on the node the GPU comes from NVIDIA's CDI device; HCS's spec then
    holds HAMi-core's edits alone, answered once on the request."""
    from node.deviceplugin import HamiCore

    cn = ComputeNode.from_dict(
        compute_node("gpu-4", "nvidia", 2, shared=True, enforcement="hami-core")
    )
    etc = tmp_path / "etc-cdi"
    etc.mkdir()
    (etc / "nvidia.json").write_text(
        json.dumps(
            {
                "cdiVersion": "0.5.0",
                "kind": "nvidia.com/gpu",
                "devices": [{"name": f"GPU-gpu-4-{i}", "containerEdits": {}} for i in range(2)],
            }
        )
    )
    (tmp_path / "vgpu").mkdir()
    (tmp_path / "vgpu" / "libvgpu.so").write_bytes(b"\x7fELF")
    hami = HamiCore.prepare(tmp_path / "vgpu", tmp_path / "state", VendorTable())
    share = {"vram": "8Gi", "tflops_fp16": "0", "tflops_fp32": "0"}

    class Claims:
        def read_claim(self, namespace: str, name: str) -> dict[str, Any]:
            results = [
                {**result(f"nvidia-{i}", "gpu-4", request="main/nvidia"), "shareID": f"s{i}"}
                | {"consumedCapacity": share}
                for i in range(2)
            ]
            return claim(name, "u-8", results)

    preparer = Preparer(
        "gpu-4",
        VendorTable(),
        Claims(),
        tmp_path / "cdi",
        lambda: cn,
        nvidia_cdi_dirs=(etc,),
        hami=hami,
    )
    first, second = preparer.prepare("ml", "u-8", "c")
    assert (first.request, first.share_id, second.share_id) == ("main", "s0", "s1")
    assert first.cdi_ids == ("nvidia.com/gpu=GPU-gpu-4-0", f"{DRIVER}/device=u-8-main")
    assert second.cdi_ids == ("nvidia.com/gpu=GPU-gpu-4-1",)
    spec = json.loads((tmp_path / "cdi" / f"{DRIVER}-u-8.json").read_text())
    (device,) = spec["devices"]
    env = dict(e.split("=", 1) for e in device["containerEdits"]["env"])
    assert env["CUDA_DEVICE_MEMORY_LIMIT_0"] == env["CUDA_DEVICE_MEMORY_LIMIT_1"] == "8192m"
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # the GPUs are NVIDIA's devices' business
    preparer.unprepare("u-8")
    assert not list((tmp_path / "state" / "claims").iterdir())
    assert not (tmp_path / "cdi" / f"{DRIVER}-u-8.json").exists()


def test_opaque_configuration_for_the_driver_is_refused_not_ignored(tmp_path: Path) -> None:
    """HCS's driver has no opaque parameters: a claim carrying some for it fails at Prepare,
    naming where, rather than running without what its author asked for."""
    cn = ComputeNode.from_dict(compute_node("npu-3", "huawei", 2))
    config: list[dict[str, Any]] = [
        {
            "source": "FromClaim",
            "requests": ["gpus"],
            "opaque": {"driver": "gpu.nvidia.com", "parameters": {"sharing": "x"}},
        }
    ]

    class Claims:
        def read_claim(self, namespace: str, name: str) -> dict[str, Any]:
            c = claim(name, "u-7", [result("huawei-1", "npu-3")])
            c["status"]["allocation"]["devices"]["config"] = config
            return c

    preparer = Preparer("npu-3", VendorTable(), Claims(), tmp_path / "cdi", lambda: cn)
    # Another driver's configuration is that driver's business.
    assert [p.device for p in preparer.prepare("ml", "u-7", "c")] == ["huawei-1"]
    config.append(
        {
            "source": "FromClaim",
            "requests": ["gpus"],
            "opaque": {"driver": DRIVER, "parameters": {"memory": "16Gi"}},
        }
    )
    preparer.unprepare("u-7")
    with pytest.raises(HcsError, match=r"config\[1\]: compute.hcs.io takes no opaque"):
        preparer.prepare("ml", "u-7", "c")
    assert not list((tmp_path / "cdi").glob("*.json"))


REAL = Path(__file__).resolve().parents[1] / "agent" / "fixtures" / "real"


@pytest.mark.parametrize(
    ("vendor", "tool", "file", "count"),
    [
        ("nvidia", "nvidia-smi", "nvidia/querygpu-diffcols-h100-80gb-hbm3-drv590.48.01.csv", 1),
        ("huawei", "npu-smi", "ascend/npu-smi-310p3x8-24.1.0.1-ids-0-32-32768.txt", 8),
        ("huawei", "npu-smi", "ascend/npu-smi-910b4-1-x2-25.2.0-busid-redacted.txt", 2),
        ("huawei", "npu-smi", "ascend/npu-smi-a3-910_93-chip-phyid-24.1rc3.txt", 2),
        ("huawei", "npu-smi", "ascend/npu-smi-310x4-atlas3000-20.2.0-oldlayout.txt", 4),
        ("huawei", "npu-smi", "ascend/npu-smi-910a-x8-24.1rc2-processes.txt", 8),
        ("cambricon", "cnmon", "cambricon/cnmon-table-mlu370x8-x2-v5.10.13.txt", 2),
        ("hygon", "hy-smi", "hygon/rocm-smi-json-hygon-k100ai-dtk24.04.3.json", 1),
        ("hygon", "hy-smi", "hygon/hy-smi-showmeminfo-vram-json-bw-c3000-x2-drv6.3.31.json", 2),
    ],
)
def test_real_tool_outputs_become_slices_the_api_server_and_the_classes_accept(
    vendor: str, tool: str, file: str, count: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outputs recorded on real machines (fixtures/real/SOURCES.md) through `hcs dra-plugin
    --dry-run`: valid ResourceSlices (Kubernetes 1.37's schema), DNS-label device names, every
    capacity a quantity, and the vendor's DeviceClass selecting every device."""
    import kubernetes_validate
    import yaml

    from hcs.dra import device_classes
    from hcs.quantity import milli_tflops, vram_mib
    from hcs_cli.main import main
    from tests.dra_allocator import cel, cel_device

    argv = ["dra-plugin", "--node-name", "node-a", "--vendor", vendor, "--dry-run"]
    assert main([*argv, "--tool-output", f"{tool}={REAL / file}"]) == 0
    (published,) = list(yaml.safe_load_all(capsys.readouterr().out))
    kubernetes_validate.validate(published, "1.37.0", strict=True)
    devices = published["spec"]["devices"]
    assert len(devices) == count
    assert len({d["name"] for d in devices}) == count
    (cls,) = [c for c in device_classes(VendorTable()) if c["metadata"]["name"].startswith(vendor)]
    (selector,) = cls["spec"]["selectors"]
    for d in devices:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", d["name"]), d["name"]
        assert vram_mib(d["capacity"]["vram"]["value"]) > 0
        milli_tflops(d["capacity"]["tflops_fp16"]["value"])
        assert cel(selector["cel"]["expression"], cel_device(DRIVER, d))


def test_one_claim_prepared_by_many_calls_at_once_answers_each_the_same(tmp_path: Path) -> None:
    """kubelet may prepare a claim two pods share from two workers at once: every call gets the
    same answer, the spec is whole, and no temporary file is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    cn = ComputeNode.from_dict(compute_node("npu-3", "huawei", 8))

    class Claims:
        def read_claim(self, namespace: str, name: str) -> dict[str, Any]:
            return claim(name, "u-7", [result("huawei-1", "npu-3"), result("huawei-2", "npu-3")])

    preparer = Preparer("npu-3", VendorTable(), Claims(), tmp_path / "cdi", lambda: cn)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: preparer.prepare("ml", "u-7", "c"), range(64)))
    assert all(a == answers[0] for a in answers)
    assert [p.name for p in (tmp_path / "cdi").iterdir()] == [f"{DRIVER}-u-7.json"]
    json.loads((tmp_path / "cdi" / f"{DRIVER}-u-7.json").read_text())


async def test_a_node_name_longer_than_a_label_value_still_finds_its_slices(
    aiohttp_server: Any,
) -> None:
    """The driver finds its own slices by field (spec.nodeName, spec.driver), as kube-apiserver
    allows for ResourceSlices: a node name longer than a label value's 63 characters works,
    and another driver's slices on the node are left alone."""
    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    kube = KubeDra(api_client(str(server.make_url("")).rstrip("/")))
    name = "gpu-" + "a" * 60 + ".rack-12.example.internal"
    other = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "theirs"},
        "spec": {"driver": "gpu.nvidia.com", "nodeName": name, "pool": {"name": name}},
    }
    fake.put(SLICES, other)
    publisher = SlicePublisher(name, kube)
    await asyncio.to_thread(
        publisher.publish, ComputeNode.from_dict(compute_node(name, "nvidia", 4))
    )
    changed = ComputeNode.from_dict(compute_node(name, "nvidia", 4, health=[100, 100, 100, 5]))
    assert await asyncio.to_thread(publisher.publish, changed)
    mine = [s for s in fake.objects[SLICES].values() if s["spec"]["driver"] == DRIVER]
    assert len(mine) == 1 and mine[0]["spec"]["pool"]["generation"] == 2
    assert len(mine[0]["spec"]["devices"]) == 3
    assert "theirs" in fake.objects[SLICES]
