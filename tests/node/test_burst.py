"""A burst of pods onto one node through kube-scheduler's loop (asynchronous binds, backoff)
and kubelet's device manager: binds wait their turn for the node's lock instead of being
refused into kube-scheduler's backoff. Invariants: every pod admitted, no device twice,
kubelet's books equal HCS's. Timings are in benchmarks/burst.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hcs.assignment import container_devices
from tests.extender.test_extender_http import metric
from tests.fake_apiserver import PODS, FakeApiServer
from tests.node.burst import JsonClient, one_gpu_pod, run_burst
from tests.node.harness import (
    SimNode,
    api_client,
    compute_node,
    put_nodes,
    start_extender,
    wait_for,
)


@pytest.fixture
async def cluster(aiohttp_server: Any, aiohttp_client: Any) -> AsyncIterator[Any]:
    fake = FakeApiServer()
    computes = [compute_node(f"gpu-{i}", "nvidia", 8, vram_gi=80) for i in range(2)]
    put_nodes(fake, *computes)
    http, service, url = await start_extender(fake, aiohttp_server, aiohttp_client, 2)
    nodes = [SimNode(c["metadata"]["name"], "nvidia", c, api_client(url)) for c in computes]
    for node in nodes:
        await asyncio.to_thread(node.start)
    yield fake, JsonClient(http), service, nodes
    for node in nodes:
        await asyncio.to_thread(node.close)


def check_books(fake: FakeApiServer, service: Any, nodes: list[SimNode]) -> None:
    by_name = {n.name: n for n in nodes}
    seen: dict[tuple[str, str], str] = {}
    for pod in fake.objects[PODS].values():
        uid, node = pod["metadata"]["uid"], pod["spec"]["nodeName"]
        assert pod["status"]["phase"] == "Running", pod["metadata"]["name"]
        kubelet = by_name[node].kubelet
        assert kubelet is not None
        ids = [k.split("::")[0] for c in kubelet.books[uid].ids.values() for k in c]
        annotated = [
            d for ds in container_devices(pod["metadata"]["annotations"]).values() for d in ds
        ]
        assert sorted(ids) == sorted(annotated)  # Allocate's answer is HCS's assignment
        alloc = service.state.allocations[uid]
        assert alloc.node == node
        assert sorted(c.device_id for c in alloc.charges) == sorted(ids)  # books equal
        for device in ids:  # no device twice
            assert (node, device) not in seen, f"{device} on {node}: {seen[(node, device)]}, {uid}"
            seen[(node, device)] = uid


async def test_eight_pods_fill_one_node_without_a_refused_bind(cluster: Any) -> None:
    fake, http, service, nodes = cluster
    # Bin-packing: every pod prefers the node already in use, so all 8 go to one node.
    pods = [one_gpu_pod(f"p{i}") for i in range(8)]
    outcome = await run_burst(fake, http, nodes[:1], pods)
    assert outcome.refused_binds == []  # each bind waited its turn instead
    assert outcome.cycles == len(pods)  # one scheduling cycle each: no backoff, no retry
    await wait_for(lambda: len(service.state.allocations) == len(pods))
    check_books(fake, service, nodes)
    assert service.queue_depth == {}  # nobody left waiting


async def test_a_burst_over_two_nodes_books_every_device_once(cluster: Any) -> None:
    fake, http, service, nodes = cluster
    pods = [one_gpu_pod(f"p{i}") for i in range(16)]  # exactly both nodes' 16 GPUs
    outcome = await run_burst(fake, http, nodes, pods, seed=3)
    assert outcome.refused_binds == []
    await wait_for(lambda: len(service.state.allocations) == len(pods))
    check_books(fake, service, nodes)


async def test_without_a_wait_the_burst_falls_back_on_backoff(cluster: Any) -> None:
    """--bind-wait 0 is yesterday's refusal: binds are refused with NodeAdmitting (not a
    capacity error) and kube-scheduler retries them after its backoff; the books still hold."""
    fake, http, service, nodes = cluster
    service.bind_wait_s = 0.0
    pods = [one_gpu_pod(f"p{i}") for i in range(3)]
    outcome = await run_burst(fake, http, nodes[:1], pods)
    assert outcome.refused_binds, "3 pods at once onto one node: some bind met the lock"
    assert all(e.startswith("NodeAdmitting: ") for e in outcome.refused_binds)
    assert outcome.cycles > len(pods)
    await wait_for(lambda: len(service.state.allocations) == len(pods))
    check_books(fake, service, nodes)


async def test_a_pod_kubelet_never_admits_holds_the_queue_only_for_the_wait(cluster: Any) -> None:
    """Kubelet down or the image stuck: the binds behind it give up after --bind-wait with
    NodeAdmitting, devices returned; once the holder is gone the lock is taken over."""
    fake, http, service, _ = cluster
    service.bind_wait_s = 0.5
    first, second = one_gpu_pod("stuck"), one_gpu_pod("next")
    for pod in (first, second):
        fake.put(PODS, pod)

    async def bind(pod: dict[str, Any]) -> str:
        meta = pod["metadata"]
        args = {"PodName": meta["name"], "PodNamespace": "ml", "PodUID": meta["uid"]}
        answer = await http.post_json("/bind", {**args, "Node": "gpu-0"})
        return str(answer["Error"])

    async def metrics() -> str:
        return str(await (await http.http.get("/metrics")).text())

    assert await bind(first) == ""  # bound; kubelet never runs Allocate for it
    waiting = asyncio.create_task(bind(second))
    await wait_for(lambda: service.queue_depth.get("gpu-0") == 1)
    assert metric(await metrics(), "hcs_extender_node_lock_queue", node="gpu-0") == 1
    error = await waiting
    text = await metrics()
    assert metric(text, "hcs_extender_binds_total", result="NodeAdmitting") == 1
    assert metric(text, "hcs_extender_node_lock_wait_seconds_count") == 2  # both binds
    assert metric(text, "hcs_extender_node_lock_wait_seconds_sum") >= 0.5
    assert "hcs_extender_node_lock_queue{" not in text  # nobody waits now
    assert error.startswith("NodeAdmitting: node gpu-0 is admitting pod ml/stuck"), error
    assert "waited 0.5 s (--bind-wait)" in error
    assert "uid-next" not in service.state.allocations  # its devices went back
    assert service.queue_depth == {}
    fake.delete(PODS, "ml/stuck")  # the holder is gone: the next bind takes the lock over
    assert await bind(second) == ""
