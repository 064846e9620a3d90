"""The node under kubelet's real rules: init containers, topology alignment, a slow API server,
a crash before the records land, discovery that fails at boot, and what the agent publishes.
Pods go through the webhook, the extender (cluster mode, HTTP) and an imitated kubelet that
follows devicesToAllocate (tests/node/kubelet.py) over the real gRPC proto."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from typing import Any

import pytest

from hcs.assignment import container_devices
from tests.fake_apiserver import NODES, PODS
from tests.node.harness import stored, wait_for
from tests.node.test_device_plugin import Cluster, cluster

__all__ = ["cluster"]  # the simulated cluster fixture (gpu-1: 4 GPUs, NUMA 0 = 0,1; 1 = 2,3)


def vram(devices: int) -> dict[str, str]:
    return {"ai.compute/vram": f"{devices}Gi", "ai.compute/devices": str(devices)}


async def held(cluster: Cluster, pod: dict[str, Any]) -> tuple[str, ...]:
    uid = pod["metadata"]["uid"]
    await wait_for(lambda: uid in cluster.service.state.allocations)
    return cluster.service.state.allocations[uid].device_ids


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_init_one_then_app_one_holds_one_device(cluster: Cluster, seed: int) -> None:
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    node.kubelet.rng.seed(seed)
    pod = await cluster.create(cluster.pod([("app", vram(1))], init=[("fetch", vram(1))]))
    assert await cluster.schedule(pod, "gpu-1") == ""
    proposal = container_devices(stored(cluster.fake, pod)["metadata"]["annotations"])
    assert proposal["fetch"] == proposal["app"] and len(proposal["app"]) == 1
    admitted = await cluster.admit(pod, "gpu-1")
    assert admitted.ids["app"] == admitted.ids["fetch"]  # kubelet's reuse
    annotations = stored(cluster.fake, pod)["metadata"]["annotations"]
    assert container_devices(annotations)["app"] == tuple(admitted.ids["app"])
    assert await held(cluster, pod) == tuple(admitted.ids["app"])
    assert cluster.fake.lease_holder("gpu-1") == ""


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
async def test_init_two_then_app_one_wherever_kubelet_reuses(cluster: Cluster, seed: int) -> None:
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    node.kubelet.rng.seed(seed)  # which init device the app gets is Go map order
    pod = await cluster.create(cluster.pod([("app", vram(1))], init=[("fetch", vram(2))]))
    assert await cluster.schedule(pod, "gpu-1") == ""
    admitted = await cluster.admit(pod, "gpu-1")
    assert set(admitted.ids["app"]) <= set(admitted.ids["fetch"])
    annotations = stored(cluster.fake, pod)["metadata"]["annotations"]
    assert container_devices(annotations)["app"] == tuple(admitted.ids["app"])
    assert sorted(await held(cluster, pod)) == sorted(admitted.ids["fetch"])  # two devices


async def test_a_native_sidecar_keeps_its_device(cluster: Cluster) -> None:
    pod = cluster.pod([("app", vram(1))], init=[("proxy", vram(1))])
    pod["spec"]["initContainers"][0]["restartPolicy"] = "Always"
    pod = await cluster.create(pod)
    assert await cluster.schedule(pod, "gpu-1") == ""
    admitted = await cluster.admit(pod, "gpu-1")
    assert set(admitted.ids["app"]).isdisjoint(admitted.ids["proxy"])
    assert len(await held(cluster, pod)) == 2


async def test_a_legacy_pod_placed_without_hcs_with_init_two_app_one(cluster: Cluster) -> None:
    stray = cluster.pod(
        [("app", {"nvidia.com/gpu": "1"})],
        namespace="kube-system",
        init=[("warm", {"nvidia.com/gpu": "2"})],
    )
    stray["metadata"]["uid"] = "uid-stray"
    stray["spec"]["nodeName"] = "gpu-1"
    stray = cluster.fake.put(PODS, stray)
    # The extender counts the init container's devices too, before anything is written.
    await wait_for(lambda: "uid-stray" in cluster.service.state.allocations)
    assert len(cluster.service.state.allocations["uid-stray"].device_ids) == 2
    admitted = await cluster.admit(stray, "gpu-1")  # no UnexpectedAdmissionError
    assert set(admitted.ids["app"]) <= set(admitted.ids["warm"])
    allocations = cluster.service.state.allocations
    await wait_for(
        lambda: sorted(allocations["uid-stray"].device_ids) == sorted(admitted.ids["warm"])
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_single_numa_node_alignment_wins_and_the_books_follow(
    cluster: Cluster, seed: int
) -> None:
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    node.kubelet.rng.seed(seed)
    pod = await cluster.create(cluster.pod([("m", vram(2))], vendor="nvidia"))
    assert await cluster.schedule(pod, "gpu-1") == ""
    proposal = container_devices(stored(cluster.fake, pod)["metadata"]["annotations"])["m"]
    numa = {"0": 0, "1": 0, "2": 1, "3": 1}
    assert len({numa[d] for d in proposal}) == 1  # HCS keeps a container on one NUMA node
    other = 1 - numa[proposal[0]]
    # The topology manager aligned the container to the other NUMA node (the CPUs decided).
    admitted = await asyncio.to_thread(node.admit, stored(cluster.fake, pod), {"m": {other}})
    assert {numa[d] for d in admitted.ids["m"]} == {other}
    annotations = stored(cluster.fake, pod)["metadata"]["annotations"]
    assert sorted(container_devices(annotations)["m"]) == sorted(admitted.ids["m"])
    assert annotations["hcs.io/assigned-devices"].split(",") == list(
        container_devices(annotations)["m"]
    )
    uid = pod["metadata"]["uid"]
    await wait_for(
        lambda: (
            sorted(cluster.service.state.allocations[uid].device_ids) == sorted(admitted.ids["m"])
        )
    )


async def test_a_slow_api_server_does_not_stall_admission(cluster: Cluster) -> None:
    """With every API request taking 3 s, kubelet's calls are answered from memory: the
    imitated kubelet gives each call a 1 s deadline, which a plugin waiting on the API server
    would miss. The records land later."""
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    pod = await cluster.create(cluster.pod([("m", vram(1))]))
    assert await cluster.schedule(pod, "gpu-1") == ""
    await asyncio.to_thread(node.cache_has, pod)
    cluster.fake.delay_s = 3.0
    try:
        current = stored(cluster.fake, pod)
        admitted = await asyncio.to_thread(node.kubelet.admit, current, node.resource, timeout=1.0)
    finally:
        cluster.fake.delay_s = 0.0
    await asyncio.to_thread(node.flush, 30.0)
    annotations = stored(cluster.fake, pod)["metadata"]["annotations"]
    assert "m" in annotations["hcs.io/allocated"]
    assert container_devices(annotations)["m"] == tuple(admitted.ids["m"])
    assert cluster.fake.lease_holder("gpu-1") == ""


async def test_a_crash_before_the_records_land_heals_from_pod_resources(cluster: Cluster) -> None:
    """The plugin answers kubelet, then dies before its writes reach the API server. Kubelet
    keeps the allocation (checkpoint) and never calls again; the next plugin process reads
    kubelet's PodResources and writes the record, releasing the node's lock."""
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    pod = await cluster.create(cluster.pod([("m", vram(1))]))
    assert await cluster.schedule(pod, "gpu-1") == ""
    await asyncio.to_thread(node.cache_has, pod)
    cluster.fake.delay_s = 5.0  # the writes cannot land before the crash
    try:
        admitted = await asyncio.to_thread(
            node.kubelet.admit, stored(cluster.fake, pod), node.resource, timeout=1.0
        )
        await asyncio.to_thread(node.stop_plugin, crash=True)
    finally:
        cluster.fake.delay_s = 0.0
    annotations = stored(cluster.fake, pod)["metadata"]["annotations"]
    assert "hcs.io/allocated" not in annotations  # lost with the process
    assert cluster.fake.lease_holder("gpu-1") == pod["metadata"]["uid"]
    await asyncio.to_thread(node.start_plugin)
    await wait_for(lambda: cluster.fake.lease_holder("gpu-1") == "", timeout=15)
    annotations = stored(cluster.fake, pod)["metadata"]["annotations"]
    assert "m" in annotations["hcs.io/allocated"]
    assert container_devices(annotations)["m"] == tuple(admitted.ids["m"])


async def test_nothing_is_registered_before_discovery_and_the_name_follows_the_model(
    cluster: Cluster,
) -> None:
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    node.stop_plugin()
    healthy = node.compute
    before = len(node.kubelet.requests)
    node.discover_fails = True  # the vendor tool fails at boot
    await asyncio.to_thread(node.start_plugin)
    await asyncio.sleep(0.6)
    assert len(node.kubelet.requests) == before  # no guess at the resource name
    node.discover_fails = False
    kubelet = node.kubelet
    await wait_for(lambda: len(kubelet.requests) == before + 1)
    assert node.kubelet.requests[-1].resource_name == "nvidia.com/gpu"
    # The devices turn out to be of a model whose nodes advertise another resource.
    renamed = copy.deepcopy(healthy)
    for d in renamed["spec"]["devices"]:
        d["model"] = "T4-small"
    assert node.plugin is not None
    allocator = node.plugin.allocator
    allocator.profile = replace(
        allocator.profile, model_resources=(("T4-small", "example.com/small-gpu"),)
    )
    node.compute = renamed
    kubelet = node.kubelet
    await wait_for(lambda: kubelet.requests[-1].resource_name == "example.com/small-gpu")


async def test_the_agents_word_decides_reindexed_devices_and_slots(cluster: Cluster) -> None:
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    published = copy.deepcopy(cluster.fake.objects[NODES]["gpu-1"])
    published["spec"]["devices"][2]["unschedulable"] = True  # the agent saw GPU 2 re-indexed
    published["metadata"]["labels"]["hcs.io/device-slots"] = "3"
    cluster.fake.put(NODES, published)
    devices = await asyncio.to_thread(
        node.kubelet.wait_devices, lambda d: len(d) == 12 and d.get("2::0") == "Unhealthy"
    )
    assert {k for k, h in devices.items() if h == "Unhealthy"} == {"2::0", "2::1", "2::2"}


class _Unreadable:
    """A node view that fails (the cache broke): the plugin must not fail the pod for it."""

    def pods(self) -> list[dict[str, Any]]:
        raise RuntimeError("the cache is gone")

    def record(self, pod: Any, annotations: Any) -> None:
        raise AssertionError("nothing to record")

    def release(self, node: str, uid: str) -> None:
        raise AssertionError("nothing to release")

    def wait_for_change(self, timeout: float) -> bool:
        return False


def test_a_failing_preference_is_no_preference(caplog: pytest.LogCaptureFixture) -> None:
    from hcs.vendors import VendorTable
    from node.deviceplugin import Allocator, PluginDevice

    allocator = Allocator("n", VendorTable()["nvidia"], _Unreadable())
    allocator.devices = [PluginDevice(str(i), True) for i in range(2)]
    assert allocator.preferred(["0", "1"], [], 1) == []
    assert "no preference (the cache is gone)" in caplog.text


@pytest.mark.parametrize("cluster", [[("gpu-1", "nvidia", 1, 1)]], indirect=True)
@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
async def test_a_finished_pod_holds_no_device(cluster: Cluster, phase: str) -> None:
    """The API server still lists a finished pod on its node (and its annotations still name
    its device); the plugin must treat the device as free again."""
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    first = await cluster.create(cluster.pod([("m", vram(1))]))
    assert await cluster.schedule(first, "gpu-1") == ""
    await cluster.admit(first, "gpu-1")
    done = copy.deepcopy(stored(cluster.fake, first))
    done["status"] = {"phase": phase}
    cluster.fake.put(PODS, done)
    node.kubelet.forget(first["metadata"]["uid"])
    stray = cluster.pod([("legacy", {"nvidia.com/gpu": "1"})], namespace="kube-system")
    stray["metadata"]["uid"] = "uid-stray"
    stray["spec"]["nodeName"] = "gpu-1"
    stray = cluster.fake.put(PODS, stray)
    await asyncio.to_thread(node.cache_has, stray)
    admitted = await cluster.admit(stray, "gpu-1")
    assert admitted.ids["legacy"] == ["0"]
