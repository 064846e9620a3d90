"""A burst of pods through an imitation of kube-scheduler's loop and of each node's kubelet.

kube-scheduler (pkg/scheduler/schedule_one.go, backoff_queue): one scheduling cycle at a time
(filter, prioritize, pick the best score; ties broken at random), then the binding cycle runs
asynchronously, so the next scheduling cycle starts at once. A failed bind puts the pod in the
backoff queue: 1 s, doubling per attempt up to 10 s; a pod no node fits waits as well. Fresh
pods come first while backed-off ones wait their time.

Kubelet admits the pods bound to its node one after another (its sync loop handles pod
additions in turn), calling the device plugin's Allocate; then reports the pod Running.

Used by `tests/node/test_burst.py` (invariants) and `benchmarks/burst.py` (timings). Imports no
product code: it talks to the extender over HTTP and to the plugin through the imitated kubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import heapq
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.fake_apiserver import PODS, FakeApiServer

INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 10.0


class Http(Protocol):
    async def post_json(self, path: str, body: dict[str, Any]) -> Any: ...


class JsonClient:
    """An aiohttp test client as `Http`: POST a JSON body, read the JSON answer."""

    def __init__(self, http: Any) -> None:
        self.http = http

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return await (await self.http.post(path, json=body)).json()


class Admits(Protocol):
    name: str

    def admit(self, pod: dict[str, Any]) -> Any: ...


@dataclass
class Outcome:
    started: float = 0.0
    admitted: dict[str, float] = field(default_factory=dict)
    """Pod name -> when kubelet admitted it (monotonic)."""
    refused_binds: list[str] = field(default_factory=list)
    """Each bind the extender refused, its Error."""
    cycles: int = 0

    @property
    def last_admission_s(self) -> float:
        return max(self.admitted.values()) - self.started


def one_gpu_pod(name: str, resource: str = "nvidia.com/gpu") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "annotations": {}},
        "spec": {
            "schedulerName": "hcs-scheduler",
            "containers": [
                {"name": "main", "image": "i", "resources": {"limits": {resource: "1"}}}
            ],
        },
        "status": {"phase": "Pending"},
    }


async def run_burst(
    fake: FakeApiServer,
    http: Http,
    nodes: list[Admits],
    pods: list[dict[str, Any]],
    *,
    seed: int = 0,
    timeout: float = 120.0,
) -> Outcome:
    """Create `pods` at once, schedule them with kube-scheduler's loop, admit them with each
    node's kubelet; returns when every pod is admitted (or fails after `timeout`)."""
    rng = random.Random(seed)
    outcome = Outcome()
    names = sorted(n.name for n in nodes)
    by_name = {n.name: n for n in nodes}
    for pod in pods:
        fake.put(PODS, copy.deepcopy(pod))
    order = itertools.count()
    ready: list[tuple[float, int, dict[str, Any]]] = []  # (when, order, pod): active + backoff
    attempts: dict[str, int] = {}
    changed = asyncio.Event()
    binds: set[asyncio.Task[None]] = set()
    for pod in pods:
        heapq.heappush(ready, (0.0, next(order), pod))

    def back_off(pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        attempts[name] = attempts.get(name, 0) + 1
        wait = min(INITIAL_BACKOFF_S * 2 ** (attempts[name] - 1), MAX_BACKOFF_S)
        heapq.heappush(ready, (time.monotonic() + wait, next(order), pod))
        changed.set()

    async def bind(pod: dict[str, Any], node: str) -> None:
        meta = pod["metadata"]
        answer = await http.post_json(
            "/bind",
            {
                "PodName": meta["name"],
                "PodNamespace": meta["namespace"],
                "PodUID": meta["uid"],
                "Node": node,
            },
        )
        if answer["Error"]:
            outcome.refused_binds.append(answer["Error"])
            back_off(pod)

    async def scheduler() -> None:
        while len(outcome.admitted) < len(pods):
            if not ready or ready[0][0] > time.monotonic():
                changed.clear()
                wait = ready[0][0] - time.monotonic() if ready else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)
                continue
            _, _, pod = heapq.heappop(ready)
            outcome.cycles += 1
            args: dict[str, Any] = {"Pod": pod, "Nodes": None, "NodeNames": names}
            passed = (await http.post_json("/filter", args))["NodeNames"] or []
            if not passed:
                back_off(pod)
                continue
            args["NodeNames"] = passed
            scores = await http.post_json("/prioritize", args)
            best = max(s["Score"] for s in scores)
            node = rng.choice(sorted(s["Host"] for s in scores if s["Score"] == best))
            task = asyncio.create_task(bind(pod, node))  # the binding cycle runs on its own
            binds.add(task)
            task.add_done_callback(binds.discard)

    async def kubelet(node: Admits) -> None:
        done: set[str] = set()
        while len(outcome.admitted) < len(pods):
            bound = [
                p
                for p in fake.objects[PODS].values()
                if (p.get("spec") or {}).get("nodeName") == node.name
                and p["metadata"]["name"] not in done
            ]
            if not bound:
                await asyncio.sleep(0.005)
                continue
            for pod in bound:  # one after another, as kubelet's sync loop does
                await asyncio.to_thread(node.admit, copy.deepcopy(pod))
                name = pod["metadata"]["name"]
                done.add(name)
                outcome.admitted[name] = time.monotonic()
                current = fake.objects[PODS][f"{pod['metadata']['namespace']}/{name}"]
                running = copy.deepcopy(current)
                running["status"] = {"phase": "Running"}
                fake.put(PODS, running)
                changed.set()

    outcome.started = time.monotonic()
    tasks = [asyncio.create_task(scheduler())]
    tasks += [asyncio.create_task(kubelet(by_name[n])) for n in names]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # a failure inside the loops surfaces here
        assert len(outcome.admitted) == len(pods), (
            f"{len(outcome.admitted)} of {len(pods)} admitted in {timeout} s; refused binds: "
            f"{outcome.refused_binds[-3:]}"
        )
    finally:
        for task in [*tasks, *binds]:
            task.cancel()
        await asyncio.gather(*tasks, *binds, return_exceptions=True)
    return outcome
