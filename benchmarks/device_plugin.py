"""The node end: Allocate through the device plugin's gRPC socket, and bind with the node lock,
both against the in-test API server (tests/fake_apiserver.py, real HTTP on loopback).

- Allocate: each pod is bound by HCS (per-container annotation, the node's lock held); the
  timed call is kubelet's Allocate RPC, answered from the plugin's watch-fed cache of the
  node's pods; the record (`hcs.io/allocated`) and the lock's release are written afterwards
  by the plugin's writer. The node already runs `--pods` other pods, as a busy node does. Run
  twice: with the API server answering at once, and with every API request slowed by
  `--slow` seconds (1 s by default): Allocate must not wait on it. Target: p99 <= 20 ms.
- Bind: the extender's bind (ledger, node lock, Binding with the annotations) for a pod filter
  has seen. Target: p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from common import percentile, print_row
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the in-test API server

from cluster.sync import KubeBinder
from hcs.engine import EngineConfig
from hcs.nodelock import LOCK_NAMESPACE
from hcs.scheduling import SchedulerService
from hcs.state import ClusterState
from hcs.synthetic import make_node
from hcs.vendors import VendorTable
from node.deviceplugin import Allocator, CachedNodeApi, DevicePlugin, PluginDevice
from node.podcache import NodeCache, Writer
from node.v1beta1 import api_pb2, api_pb2_grpc
from tests.fake_apiserver import LEASES, PODS, FakeApiServer


class Server:
    """The in-test API server on its own event loop thread."""

    def __init__(self) -> None:
        self.fake = FakeApiServer()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.fake.app())
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.ready.set()
        self.loop.run_forever()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn` on the server's loop (the fake is not thread-safe)."""
        return asyncio.run_coroutine_threadsafe(_call(fn, *args), self.loop).result()

    def api(self) -> client.ApiClient:
        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


def pod(name: str, node: str | None, annotations: dict[str, str], gpus: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "bench", "uid": name, "annotations": annotations},
        "spec": {
            **({"nodeName": node} if node else {}),
            "containers": [
                {"name": "m", "image": "i", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
            ],
        },
    }


def bench_allocate(server: Server, n: int, background: int, slow: float) -> dict[str, object]:
    for i in range(background):  # the node's other pods, already admitted
        running = pod(f"bg-{i}", "gpu-1", {"devices.hcs.io/m": "7"})
        running["status"] = {"phase": "Running", "containerStatuses": [{"name": "m"}]}
        server.call(server.fake.put, PODS, running)
    folder = Path(tempfile.mkdtemp(prefix="hcs-bench-", dir="/tmp"))
    api = server.api()
    cache, writer = NodeCache(api, "gpu-1"), Writer(api, LOCK_NAMESPACE)
    cache.start()
    cache.synced.wait(30)
    server.fake.delay_s = slow  # from now on every API request waits this long
    allocator = Allocator("gpu-1", VendorTable()["nvidia"], CachedNodeApi(cache, writer))
    allocator.devices = [PluginDevice(str(i), True, 0, f"GPU-{i}") for i in range(8)]
    plugin = DevicePlugin(allocator, folder, lambda: allocator.devices)
    plugin.serve()
    channel = grpc.insecure_channel(f"unix://{plugin.socket_path}")
    stub = api_pb2_grpc.DevicePluginStub(channel)
    samples = []

    def cached(name: str) -> bool:
        return any(p["metadata"]["name"] == name for p in cache.pods())

    try:
        for i in range(n):
            dev = str(i % 7)
            name = f"p-{i}"
            server.call(server.fake.put, PODS, pod(name, "gpu-1", {"devices.hcs.io/m": dev}))
            while not cached(name):  # kubelet admits a pod once its own watch shows it
                cache.wait_for_change(1.0)
            lease = {
                "metadata": {"name": "hcs-node-gpu-1", "namespace": "hcs-node-locks"},
                "spec": {"holderIdentity": name},
            }
            server.call(server.fake.put, LEASES, lease)
            request = api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[dev])]
            )
            t0 = time.perf_counter()
            answer = stub.Allocate(request, timeout=10)
            samples.append((time.perf_counter() - t0) * 1000)
            (mount,) = answer.container_responses[0].mounts  # the default: volume-mounts
            assert mount.container_path == f"/var/run/nvidia-container-devices/GPU-{dev}"
            done = server.call(lambda k=f"bench/{name}": server.fake.objects[PODS][k])
            done = {**done, "status": {"phase": "Succeeded"}}
            server.call(server.fake.put, PODS, done)
    finally:
        channel.close()
        plugin.stop_server()
        server.fake.delay_s = 0.0
        writer.flush(30)
        writer.stop()
        cache.stop()
        shutil.rmtree(folder, ignore_errors=True)
        for i in range(background):
            server.call(server.fake.delete, PODS, f"bench/bg-{i}")
    return {
        "what": f"Allocate over gRPC, node with {background} pods, API server +{slow:g} s",
        "calls": n,
        "p50_ms": round(percentile(samples, 0.5), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "target_p99_ms": 20,
    }


def bench_bind(server: Server, n: int) -> dict[str, object]:
    nodes = [make_node(f"n{i}", n_devices=8) for i in range(16)]
    service = SchedulerService(
        ClusterState.from_nodes(nodes), EngineConfig(), binder=KubeBinder(server.api())
    )
    samples = []

    async def run() -> None:
        for i in range(n):
            node = f"n{i % 16}"
            p = pod(f"b-{i}", None, {})
            p["spec"]["containers"][0]["resources"] = {"limits": {"ai.compute/vram": "1Gi"}}
            server.call(server.fake.put, PODS, p)
            service.filter({"Pod": p, "NodeNames": [node]})
            args = {"PodName": p["metadata"]["name"], "PodNamespace": "bench"}
            args |= {"PodUID": p["metadata"]["uid"], "Node": node}
            t0 = time.perf_counter()
            result = await service.bind(args)
            samples.append((time.perf_counter() - t0) * 1000)
            assert result["Error"] == "", result
            service.binder.unlock(node, p["metadata"]["uid"])  # type: ignore[union-attr]
            service.ledger.release(p["metadata"]["uid"])

    asyncio.run(run())
    return {
        "what": "extender bind with the node lock (Lease + Binding)",
        "calls": n,
        "p50_ms": round(percentile(samples, 0.5), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "target_p99_ms": 10,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=110, help="other pods on the node")
    parser.add_argument(
        "--slow", type=float, default=1.0, help="API server latency of the second run (s)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = Server()
    print_row(bench_allocate(server, args.calls, args.pods, 0.0), as_json=args.json)
    print_row(bench_allocate(server, args.calls // 5, args.pods, args.slow), as_json=args.json)
    print_row(bench_bind(server, args.calls), as_json=args.json)


if __name__ == "__main__":
    main()
