"""A simulated cluster end to end: 200 pods of mixed shapes pass through the webhook, the
extender's filter, prioritize and bind (HTTP, cluster mode), and each node's device plugin
(Allocate from an imitated kubelet), on two nodes per vendor (one exclusive, one shared). Pods
end along the way; midway every plugin and kubelet restarts. After each half: every container's
devices equal its annotation, kubelet's books equal HCS's ledger, no device is over capacity,
and no exclusive device serves two pods."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hcs.assignment import container_devices
from hcs.scheduling import SchedulerService
from hcs.vendors import VENDOR_NAMES
from tests.fake_apiserver import PODS, FakeApiServer
from tests.node.harness import (
    VENDORS,
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

REPLICAS = 4


def running(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod as kubelet reports it once its containers started."""
    out = copy.deepcopy(pod)
    out["status"] = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-21T10:00:00Z"}},
            }
            for c in out["spec"]["containers"]
        ],
    }
    return out


class Sim:
    def __init__(self, fake: FakeApiServer, http: Any, service: SchedulerService) -> None:
        self.fake = fake
        self.http = http
        self.service = service
        self.nodes: dict[str, SimNode] = {}
        self.live: dict[str, dict[str, Any]] = {}
        """UID -> pod admitted by a kubelet and still running."""
        self.pending = 0
        self.bypassed: list[bool] = []

    def shapes(self, rng: random.Random, i: int) -> dict[str, Any]:
        vendor = rng.choice(VENDOR_NAMES)
        resource = VENDORS[vendor].resource
        kind = rng.choice(("whole", "nvlink", "multi", "fraction", "fraction", "legacy"))
        annotations: dict[str, str] = {"hcs.io/vendor-preference": vendor}
        limits: list[tuple[str, dict[str, str]]]
        if kind == "whole":
            limits = [("main", {"ai.compute/vram": "60Gi"})]
        elif kind == "nvlink":
            limits = [("main", {"ai.compute/vram": "160Gi", "ai.compute/devices": "4"})]
            annotations["hcs.io/topology-preference"] = "high-bandwidth"
        elif kind == "multi":
            limits = [("a", {"ai.compute/vram": "8Gi"}), ("b", {"ai.compute/vram": "8Gi"})]
        elif kind == "fraction":
            limits = [("main", {"ai.compute/vram": f"{rng.choice((4, 8, 12))}Gi"})]
        else:
            limits = [("main", {resource: str(rng.choice((1, 2)))})]
            annotations = {}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": "ml", "annotations": annotations},
            "spec": {
                "containers": [
                    {"name": n, "image": "pytorch:2.4", "resources": {"limits": r}}
                    for n, r in limits
                ]
            },
        }

    async def schedule(self, pod: dict[str, Any]) -> str | None:
        """kube-scheduler: filter all nodes, prioritize, bind the best; the node or None."""
        names = sorted(self.nodes)
        args = {"Pod": pod, "Nodes": None, "NodeNames": names}
        passed = (await (await self.http.post("/filter", json=args)).json())["NodeNames"] or []
        if not passed:
            return None
        args["NodeNames"] = passed
        scores = await (await self.http.post("/prioritize", json=args)).json()
        best = max(scores, key=lambda s: (s["Score"], s["Host"]))["Host"]
        meta = pod["metadata"]
        bind = {
            "PodName": meta["name"],
            "PodNamespace": meta["namespace"],
            "PodUID": meta["uid"],
            "Node": best,
        }
        error = (await (await self.http.post("/bind", json=bind)).json())["Error"]
        assert error == "", error  # sequential: the lock is always free by now
        return str(best)

    async def run_pod(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        node = await self.schedule(pod)
        if node is None:
            self.pending += 1
            self.fake.delete(PODS, f"ml/{pod['metadata']['name']}")  # unschedulable: give up
            return
        await asyncio.to_thread(self.nodes[node].admit, stored(self.fake, pod))
        # Kubelet writes the status only: the plugin's records on the pod stay.
        self.live[uid] = self.fake.put(PODS, running(stored(self.fake, pod)))

    async def end(self, uid: str) -> None:
        pod = self.live.pop(uid)
        done = copy.deepcopy(stored(self.fake, pod))
        done["status"] = {"phase": "Succeeded"}
        self.fake.put(PODS, done)
        node = done["spec"]["nodeName"]
        kubelet = self.nodes[node].kubelet
        assert kubelet is not None
        kubelet.forget(uid)

    async def bypass(self, node: str) -> None:
        """A pod placed without HCS (preset nodeName, excluded namespace), whole devices."""
        sim = self.nodes[node]
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"stray-{node}",
                "namespace": "kube-system",
                "uid": f"stray-{node}",
            },
            "spec": {
                "nodeName": node,
                "containers": [
                    {"name": "legacy", "image": "i", "resources": {"limits": {sim.resource: "1"}}}
                ],
            },
        }
        state = self.service.state
        await wait_for(
            lambda: set(state.allocations) == set(self.live),
            why=lambda: f"{sorted(set(state.allocations) ^ set(self.live))}",
        )
        row = self.service.state.index[node]
        idle = int(self.service.state.dev_idle_mask[row].sum())
        current = self.fake.put(PODS, pod)
        if idle == 0:  # nothing free in HCS's books: refused, never a device someone holds
            with pytest.raises(AdmissionError, match="is held by"):
                await asyncio.to_thread(sim.admit, current)
            self.fake.delete(PODS, f"kube-system/{pod['metadata']['name']}")
            self.bypassed.append(False)
            return
        await asyncio.to_thread(sim.admit, current)
        self.live[pod["metadata"]["uid"]] = self.fake.put(PODS, running(stored(self.fake, current)))
        self.bypassed.append(True)

    async def check(self) -> None:
        """The four invariants, once the extender's watch has caught up."""
        state = self.service.state

        def ledger_matches() -> bool:
            return set(state.allocations) == set(self.live)

        def difference() -> str:
            extra = set(state.allocations) - set(self.live)
            phases = {
                uid: (o.get("status") or {}).get("phase")
                for o in self.fake.objects[PODS].values()
                if (uid := o["metadata"].get("uid")) in extra
            }
            return f"booked, not live: {phases}; live, not booked: " + str(
                sorted(set(self.live) - set(state.allocations))
            )

        await wait_for(ledger_matches, why=difference)
        for uid, pod in self.live.items():
            current = stored(self.fake, pod)
            node = self.nodes[current["spec"]["nodeName"]]
            assert node.kubelet is not None
            books = node.kubelet.books[uid]
            annotations = container_devices(current["metadata"]["annotations"])
            kubelet_view = {c: [k.split("::")[0] for k in ids] for c, ids in books.ids.items()}
            # each container's devices (Allocate's answer) equal its annotation
            assert {c: sorted(v) for c, v in kubelet_view.items()} == {
                c: sorted(v) for c, v in annotations.items()
            }, current["metadata"]["name"]
            # kubelet's books equal HCS's ledger
            alloc = state.allocations[uid]
            assert alloc.node == node.name
            assert sorted(c.device_id for c in alloc.charges) == sorted(
                d for ids in kubelet_view.values() for d in ids
            )
        for name, node in self.nodes.items():
            row = state.index[name]
            assert (state.dev_vram_free_mib[row] >= 0).all(), name  # no device over capacity
            assert node.kubelet is not None
            slots: dict[str, int] = {}
            for k in node.kubelet.in_use():
                slots[k.split("::")[0]] = slots.get(k.split("::")[0], 0) + 1
            assert max(slots.values(), default=0) <= node.replicas
            if node.replicas == 1:  # exclusive: no device serves two pods
                holders: dict[str, set[str]] = {}
                for uid, alloc in state.allocations.items():
                    if alloc.node == name:
                        for c in alloc.charges:
                            holders.setdefault(c.device_id, set()).add(uid)
                assert all(len(h) == 1 for h in holders.values()), name


@pytest.fixture
async def sim(aiohttp_server: Any, aiohttp_client: Any) -> AsyncIterator[Sim]:
    fake = FakeApiServer()
    specs = []
    for vendor in VENDOR_NAMES:
        for shared in (False, True):
            name = f"{vendor}-{'shared' if shared else 'excl'}"
            cn = compute_node(
                name,
                vendor,
                8,
                cliques=[[0, 1, 2, 3], [4, 5, 6, 7]],
                numa=[0, 0, 0, 0, 1, 1, 1, 1],
                vram_gi=80,
                shared=shared,
            )
            if shared:
                cn["metadata"]["labels"]["hcs.io/device-slots"] = str(REPLICAS)
            specs.append((name, vendor, REPLICAS if shared else 1, cn))
    put_nodes(fake, *(cn for *_, cn in specs))
    http, service, url = await start_extender(fake, aiohttp_server, aiohttp_client, len(specs))
    s = Sim(fake, http, service)
    for name, vendor, replicas, cn in specs:
        node = SimNode(name, vendor, cn, api_client(url), replicas=replicas)
        await asyncio.to_thread(node.start)
        s.nodes[name] = node
    yield s
    for node in s.nodes.values():
        await asyncio.to_thread(node.close)


async def test_two_hundred_pods_on_a_simulated_cluster(sim: Sim) -> None:
    rng = random.Random(20261121)
    ctx = webhook_context(sim.service.state)
    for i in range(200):
        if i == 100:
            await sim.check()
            for node in sim.nodes.values():  # everything on the node side restarts
                await asyncio.to_thread(node.restart_kubelet)
                await asyncio.to_thread(node.restart_plugin)
            await sim.check()
        if i in (20, 140):
            await sim.bypass("nvidia-excl" if i == 20 else "huawei-shared")
        raw = sim.shapes(rng, i)
        pod = sim.fake.put(PODS, admitted_pod(raw, ctx, f"uid-p{i}"))
        try:
            await sim.run_pod(pod)
        except AdmissionError as exc:  # never expected: nothing is ambiguous when sequential
            raise AssertionError(f"p{i}: {exc}") from None
        if sim.live and rng.random() < 0.45:
            await sim.end(rng.choice(sorted(sim.live)))
    await sim.check()
    assert len(sim.live) > 20 and sim.pending < 100  # the cluster was really used
    assert sim.bypassed[0]  # the first stray found a free device and was written down
    kubelets = [n.kubelet for n in sim.nodes.values()]
    assert all(k is not None and len(k.requests) >= 3 for k in kubelets)  # 1 + 2 restarts
