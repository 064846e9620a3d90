"""RBAC covers exactly the calls the code makes: the extender and the webhook run in cluster mode
against the in-test API server, which records every request; the requests, as (API group,
resource, verb), must equal what each component's ClusterRole grants."""

import asyncio
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from cluster.controllers import ControllerRunner
from cluster.sync import ClusterSync, KubeBinder, KubeQuotaBook
from extender.app import create_app as create_extender
from hcs.admission import AdmissionContext
from hcs.engine import EngineConfig
from hcs.nodelock import LOCK_NAMESPACE
from hcs.scheduling import SchedulerService
from hcs.state import ClusterState
from hcs.synthetic import node_dict, quota_dict
from hcs.vendors import VendorTable
from node.agent import AgentOptions, desired_node
from node.agent import run as run_agent
from node.deviceplugin import Allocator, CachedNodeApi, PluginDevice
from node.podcache import NodeCache, Writer
from node.publish import Publisher
from tests.fake_apiserver import LEASES, NODES, PODS, QUOTAS, FakeApiServer
from tests.webhook.reviews import admission_review, generated_pod
from webhook.app import create_app as create_webhook

RBAC = Path(__file__).resolve().parents[2] / "manifests" / "rbac.yaml"
Permission = tuple[str, str, str]


def granted(role: str) -> set[Permission]:
    """The ClusterRole `role` and the Role of the same name in hcs-system, together."""
    found = False
    out = set()
    for doc in yaml.safe_load_all(RBAC.read_text()):
        if doc["kind"] in ("ClusterRole", "Role") and doc["metadata"]["name"] == role:
            found = True
            out |= {
                (g, r, v)
                for rule in doc["rules"]
                for g in rule["apiGroups"]
                for r in rule["resources"]
                for v in rule["verbs"]
            }
    assert found, f"no ClusterRole or Role {role}"
    return out


def used(calls: list[tuple[str, str, dict[str, str]]]) -> set[Permission]:
    out = set()
    for method, path, query in calls:
        parts = path.strip("/").split("/")
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        if rest and rest[0] == "namespaces" and len(rest) > 2:
            rest = rest[2:]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        named = len(rest) > 1
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, "get" if named else ("watch" if query.get("watch") else "list")
        )
        out.add((group, resource, verb))
    return out


def api(base: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = base
    return client.ApiClient(cfg)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def rewatched(fake: FakeApiServer) -> None:
    """End every watch and wait until each resource is watched again: the calls a restarted
    watch makes are recorded too."""

    def watches() -> int:
        return sum(1 for _, _, query in fake.calls if query.get("watch"))

    before = watches()
    open_streams = fake.open_watches()
    fake.drop_watches()
    deadline = time.monotonic() + 10
    while watches() < before + open_streams:
        assert time.monotonic() < deadline, "the watches did not restart"
        await asyncio.sleep(0.02)


async def wait_ready(http: Any) -> None:
    deadline = time.monotonic() + 10
    while (await http.get("/readyz")).status != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_the_extender_role_is_exactly_what_the_extender_calls(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = FakeApiServer()
    fake.put(NODES, node_dict("n1", heartbeat=now()))
    seen = fake.put(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "namespace": "ns", "uid": "ua"},
            "spec": {
                "containers": [
                    {
                        "name": "m",
                        "image": "i",
                        "resources": {"requests": {"ai.compute/vram": "1Gi"}},
                    }
                ]
            },
        },
    )
    fake.put(PODS, {**seen, "metadata": {"name": "b", "namespace": "ns", "uid": "ub"}})
    server = await aiohttp_server(fake.app())
    k8s = api(str(server.make_url("")).rstrip("/"))
    service = SchedulerService(
        ClusterState(), EngineConfig(heartbeat_max_age_s=60), binder=KubeBinder(k8s)
    )
    http = await aiohttp_client(
        create_extender(
            service, sync=ClusterSync(service, k8s, watch_timeout_s=1, backoff=(0.05, 0.2))
        )
    )
    await wait_ready(http)
    await http.post("/filter", json={"Pod": seen, "Nodes": None, "NodeNames": ["n1"]})
    bind = {"PodName": "a", "PodNamespace": "ns", "PodUID": "ua", "Node": "n1"}
    assert (await (await http.post("/bind", json=bind)).json())["Error"] == ""
    assert (await (await http.post("/bind", json=bind)).json())["Error"] == ""  # 409 -> get
    unseen = {"PodName": "b", "PodNamespace": "ns", "PodUID": "ub", "Node": "n1"}
    busy = (await (await http.post("/bind", json=unseen)).json())["Error"]
    assert "node n1 is admitting pod ns/a" in busy  # a holds the node's lock
    a = fake.objects[PODS]["ns/a"]
    fake.put(PODS, {**a, "status": {"phase": "Running"}})  # admitted: the lock is stale
    assert (await (await http.post("/bind", json=unseen)).json())["Error"] == ""
    await rewatched(fake)
    assert used(fake.calls) == granted("hcs-extender")


async def test_the_webhook_role_is_exactly_what_the_webhook_calls(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = FakeApiServer()
    fake.put(NODES, node_dict("n1", heartbeat=now()))
    fake.put(
        QUOTAS,
        quota_dict({"vram": "100Gi"}),
    )
    server = await aiohttp_server(fake.app())
    k8s = api(str(server.make_url("")).rstrip("/"))
    config = EngineConfig(heartbeat_max_age_s=60)
    service = SchedulerService(ClusterState(), config)
    book = KubeQuotaBook(k8s)
    sync = ClusterSync(service, k8s, quota_book=book, watch_timeout_s=1, backoff=(0.05, 0.2))
    http = await aiohttp_client(
        create_webhook(AdmissionContext(service.state, book, engine=config), sync=sync)
    )
    await wait_ready(http)
    body = admission_review(generated_pod({"ai.compute/vram": "8Gi"}), uid="r1")
    response = (await (await http.post("/mutate", json=body)).json())["response"]
    assert response["allowed"]
    await rewatched(fake)
    assert used(fake.calls) == granted("hcs-webhook")


async def test_the_node_role_is_exactly_what_the_agent_and_the_device_plugin_call(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    pub = Publisher(api(str(server.make_url("")).rstrip("/")))
    fixtures = Path(__file__).resolve().parents[1] / "agent" / "fixtures"
    a100 = fixtures / "nvidia-smi-a100-nounits.csv"
    opts = AgentOptions("gpu-1", tool_outputs={"nvidia-smi": a100})
    changed = AgentOptions("gpu-1", tool_outputs={"nvidia-smi": fixtures / "nvidia-smi-t4-na.csv"})
    for o in (opts, opts, changed):  # create, heartbeat, spec change
        node, complete = desired_node(o)
        await asyncio.to_thread(pub.publish, node, status_only=not complete)
    # GPU 1 falls off the bus: the others are renumbered, and the agent asks which IDs pods hold.
    header, *rows = a100.read_text().splitlines()
    renumbered = [f"{i}{row[row.index(',') :]}" for i, row in enumerate(rows[:1] + rows[2:])]
    gone = tmp_path / "gone.csv"
    gone.write_text("\n".join([header, *renumbered]) + "\n")
    for csv in (a100, gone):
        await asyncio.to_thread(
            run_agent, AgentOptions("gpu-1", tool_outputs={"nvidia-smi": csv}), pub, 0, once=True
        )
    # The device plugin (same ServiceAccount): Allocate for a pod bound by HCS under the node's
    # lock (list the node's pods, record, release the lock) and for one placed without HCS.
    fake.put(
        LEASES,
        {
            "metadata": {"name": "hcs-node-gpu-1", "namespace": "hcs-node-locks"},
            "spec": {"holderIdentity": "u-bound"},
        },
    )
    limits = {"limits": {"nvidia.com/gpu": "1"}}
    for name, annotations in (("bound", {"devices.hcs.io/m": "0"}), ("stray", {})):
        fake.put(
            PODS,
            {
                "metadata": {
                    "name": name,
                    "namespace": "ml",
                    "uid": f"u-{name}",
                    "annotations": annotations,
                },
                "spec": {
                    "nodeName": "gpu-1",
                    "containers": [{"name": "m", "image": "i", "resources": limits}],
                },
            },
        )
        devices = [PluginDevice(str(i), True) for i in range(2)]
        k8s = pub.core.api_client
        cache, writer = NodeCache(k8s, "gpu-1"), Writer(k8s, LOCK_NAMESPACE)
        cache.start()
        await asyncio.to_thread(cache.synced.wait, 10)
        plugin = Allocator("gpu-1", VendorTable()["nvidia"], CachedNodeApi(cache, writer))
        plugin.devices = devices
        await asyncio.to_thread(plugin.allocate, ["0" if name == "bound" else "1"])
        assert await asyncio.to_thread(writer.flush, 10)
        writer.stop()
        cache.stop()
    assert fake.lease_holder("gpu-1") == ""
    assert used(fake.calls) == granted("hcs-agent")


async def test_the_controller_role_is_exactly_what_the_controller_calls(
    aiohttp_server: Any,
) -> None:
    fake = FakeApiServer()
    fake.put(
        NODES, node_dict("stale", heartbeat="2026-01-01T00:00:00Z", conditions={"Ready": "True"})
    )
    fake.put(
        QUOTAS,
        quota_dict({"vram": "100Gi"}),
    )
    fake.put(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "w",
                "namespace": "team-a",
                "uid": "uw",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {"hcs.io/assigned-vendor": "nvidia"},
            },
            "spec": {
                "containers": [
                    {
                        "name": "m",
                        "image": "i",
                        "resources": {"requests": {"ai.compute/vram": "8Gi"}},
                    }
                ]
            },
            "status": {"phase": "Pending"},
        },
    )
    server = await aiohttp_server(fake.app())
    runner = ControllerRunner(api(str(server.make_url("")).rstrip("/")))
    assert await asyncio.to_thread(runner.round) == (1, 1)
    assert fake.events_posted
    assert used(fake.calls) == granted("hcs-controller")
