"""Publishing ComputeNodes against the in-test API server: create, heartbeat writes that keep
transition times, spec updates only when something changed, conflicts, failed discovery."""

import asyncio
from pathlib import Path
from typing import Any

from kubernetes import client

from hcs.models import ComputeNode
from node.agent import AgentMetrics, AgentOptions, desired_node, run
from node.publish import Publisher
from tests.fake_apiserver import NODES, FakeApiServer
from tests.scrape import samples

FIX = Path(__file__).parent / "fixtures"


async def publisher(aiohttp_server: Any, fake: FakeApiServer) -> Publisher:
    server = await aiohttp_server(fake.app())
    cfg = client.Configuration()
    cfg.host = str(server.make_url("")).rstrip("/")
    return Publisher(client.ApiClient(cfg))


def options(csv: str = "nvidia-smi-a100-nounits.csv") -> AgentOptions:
    return AgentOptions(
        "gpu-1",
        tool_outputs={"nvidia-smi": FIX / csv, "nvidia-smi-topo": FIX / "nvidia-smi-topo-a100.txt"},
    )


async def publish(pub: Publisher, opts: AgentOptions) -> str:
    node, complete = desired_node(opts)
    result: str = await asyncio.to_thread(pub.publish, node, status_only=not complete)
    return result


async def test_first_publish_creates_then_heartbeats_write_only_the_status(
    aiohttp_server: Any,
) -> None:
    fake = FakeApiServer()
    pub = await publisher(aiohttp_server, fake)
    assert await publish(pub, options()) == "created"
    stored = ComputeNode.from_dict(fake.objects[NODES]["gpu-1"])
    assert len(stored.devices) == 8 and stored.ready
    # Stamp the stored conditions in the past, so a rewritten time would differ.
    first_transition = "2026-01-01T00:00:00Z"
    for condition in fake.objects[NODES]["gpu-1"]["status"]["conditions"]:
        condition["lastTransitionTime"] = first_transition
    writes = len(fake.node_writes)
    assert await publish(pub, options()) == "heartbeat"
    assert [kind for kind, _ in fake.node_writes[writes:]] == ["status"]
    status = fake.objects[NODES]["gpu-1"]["status"]
    assert status["conditions"][0]["lastTransitionTime"] == first_transition
    assert status["lastHeartbeat"] >= first_transition


async def test_a_changed_device_updates_the_spec(aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeApiServer()
    pub = await publisher(aiohttp_server, fake)
    await publish(pub, options())
    changed = tmp_path / "changed.csv"
    changed.write_text(
        (FIX / "nvidia-smi-a100-nounits.csv").read_text().replace("81920, 1024", "81920, 70000")
    )
    opts = AgentOptions("gpu-1", tool_outputs={"nvidia-smi": changed})
    assert await publish(pub, opts) == "updated"
    stored = ComputeNode.from_dict(fake.objects[NODES]["gpu-1"])
    assert stored.devices[0].vram_allocated_mib == 70000


async def test_conflicts_are_read_again_and_retried(aiohttp_server: Any) -> None:
    fake = FakeApiServer()
    pub = await publisher(aiohttp_server, fake)
    await publish(pub, options())
    fake.node_conflicts = 2
    assert await publish(pub, options()) == "heartbeat"
    assert fake.node_conflicts == 0


async def test_failed_discovery_marks_hardware_unhealthy_and_keeps_the_spec(
    aiohttp_server: Any,
) -> None:
    fake = FakeApiServer()
    pub = await publisher(aiohttp_server, fake)
    await publish(pub, options())
    broken = AgentOptions("gpu-1", tool_outputs={"nvidia-smi": FIX / "nvidia-smi-malformed.csv"})
    assert await publish(pub, broken) == "heartbeat"
    stored = ComputeNode.from_dict(fake.objects[NODES]["gpu-1"])
    assert len(stored.devices) == 8  # the spec is not wiped by a bad read
    hw = stored.condition("HardwareHealthy")
    assert hw is not None and hw.status == "False" and hw.reason == "DiscoveryFailed"
    assert stored.phase == "NotReady"


async def test_a_first_failed_discovery_still_publishes_why(aiohttp_server: Any) -> None:
    fake = FakeApiServer()
    pub = await publisher(aiohttp_server, fake)
    broken = AgentOptions("gpu-1", tool_outputs={"nvidia-smi": FIX / "nvidia-smi-malformed.csv"})
    assert await publish(pub, broken) == "created"
    stored = ComputeNode.from_dict(fake.objects[NODES]["gpu-1"])
    hw = stored.condition("HardwareHealthy")
    assert not stored.devices and stored.phase == "NotReady"
    assert hw is not None and hw.reason == "DiscoveryFailed" and "header" in (hw.message or "")
    assert await publish(pub, options()) == "updated"  # the devices arrive when read


async def test_the_agent_loop_survives_an_unreachable_api_server() -> None:
    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # nothing listens on the discard port
    pub = Publisher(client.ApiClient(cfg), retries=1)
    await asyncio.to_thread(run, options(), pub, 0.01, once=True)  # logs, does not raise


async def test_the_agent_exports_device_health_and_counts_failed_discoveries(
    aiohttp_server: Any,
) -> None:
    fake = FakeApiServer()
    pub = await publisher(aiohttp_server, fake)
    metrics = AgentMetrics()
    await asyncio.to_thread(run, options(), pub, 0, once=True, metrics=metrics)
    got = samples(metrics.registry)
    published = ComputeNode.from_dict(fake.objects[NODES]["gpu-1"])
    health = {
        dict(labels)["device"]: value
        for (name, labels), value in got.items()
        if name == "hcs_device_health_score"
    }
    # One series per published device, with the score the ComputeNode carries.
    assert health == {d.id: float(d.health_score) for d in published.devices} and len(health) == 8
    assert got[("hcs_agent_devices", (("node", "gpu-1"), ("vendor", "nvidia")))] == 8
    assert got[("hcs_agent_last_success_timestamp_seconds", (("node", "gpu-1"),))] > 0
    assert not [k for k in got if k[0] == "hcs_agent_discovery_failures_total"]

    broken = AgentOptions("gpu-1", tool_outputs={"nvidia-smi": FIX / "nvidia-smi-malformed.csv"})
    await asyncio.to_thread(run, broken, pub, 0, once=True, metrics=metrics)
    await asyncio.to_thread(run, broken, pub, 0, once=True, metrics=metrics)
    got = samples(metrics.registry)
    failures = (("node", "gpu-1"), ("reason", "DiscoveryFailed"))
    assert got[("hcs_agent_discovery_failures_total", failures)] == 2

    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # nothing listens: the write fails
    gone = Publisher(client.ApiClient(cfg), retries=1)
    await asyncio.to_thread(run, options(), gone, 0, once=True, metrics=metrics)
    assert (
        samples(metrics.registry)[("hcs_agent_publish_failures_total", (("node", "gpu-1"),))] == 1
    )
