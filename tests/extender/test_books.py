"""The extender never places on incomplete books and never double-books on an unknown bind
outcome (issue 11), each behaviour pinned against the in-test API server."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.extender.test_cluster_mode import Cluster, Start, fresh_node, pod, start, until
from tests.fake_apiserver import PODS, FakeApiServer

__all__ = ["start"]  # the fixture, shared with test_cluster_mode


async def pods_filtered(
    start: Start, *names: str
) -> tuple[FakeApiServer, Cluster, list[dict[str, Any]]]:
    """A one-device node, the extender in step with it, and an 8Gi pod per name seen by filter."""
    fake = FakeApiServer()
    fake.put("computenodes", fresh_node("n1", n_devices=1))
    c = await start(fake)
    await c.ready()
    pods = [pod(name, {"ai.compute/vram": "8Gi"}) for name in names]
    for p in pods:
        fake.put(PODS, p)
        await c.filter(p, ["n1"])
    return fake, c, pods


async def one_pod_filtered(start: Start) -> tuple[FakeApiServer, Cluster, dict[str, Any]]:
    """A one-device node, the extender in step with it, and pod `a` seen by filter."""
    fake, c, (p,) = await pods_filtered(start, "a")
    return fake, c, p


async def test_nothing_is_placed_while_the_pod_list_never_answers(start: Start) -> None:
    """Pins: until every watch has synced, filter passes no node (Error says why) and bind
    records nothing."""
    fake = FakeApiServer()
    fake.put("computenodes", fresh_node("n1"))
    holder = pod("holder", {"nvidia.com/gpu": "8"}, node="n1")
    holder["metadata"]["annotations"] = {
        "hcs.io/assigned-devices": "0,1,2,3,4,5,6,7",
        "hcs.io/assigned-node": "n1",
    }
    fake.put(PODS, holder)  # a running pod holds every device; the extender cannot know yet
    fake.hang(PODS)
    c = await start(fake)
    await until(lambda: c.service.state.n_nodes == 1)  # nodes are listed, pods are not
    p = pod("new", {"ai.compute/vram": "8Gi"})
    fake.put(PODS, p)
    body = await c.filter(p, ["n1"])
    assert not body["NodeNames"] and body["Error"].startswith("NotReady:")
    assert "pods not listed yet" in body["Error"]
    error = await c.bind(p, "n1")
    assert error.startswith("NotReady:") and "nothing was bound" in error
    assert not c.service.state.allocations and not fake.bindings
    fake.answer(PODS)
    await c.ready()
    body = await c.filter(p, ["n1"])  # now the books show the holder: no device is free
    assert body["Error"] == "" and not body["NodeNames"]


async def test_after_410_gone_nothing_is_placed_until_the_relist_is_applied(
    start: Start,
) -> None:
    """Pins: a watch that must re-list (410 Gone) closes the books until the re-list lands."""
    fake = FakeApiServer()
    fake.put("computenodes", fresh_node("n1"))
    c = await start(fake)
    await c.ready()
    p = pod("new", {"ai.compute/vram": "8Gi"})
    fake.put(PODS, p)
    assert (await c.filter(p, ["n1"]))["NodeNames"] == ["n1"]
    fake.hang(PODS)
    fake.compact()
    fake.drop_watches()
    await until(lambda: not c.sync.pods.synced)
    fake.put(PODS, pod("later", {"ai.compute/vram": "1Gi"}))  # history moves past the cut
    body = await c.filter(p, ["n1"])
    assert not body["NodeNames"] and body["Error"].startswith("NotReady:")
    fake.answer(PODS)
    await c.ready()  # both feeds re-listed (the ComputeNode watch got 410 Gone too)
    assert (await c.filter(p, ["n1"]))["NodeNames"] == ["n1"]


async def test_a_binding_that_committed_before_a_5xx_is_kept(start: Start) -> None:
    """Pins: on a non-4xx error the allocation stays booked and is resolved by reading the pod;
    the devices are never handed to the next pod."""
    fake, c, (first, second) = await pods_filtered(start, "a", "b")
    fake.bind_failures.append((503, True, 0.0))  # the Binding lands, the answer is lost
    assert await c.bind(first, "n1") == ""  # read back: it is bound here
    assert c.service.state.allocations["uid-a"].state == "confirmed"
    error = await c.bind(second, "n1")
    assert "InsufficientDevices" in error or "InsufficientVRAM" in error
    assert set(c.service.state.allocations) == {"uid-a"}


async def test_an_unknown_outcome_keeps_the_devices_booked_until_resolved(start: Start) -> None:
    """Pins: after a 5xx with the pod still unbound the Binding may yet commit, so the
    allocation stays assumed (no second holder); a retry to the same node completes it."""
    fake, c, (first, second) = await pods_filtered(start, "a", "b")
    fake.bind_failures.append((500, False, 0.0))
    error = await c.bind(first, "n1")
    assert error.startswith("BindFailed") and "stay booked" in error
    assert c.service.state.allocations["uid-a"].state == "assumed"
    assert "Insufficient" in await c.bind(second, "n1")  # never a second holder
    assert await c.bind(first, "n1") == ""  # kube-scheduler's retry
    retried = c.service.state.allocations["uid-a"]
    assert retried.state == "confirmed"


async def test_an_unresolved_bind_expires_and_frees_the_node(start: Start) -> None:
    """Pins: an allocation whose bind never resolved is returned after a bounded time, with the
    node's lock (Ledger.expire_assumed is called)."""
    fake, c, p = await one_pod_filtered(start)
    fake.bind_failures.append((503, False, 0.0))
    assert (await c.bind(p, "n1")).startswith("BindFailed")
    assert fake.lease_holder("n1") == "uid-a"
    assert await c.service.expire_assumed(60.0) == []  # not yet
    assert [a.uid for a in await c.service.expire_assumed(0.0)] == ["uid-a"]
    assert not c.service.state.allocations and fake.lease_holder("n1") == ""


async def test_a_refused_binding_returns_the_devices(start: Start) -> None:
    """Pins: a 4xx is a refusal (nothing committed): devices and lock are returned at once."""
    fake, c, p = await one_pod_filtered(start)
    fake.bind_failures.append((422, False, 0.0))
    assert (await c.bind(p, "n1")).startswith("BindFailed")
    assert not c.service.state.allocations and fake.lease_holder("n1") == ""


async def test_a_late_failure_never_releases_what_a_retry_confirmed(start: Start) -> None:
    """Pins: a first bind whose refusal arrives after a retry of the same pod confirmed it
    leaves the confirmed allocation and the node's lock alone (the ledger's current record is
    checked)."""
    fake, c, p = await one_pod_filtered(start)
    late = asyncio.Event()
    fake.bind_failures.append((422, False, late))  # the first Binding is refused, late
    first = asyncio.create_task(c.bind(p, "n1"))
    await until(lambda: len(fake.bindings) == 1)
    assert await c.bind(p, "n1") == ""  # kube-scheduler's retry binds and confirms
    late.set()  # only now does the first one hear its refusal
    assert (await first).startswith("BindFailed")
    assert c.service.state.allocations["uid-a"].state == "confirmed"
    assert fake.lease_holder("n1") == "uid-a"  # still the pod's, until its Allocate


async def test_pods_placed_without_hcs_count_against_their_node(start: Start) -> None:
    """Pins: a pod on a node holding the vendor's resource without HCS's assignment reduces the
    node's free devices by that many; its real devices replace the guess once written."""
    fake = FakeApiServer()
    fake.put("computenodes", fresh_node("n1", n_devices=4))
    stray = pod("stray", {"nvidia.com/gpu": "3"}, node="n1", phase="Running")
    stray["metadata"]["namespace"] = "kube-system"
    fake.put(PODS, stray)  # default-scheduler placed it; nobody told HCS which GPUs
    c = await start(fake)
    await c.ready()
    await until(lambda: "uid-stray" in c.service.state.allocations)
    two = pod("two", {"ai.compute/vram": "8Gi", "ai.compute/devices": "2"})
    one = pod("one", {"ai.compute/vram": "8Gi"})
    for p in (two, one):
        fake.put(PODS, p)
    assert not (await c.filter(two, ["n1"]))["NodeNames"]  # 4 - 3 = 1 device left
    assert (await c.filter(one, ["n1"]))["NodeNames"] == ["n1"]
    guessed = c.service.state.allocations["uid-stray"].device_ids
    assert len(guessed) == 3
    # The device plugin (or an operator) writes the real assignment: the ledger follows it.
    stray = fake.objects[PODS]["kube-system/stray"]
    annotated = {
        **stray,
        "metadata": {
            **stray["metadata"],
            "annotations": {
                "hcs.io/assigned-devices": "0,1,2",
                "hcs.io/assigned-node": "n1",
            },
        },
    }
    fake.put(PODS, annotated)
    await until(lambda: c.service.state.allocations["uid-stray"].device_ids == ("0", "1", "2"))


def test_heartbeats_tolerate_two_missed_beats_and_clock_skew() -> None:
    """Pins the boundary: a node whose last beat is just within two missed 30 s beats plus 30 s
    of skew is still connected for the extender and the controller; just past it, it is not."""
    import time as _time

    from cluster.controllers import expire_heartbeats
    from hcs.demand import parse_pod
    from hcs.engine import EngineConfig, Reason, compile_request, evaluate
    from hcs.models import HEARTBEAT_INTERVAL_S, HEARTBEAT_TIMEOUT_S, ComputeNode
    from hcs.state import ClusterState
    from hcs.synthetic import node_dict

    assert HEARTBEAT_TIMEOUT_S >= 3 * HEARTBEAT_INTERVAL_S + 30  # two misses + skew
    now = 1_800_000_000.0
    config = EngineConfig(heartbeat_max_age_s=HEARTBEAT_TIMEOUT_S)
    req = compile_request(
        parse_pod(
            {
                "metadata": {"name": "p", "uid": "u"},
                "spec": {
                    "containers": [
                        {"name": "c", "resources": {"requests": {"ai.compute/vram": "1Gi"}}}
                    ]
                },
            }
        )
    )
    for age, connected in ((HEARTBEAT_TIMEOUT_S - 1, True), (HEARTBEAT_TIMEOUT_S + 1, False)):
        beat = _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(now - age))
        raw = node_dict("n1", heartbeat=beat, conditions={"AgentConnected": "True"})
        state = ClusterState.from_nodes([ComputeNode.from_dict(raw)])
        code = Reason(int(evaluate(state, req, state.lookup(["n1"]), config, now).codes[0]))
        assert (code is Reason.Fits) is connected, (age, code)
        updates = expire_heartbeats([raw], now, HEARTBEAT_TIMEOUT_S)
        assert (updates == []) is connected, (age, updates)
