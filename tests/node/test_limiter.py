"""Shares that are enforced: with `--limiter hami-core` (NVIDIA) or `--limiter vnpu` (Ascend),
each fractional container's Allocate answer (through the imitated kubelet) carries exactly its
booked share in the limiter's contract; whole-device containers get none; sharing nothing
enforces is refused unless asked for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hcs.vendors import VendorTable
from node.deviceplugin import HamiCore, Vnpu
from tests.fake_apiserver import PODS, FakeApiServer
from tests.node.burst import JsonClient, run_burst
from tests.node.harness import (
    SimNode,
    admitted_pod,
    api_client,
    compute_node,
    put_nodes,
    start_extender,
    wait_for,
    webhook_context,
)

GI = 1024


def pod(name: str, *containers: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "annotations": {}},
        "spec": {
            "schedulerName": "hcs-scheduler",
            "containers": [
                {"name": f"c{i}", "image": "pytorch:2.4", "resources": {"limits": limits}}
                for i, limits in enumerate(containers)
            ],
        },
    }


@pytest.fixture
async def node(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Any]:
    library = tmp_path / "lib"
    library.mkdir()
    (library / "libvgpu.so").write_bytes(b"\x7fELF")
    limiter = HamiCore.prepare(library, tmp_path / "state", VendorTable())
    fake = FakeApiServer()
    cn = compute_node("gpu-0", "nvidia", 4, vram_gi=80, shared=True, enforcement="hami-core")
    cn["metadata"]["labels"]["hcs.io/device-slots"] = "4"
    put_nodes(fake, cn)
    http, service, url = await start_extender(fake, aiohttp_server, aiohttp_client, 1)
    sim = SimNode("gpu-0", "nvidia", cn, api_client(url), replicas=4, limiter=limiter)
    await asyncio.to_thread(sim.start)
    yield fake, JsonClient(http), service, sim, limiter, tmp_path
    await asyncio.to_thread(sim.close)


async def test_each_container_gets_exactly_its_booked_share(node: Any) -> None:
    fake, http, service, sim, _, tmp_path = node
    ctx = webhook_context(service.state)
    pods = [
        admitted_pod(
            pod("two", {"ai.compute/vram": "16Gi"}, {"ai.compute/vram": "24Gi"}), ctx, "u-two"
        ),
        admitted_pod(pod("whole", {"nvidia.com/gpu": "1"}), ctx, "u-whole"),
    ]
    outcome = await run_burst(fake, http, [sim], pods, timeout=30)
    assert outcome.refused_binds == []
    books = sim.kubelet.books
    for container, gib in (("c0", 16), ("c1", 24)):
        answer = books["u-two"].answers[container]
        envs = dict(answer.envs)
        assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{gib * GI}m"
        assert "CUDA_DEVICE_MEMORY_LIMIT_1" not in envs  # one device each
        assert envs["CUDA_DEVICE_SM_LIMIT"] == "100"  # no TFLOPS booked
        mounts = {m.container_path: (m.host_path, m.read_only) for m in answer.mounts}
        assert mounts["/usr/local/vgpu/libvgpu.so"] == (str(tmp_path / "lib" / "libvgpu.so"), True)
        own = tmp_path / "state" / "containers" / f"u-two_{container}"
        assert mounts["/usr/local/vgpu/containers"] == (str(own), False)
        assert own.is_dir()
        assert envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"].startswith("/usr/local/vgpu/containers/")
        assert mounts["/tmp/vgpulock"] == (str(tmp_path / "state" / "vgpulock"), False)
        preload_host, read_only = mounts["/etc/ld.so.preload"]
        assert read_only and Path(preload_host).read_text().strip() == "/usr/local/vgpu/libvgpu.so"
    # the whole-device container: nothing to share, no limit
    whole = books["u-whole"].answers["c0"]
    assert not any(k.startswith("CUDA_DEVICE_") for k in dict(whole.envs))
    assert "/etc/ld.so.preload" not in {m.container_path for m in whole.mounts}
    # a pod gone: the plugin's loop removes its folders, and only its
    fake.delete(PODS, "ml/two")
    own = tmp_path / "state" / "containers"
    await wait_for(lambda: not (own / "u-two_c0").exists() and not (own / "u-two_c1").exists())
    keep = own / "u-whole_c0"
    keep.mkdir()
    await asyncio.sleep(1.0)  # two rounds of the plugin's loop (poll 0.05 s)
    assert keep.is_dir()  # its pod is live


async def shared_node(
    aiohttp_server: Any, aiohttp_client: Any, vendor: str, *, n: int, limiter: Any, mode: str
) -> tuple[FakeApiServer, JsonClient, Any, SimNode]:
    fake = FakeApiServer()
    cn = compute_node(f"{vendor}-0", vendor, n, shared=True, enforcement=mode)
    cn["metadata"]["labels"]["hcs.io/device-slots"] = "4"
    put_nodes(fake, cn)
    http, service, url = await start_extender(fake, aiohttp_server, aiohttp_client, 1)
    sim = SimNode(f"{vendor}-0", vendor, cn, api_client(url), replicas=4, limiter=limiter)
    await asyncio.to_thread(sim.start)
    return fake, JsonClient(http), service, sim


def charged(service: Any, uid: str) -> list[tuple[str, int, int]]:
    """The extender's books for a pod: (device, VRAM MiB, FP16 milli-TFLOPS) per charge."""
    alloc = service.state.allocations[uid]
    return sorted((c.device_id, c.vram_mib, c.fp16_milli_tflops) for c in alloc.charges)


async def test_hami_core_containers_sharing_devices_and_one_spanning_two(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    """Two GPUs, three pods: one pod's two shares span both GPUs, so every GPU is shared, and
    each container's limits are its own booking, device by device."""
    library = tmp_path / "lib"
    library.mkdir()
    (library / "libvgpu.so").write_bytes(b"\x7fELF")
    limiter = HamiCore.prepare(library, tmp_path / "state", VendorTable())
    fake, http, service, sim = await shared_node(
        aiohttp_server, aiohttp_client, "nvidia", n=2, limiter=limiter, mode="hami-core"
    )
    try:
        ctx = webhook_context(service.state)
        wide = {
            "ai.compute/vram": "40Gi",
            "ai.compute/devices": "2",
            "ai.compute/tflops-fp16": "156",
        }
        pods = [
            admitted_pod(pod("a", {"ai.compute/vram": "16Gi"}), ctx, "u-a"),
            admitted_pod(pod("b", {"ai.compute/vram": "24Gi"}), ctx, "u-b"),
            admitted_pod(pod("wide", wide), ctx, "u-wide"),
        ]
        outcome = await run_burst(fake, http, [sim], pods, timeout=30)
        assert outcome.refused_binds == []
        assert sim.kubelet is not None
        books = sim.kubelet.books
        for uid, gib in (("u-a", 16), ("u-b", 24)):
            envs = dict(books[uid].answers["c0"].envs)
            assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{gib * GI}m"
            assert "CUDA_DEVICE_MEMORY_LIMIT_1" not in envs
            assert envs["CUDA_DEVICE_SM_LIMIT"] == "100"
            assert [v for _, v, _ in charged(service, uid)] == [gib * GI]
        envs = dict(books["u-wide"].answers["c0"].envs)
        # 40Gi over two GPUs, 78 of each GPU's 312 TFLOPS
        assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == envs["CUDA_DEVICE_MEMORY_LIMIT_1"] == "20480m"
        assert envs["CUDA_DEVICE_SM_LIMIT"] == "25"
        assert [(v, f) for _, v, f in charged(service, "u-wide")] == [(20 * GI, 78_000)] * 2
        held = {d for uid in ("u-a", "u-b") for d, _, _ in charged(service, uid)}
        assert held <= {d for d, _, _ in charged(service, "u-wide")}  # every GPU shared
    finally:
        await asyncio.to_thread(sim.close)


async def test_vnpu_templates_are_what_is_booked_and_what_allocate_names(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Four 910B3 chips (64Gi, 313 TFLOPS, 20 AI cores) cut by vNPU templates: each share
    gets the smallest template that holds it, in the books and in ASCEND_VNPU_SPECS; a share
    no template holds and a whole-chip request get whole chips and no template."""
    fake, http, service, sim = await shared_node(
        aiohttp_server, aiohttp_client, "huawei", n=4, limiter=Vnpu(VendorTable()), mode="vnpu"
    )
    try:
        ctx = webhook_context(service.state)
        pods = [
            admitted_pod(pod("s", {"ai.compute/vram": "10Gi"}), ctx, "u-s"),
            admitted_pod(pod("m", {"ai.compute/vram": "20Gi"}), ctx, "u-m"),
            admitted_pod(
                pod("two", {"ai.compute/vram": "16Gi", "ai.compute/devices": "2"}), ctx, "u-two"
            ),
            admitted_pod(pod("big", {"ai.compute/vram": "40Gi"}), ctx, "u-big"),
            admitted_pod(pod("whole", {"huawei.com/Ascend910": "1"}), ctx, "u-whole"),
        ]
        outcome = await run_burst(fake, http, [sim], pods, timeout=30)
        assert outcome.refused_binds == []
        assert sim.kubelet is not None
        books = sim.kubelet.books
        expect = {
            "u-s": ("vir05_1c_16g", [(16 * GI, 78_250)]),
            "u-m": ("vir10_3c_32g", [(32 * GI, 156_500)]),
            "u-two": ("vir05_1c_16g", [(16 * GI, 78_250)] * 2),
        }
        for uid, (template, booked) in expect.items():
            envs = dict(books[uid].answers["c0"].envs)
            assert envs["ASCEND_VNPU_SPECS"] == template, uid
            given = [d for d, _, _ in charged(service, uid)]
            assert sorted(envs["ASCEND_VISIBLE_DEVICES"].split(",")) == given
            assert [(v, f) for _, v, f in charged(service, uid)] == booked, uid
        for uid in ("u-big", "u-whole"):
            envs = dict(books[uid].answers["c0"].envs)
            assert "ASCEND_VNPU_SPECS" not in envs, uid
            assert [(v, f) for _, v, f in charged(service, uid)] == [(64 * GI, 313_000)], uid
        whole_chips = {d for uid in ("u-big", "u-whole") for d, _, _ in charged(service, uid)}
        shared_chips = {d for uid in expect for d, _, _ in charged(service, uid)}
        assert len(whole_chips) == 2 and not whole_chips & shared_chips
    finally:
        await asyncio.to_thread(sim.close)


def test_a_missing_library_is_one_clear_line(tmp_path: Path) -> None:
    from hcs.errors import ConfigError

    with pytest.raises(ConfigError, match=r"libvgpu.so is missing or unreadable; HCS does not"):
        HamiCore.prepare(tmp_path, tmp_path / "state", VendorTable())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--replicas", "4"],
            "--replicas 4 without --limiter: pods sharing a device would not be isolated",
        ),
        (
            ["--replicas", "4", "--limiter", "hami-core", "--limiter-dir", "/nonexistent"],
            "/nonexistent/libvgpu.so is missing or unreadable",
        ),
    ],
)
def test_sharing_nothing_enforces_is_refused_at_start(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from hcs_cli.main import main

    code = main(["device-plugin", "--node-name", "n", "--vendor", "nvidia", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "--allow-unenforced-sharing" in err or "--limiter-dir" in err


def test_hami_core_is_refused_on_another_vendor(capsys: pytest.CaptureFixture[str]) -> None:
    from hcs_cli.main import main

    argv = ["device-plugin", "--node-name", "n", "--vendor", "huawei", "--limiter", "hami-core"]
    assert main(argv) == 2
    assert (
        "--limiter hami-core: enforces nvidia devices only, not huawei" in capsys.readouterr().err
    )


def test_vnpu_is_refused_on_another_vendor(capsys: pytest.CaptureFixture[str]) -> None:
    from hcs_cli.main import main

    argv = ["device-plugin", "--node-name", "n", "--vendor", "nvidia", "--limiter", "vnpu"]
    assert main(argv) == 2
    assert "--limiter vnpu: enforces huawei devices only, not nvidia" in capsys.readouterr().err
