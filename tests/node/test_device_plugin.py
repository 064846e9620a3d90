"""The HCS device plugin against an imitated kubelet (real v1beta1 gRPC over unix sockets), with
pods admitted by the webhook, bound by the extender over HTTP in cluster mode, and the node lock
and pods kept by the in-test API server."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hcs.assignment import A_ALLOCATED, container_devices
from hcs.scheduling import SchedulerService
from tests.fake_apiserver import PODS, FakeApiServer
from tests.node.harness import (
    SimNode,
    admitted_pod,
    api_client,
    compute_node,
    put_nodes,
    start_extender,
    stored,
    wait_for,
    webhook_context,
)
from tests.node.kubelet import AdmissionError


@dataclass
class Cluster:
    fake: FakeApiServer
    http: Any
    service: SchedulerService
    nodes: dict[str, SimNode]
    api: Any
    count: int = 0

    def pod(
        self,
        containers: list[tuple[str, dict[str, str]]],
        *,
        vendor: str | None = None,
        namespace: str = "ml",
        init: list[tuple[str, dict[str, str]]] | None = None,
    ) -> dict[str, Any]:
        self.count += 1
        annotations = {"hcs.io/vendor-preference": vendor} if vendor else {}

        def spec(name: str, limits: dict[str, str]) -> dict[str, Any]:
            return {"name": name, "image": "pytorch:2.4", "resources": {"limits": limits}}

        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"p{self.count}",
                "namespace": namespace,
                "annotations": annotations,
            },
            "spec": {"containers": [spec(n, r) for n, r in containers]},
        }
        if init:
            pod["spec"]["initContainers"] = [spec(n, r) for n, r in init]
        return pod

    async def create(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Through the webhook into the API server."""
        uid = f"uid-{pod['metadata']['name']}"
        admitted = admitted_pod(pod, webhook_context(self.service.state), uid)
        return self.fake.put(PODS, admitted)

    async def schedule(self, pod: dict[str, Any], node: str) -> str:
        """kube-scheduler's calls for `node`: filter, then bind; the bind's Error ('' = bound)."""
        filtered = await (
            await self.http.post("/filter", json={"Pod": pod, "Nodes": None, "NodeNames": [node]})
        ).json()
        if node not in (filtered["NodeNames"] or []):
            return f"filtered out: {filtered['FailedNodes']}"
        meta = pod["metadata"]
        bind = {
            "PodName": meta["name"],
            "PodNamespace": meta["namespace"],
            "PodUID": meta["uid"],
            "Node": node,
        }
        error: str = (await (await self.http.post("/bind", json=bind)).json())["Error"]
        return error

    async def admit(self, pod: dict[str, Any], node: str) -> Any:
        current = stored(self.fake, pod)
        return await asyncio.to_thread(self.nodes[node].admit, current)


@pytest.fixture
async def cluster(aiohttp_server: Any, aiohttp_client: Any, request: Any) -> AsyncIterator[Cluster]:
    specs: list[tuple[str, str, int, int]] = getattr(
        request, "param", [("gpu-1", "nvidia", 4, 1)]
    )  # name, vendor, devices, replicas
    fake = FakeApiServer()
    nodes_json = []
    for name, vendor, n, replicas in specs:
        cn = compute_node(name, vendor, n, numa=[0 if i < n // 2 else 1 for i in range(n)])
        if replicas > 1:
            cn["metadata"]["labels"]["hcs.io/device-sharing"] = "shared"
            cn["metadata"]["labels"]["hcs.io/device-slots"] = str(replicas)
        nodes_json.append((name, vendor, replicas, cn))
    put_nodes(fake, *(cn for *_, cn in nodes_json))
    http, service, url = await start_extender(fake, aiohttp_server, aiohttp_client, len(specs))
    sims = {}
    for name, vendor, replicas, cn in nodes_json:
        sim = SimNode(name, vendor, cn, api_client(url), replicas=replicas)
        await asyncio.to_thread(sim.start)
        sims[name] = sim
    yield Cluster(fake, http, service, sims, api_client(url))
    for sim in sims.values():
        await asyncio.to_thread(sim.close)


async def test_the_plugin_registers_and_streams_device_health(cluster: Cluster) -> None:
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    (req,) = node.kubelet.requests
    assert (req.version, req.resource_name, req.endpoint) == (
        "v1beta1",
        "nvidia.com/gpu",
        "hcs-nvidia.sock",
    )
    assert req.options.get_preferred_allocation_available
    assert node.kubelet.devices == {str(i): "Healthy" for i in range(4)}
    node.compute["spec"]["devices"][2]["healthScore"] = 30  # ECC errors appeared
    await asyncio.to_thread(node.kubelet.wait_devices, lambda d: d.get("2") == "Unhealthy")


ANSWERS: dict[str, Callable[[list[str], str], dict[str, str]]] = {
    # NVIDIA's default is volume-mounts: the runtime reads the GPUs from the mount points.
    "nvidia": lambda ids, node: {
        "NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices",
        "CUDA_VISIBLE_DEVICES": "0,1",
    },
    "huawei": lambda ids, node: {
        "ASCEND_VISIBLE_DEVICES": ",".join(ids),
        "ASCEND_RT_VISIBLE_DEVICES": "0,1",
    },
    "hygon": lambda ids, node: {"HIP_VISIBLE_DEVICES": "0,1"},
    "cambricon": lambda ids, node: {
        "CAMBRICON_VISIBLE_DEVICES": ",".join(ids),
        "MLU_VISIBLE_DEVICES": "0,1",
    },
}
NODES: dict[str, Callable[[list[str]], list[str]]] = {
    "nvidia": lambda ids: [],
    "huawei": lambda ids: [
        "/dev/davinci_manager",
        "/dev/devmm_svm",
        "/dev/hisi_hdc",
        *(f"/dev/davinci{i}" for i in ids),
    ],
    "hygon": lambda ids: [
        "/dev/kfd",
        *(p for i in ids for p in (f"/dev/dri/card{i}", f"/dev/dri/renderD{128 + int(i)}")),
    ],
    "cambricon": lambda ids: ["/dev/cambricon_ctl", *(f"/dev/cambricon_dev{i}" for i in ids)],
}


@pytest.mark.parametrize(
    "cluster",
    [[("n-" + v, v, 4, 1)] for v in ANSWERS],
    ids=list(ANSWERS),
    indirect=True,
)
async def test_each_vendor_gets_exactly_the_devices_bound_per_container(cluster: Cluster) -> None:
    (name,) = cluster.nodes
    vendor = cluster.nodes[name].vendor
    pod = cluster.pod(
        [
            ("a", {"ai.compute/vram": "1Gi", "ai.compute/devices": "2"}),
            ("b", {"ai.compute/vram": "1Gi", "ai.compute/devices": "2"}),
        ],
        vendor=vendor,
    )
    pod = await cluster.create(pod)
    assert await cluster.schedule(pod, name) == ""
    assert cluster.fake.lease_holder(name) == pod["metadata"]["uid"]
    admitted = await cluster.admit(pod, name)
    annotations = stored(cluster.fake, pod)["metadata"]["annotations"]
    per_container = container_devices(annotations)
    assert set(per_container["a"]).isdisjoint(per_container["b"])
    for c in ("a", "b"):
        ids = list(per_container[c])
        answer = admitted.answers[c]
        assert dict(answer.envs) == ANSWERS[vendor](ids, name)
        assert [d.host_path for d in answer.devices] == NODES[vendor](ids)
        assert [(m.container_path, m.host_path) for m in answer.mounts] == (
            [(f"/var/run/nvidia-container-devices/GPU-{name}-{i}", "/dev/null") for i in ids]
            if vendor == "nvidia"
            else []
        )
        # kubelet's books hold exactly the devices HCS chose for this container
        assert sorted(admitted.ids[c]) == sorted(ids)
        # and the webhook's env names the same devices through the container's own annotation
        env = next(x for x in pod["spec"]["containers"] if x["name"] == c).get("env") or []
        refs = [e["valueFrom"]["fieldRef"]["fieldPath"] for e in env if "valueFrom" in e]
        assert refs == (
            [] if vendor == "hygon" else [f"metadata.annotations['devices.hcs.io/{c}']"]
        )
    assert cluster.fake.lease_holder(name) == ""  # released once every container is allocated


async def test_cdi_names_the_gpus_by_uuid(cluster: Cluster) -> None:
    node = cluster.nodes["gpu-1"]
    assert node.plugin is not None
    node.plugin.allocator.strategies = ("cdi-cri",)
    pod = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(pod, "gpu-1") == ""
    answer = (await cluster.admit(pod, "gpu-1")).answers["m"]
    (dev,) = container_devices(stored(cluster.fake, pod)["metadata"]["annotations"])["m"]
    assert [c.name for c in answer.cdi_devices] == [f"nvidia.com/gpu=GPU-gpu-1-{dev}"]


async def test_two_binds_to_one_node_wait_for_each_other(cluster: Cluster) -> None:
    first = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    second = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    results = await asyncio.gather(
        cluster.schedule(first, "gpu-1"), cluster.schedule(second, "gpu-1")
    )
    assert sorted(r == "" for r in results) == [False, True]
    waiting = second if results[0] == "" else first
    bound = first if waiting is second else second
    assert "is admitting pod" in results[[first, second].index(waiting)]
    await cluster.admit(bound, "gpu-1")  # Allocate releases the lock
    assert await cluster.schedule(waiting, "gpu-1") == ""
    await cluster.admit(waiting, "gpu-1")
    a, b = (
        container_devices(stored(cluster.fake, p)["metadata"]["annotations"])["m"]
        for p in (first, second)
    )
    assert set(a).isdisjoint(b)


async def test_a_pod_deleted_between_bind_and_allocate_frees_the_lock(cluster: Cluster) -> None:
    gone = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(gone, "gpu-1") == ""
    cluster.fake.delete(PODS, "ml/" + gone["metadata"]["name"])
    nxt = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(nxt, "gpu-1") == ""  # the stale lock is taken over
    assert cluster.fake.lease_holder("gpu-1") == nxt["metadata"]["uid"]
    admitted = await cluster.admit(nxt, "gpu-1")
    assert admitted.ids["m"] == list(
        container_devices(stored(cluster.fake, nxt)["metadata"]["annotations"])["m"]
    )


async def test_a_lock_whose_pod_runs_elsewhere_is_taken_over(cluster: Cluster) -> None:
    held = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(held, "gpu-1") == ""
    running = copy.deepcopy(stored(cluster.fake, held))
    running["status"] = {"phase": "Running"}  # admitted, though the release never landed
    cluster.fake.put(PODS, running)
    nxt = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(nxt, "gpu-1") == ""


async def test_allocate_again_after_a_kubelet_restart_gives_the_same_answer(
    cluster: Cluster,
) -> None:
    node = cluster.nodes["gpu-1"]
    pod = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "2"})]))
    assert await cluster.schedule(pod, "gpu-1") == ""
    first = await cluster.admit(pod, "gpu-1")
    await asyncio.to_thread(node.restart_kubelet)
    assert node.kubelet is not None
    again = await asyncio.to_thread(node.kubelet.allocate_again, first.ids["m"])
    assert dict(again.envs) == dict(first.answers["m"].envs)
    allocated = stored(cluster.fake, pod)["metadata"]["annotations"][A_ALLOCATED]
    assert allocated == '{"m":' + str(first.ids["m"]).replace("'", '"').replace(" ", "") + "}"


async def test_a_pod_that_bypassed_hcs_gets_free_devices_and_is_written_down(
    cluster: Cluster,
) -> None:
    hcs_pod = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "2"})]))
    assert await cluster.schedule(hcs_pod, "gpu-1") == ""
    await cluster.admit(hcs_pod, "gpu-1")
    # default-scheduler placed this one (a preset nodeName); the webhook never saw it.
    stray = cluster.pod([("legacy", {"nvidia.com/gpu": "1"})], namespace="kube-system")
    stray["metadata"]["uid"] = "uid-stray"
    stray["spec"]["nodeName"] = "gpu-1"
    stray = cluster.fake.put(PODS, stray)
    admitted = await cluster.admit(stray, "gpu-1")
    annotations = stored(cluster.fake, stray)["metadata"]["annotations"]
    taken = container_devices(stored(cluster.fake, hcs_pod)["metadata"]["annotations"])["m"]
    (got,) = container_devices(annotations)["legacy"]
    assert got not in taken and admitted.ids["legacy"] == [got]
    assert annotations["hcs.io/assigned-devices"] == got
    assert annotations["hcs.io/assigned-node"] == "gpu-1"
    # the extender's ledger learns it from the watch: the device is no longer free
    allocations = cluster.service.state.allocations
    await wait_for(
        lambda: "uid-stray" in allocations and allocations["uid-stray"].device_ids == (got,)
    )


async def test_two_pending_pods_of_one_size_are_refused_rather_than_guessed(
    cluster: Cluster,
) -> None:
    hcs_pod = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(hcs_pod, "gpu-1") == ""
    stray = cluster.pod([("legacy", {"nvidia.com/gpu": "1"})], namespace="kube-system")
    stray["metadata"]["uid"] = "uid-stray"
    stray["spec"]["nodeName"] = "gpu-1"
    stray = cluster.fake.put(PODS, stray)
    with pytest.raises(AdmissionError, match="several pods could be"):
        await cluster.admit(stray, "gpu-1")
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None and not node.kubelet.books  # nothing handed out


async def test_kubelet_choosing_other_free_devices_wins_and_the_books_follow(
    cluster: Cluster,
) -> None:
    pod = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(pod, "gpu-1") == ""
    (dev,) = container_devices(stored(cluster.fake, pod)["metadata"]["annotations"])["m"]
    other = next(str(i) for i in range(4) if str(i) != dev)
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    await asyncio.to_thread(node.kubelet.allocate_again, [other])
    await asyncio.to_thread(node.flush)
    annotations = stored(cluster.fake, pod)["metadata"]["annotations"]
    assert annotations["devices.hcs.io/m"] == other
    assert annotations["hcs.io/assigned-devices"] == other
    uid = pod["metadata"]["uid"]
    await wait_for(lambda: cluster.service.state.allocations[uid].device_ids == (other,))
    assert cluster.fake.lease_holder("gpu-1") == ""  # every container allocated


async def test_kubelet_offering_another_pods_device_is_refused(cluster: Cluster) -> None:
    first = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(first, "gpu-1") == ""
    await cluster.admit(first, "gpu-1")
    (held,) = container_devices(stored(cluster.fake, first)["metadata"]["annotations"])["m"]
    second = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(second, "gpu-1") == ""
    node = cluster.nodes["gpu-1"]
    assert node.kubelet is not None
    with pytest.raises(Exception, match=f"device {held} is held by ml/{first['metadata']['name']}"):
        await asyncio.to_thread(node.kubelet.allocate_again, [held])


async def test_the_plugin_registers_again_after_its_own_restart(cluster: Cluster) -> None:
    node = cluster.nodes["gpu-1"]
    pod = await cluster.create(cluster.pod([("m", {"nvidia.com/gpu": "1"})]))
    assert await cluster.schedule(pod, "gpu-1") == ""
    await asyncio.to_thread(node.restart_plugin)
    assert node.kubelet is not None and len(node.kubelet.requests) == 2
    admitted = await cluster.admit(pod, "gpu-1")
    assert admitted.ids["m"] == list(
        container_devices(stored(cluster.fake, pod)["metadata"]["annotations"])["m"]
    )
