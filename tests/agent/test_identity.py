"""A re-index (a GPU fell off the bus, the others were renumbered) never moves an allocation to
another physical device: the moved IDs are reported and unschedulable until their pods end."""

import asyncio
from pathlib import Path
from typing import Any

from kubernetes import client

from hcs.demand import parse_pod
from hcs.engine import EngineConfig, Reason, compile_request, evaluate
from hcs.models import ComputeNode
from hcs.state import ClusterState
from node.agent import AgentOptions, run
from node.devices import RawDevice
from node.identity import held_device_ids, unschedulable_devices
from node.publish import Publisher
from tests.agent.queries import query_csv
from tests.fake_apiserver import NODES, PODS, FakeApiServer

UUIDS = ["GPU-aaaa", "GPU-bbbb", "GPU-cccc", "GPU-dddd"]


def raw(*uuids: str) -> list[RawDevice]:
    return [
        RawDevice(str(i), "NVIDIA A100-SXM4-80GB", 81920, 0, "", identity=u)
        for i, u in enumerate(uuids)
    ]


def published(*uuids: str, marked: tuple[str, ...] = ()) -> dict[str, Any]:
    devices: list[dict[str, Any]] = [{"id": str(i), "identity": u} for i, u in enumerate(uuids)]
    for d in devices:
        if d["id"] in marked:
            d["unschedulable"] = True
    return {"spec": {"devices": devices}}


def test_moved_ids_are_marked_while_pods_hold_them() -> None:
    before = published(*UUIDS)
    after = raw("GPU-aaaa", "GPU-cccc", "GPU-dddd")  # GPU-bbbb fell off the bus
    moved = unschedulable_devices(before, after, None)
    assert set(moved) == {"1", "2"}
    assert "was GPU-bbbb, is now GPU-cccc (it was device 2)" in moved["1"]
    assert set(unschedulable_devices(before, after, {"2", "0"})) == {"2"}
    assert unschedulable_devices(before, after, set()) == {}
    assert unschedulable_devices(before, raw(*UUIDS), None) == {}  # nothing moved


def test_a_mark_stays_until_the_pods_are_gone() -> None:
    before = published("GPU-aaaa", "GPU-cccc", marked=("1",))
    now = raw("GPU-aaaa", "GPU-cccc")
    assert set(unschedulable_devices(before, now, {"1"})) == {"1"}
    assert unschedulable_devices(before, now, set()) == {}
    # A device that is not identified cannot be compared: no mark from nothing.
    assert unschedulable_devices(published("", ""), raw("", ""), None) == {}


def test_held_ids_come_from_live_pods_and_unknown_holders_make_it_unknown() -> None:
    def pod(annotations: dict[str, str], phase: str = "Running", limits: Any = None) -> Any:
        return {
            "metadata": {"annotations": annotations},
            "spec": {"containers": [{"resources": {"limits": limits or {}}}]},
            "status": {"phase": phase},
        }

    def gpu(r: str) -> bool:
        return r == "nvidia.com/gpu"

    pods = [
        pod({"hcs.io/assigned-devices": "0,3"}),
        pod({"hcs.io/assigned-devices": "1"}, phase="Succeeded"),
        pod({}, limits={"cpu": "1"}),
    ]
    assert held_device_ids(pods, gpu) == {"0", "3"}
    assert held_device_ids([*pods, pod({}, limits={"nvidia.com/gpu": "1"})], gpu) is None


def query(tmp_path: Path, uuids: list[str]) -> Path:
    return query_csv(tmp_path / f"q{len(uuids)}.csv", uuids)


def bound_pod(name: str, devices: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": name,
            "annotations": {"hcs.io/assigned-devices": devices, "hcs.io/assigned-node": "gpu-1"},
        },
        "spec": {
            "nodeName": "gpu-1",
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": "Running"},
    }


async def test_the_agent_marks_a_reindexed_device_until_its_pod_ends(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    cfg = client.Configuration()
    cfg.host = str(server.make_url("")).rstrip("/")
    pub = Publisher(client.ApiClient(cfg))

    async def cycle(uuids: list[str]) -> dict[str, Any]:
        opts = AgentOptions("gpu-1", tool_outputs={"nvidia-smi": query(tmp_path, uuids)})
        await asyncio.to_thread(run, opts, pub, 0, once=True)
        node: dict[str, Any] = fake.objects[NODES]["gpu-1"]
        return node

    first = await cycle(UUIDS)
    assert [d["identity"] for d in first["spec"]["devices"]] == UUIDS
    fake.put(PODS, bound_pod("train", "2"))  # a pod on GPU-cccc, known to the ledger as "2"
    fake.put(PODS, bound_pod("elsewhere", "0"))
    fake.put(PODS, {**bound_pod("other-node", "1"), "spec": {"nodeName": "gpu-2"}})

    after = await cycle(["GPU-aaaa", "GPU-cccc", "GPU-dddd"])
    marks = {d["id"]: d.get("unschedulable", False) for d in after["spec"]["devices"]}
    assert marks == {"0": False, "1": False, "2": True}
    schedulable = next(c for c in after["status"]["conditions"] if c["type"] == "Schedulable")
    assert (
        schedulable["reason"] == "DevicesReindexed"
        and "device 2: re-indexed" in schedulable["message"]
    )

    # The engine leaves the marked device alone: a pod needing all three devices cannot fit.
    state = ClusterState.from_nodes([ComputeNode.from_dict(after)])
    spec = {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "3"}}}]}
    req = compile_request(parse_pod({"metadata": {"name": "p", "uid": "u"}, "spec": spec}))
    ev = evaluate(state, req, state.lookup(["gpu-1"]), EngineConfig())
    assert Reason(int(ev.codes[0])) is not Reason.Fits

    again = await cycle(["GPU-aaaa", "GPU-cccc", "GPU-dddd"])  # still held: the mark stays
    assert [d.get("unschedulable", False) for d in again["spec"]["devices"]] == [False, False, True]
    fake.put(PODS, {**bound_pod("train", "2"), "status": {"phase": "Succeeded"}})
    cleared = await cycle(["GPU-aaaa", "GPU-cccc", "GPU-dddd"])
    assert not any(d.get("unschedulable") for d in cleared["spec"]["devices"])
