"""One scheduling cycle over HTTP, HCS against the practical floor, with the books changing.

kube-scheduler calls the extender inside every scheduling cycle, one pod at a time: filter with
every candidate name (`nodeCacheCapable: true`), then prioritize with the names that passed,
then (asynchronously) bind. This benchmark runs two servers side by side, each in its own
process, on a synthetic mixed-vendor inventory (default 5,000 and 20,000 nodes x 8 devices,
half of them carrying allocations):

- **HCS**: the extender in local mode (`extender.server.serve`).
- **The practical floor**: an aiohttp server that only decodes each request with orjson and
  sends back, encoded with orjson, the reply HCS gave to the same request. Whatever HCS spends
  beyond it is HCS's own.

Each cycle sends one new pod (unique UID; a mix of shapes, vendor preferences and legacy
resources, as full Pod objects) through filter and prioritize on one keep-alive connection,
to HCS and then to the floor, alternating pod by pod so that both see the same machine. After
each cycle the pod is bound to its best node (not timed), so the books change between cycles
as in a cluster and no reply can be reused. Then filters per second with 4 connections in
flight, each filter followed by its bind, HCS and floor in alternating rounds.

Printed per size: the cycle's p50 and p99 (filter + prioritize, as the client sees them), the
floor's, their ratio; filter p99 and the floor's; filters per second and the floor's; and the
targets (issue 23): cycle p50 <= 1.5x the floor's, filter p99 <= 1.5x, filters/s >= 0.7x.
Ratios are what to compare across machines: absolute times on a shared VM are not stable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import http.client
import multiprocessing
import random
import statistics
import sys
import time
from typing import Any

import aiohttp
import orjson
from common import free_port, percentile, print_row, wait_for_port

SHAPES: tuple[tuple[dict[str, Any], dict[str, str]], ...] = (
    ({"requests": {"ai.compute/vram": "24Gi"}}, {}),
    (
        {
            "requests": {
                "ai.compute/vram": "160Gi",
                "ai.compute/devices": "4",
                "ai.compute/tflops-fp16": "800",
            }
        },
        {"hcs.io/topology-preference": "high-bandwidth"},
    ),
    ({"requests": {"ai.compute/vram": "40Gi"}}, {"hcs.io/vendor-preference": "huawei,nvidia"}),
    ({"limits": {"nvidia.com/gpu": "2"}}, {}),
    ({"requests": {"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "50"}}, {}),
    ({"limits": {"huawei.com/Ascend910": "1"}}, {}),
)
TARGETS = {"cycle_p50": 1.5, "filter_p99": 1.5, "filters_per_s": 0.7}
RATE_POOL = 24

# A Pod as kube-scheduler sends it: the whole v1.Pod, with what a Deployment's pod carries.
POD_TEMPLATE: dict[str, Any] = {
    "metadata": {
        "namespace": "bench",
        "resourceVersion": "1",
        "generateName": "train-7d9f8c-",
        "creationTimestamp": "2026-12-06T10:00:00Z",
        "labels": {"app": "train", "pod-template-hash": "7d9f8c", "team": "ml"},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "train-7d9f8c",
                "uid": "5d6f0c3e-2a5b-4c8e-9f1a-000000000001",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    },
    "spec": {
        "schedulerName": "hcs-scheduler",
        "serviceAccountName": "default",
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}},
            {"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {}}]}},
        ],
        "containers": [
            {
                "name": "main",
                "image": "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime",
                "command": ["python", "train.py", "--epochs", "10"],
                "env": [
                    {"name": "MASTER_PORT", "value": "29500"},
                    {"name": "NCCL_DEBUG", "value": "WARN"},
                ],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "terminationMessagePath": "/dev/termination-log",
                "imagePullPolicy": "IfNotPresent",
            }
        ],
    },
    "status": {"phase": "Pending", "qosClass": "Burstable"},
}


def _pod(i: int, tag: str) -> dict[str, Any]:
    resources, annotations = SHAPES[i % len(SHAPES)]
    pod = copy.deepcopy(POD_TEMPLATE)
    pod["metadata"].update(
        name=f"train-7d9f8c-{tag}{i}", uid=f"{tag}-{i}", annotations=dict(annotations)
    )
    pod["spec"]["containers"][0]["resources"] = resources
    return pod


def _background(service: Any, n_nodes: int, seed: int) -> None:
    """Half the nodes' worth of pods already placed, as in a running cluster."""
    from hcs.demand import parse_pod
    from hcs.errors import HcsError

    rng = random.Random(seed)
    names = sorted(service.state.index)
    for i in range(n_nodes // 2):
        demand = parse_pod(
            {
                "metadata": {"name": f"bg-{i}", "uid": f"bg-{i}"},
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "resources": {
                                "requests": {"ai.compute/vram": f"{rng.choice((8, 16, 40))}Gi"}
                            },
                        }
                    ]
                },
            }
        )
        with contextlib.suppress(HcsError):
            service.ledger.assume(demand, rng.choice(names))


def _serve_hcs(port: int, n_nodes: int, seed: int, ready: Any) -> None:
    import logging

    from extender.server import serve
    from hcs.engine import EngineConfig
    from hcs.scheduling import SchedulerService
    from hcs.state import ClusterState
    from hcs.synthetic import random_cluster

    logging.basicConfig(level=logging.WARNING)
    state = ClusterState.from_nodes(random_cluster(n_nodes, seed))
    service = SchedulerService(state, EngineConfig())
    _background(service, n_nodes, seed)
    ready.set()
    serve(service, "127.0.0.1", port)


def _serve_floor(port: int, ready: Any) -> None:
    """The practical floor: decode the request with orjson, send HCS's reply encoded with
    orjson. Replies are handed over beforehand (`/_expect`, not timed), by pod UID; pods of
    the rate test reuse the recorded replies in turn."""
    from aiohttp import web

    # Only the replies still to be sent are held (a pool of the last few for the rate test),
    # so the floor's heap, and its garbage collector's work, stay small.
    expected: dict[str, list[Any]] = {}
    pool: list[list[Any]] = []

    def _reply(uid: str, which: int) -> Any:
        replies = expected.get(uid)
        if replies is None:  # a pod of the rate test: the recorded replies in turn
            return pool[int(uid.rsplit("-", 1)[1]) % len(pool)][which]
        if which == 1 or not replies[1]:
            del expected[uid]
        return replies[which]

    async def expect(request: web.Request) -> web.Response:
        uid, filter_reply, prioritize_reply = orjson.loads(await request.read())
        expected[uid] = [filter_reply, prioritize_reply]
        pool.append([filter_reply, prioritize_reply])
        del pool[:-RATE_POOL]
        return web.Response(body=b"{}", content_type="application/json")

    async def filter_(request: web.Request) -> web.Response:
        args = orjson.loads(await request.read())
        reply = _reply(args["Pod"]["metadata"]["uid"], 0)
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def prioritize(request: web.Request) -> web.Response:
        args = orjson.loads(await request.read())
        reply = _reply(args["Pod"]["metadata"]["uid"], 1)
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def bind(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(body=orjson.dumps({"Error": ""}), content_type="application/json")

    app = web.Application(client_max_size=256 * 2**20)
    app.router.add_post("/_expect", expect)
    app.router.add_post("/filter", filter_)
    app.router.add_post("/prioritize", prioritize)
    app.router.add_post("/bind", bind)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class _Client:
    """One keep-alive connection, one call at a time, as kube-scheduler's scheduling cycle
    makes them (blocking http.client: the client's own overhead stays small)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def call(self, path: str, body: bytes) -> bytes:
        self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {payload[:200]!r}")
        return payload


def _bind_body(pod: dict[str, Any], node: str) -> bytes:
    meta = pod["metadata"]
    return orjson.dumps(
        {
            "PodName": meta["name"],
            "PodNamespace": meta["namespace"],
            "PodUID": meta["uid"],
            "Node": node,
        }
    )


def _cycle(client: _Client, pod: dict[str, Any], names: list[str]) -> tuple[float, float, Any]:
    """Filter, prioritize (timed), bind to the best node (not timed): (filter ms, prioritize
    ms, (filter reply, prioritize reply))."""
    t0 = time.perf_counter()
    filtered = client.call("/filter", orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}))
    t1 = time.perf_counter()
    passed = orjson.loads(filtered)["NodeNames"] or []
    scored = b"[]"
    t2 = t3 = time.perf_counter()
    if passed:
        body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": passed})
        t2 = time.perf_counter()
        scored = client.call("/prioritize", body)
        t3 = time.perf_counter()
        best = max(orjson.loads(scored), key=lambda h: h["Score"])["Host"]
        client.call("/bind", _bind_body(pod, best))
    return (t1 - t0) * 1e3, (t3 - t2) * 1e3, (orjson.loads(filtered), orjson.loads(scored))


def _cycles(hcs: int, floor: int, names: list[str], iterations: int) -> dict[str, list[float]]:
    a, b = _Client(hcs), _Client(floor)
    for i in range(30):  # warm-up, both sides
        _, _, replies = _cycle(a, _pod(i, "warm"), names)
        b.call("/_expect", orjson.dumps([f"warm-{i}", *replies]))
        _cycle(b, _pod(i, "warm"), names)
    out: dict[str, list[float]] = {
        k: [] for k in ("hcs_f", "hcs_p", "hcs_c", "floor_f", "floor_p", "floor_c")
    }
    for i in range(iterations):
        pod = _pod(i, "cycle")
        f_ms, p_ms, replies = _cycle(a, pod, names)
        out["hcs_f"].append(f_ms)
        out["hcs_p"].append(p_ms)
        out["hcs_c"].append(f_ms + p_ms)
        b.call("/_expect", orjson.dumps([pod["metadata"]["uid"], *replies]))
        f_ms, p_ms, _ = _cycle(b, pod, names)
        out["floor_f"].append(f_ms)
        out["floor_p"].append(p_ms)
        out["floor_c"].append(f_ms + p_ms)
    return out


async def _rate(port: int, names: list[str], tag: str, connections: int, duration: float) -> float:
    """Filters per second with `connections` in flight, each filter followed by its bind."""
    base = f"http://127.0.0.1:{port}"
    headers = {"Content-Type": "application/json"}
    counter = iter(range(10**9))
    done = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(path: str, body: bytes) -> bytes:
            async with session.post(base + path, data=body, headers=headers) as resp:
                return await resp.read()

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                pod = _pod(next(counter), tag)
                reply = await call(
                    "/filter", orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})
                )
                done += 1
                passed = orjson.loads(reply)["NodeNames"]
                if passed:
                    await call("/bind", _bind_body(pod, passed[0]))

        stop = time.perf_counter() + duration
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return done / (time.perf_counter() - t0)


def _start(target: Any, *args: Any) -> tuple[Any, int]:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(port, *args, ready), daemon=True)
    proc.start()
    if not ready.wait(900):
        raise RuntimeError(f"{target.__name__} did not start")
    wait_for_port(port)
    return proc, port


def measure(
    n_nodes: int, iterations: int, connections: int, duration: float, seed: int
) -> dict[str, object]:
    hcs, hcs_port = _start(_serve_hcs, n_nodes, seed)
    floor, floor_port = _start(_serve_floor)
    try:
        names = [f"node-{i:05d}" for i in range(n_nodes)]
        t = _cycles(hcs_port, floor_port, names, iterations)
        rates: dict[str, list[float]] = {"hcs": [], "floor": []}
        for r in range(2):  # alternating rounds
            for side, port in (("hcs", hcs_port), ("floor", floor_port)):
                rates[side].append(
                    asyncio.run(_rate(port, names, f"rate{r}", connections, duration / 2))
                )
    finally:
        for proc in (hcs, floor):
            proc.terminate()
            proc.join(10)
    cycle_p50, floor_p50 = statistics.median(t["hcs_c"]), statistics.median(t["floor_c"])
    filter_p99, floor_f99 = percentile(t["hcs_f"], 0.99), percentile(t["floor_f"], 0.99)
    rate, floor_rate = statistics.mean(rates["hcs"]), statistics.mean(rates["floor"])
    ratios = {
        "cycle_p50": cycle_p50 / floor_p50,
        "filter_p99": filter_p99 / floor_f99,
        "filters_per_s": rate / floor_rate,
    }
    met = [
        ratios["cycle_p50"] <= TARGETS["cycle_p50"],
        ratios["filter_p99"] <= TARGETS["filter_p99"],
        ratios["filters_per_s"] >= TARGETS["filters_per_s"],
    ]
    return {
        "nodes": n_nodes,
        "cycle_p50_ms": round(cycle_p50, 3),
        "cycle_p99_ms": round(percentile(t["hcs_c"], 0.99), 3),
        "floor_cycle_p50_ms": round(floor_p50, 3),
        "floor_cycle_p99_ms": round(percentile(t["floor_c"], 0.99), 3),
        "cycle_p50_x_floor": f"{ratios['cycle_p50']:.2f} (target <= {TARGETS['cycle_p50']})",
        "filter_p50_ms": round(statistics.median(t["hcs_f"]), 3),
        "floor_filter_p50_ms": round(statistics.median(t["floor_f"]), 3),
        "prioritize_p50_ms": round(statistics.median(t["hcs_p"]), 3),
        "floor_prioritize_p50_ms": round(statistics.median(t["floor_p"]), 3),
        "filter_p99_ms": round(filter_p99, 3),
        "floor_filter_p99_ms": round(floor_f99, 3),
        "filter_p99_x_floor": f"{ratios['filter_p99']:.2f} (target <= {TARGETS['filter_p99']})",
        "filters_per_s": round(rate),
        "floor_filters_per_s": round(floor_rate),
        "filters_per_s_x_floor": (
            f"{ratios['filters_per_s']:.2f} (target >= {TARGETS['filters_per_s']})"
        ),
        "targets_met": f"{sum(met)}/3",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--iterations", type=int, default=600, help="cycles per size")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of rate test per side")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="one JSON object per size")
    args = parser.parse_args(argv)
    for n in args.nodes:
        row = measure(n, args.iterations, args.connections, args.duration, args.seed)
        print_row(row, as_json=args.json)
        if not args.json:
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
