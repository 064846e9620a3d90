"""Controllers: heartbeat expiry flips AgentConnected (and the extender then filters the node out),
quota status is recounted from live pods."""

import asyncio
import datetime as dt
from typing import Any

from kubernetes import client

from cluster.controllers import (
    ControllerMetrics,
    ControllerRunner,
    expire_heartbeats,
    recount_quotas,
    run_controllers,
)
from hcs.demand import parse_pod
from hcs.engine import EngineConfig, Reason, compile_request, filter_nodes
from hcs.models import ComputeNode
from hcs.state import ClusterState
from hcs.synthetic import node_dict, quota_dict
from tests.fake_apiserver import NODES, PODS, QUOTAS, FakeApiServer
from tests.scrape import samples

NOW = dt.datetime(2026, 11, 21, 8, 0, tzinfo=dt.UTC).timestamp()


def beat(seconds_ago: float) -> str:
    return dt.datetime.fromtimestamp(NOW - seconds_ago, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(name: str, seconds_ago: float | None, connected: str | None = None) -> dict[str, Any]:
    conditions = {"Ready": "True", "HardwareHealthy": "True"}
    if connected is not None:
        conditions["AgentConnected"] = connected
    return node_dict(
        name,
        heartbeat=beat(seconds_ago) if seconds_ago is not None else None,
        conditions=conditions,
    )


def pod(
    name: str,
    vram: str,
    *,
    phase: str = "Running",
    namespace: str = "team-a",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"u-{name}",
            "labels": labels or {},
        },
        "spec": {
            "containers": [
                {
                    "name": "m",
                    "image": "i",
                    "resources": {
                        "requests": {"ai.compute/vram": vram},
                        "limits": {"ai.compute/vram": vram},
                    },
                }
            ]
        },
        "status": {"phase": phase},
    }


def quota(hard: dict[str, str], used: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    obj = quota_dict(hard, used=used or {}, **spec)
    obj["metadata"]["resourceVersion"] = "1"
    return obj


def test_stale_heartbeats_disconnect_and_fresh_ones_reconnect() -> None:
    nodes = [
        node("fresh", 10),
        node("stale", 600),
        node("never", None),
        node("back", 5, connected="False"),
        node("still-gone", 900, connected="False"),
    ]
    updates = {
        obj["metadata"]["name"]: status
        for obj, status in expire_heartbeats(nodes, NOW, timeout_s=90)
    }
    assert set(updates) == {"stale", "never", "back"}
    for name in ("stale", "never"):
        cond = next(c for c in updates[name]["conditions"] if c["type"] == "AgentConnected")
        assert (cond["status"], cond["reason"], updates[name]["phase"]) == (
            "False",
            "HeartbeatTimeout",
            "NotReady",
        )
    assert "600s ago" in next(
        c["message"] for c in updates["stale"]["conditions"] if c["type"] == "AgentConnected"
    )
    assert updates["back"]["phase"] == "Ready"


def test_an_expired_node_is_then_filtered_out_as_agent_not_connected() -> None:
    raw = node("stale", 600)
    ((_, status),) = expire_heartbeats([raw], NOW, timeout_s=90)
    state = ClusterState.from_nodes([ComputeNode.from_dict({**raw, "status": status})])
    demand = parse_pod(pod("p", "1Gi"))
    result = filter_nodes(state, compile_request(demand), ["stale"], EngineConfig())
    assert Reason(int(result.codes[0])) is Reason.AgentNotConnected


def test_quota_status_is_recounted_from_live_pods() -> None:
    pods = [
        pod("a", "8Gi"),
        pod("b", "4Gi"),
        pod("done", "16Gi", phase="Succeeded"),
        pod("elsewhere", "32Gi", namespace="team-b"),
    ]
    ((_, status),) = recount_quotas([quota({"vram": "100Gi"}, {"vram": "60Gi"})], pods)
    assert status["used"]["vram"] == "12Gi"
    assert status["hard"] == {"vram": "100Gi"}
    correct = quota(
        {"vram": "100Gi"}, {"vram": "12Gi", "tflops-fp16": "0", "tflops-fp32": "0", "devices": "2"}
    )
    correct["status"]["hard"] = {"vram": "100Gi"}
    assert recount_quotas([correct], pods) == []  # nothing to write
    scoped = quota({"vram": "100Gi"}, selector={"matchLabels": {"tier": "x"}})
    ((_, only_labelled),) = recount_quotas([scoped], [*pods, pod("t", "2Gi", labels={"tier": "x"})])
    assert only_labelled["used"]["vram"] == "2Gi"


async def test_one_round_against_the_api_server(aiohttp_server: Any) -> None:
    fake = FakeApiServer()
    fake.put(NODES, node("stale", 600))
    fake.put(NODES, node("fresh", 0))
    fake.put(QUOTAS, quota({"vram": "100Gi"}, {"vram": "50Gi"}))
    fake.put(PODS, pod("running", "8Gi"))
    fake.put(PODS, pod("ended", "30Gi", phase="Failed"))
    server = await aiohttp_server(fake.app())
    cfg = client.Configuration()
    cfg.host = str(server.make_url("")).rstrip("/")
    runner = ControllerRunner(client.ApiClient(cfg), heartbeat_timeout_s=90)
    updated = await asyncio.to_thread(runner.round, NOW)
    assert updated == (1, 1)
    stale = ComputeNode.from_dict(fake.objects[NODES]["stale"])
    assert stale.phase == "NotReady" and not stale.condition_true("AgentConnected", default=True)
    assert ComputeNode.from_dict(fake.objects[NODES]["fresh"]).ready
    assert fake.objects[QUOTAS]["team-a/q"]["status"]["used"]["vram"] == "8Gi"
    assert await asyncio.to_thread(runner.round, NOW) == (0, 0)  # converged: no writes


async def test_a_round_reads_every_page_of_a_large_list(aiohttp_server: Any) -> None:
    """The controller's lists are read in pages too (cluster.kubeio.list_pages): quota is
    recounted over every pod, not the first page's."""
    from cluster.kubeio import LIST_PAGE

    fake = FakeApiServer()
    fake.put(NODES, node("fresh", 0))
    fake.put(QUOTAS, quota({"vram": "100Ti"}, {"vram": "0"}))
    n = LIST_PAGE * 2 + 7
    for i in range(n):
        fake.put(PODS, pod(f"p{i:04d}", "1Gi"))
    server = await aiohttp_server(fake.app())
    cfg = client.Configuration()
    cfg.host = str(server.make_url("")).rstrip("/")
    runner = ControllerRunner(client.ApiClient(cfg), heartbeat_timeout_s=90)
    await asyncio.to_thread(runner.round, NOW)
    assert fake.objects[QUOTAS]["team-a/q"]["status"]["used"]["vram"] == f"{n}Gi"
    assert fake.list_calls[PODS] == 3


async def test_pods_waiting_on_capacity_get_an_event_saying_why(aiohttp_server: Any) -> None:
    fake = FakeApiServer()
    fake.put(NODES, node_dict("gpu", "nvidia", 1, heartbeat=beat(0), conditions={"Ready": "True"}))
    holder = pod("holder", "8Gi")
    holder["metadata"]["annotations"] = {
        "hcs.io/assigned-node": "gpu",
        "hcs.io/assigned-devices": "0",
        "hcs.io/assigned-vendor": "nvidia",
    }
    holder["spec"]["nodeName"] = "gpu"
    fake.put(PODS, holder)
    waiting = pod("waiting", "8Gi", phase="Pending")
    waiting["metadata"]["annotations"] = {"hcs.io/assigned-vendor": "nvidia"}
    waiting["metadata"]["creationTimestamp"] = beat(300)
    fake.put(PODS, waiting)
    server = await aiohttp_server(fake.app())
    cfg = client.Configuration()
    cfg.host = str(server.make_url("")).rstrip("/")
    runner = ControllerRunner(client.ApiClient(cfg), heartbeat_timeout_s=90)
    await asyncio.to_thread(runner.round, NOW)
    (event,) = fake.events_posted
    assert event["involvedObject"]["name"] == "waiting"
    assert event["reason"] == "WaitingForCompute"
    assert event["message"] == "waiting for nvidia capacity: 1 node(s) InsufficientDevices"
    await asyncio.to_thread(runner.round, NOW + 60)
    assert len(fake.events_posted) == 1  # not repeated within five minutes


async def test_the_controller_exports_quota_use_and_limits_in_base_units(
    aiohttp_server: Any,
) -> None:
    fake = FakeApiServer()
    fake.put(NODES, node("stale", 600))
    # run_controllers reconciles at the wall clock's now, not at NOW
    fake.put(
        NODES, node_dict("fresh", heartbeat=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    )
    fake.put(QUOTAS, quota({"vram": "100Gi", "devices": "4"}, {"vram": "50Gi"}))
    fake.put(PODS, pod("running", "8Gi"))
    fake.put(PODS, pod("ended", "30Gi", phase="Failed"))
    server = await aiohttp_server(fake.app())
    cfg = client.Configuration()
    cfg.host = str(server.make_url("")).rstrip("/")
    metrics = ControllerMetrics()
    runner = ControllerRunner(client.ApiClient(cfg), heartbeat_timeout_s=90, metrics=metrics)
    await asyncio.to_thread(run_controllers, runner, 0, once=True)
    got = samples(metrics.registry)
    key = (("namespace", "team-a"), ("quota", "q"))
    # The running pod's 8Gi (the failed pod holds nothing), though the status said 50Gi.
    # One series per unit: bytes, devices, TFLOPS by precision.
    assert got[("hcs_quota_vram_used_bytes", key)] == 8 * 2**30
    assert got[("hcs_quota_vram_hard_bytes", key)] == 100 * 2**30
    assert got[("hcs_quota_devices_used", key)] == 1
    assert got[("hcs_quota_devices_hard", key)] == 4
    assert not [k for k in got if k[0].startswith("hcs_quota_tflops")]  # not limited
    build = [k for k in got if k[0] == "hcs_build_info"]
    assert len(build) == 1 and ("component", "controller") in build[0][1]
    assert got[("hcs_controller_agents_lost", ())] == 1
    assert got[("hcs_controller_rounds_total", (("result", "ok"),))] == 1

    fake.delete(QUOTAS, "team-a/q")  # a deleted quota's series go too
    fake.fail_lists = 1
    await asyncio.to_thread(run_controllers, runner, 0, once=True)
    assert samples(metrics.registry)[("hcs_controller_rounds_total", (("result", "failed"),))] == 1
    await asyncio.to_thread(run_controllers, runner, 0, once=True)
    assert not [k for k in samples(metrics.registry) if k[0].startswith("hcs_quota_")]
