"""The webhook in cluster mode against the in-test API server: ComputeQuota charged with a
compare-and-swap on status.used (retried on conflict), dry runs, and routing that counts the
devices Pods already hold."""

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kubernetes import client

from cluster.sync import ClusterSync, KubeQuotaBook
from hcs.admission import AdmissionContext, AdmissionResponse
from hcs.engine import EngineConfig
from hcs.scheduling import SchedulerService
from hcs.state import ClusterState
from hcs.synthetic import node_dict, quota_dict
from tests.fake_apiserver import NAMESPACES, NODES, PODS, QUOTAS, FakeApiServer
from tests.webhook.reviews import admission_review, generated_pod
from tests.webhook.test_admission import applied
from webhook.app import create_app

Client = TestClient[web.Request, web.Application]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def review(
    uid: str,
    requests: dict[str, str],
    *,
    dry_run: bool = False,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return admission_review(generated_pod(requests, annotations), uid=uid, dry_run=dry_run)


class Webhook:
    def __init__(self, fake: FakeApiServer, http: Client) -> None:
        self.fake, self.http = fake, http

    async def ready(self) -> None:
        deadline = time.monotonic() + 10
        while (await self.http.get("/readyz")).status != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)

    async def admit(self, body: dict[str, Any]) -> AdmissionResponse:
        resp = await self.http.post("/mutate", json=body)
        assert resp.status == 200
        response: AdmissionResponse = (await resp.json())["response"]
        return response

    def used(self) -> dict[str, str]:
        used: dict[str, str] = (
            self.fake.objects[QUOTAS]["team-a/q"].get("status", {}).get("used", {})
        )
        return used


Start = Callable[[FakeApiServer], Awaitable[Webhook]]


def _start(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> Start:
    async def go(fake: FakeApiServer) -> Webhook:
        server = await aiohttp_server(fake.app())
        cfg = client.Configuration()
        cfg.host = str(server.make_url("")).rstrip("/")
        api = client.ApiClient(cfg)
        config = EngineConfig(heartbeat_max_age_s=60)
        service = SchedulerService(ClusterState(), config)
        book = KubeQuotaBook(api)
        sync = ClusterSync(service, api, quota_book=book, watch_timeout_s=2, backoff=(0.05, 0.2))
        context = AdmissionContext(
            service.state,
            book,
            engine=config,
            namespace_labels=lambda ns: sync.namespace_labels.get(ns, {}),
        )
        webhook = Webhook(fake, await aiohttp_client(create_app(context, sync=sync)))
        await webhook.ready()
        return webhook

    return go


async def test_quota_is_charged_on_the_api_server_and_retried_on_conflict(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = FakeApiServer()
    fake.put(NODES, node_dict("n1", heartbeat=now()))
    fake.put(QUOTAS, quota_dict({"vram": "40Gi"}))
    webhook = await _start(aiohttp_server, aiohttp_client)(fake)
    assert (await webhook.admit(review("a", {"ai.compute/vram": "8Gi"})))["allowed"]
    assert webhook.used()["vram"] == "8Gi"
    # Two other replicas charge 8Gi each between this one's read and write: it reads again
    # and adds its own on top (a retry that kept its first figure would write 16Gi).
    fake.status_conflicts = 2
    assert (await webhook.admit(review("b", {"ai.compute/vram": "8Gi"})))["allowed"]
    assert webhook.used()["vram"] == "32Gi"
    assert fake.status_updates == 2
    assert (await webhook.admit(review("c", {"ai.compute/vram": "8Gi"})))["allowed"]
    denied = await webhook.admit(review("d", {"ai.compute/vram": "8Gi"}))
    assert denied["allowed"] is False and denied["status"]["code"] == 403
    assert denied["status"]["message"] == (
        "QuotaExceeded: team-a/q: vram requested 8Gi, used 40Gi, hard 40Gi"
    )
    assert webhook.used()["vram"] == "40Gi"
    # The same review again (the API server retries after a timeout): not charged twice.
    assert (await webhook.admit(review("b", {"ai.compute/vram": "8Gi"})))["allowed"]
    assert webhook.used()["vram"] == "40Gi"


async def test_dry_run_is_decided_but_not_written(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake = FakeApiServer()
    fake.put(NODES, node_dict("n1", heartbeat=now()))
    fake.put(QUOTAS, quota_dict({"vram": "8Gi"}))
    webhook = await _start(aiohttp_server, aiohttp_client)(fake)
    assert (await webhook.admit(review("d", {"ai.compute/vram": "8Gi"}, dry_run=True)))["allowed"]
    assert fake.status_updates == 0
    refused = await webhook.admit(review("e", {"ai.compute/vram": "9Gi"}, dry_run=True))
    assert refused["allowed"] is False


async def test_routing_counts_devices_that_pods_already_hold(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = FakeApiServer()
    fake.put(NODES, node_dict("gpu", "nvidia", 2, heartbeat=now()))
    fake.put(NODES, node_dict("npu", "huawei", 2, heartbeat=now()))
    fake.put(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "holder",
                "namespace": "team-a",
                "uid": "u-holder",
                "annotations": {
                    "hcs.io/assigned-node": "gpu",
                    "hcs.io/assigned-devices": "0,1",
                    "hcs.io/assigned-vendor": "nvidia",
                },
            },
            "spec": {
                "nodeName": "gpu",
                "containers": [
                    {
                        "name": "m",
                        "image": "i",
                        "resources": {
                            "requests": {"ai.compute/devices": "2"},
                            "limits": {"ai.compute/devices": "2"},
                        },
                    }
                ],
            },
            "status": {"phase": "Running"},
        },
    )
    webhook = await _start(aiohttp_server, aiohttp_client)(fake)
    body = review(
        "f",
        {"ai.compute/vram": "8Gi"},
        annotations={"hcs.io/vendor-preference": "nvidia,huawei"},
    )
    out = applied(body["request"]["object"], await webhook.admit(body))
    vendor = out["metadata"]["annotations"]["hcs.io/assigned-vendor"]
    assert vendor == "huawei"  # the only NVIDIA node is fully held


async def test_a_denial_by_a_later_quota_returns_the_earlier_charge(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = FakeApiServer()
    fake.put(NODES, node_dict("n1", heartbeat=now()))
    fake.put(
        QUOTAS,
        {**quota_dict({"vram": "100Gi"}), "metadata": {"name": "a-big", "namespace": "team-a"}},
    )
    fake.put(
        QUOTAS,
        {**quota_dict({"vram": "4Gi"}), "metadata": {"name": "b-small", "namespace": "team-a"}},
    )
    webhook = await _start(aiohttp_server, aiohttp_client)(fake)
    denied = await webhook.admit(review("g", {"ai.compute/vram": "8Gi"}))
    assert denied["allowed"] is False and "team-a/b-small" in denied["status"]["message"]
    big = fake.objects[QUOTAS]["team-a/a-big"]["status"]["used"]
    assert big["vram"] == "0Mi"
    assert fake.status_updates == 2  # charged, then returned


async def test_namespaces_that_refuse_hostpaths_get_no_driver_mounts(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Pod Security baseline/restricted refuse hostPath volumes: the pod would be refused after
    its quota was charged. There the driver mounts are skipped, with a warning."""
    fake = FakeApiServer()
    fake.put(NODES, node_dict("n1", heartbeat=now()))
    fake.put(QUOTAS, quota_dict({"vram": "20Gi"}))
    fake.put(
        NAMESPACES,
        {
            "metadata": {
                "name": "team-a",
                "labels": {"pod-security.kubernetes.io/enforce": "baseline"},
            }
        },
    )
    webhook = await _start(aiohttp_server, aiohttp_client)(fake)
    body = review("a", {"ai.compute/vram": "8Gi"})
    response = await webhook.admit(body)
    out = applied(body["request"]["object"], response)
    assert "volumes" not in out["spec"]
    assert "volumeMounts" not in out["spec"]["containers"][0]
    assert any("Pod Security baseline" in w for w in response["warnings"])
    fake.put(NAMESPACES, {"metadata": {"name": "team-a", "labels": {}}})  # privileged again
    # Wait for the watch to deliver it: admit (dry runs, nothing charged) until it shows.
    deadline = time.monotonic() + 10
    while True:
        body = review("b", {"ai.compute/vram": "8Gi"}, dry_run=True)
        out = applied(body["request"]["object"], await webhook.admit(body))
        mounts = out["spec"]["containers"][0].get("volumeMounts") or []
        if mounts:
            break
        assert time.monotonic() < deadline, "the namespace's new level never arrived"
        await asyncio.sleep(0.02)
    assert all(m["readOnly"] for m in mounts)


async def test_two_webhook_replicas_never_over_admit_and_a_retry_elsewhere_heals(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """The Deployment runs two replicas behind one Service: concurrent reviews spread over both
    charge one ComputeQuota by compare-and-swap and never admit past the hard limit. A review
    the API server retries on the other replica is charged again there (each replica remembers
    only its own reviews); the quota controller's next recount from live pods returns it."""
    from cluster.controllers import ControllerRunner

    fake = FakeApiServer()
    fake.put(NODES, node_dict("n1", n_devices=8, heartbeat=now()))
    fake.put(QUOTAS, quota_dict({"vram": "40Gi"}))
    server = await aiohttp_server(fake.app())
    cfg = client.Configuration()
    cfg.host = str(server.make_url("")).rstrip("/")
    replicas = []
    for _ in range(2):
        api = client.ApiClient(cfg)
        config = EngineConfig(heartbeat_max_age_s=60)
        service = SchedulerService(ClusterState(), config)
        book = KubeQuotaBook(api)
        sync = ClusterSync(service, api, quota_book=book, watch_timeout_s=2, backoff=(0.05, 0.2))
        context = AdmissionContext(service.state, book, engine=config)
        webhook = Webhook(fake, await aiohttp_client(create_app(context, sync=sync)))
        await webhook.ready()
        replicas.append(webhook)
    answers = await asyncio.gather(
        *(replicas[i % 2].admit(review(f"r{i}", {"ai.compute/vram": "8Gi"})) for i in range(10))
    )
    assert sum(a["allowed"] for a in answers) == 5
    assert replicas[0].used()["vram"] == "40Gi"
    # A retried review on the other replica: charged again until the recount.
    fake.put(QUOTAS, quota_dict({"vram": "100Gi"}, used={"vram": "0"}))
    first = await replicas[0].admit(review("x", {"ai.compute/vram": "8Gi"}))
    again = await replicas[1].admit(review("x", {"ai.compute/vram": "8Gi"}))
    assert first["allowed"] and again["allowed"]
    assert replicas[0].used()["vram"] == "16Gi"
    pod = generated_pod({"ai.compute/vram": "8Gi"})
    pod["metadata"].update(name="x", uid="uid-x")
    ops = json.loads(base64.b64decode(first["patch"]))
    annotations = next(
        o["value"] for o in ops if o["path"] == "/metadata/annotations/hcs.io~1request"
    )
    pod["metadata"]["annotations"]["hcs.io/request"] = annotations
    pod["metadata"]["annotations"]["hcs.io/assigned-vendor"] = "nvidia"
    fake.put(PODS, pod)  # the one pod that was really created
    runner = ControllerRunner(client.ApiClient(cfg))
    await asyncio.to_thread(runner.round)
    assert replicas[0].used()["vram"] == "8Gi"
