"""A simulated cluster for the node-side tests: the in-test API server, the extender over HTTP
in cluster mode, the webhook's decision function, and per node an HCS device plugin with an
imitated kubelet. Everything talks over real sockets; only the hardware is absent."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
from kubernetes import client

from cluster.sync import ClusterSync, KubeBinder
from extender.app import create_app as create_extender
from hcs.admission import AdmissionContext, parse_review, review
from hcs.engine import EngineConfig
from hcs.nodelock import LOCK_NAMESPACE
from hcs.nodeplan import NodeDevice
from hcs.quota import QuotaBook
from hcs.scheduling import SchedulerService
from hcs.state import ClusterState
from hcs.synthetic import node_dict
from hcs.vendors import VendorTable
from node.deviceplugin import Allocator, CachedNodeApi, DevicePlugin, devices_of
from node.podcache import NodeCache, Writer
from tests.fake_apiserver import NODES, PODS, FakeApiServer
from tests.node.kubelet import Admitted, FakeKubelet, short_dir
from tests.webhook.reviews import admission_review

VENDORS = VendorTable()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def compute_node(name: str, vendor: str, n: int = 8, **kwargs: Any) -> dict[str, Any]:
    """A ComputeNode as the agent publishes it: with device identities (GPU UUIDs, PCI)."""
    node = node_dict(name, vendor, n, heartbeat=now(), **kwargs)
    for i, dev in enumerate(node["spec"]["devices"]):
        dev["identity"] = f"GPU-{name}-{i}" if vendor == "nvidia" else f"pci:0000:{16 + i:02x}:00.0"
    return node


@dataclass
class SimNode:
    name: str
    vendor: str
    compute: dict[str, Any]
    api: client.ApiClient
    replicas: int = 1
    strategies: tuple[str, ...] = ()
    dir: Path = field(default_factory=short_dir)
    kubelet: FakeKubelet | None = None
    plugin: DevicePlugin | None = None
    thread: threading.Thread | None = None
    cache: NodeCache | None = None
    writer: Writer | None = None
    seed: int = 0
    """kubelet's Go map order."""
    discover_fails: bool = False
    """The vendor tool fails (as at a boot before the driver is loaded)."""
    limiter: Any = None
    """The plugin's share limiter (node.deviceplugin.HamiCore), if any."""

    @property
    def resource(self) -> str:
        return VENDORS[self.vendor].resource

    def start_plugin(self) -> None:
        """A new plugin process: its cache lists the node anew, nothing else is remembered."""
        assert self.kubelet is not None
        self.cache = NodeCache(self.api, self.name, backoff=(0.05, 0.5))
        self.writer = Writer(self.api, LOCK_NAMESPACE, backoff=(0.05, 0.5))
        allocator = Allocator(
            self.name,
            VENDORS[self.vendor],
            CachedNodeApi(self.cache, self.writer),
            replicas=self.replicas,
            strategies=self.strategies,
            limiter=self.limiter,
        )
        plugin = DevicePlugin(
            allocator,
            self.kubelet.dir,
            self._discover,
            interval=0.2,
            cache=self.cache,
            pod_resources=self.kubelet.pod_resources_socket,
        )
        self.plugin = plugin
        self.cache.start()
        self.thread = threading.Thread(target=plugin.run, kwargs={"poll": 0.05}, daemon=True)
        self.thread.start()

    def _discover(self) -> list[NodeDevice] | None:
        return None if self.discover_fails else devices_of(self.compute)

    def cache_has(self, pod: dict[str, Any], timeout: float = 10.0) -> None:
        """Wait until the plugin's cache shows `pod` (kubelet admits a pod its own watch shows;
        the plugin's watch is a moment behind at most)."""
        assert self.cache is not None
        uid = pod["metadata"]["uid"]
        deadline = time.monotonic() + timeout
        while not any(p["metadata"]["uid"] == uid for p in self.cache.pods()):
            assert time.monotonic() < deadline, "the plugin's cache never showed the pod"
            self.cache.wait_for_change(0.1)

    def start(self) -> None:
        self.kubelet = FakeKubelet(self.dir, seed=self.seed)
        self.start_plugin()
        self.wait_listed()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the plugin's writes landed on the API server."""
        assert self.writer is not None
        assert self.writer.flush(timeout), "the plugin's writes did not land"

    def wait_listed(self) -> None:
        assert self.kubelet is not None
        want = len(self.compute["spec"]["devices"]) * self.replicas
        self.kubelet.wait_devices(lambda d: len(d) == want)

    def stop_plugin(self, *, crash: bool = False) -> None:
        """Stop the plugin; with `crash`, what it had not written yet is lost."""
        if self.plugin is not None and self.thread is not None:
            self.plugin.stopping.set()
            self.thread.join(timeout=10)
            self.plugin = None
        if self.writer is not None:
            if not crash:
                self.writer.flush(10.0)
            self.writer.stop()
        if self.cache is not None:
            self.cache.stop()

    def restart_plugin(self) -> None:
        """The plugin's pod restarts: a new process, nothing remembered."""
        assert self.kubelet is not None
        registrations = len(self.kubelet.requests)
        self.stop_plugin()
        self.start_plugin()
        self._registered_again(registrations)

    def restart_kubelet(self) -> None:
        assert self.kubelet is not None
        registrations = len(self.kubelet.requests)
        self.kubelet.restart()
        self._registered_again(registrations)

    def _registered_again(self, before: int) -> None:
        assert self.kubelet is not None
        deadline = time.monotonic() + 10
        while len(self.kubelet.requests) == before:
            assert time.monotonic() < deadline, "the plugin did not register again"
            time.sleep(0.02)
        self.wait_listed()

    def close(self) -> None:
        self.stop_plugin()
        if self.kubelet is not None:
            self.kubelet.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def admit(self, pod: dict[str, Any], affinity: dict[str, set[int]] | None = None) -> Admitted:
        """Kubelet admits the pod; then the plugin's records land (as they do, afterwards)."""
        assert self.kubelet is not None
        admitted = self.kubelet.admit(pod, self.resource, affinity=affinity)
        self.flush()
        return admitted


def api_client(fake_url: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = fake_url
    return client.ApiClient(cfg)


def admitted_pod(pod: dict[str, Any], ctx: AdmissionContext, uid: str) -> dict[str, Any]:
    """The webhook's patch applied, as the API server stores the pod."""
    response = review(parse_review(admission_review(pod, uid=uid)), ctx)
    assert response["allowed"], response
    out = copy.deepcopy(pod)
    if response.get("patch"):
        ops = json.loads(base64.b64decode(response["patch"]))
        out = jsonpatch.apply_patch(out, ops)
    out["metadata"]["uid"] = uid
    return out


def webhook_context(state: Any) -> AdmissionContext:
    return AdmissionContext(state, QuotaBook({}), scheduler_name="hcs-scheduler")


async def wait_for(predicate: Any, timeout: float = 10.0, why: Any = None) -> None:
    """Wait until `predicate()`; `why()` says what was seen instead when it never comes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not reached{': ' + why() if why else ''}"
        await asyncio.sleep(0.02)


def put_nodes(fake: FakeApiServer, *nodes: dict[str, Any]) -> None:
    for node in nodes:
        fake.put(NODES, node)


def cluster_extender(url: str, watch_timeout_s: int = 1) -> tuple[SchedulerService, ClusterSync]:
    """The extender's service and watches in cluster mode against the API server at `url`."""
    service = SchedulerService(
        ClusterState(), EngineConfig(heartbeat_max_age_s=600), binder=KubeBinder(api_client(url))
    )
    sync = ClusterSync(
        service, api_client(url), watch_timeout_s=watch_timeout_s, backoff=(0.05, 0.2)
    )
    return service, sync


async def start_extender(
    fake: FakeApiServer, aiohttp_server: Any, aiohttp_client: Any, n_nodes: int
) -> tuple[Any, SchedulerService, str]:
    """The in-test API server, and the extender over HTTP in cluster mode once it has seen the
    `n_nodes` ComputeNodes: (HTTP client, service, API server URL)."""
    server = await aiohttp_server(fake.app())
    url = str(server.make_url("")).rstrip("/")
    service, sync = cluster_extender(url)
    http = await aiohttp_client(create_extender(service, sync=sync))
    await wait_for(lambda: service.state.n_nodes == n_nodes and sync.readiness()[0])
    return http, service, url


def stored(fake: FakeApiServer, pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod["metadata"]
    current: dict[str, Any] = fake.objects[PODS][f"{meta['namespace']}/{meta['name']}"]
    return current
