"""Shares that are enforced: with `--limiter hami-core`, each fractional container's Allocate
answer (through the imitated kubelet) carries exactly its booked share in HAMi-core's contract;
whole-device containers get none; sharing nothing enforces is refused unless asked for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hcs.vendors import VendorTable
from node.deviceplugin import HamiCore
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
    cn = compute_node("gpu-0", "nvidia", 4, vram_gi=80, shared=True)
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
