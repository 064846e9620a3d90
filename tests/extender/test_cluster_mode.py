"""Cluster mode against an in-test API server that speaks list/watch: recovery from Pod
annotations, Bindings, watch events, reconnects after errors, readiness, heartbeats."""

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kubernetes import client

from cluster.kubeio import LIST_PAGE
from cluster.sync import ClusterSync, KubeBinder
from extender.app import create_app
from hcs.engine import EngineConfig
from hcs.errors import HcsError
from hcs.podbooks import allocation_from_pod
from hcs.scheduling import SchedulerService
from hcs.state import ClusterState
from hcs.synthetic import make_node, node_dict
from tests.fake_apiserver import NODES, PODS, FakeApiServer

Client = TestClient[web.Request, web.Application]
API = client.ApiClient()


def pod(
    name: str,
    requests: dict[str, str],
    *,
    annotations: dict[str, str] | None = None,
    node: str | None = None,
    phase: str = "Pending",
) -> dict[str, Any]:
    obj = client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=client.V1ObjectMeta(
            name=name, namespace="team-a", uid=f"uid-{name}", annotations=annotations
        ),
        spec=client.V1PodSpec(
            node_name=node,
            containers=[
                client.V1Container(
                    name="main",
                    image="img",
                    resources=client.V1ResourceRequirements(requests=requests, limits=requests),
                )
            ],
        ),
        status=client.V1PodStatus(phase=phase),
    )
    result: dict[str, Any] = API.sanitize_for_serialization(obj)
    return result


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


class Cluster:
    def __init__(
        self, fake: FakeApiServer, service: SchedulerService, sync: ClusterSync, http: Client
    ) -> None:
        self.fake, self.service, self.sync, self.http = fake, service, sync, http

    async def ready(self) -> None:
        async def ok() -> bool:
            return (await self.http.get("/readyz")).status == 200

        deadline = time.monotonic() + 10
        while not await ok():
            assert time.monotonic() < deadline, "extender never became ready"
            await asyncio.sleep(0.02)

    async def filter(self, p: dict[str, Any], names: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = await (
            await self.http.post("/filter", json={"Pod": p, "Nodes": None, "NodeNames": names})
        ).json()
        return body

    async def bind(self, p: dict[str, Any], node: str) -> str:
        meta = p["metadata"]
        body = await (
            await self.http.post(
                "/bind",
                json={
                    "PodName": meta["name"],
                    "PodNamespace": meta["namespace"],
                    "PodUID": meta["uid"],
                    "Node": node,
                },
            )
        ).json()
        error: str = body["Error"]
        return error


Start = Callable[..., Awaitable[Cluster]]


@pytest.fixture
def start(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> Start:
    async def go(
        fake: FakeApiServer, heartbeat: float = 60.0, stale_after: float = 120.0
    ) -> Cluster:
        server = await aiohttp_server(fake.app())
        cfg = client.Configuration()
        cfg.host = str(server.make_url("")).rstrip("/")
        api = client.ApiClient(cfg)
        service = SchedulerService(
            ClusterState(), EngineConfig(heartbeat_max_age_s=heartbeat), binder=KubeBinder(api)
        )
        sync = ClusterSync(
            service, api, stale_after_s=stale_after, watch_timeout_s=2, backoff=(0.05, 0.2)
        )
        http = await aiohttp_client(create_app(service, sync=sync))
        return Cluster(fake, service, sync, http)

    return go


def fresh_node(name: str, vendor: str = "nvidia", **kwargs: Any) -> dict[str, Any]:
    """A ComputeNode whose agent heartbeat is now."""
    hb = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return node_dict(name, vendor, heartbeat=hb, **kwargs)


async def test_restart_recovers_allocations_from_pod_annotations(start: Start) -> None:
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("n1"))
    fake.put(
        PODS,
        pod(
            "running",
            {"ai.compute/vram": "20Gi", "ai.compute/devices": "2"},
            node="n1",
            phase="Running",
            annotations={
                "hcs.io/assigned-vendor": "nvidia",
                "hcs.io/assigned-node": "n1",
                "hcs.io/assigned-devices": "3,5",
                "hcs.io/scheduling-score": "80",
            },
        ),
    )
    c = await start(fake)
    await c.ready()
    alloc = c.service.state.allocations["uid-running"]
    assert (alloc.node, alloc.device_ids, alloc.state) == ("n1", ("3", "5"), "confirmed")
    body = await c.filter(pod("wants7", {"ai.compute/devices": "7"}), ["n1"])
    assert body["FailedNodes"]["n1"].startswith("InsufficientDevices")


async def test_bind_creates_the_binding_with_the_device_annotations(start: Start) -> None:
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("n1", n_devices=4))
    p = fake.put(PODS, pod("train", {"ai.compute/vram": "40Gi", "ai.compute/devices": "2"}))
    c = await start(fake)
    await c.ready()
    assert (await c.filter(p, ["n1"]))["NodeNames"] == ["n1"]
    assert await c.bind(p, "n1") == ""
    binding = fake.bindings[-1]
    assert binding["kind"] == "Binding" and binding["target"] == {
        "apiVersion": "v1",
        "kind": "Node",
        "name": "n1",
    }
    annotations = binding["metadata"]["annotations"]
    assert annotations["hcs.io/assigned-node"] == "n1"
    assert annotations["hcs.io/assigned-vendor"] == "nvidia"
    assert len(annotations["hcs.io/assigned-devices"].split(",")) == 2
    assert 0 <= int(annotations["hcs.io/scheduling-score"]) <= 100
    stored = fake.objects[PODS]["team-a/train"]
    assert stored["spec"]["nodeName"] == "n1"
    assert (
        stored["metadata"]["annotations"]["hcs.io/assigned-devices"]
        == annotations["hcs.io/assigned-devices"]
    )
    assert c.service.state.allocations["uid-train"].state == "confirmed"
    # kube-scheduler retries a bind whose reply it lost: the Binding exists, the answer is success.
    assert await c.bind(p, "n1") == ""
    # The watch brings the bound pod back; the allocation is unchanged, not doubled: each of
    # its two devices is charged once, and nothing else is charged on the node.
    # A marker pod written after the bind: once the watch applied it, it applied the bound
    # pod's event too (events arrive in order).
    fake.put(PODS, pod("marker", {"cpu": "1"}))
    await until(lambda: "uid-marker" in c.sync.pods.known)
    (alloc,) = c.service.state.allocations.values()
    assert alloc.uid == "uid-train" and len(alloc.charges) == 2
    row = c.service.state.index["n1"]
    holders = c.service.state.dev_holders[row].tolist()
    assert sum(holders) == 2 and max(holders) == 1


async def test_bind_of_a_pod_filter_never_saw_reads_it_from_the_api_server(start: Start) -> None:
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("n1"))
    p = fake.put(PODS, pod("direct", {"ai.compute/vram": "8Gi"}))
    c = await start(fake)
    await c.ready()
    assert await c.bind(p, "n1") == ""
    assert "uid-direct" in c.service.state.allocations


async def test_a_refused_binding_releases_the_allocation(start: Start) -> None:
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("n1"))
    p = fake.put(PODS, pod("doomed", {"ai.compute/vram": "8Gi"}))
    c = await start(fake)
    await c.ready()
    await c.filter(p, ["n1"])
    del fake.objects[PODS]["team-a/doomed"]  # deleted between filter and bind
    error = await c.bind(p, "n1")
    assert error.startswith("BindFailed: API server answered 404")
    assert c.service.state.allocations == {}


async def test_watch_events_update_nodes_and_allocations(start: Start) -> None:
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("n1"))
    c = await start(fake)
    await c.ready()
    fake.put(NODES, fresh_node("n2", "huawei"))
    await until(lambda: "n2" in c.service.state.index)
    fake.put(
        PODS,
        pod(
            "held",
            {"ai.compute/vram": "8Gi"},
            node="n2",
            phase="Running",
            annotations={"hcs.io/assigned-node": "n2", "hcs.io/assigned-devices": "0"},
        ),
    )
    await until(lambda: "uid-held" in c.service.state.allocations)
    finished = pod(
        "held",
        {"ai.compute/vram": "8Gi"},
        node="n2",
        phase="Succeeded",
        annotations={"hcs.io/assigned-node": "n2", "hcs.io/assigned-devices": "0"},
    )
    fake.put(PODS, finished)
    await until(lambda: "uid-held" not in c.service.state.allocations)
    fake.delete(NODES, "n2")
    await until(lambda: "n2" not in c.service.state.index)
    body = await c.filter(pod("late", {"ai.compute/vram": "1Gi"}), ["n2"])
    assert body["FailedAndUnresolvableNodes"]["n2"].startswith("NodeNotFound")


async def test_a_broken_watch_is_relisted_and_misses_nothing(start: Start) -> None:
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("n1"))
    fake.put(NODES, fresh_node("n2"))
    c = await start(fake)
    await c.ready()
    lists_before = fake.list_calls[NODES]
    # The watch drops; before it can reconnect (nothing here yields to the loop) the node goes
    # away and history is compacted. The reconnecting watch gets 410 Gone and only a fresh list
    # can tell that n2 was deleted.
    fake.drop_watches()
    fake.delete(NODES, "n2")
    fake.compact()
    await until(lambda: fake.list_calls[NODES] > lists_before)
    await until(lambda: "n2" not in c.service.state.index)
    fake.put(NODES, fresh_node("n3"))
    await until(lambda: "n3" in c.service.state.index)


async def test_large_lists_are_read_in_pages_and_an_expired_one_is_read_again(
    start: Start,
) -> None:
    """Lists come LIST_PAGE objects at a time (a 50,000-node list never sits in memory whole);
    a continue token that expires mid-list (the version was compacted) fails that list, which
    is read again from the start: nothing missed, nothing kept that is gone."""
    fake = FakeApiServer()
    n = 2 * LIST_PAGE + 34
    for i in range(n):
        fake.put(NODES, fresh_node(f"n{i:04d}"))
    fake.expire_continues = 1
    c = await start(fake)
    await c.ready()
    assert c.service.state.n_nodes == n
    # One page and an expired continue, then three pages.
    assert fake.list_calls[NODES] == 2 + 3
    assert fake.expire_continues == 0
    fake.drop_watches()
    fake.delete(NODES, "n0007")
    fake.compact()
    await until(lambda: "n0007" not in c.service.state.index)
    assert c.service.state.n_nodes == n - 1


async def test_readiness_waits_for_the_first_sync(start: Start) -> None:
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("n1"))
    fake.fail_lists = 4
    c = await start(fake)
    first = await c.http.get("/readyz")
    assert first.status == 503
    assert "not listed yet" in await first.text()
    await c.ready()
    assert c.service.state.n_nodes == 1


async def test_stale_heartbeats_make_nodes_agent_not_connected(start: Start) -> None:
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("alive"))
    fake.put(NODES, node_dict("silent", heartbeat="2026-01-01T00:00:00Z"))
    c = await start(fake)
    await c.ready()
    body = await c.filter(pod("p", {"ai.compute/vram": "1Gi"}), ["alive", "silent"])
    assert body["NodeNames"] == ["alive"]
    assert body["FailedAndUnresolvableNodes"]["silent"].startswith("AgentNotConnected")


def test_allocation_from_pod_checks_the_annotation_against_the_request() -> None:
    state = ClusterState.from_nodes([make_node("n1")])
    good = pod(
        "p",
        {"ai.compute/vram": "8Gi", "ai.compute/devices": "2"},
        node="n1",
        annotations={"hcs.io/assigned-node": "n1", "hcs.io/assigned-devices": "1,4"},
    )
    alloc = allocation_from_pod(good, state)
    assert alloc is not None
    assert [(c.device_id, c.vram_mib) for c in alloc.charges] == [("1", 4096), ("4", 4096)]
    bad = pod(
        "q",
        {"ai.compute/vram": "8Gi", "ai.compute/devices": "2"},
        node="n1",
        annotations={"hcs.io/assigned-node": "n1", "hcs.io/assigned-devices": "1"},
    )
    with pytest.raises(HcsError, match="names 1 devices, the pod asks for 2"):
        allocation_from_pod(bad, state)
    assert allocation_from_pod(pod("r", {"ai.compute/vram": "8Gi"}), state) is None


def test_two_containers_sharing_one_device_are_recovered_from_their_own_annotations() -> None:
    """On a shared node both containers may sit on device 0: the pod-wide list says "0" once,
    each container's devices.hcs.io/<container> says it for itself."""
    state = ClusterState.from_nodes([make_node("s1", shared=True)])
    p = pod("p", {"ai.compute/vram": "8Gi"}, node="s1")
    p["spec"]["containers"].append(copy.deepcopy(p["spec"]["containers"][0]) | {"name": "side"})
    main = p["spec"]["containers"][0]["name"]
    p["metadata"]["annotations"] = {
        "hcs.io/assigned-node": "s1",
        "hcs.io/assigned-devices": "0",
        f"devices.hcs.io/{main}": "0",
        "devices.hcs.io/side": "0",
    }
    alloc = allocation_from_pod(p, state)
    assert alloc is not None
    assert [(c.container, c.device_id, c.vram_mib) for c in alloc.charges] == [
        (main, "0", 8192),
        ("side", "0", 8192),
    ]


async def test_a_bind_gives_up_on_a_slow_api_server_within_its_call_timeout(start: Start) -> None:
    """Every bind-path call has a deadline (1.5 s): kube-scheduler must not wait on a hung
    API server. The API server answers each call after 4 s here; the bind answers an Error
    (and returns the devices) instead of succeeding late."""
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("n1"))
    p = fake.put(PODS, pod("slow", {"ai.compute/vram": "8Gi"}))
    c = await start(fake)
    await c.ready()
    await c.filter(p, ["n1"])
    fake.delay_s = 4.0
    try:
        error = await c.bind(p, "n1")
    finally:
        fake.delay_s = 0.0
    assert error.startswith("BindFailed") and "timed out" in error, error
    assert "uid-slow" not in c.service.state.allocations  # the lock was never taken
    assert fake.bindings == []


async def test_readiness_fails_when_a_watch_has_been_silent_too_long(start: Start) -> None:
    """--stale-after: the extender's books are only as fresh as its watches. Here the pods'
    watch stays open but silent (a half-open connection); once it has had no news for the
    bound, /readyz fails (kube-scheduler's sidecar is taken out), and recovers with news."""
    fake = FakeApiServer()
    fake.put(NODES, fresh_node("n1"))
    c = await start(fake, stale_after=3.0)  # healthy watches end on time every 2 s
    await c.ready()
    fake.stall(PODS)
    fake.drop_watches()  # the pods' next watch stays open and silent

    async def status() -> tuple[int, str]:
        r = await c.http.get("/readyz")
        return r.status, await r.text()

    deadline = time.monotonic() + 10
    while (got := await status())[0] == 200:
        assert time.monotonic() < deadline, "readiness never noticed the silent watch"
        await asyncio.sleep(0.05)
    assert got[0] == 503 and "no news of pods" in got[1], got
    fake.unstall(PODS)
    await c.ready()
