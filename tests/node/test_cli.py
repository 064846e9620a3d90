"""`hcs device-plugin` as a started process: registers on DIR/kubelet.sock, lists the devices of
the agent's discovery (a real npu-smi output), answers Allocate from the in-test API server
reached through a kubeconfig, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fake_apiserver import LEASES, PODS, FakeApiServer, write_kubeconfig
from tests.node.kubelet import FakeKubelet, short_dir

REAL = Path(__file__).resolve().parents[1] / "agent" / "fixtures" / "real"


async def test_the_device_plugin_command_serves_kubelet(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")))
    folder = short_dir()
    kubelet = FakeKubelet(folder)
    command = [
        sys.executable,
        "-c",
        "import sys; from hcs_cli.main import main; sys.exit(main())",
        "device-plugin",
        "--node-name",
        "npu-1",
        "--vendor",
        "huawei",
        "--kubelet-dir",
        str(kubelet.dir),
        "--tool-output",
        f"npu-smi={REAL / 'ascend/npu-smi-910b3x8-24.1rc1.txt'}",
        "--tool-output",
        f"npu-smi-topo={REAL / 'ascend/topo-910b3x8-hccs-fullmesh.txt'}",
        "--kubeconfig",
        str(kubeconfig),
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not kubelet.requests:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the plugin never registered"
            await asyncio.sleep(0.05)
        assert kubelet.requests[0].resource_name == "huawei.com/Ascend910"
        devices = await asyncio.to_thread(kubelet.wait_devices, lambda d: len(d) == 8)
        assert devices == {str(i): "Healthy" for i in range(8)}
        fake.put(
            LEASES,
            {
                "metadata": {"name": "hcs-node-npu-1", "namespace": "hcs-node-locks"},
                "spec": {"holderIdentity": "u-train"},
            },
        )
        pod = fake.put(
            PODS,
            {
                "metadata": {
                    "name": "train",
                    "namespace": "ml",
                    "uid": "u-train",
                    "annotations": {"devices.hcs.io/m": "5,6"},
                },
                "spec": {
                    "nodeName": "npu-1",
                    "containers": [
                        {
                            "name": "m",
                            "image": "i",
                            "resources": {"limits": {"huawei.com/Ascend910": "2"}},
                        }
                    ],
                },
            },
        )
        admitted = await asyncio.to_thread(kubelet.admit, pod, "huawei.com/Ascend910")
        assert sorted(admitted.ids["m"]) == ["5", "6"]
        assert admitted.answers["m"].envs["ASCEND_VISIBLE_DEVICES"] == "5,6"
        deadline = time.monotonic() + 10
        while fake.lease_holder("npu-1") != "":  # written after the answer, from the queue
            assert time.monotonic() < deadline, "the lock was never released"
            await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 15)
        kubelet.stop()
        shutil.rmtree(folder, ignore_errors=True)
    assert code == 0


async def test_the_plugin_advertises_numa_nodes_from_nvidia_smi_topo(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """`--tool-output nvidia-smi-topo=FILE` is read as the agent reads it: each GPU's NUMA node
    goes to kubelet in ListAndWatch (its topology manager aligns on it)."""
    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")))
    folder = short_dir()
    kubelet = FakeKubelet(folder)
    fixtures = Path(__file__).resolve().parents[1] / "agent" / "fixtures"
    command = [
        sys.executable,
        "-c",
        "import sys; from hcs_cli.main import main; sys.exit(main())",
        *("device-plugin", "--node-name", "gpu-1", "--vendor", "nvidia"),
        *("--kubelet-dir", str(kubelet.dir), "--kubeconfig", str(kubeconfig)),
        *("--tool-output", f"nvidia-smi={fixtures / 'nvidia-smi-a100-nounits.csv'}"),
        *("--tool-output", f"nvidia-smi-topo={REAL / 'nvidia/topo-a100x8-nv12-4nic-numa.txt'}"),
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        await asyncio.to_thread(kubelet.wait_devices, lambda d: len(d) == 8, 30.0)
        assert kubelet.numa == {str(i): 0 if i < 4 else 1 for i in range(8)}
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 15)
        kubelet.stop()
        shutil.rmtree(folder, ignore_errors=True)
    assert code == 0


def plugin_args(kubelet_dir: Path, kubeconfig: Path) -> list[str]:
    return [
        "device-plugin",
        "--node-name",
        "npu-1",
        "--vendor",
        "huawei",
        "--kubelet-dir",
        str(kubelet_dir),
        "--tool-output",
        f"npu-smi={REAL / 'ascend/npu-smi-910b3x8-24.1rc1.txt'}",
        "--kubeconfig",
        str(kubeconfig),
        "--log-level",
        "DEBUG",
    ]


async def test_a_plugin_without_kubelet_says_what_it_serves_and_what_it_waits_for(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """A wrong --kubelet-dir (a hostPath typo) is not silent: the start line names the plugin's
    socket and kubelet's, then the plugin says it is waiting, and why, until kubelet appears;
    it registers as soon as kubelet does, and its ready file comes and goes with kubelet."""
    from tests.processes import Started

    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")))
    folder = short_dir() / "device-plugins"
    plugin = Started(*plugin_args(folder, kubeconfig))
    kubelet = None
    try:
        start = await asyncio.to_thread(plugin.wait_for, r"device plugin for huawei on node npu-1")
        assert str(folder / "hcs-huawei.sock") in start.string
        assert str(folder / "kubelet.sock") in start.string
        waiting = await asyncio.to_thread(plugin.wait_for, r"waiting for kubelet: ")
        assert "no such folder" in waiting.string and "--kubelet-dir" in waiting.string
        ready = folder / "hcs-huawei.ready"
        assert not ready.exists()
        kubelet = FakeKubelet(folder.parent)  # kubelet starts: <root>/device-plugins/kubelet.sock
        assert kubelet.dir == folder
        deadline = time.monotonic() + 30
        while not kubelet.requests or not ready.exists():
            assert time.monotonic() < deadline, plugin.stderr
            await asyncio.sleep(0.05)
        kubelet.stop()
        (folder / "kubelet.sock").unlink(missing_ok=True)  # kubelet gone
        while ready.exists():
            assert time.monotonic() < deadline + 30, "still ready without kubelet"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(plugin.wait_for, r"waiting for kubelet: .*kubelet is not there")
    finally:
        plugin.stop()
        if kubelet is not None:
            kubelet.stop()
        shutil.rmtree(folder.parent, ignore_errors=True)


def test_waiting_is_said_again_every_interval_not_every_poll(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from hcs.vendors import VendorTable
    from node.deviceplugin import Allocator, DevicePlugin

    allocator = Allocator("n", VendorTable()["nvidia"], api=None)  # type: ignore[arg-type]
    plugin = DevicePlugin(allocator, tmp_path / "absent", lambda: [])
    caplog.set_level(logging.WARNING, "hcs.deviceplugin")
    for _ in range(5):
        plugin.step()
    assert sum("waiting for kubelet" in r.getMessage() for r in caplog.records) == 1
    plugin.waiting_log_s = 0.05
    for _ in range(3):
        time.sleep(0.06)
        plugin.step()
    assert sum("waiting for kubelet" in r.getMessage() for r in caplog.records) == 4
