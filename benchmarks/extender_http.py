"""Extender over HTTP: filter and prioritize from another process, with keep-alive.

A server process runs the extender on a synthetic inventory (default 5,000 nodes x 8 devices,
half of them carrying allocations); this process sends what kube-scheduler sends with
`nodeCacheCapable: true` — filter with every node name, then prioritize with the names that
passed — over one keep-alive connection, and measures:

- latency p50 / p99 of filter and of prioritize as the client sees them;
- filter calls per second with several connections in flight (the server is one process);
- server-side handling time (the extender's own request histogram, decode to encode);
- the codec floor: orjson decode of the same filter request plus encode of the same reply,
  measured here, and the ratio server time / floor.

Targets (DESIGN §9): p99 <= 2 ms, >= 1,000 filter calls/s, server time <= 3x the codec floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import multiprocessing
import random
import re
import statistics
import sys
import time
from typing import Any

import aiohttp
import orjson
from common import free_port, percentile, print_row, wait_for_port

SHAPES: tuple[dict[str, Any], ...] = (
    {"requests": {"ai.compute/vram": "24Gi"}},
    {
        "requests": {
            "ai.compute/vram": "160Gi",
            "ai.compute/devices": "4",
            "ai.compute/tflops-fp16": "800",
        }
    },
    {"requests": {"ai.compute/vram": "40Gi"}},
    {"limits": {"nvidia.com/gpu": "2"}},
)


def _pod(i: int) -> dict[str, Any]:
    shape = SHAPES[i % len(SHAPES)]
    return {
        "metadata": {
            "name": f"bench-{i}",
            "namespace": "bench",
            "uid": f"uid-{i}",
            "resourceVersion": "1",
            "annotations": {},
        },
        "spec": {"containers": [{"name": "main", "image": "img", "resources": shape}]},
        "status": {},
    }


def _serve(port: int, n_nodes: int, seed: int, ready: Any) -> None:
    import logging

    from extender.server import serve
    from hcs.demand import parse_pod
    from hcs.engine import EngineConfig
    from hcs.errors import HcsError
    from hcs.scheduling import SchedulerService
    from hcs.state import ClusterState
    from hcs.synthetic import random_cluster

    logging.basicConfig(level=logging.WARNING)
    state = ClusterState.from_nodes(random_cluster(n_nodes, seed))
    service = SchedulerService(state, EngineConfig())
    rng = random.Random(seed)
    names = sorted(state.index)
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
    # Between two pods kube-scheduler binds one, which changes the state; this benchmark sends no
    # binds, so drop what the engine kept from the previous pod before each filter (prioritize
    # of the same pod still reuses its filter's evaluation, as in production).
    plain_filter = service.filter

    def fresh_filter(raw: Any) -> bytes:
        state.kernel_cache().clear()
        return plain_filter(raw)

    service.filter = fresh_filter  # type: ignore[method-assign]
    ready.set()
    serve(service, "127.0.0.1", port)


def _latencies(
    base: str,
    names: list[str],
    iterations: int,
    *,
    filter_ms: list[float],
    prio_ms: list[float],
) -> list[tuple[bytes, bytes]]:
    """One keep-alive connection, one call at a time, as kube-scheduler's scheduling cycle makes
    them. A blocking http.client keeps the client's own overhead out of the figures as far as
    Python allows (the aiohttp client costs ~0.5 ms a call on this machine)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"Content-Type": "application/json"}

    def call(path: str, body: bytes) -> bytes:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {payload[:200]!r}")
        return payload

    def filter_body(i: int) -> bytes:
        return orjson.dumps({"Pod": _pod(i), "Nodes": None, "NodeNames": names})

    exchanges: dict[int, tuple[bytes, bytes]] = {}
    for i in range(20):  # warm-up
        call("/filter", filter_body(10**6 + i))
    for i in range(iterations):
        # A new pod every cycle, through filter and then prioritize, as the scheduler sends them.
        body = filter_body(i)
        t0 = time.perf_counter()
        reply = call("/filter", body)
        filter_ms.append((time.perf_counter() - t0) * 1e3)
        exchanges[i % len(SHAPES)] = (body, reply)
        passed = orjson.loads(reply)["NodeNames"]
        if len(passed) > 1:
            prio = orjson.dumps({"Pod": _pod(i), "Nodes": None, "NodeNames": passed})
            t0 = time.perf_counter()
            call("/prioritize", prio)
            prio_ms.append((time.perf_counter() - t0) * 1e3)
    conn.close()
    return list(exchanges.values())


async def _drive(
    base: str, names: list[str], iterations: int, connections: int, duration: float
) -> dict[str, Any]:
    # Distinct pods for the rate test (the server parses each new pod once, as in production).
    filter_bodies = [
        orjson.dumps({"Pod": _pod(2 * 10**6 + i), "Nodes": None, "NodeNames": names})
        for i in range(200)
    ]
    headers = {"Content-Type": "application/json"}
    filter_ms: list[float] = []
    prio_ms: list[float] = []
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(path: str, body: bytes) -> bytes:
            async with session.post(base + path, data=body, headers=headers) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{path}: HTTP {resp.status}: {payload[:200]!r}")
                return payload

        exchanges = _latencies(base, names, iterations, filter_ms=filter_ms, prio_ms=prio_ms)

        done = 0
        stop = time.perf_counter() + duration

        async def worker(k: int) -> None:
            nonlocal done
            j = k
            while time.perf_counter() < stop:
                await call("/filter", filter_bodies[j % len(filter_bodies)])
                done += 1
                j += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(connections)))
        rate = done / (time.perf_counter() - t0)
        async with session.get(base + "/metrics") as resp:
            metrics = await resp.text()

    # The codec floor: decode each request and encode its reply, in-process, over the same mix
    # of pod shapes the server handled.
    decoded = [(body, orjson.loads(reply)) for body, reply in exchanges]
    floor: list[float] = []
    for k in range(400):
        body, reply_obj = decoded[k % len(decoded)]
        t0 = time.perf_counter()
        orjson.loads(body)
        orjson.dumps(reply_obj)
        floor.append((time.perf_counter() - t0) * 1e3)
    total = float(
        re.findall(r'hcs_extender_request_seconds_sum\{verb="filter"\} (\S+)', metrics)[0]
    )
    count = float(
        re.findall(r'hcs_extender_request_seconds_count\{verb="filter"\} (\S+)', metrics)[0]
    )
    server_ms = total / count * 1e3
    floor_ms = statistics.mean(floor)
    return {
        "filter_p50_ms": round(statistics.median(filter_ms), 3),
        "filter_p99_ms": round(percentile(filter_ms, 0.99), 3),
        "prioritize_p50_ms": round(statistics.median(prio_ms), 3),
        "prioritize_p99_ms": round(percentile(prio_ms, 0.99), 3),
        "filter_calls_per_s": round(rate),
        "server_filter_mean_ms": round(server_ms, 3),
        "codec_floor_ms": round(floor_ms, 3),
        "server_over_floor": round(server_ms / floor_ms, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument(
        "--connections",
        type=int,
        default=4,
        help="connections in flight for the calls/s measurement",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of the rate test")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_serve, args=(port, args.nodes, args.seed, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(600):
            print("server did not start", file=sys.stderr)
            return 1
        base = f"http://127.0.0.1:{port}"
        wait_for_port(port)
        names = [f"node-{i:05d}" for i in range(args.nodes)]
        row = {
            "nodes": args.nodes,
            **asyncio.run(_drive(base, names, args.iterations, args.connections, args.duration)),
        }
    finally:
        server.terminate()
        server.join(10)
    print_row(row, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
