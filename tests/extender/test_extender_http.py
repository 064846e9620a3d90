"""The extender over a real socket, with payloads shaped as kube-scheduler sends them."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from extender.app import create_app
from hcs import __version__
from hcs.engine import EngineConfig
from hcs.scheduling import SchedulerService
from hcs.state import ClusterState
from hcs.synthetic import make_node

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
API = client.ApiClient()


def k8s(obj: Any) -> Any:
    """Serialize a kubernetes client model exactly as the API server / scheduler would."""
    return API.sanitize_for_serialization(obj)


def pod(
    uid: str,
    requests: dict[str, str] | None = None,
    *,
    limits: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    name: str | None = None,
) -> Any:
    return k8s(
        client.V1Pod(
            api_version="v1",
            kind="Pod",
            metadata=client.V1ObjectMeta(
                name=name or f"pod-{uid}",
                namespace="team-a",
                uid=uid,
                annotations=annotations,
                resource_version="1",
            ),
            spec=client.V1PodSpec(
                containers=[
                    client.V1Container(
                        name="main",
                        image="pytorch:2.4",
                        resources=client.V1ResourceRequirements(requests=requests, limits=limits),
                    )
                ]
            ),
            status=client.V1PodStatus(phase="Pending"),
        )
    )


def node_object(name: str) -> Any:
    return k8s(
        client.V1Node(
            api_version="v1",
            kind="Node",
            metadata=client.V1ObjectMeta(name=name, labels={"zone": "a"}),
            status=client.V1NodeStatus(allocatable={"cpu": "64"}),
        )
    )


def args(p: Any, names: list[str]) -> dict[str, Any]:
    return {"Pod": p, "Nodes": None, "NodeNames": names}


def cluster() -> ClusterState:
    return ClusterState.from_nodes(
        [
            make_node("fits"),
            make_node("small", vram_gi=16),
            make_node("slow", fp16="10"),
            make_node("sick", n_devices=2, health=[20, 20]),
            make_node("busy", n_devices=1),
            make_node("down", phase="NotReady"),
            make_node("lost", conditions={"AgentConnected": "False"}),
            make_node("npu", "huawei"),
        ]
    )


@pytest.fixture
def service() -> SchedulerService:
    return SchedulerService(cluster(), EngineConfig())


@pytest.fixture
async def http(aiohttp_client: MakeClient, service: SchedulerService) -> Client:
    return await aiohttp_client(create_app(service))


ALL = ["fits", "small", "slow", "sick", "busy", "down", "lost", "npu", "ghost"]


async def test_filter_sorts_every_reason_into_the_right_list(
    http: Client, service: SchedulerService
) -> None:
    holder = pod("holder", {"ai.compute/vram": "1Gi"})
    await http.post("/filter", json=args(holder, ["busy"]))
    assert (
        await (
            await http.post(
                "/bind",
                json={
                    "PodName": "pod-holder",
                    "PodNamespace": "team-a",
                    "PodUID": "holder",
                    "Node": "busy",
                },
            )
        ).json()
    ) == {"Error": ""}
    p = pod(
        "p1",
        {"ai.compute/vram": "32Gi", "ai.compute/tflops-fp16": "100"},
        annotations={"hcs.io/vendor-preference": "nvidia"},
    )
    resp = await http.post("/filter", json=args(p, ALL))
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"NodeNames", "Nodes", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    assert body["Error"] == "" and body["Nodes"] is None
    assert body["NodeNames"] == ["fits"]
    failed = {n: m.split(":")[0] for n, m in body["FailedNodes"].items()}
    unresolvable = {n: m.split(":")[0] for n, m in body["FailedAndUnresolvableNodes"].items()}
    assert failed == {
        "small": "InsufficientVRAM",
        "slow": "InsufficientTFLOPS",
        "sick": "DeviceUnhealthy",
        "busy": "InsufficientDevices",
    }
    assert unresolvable == {
        "down": "NotReady",
        "lost": "AgentNotConnected",
        "npu": "VendorNotSupported",
        "ghost": "NodeNotFound",
    }
    assert body["FailedNodes"]["small"] == "InsufficientVRAM: fewer than 1 free device with ≥ 32Gi"


async def test_nodes_failing_the_same_way_share_one_message(http: Client) -> None:
    p = pod("p2", {"ai.compute/vram": "200Gi"})
    body = await (await http.post("/filter", json=args(p, ["fits", "small", "slow"]))).json()
    assert len(set(body["FailedNodes"].values())) == 1
    assert body["NodeNames"] == []


async def test_filter_with_full_node_objects_returns_node_objects(http: Client) -> None:
    p = pod("p3", {"ai.compute/vram": "8Gi"})
    nodes = [node_object(n) for n in ("fits", "down", "small")]
    request = {"Pod": p, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}
    body = await (await http.post("/filter", json=request)).json()
    assert body["NodeNames"] is None
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == ["fits", "small"]
    assert body["Nodes"]["items"][0] == nodes[0]  # the object as sent, not a copy of ours
    assert set(body["FailedAndUnresolvableNodes"]) == {"down"}


async def test_a_pod_asking_nothing_passes_every_node(http: Client) -> None:
    p = pod("plain", {"cpu": "1"})
    body = await (await http.post("/filter", json=args(p, ALL))).json()
    assert body["NodeNames"] == ALL and body["FailedNodes"] == {}


async def test_input_keys_are_case_insensitive(http: Client) -> None:
    p = pod("p4", {"ai.compute/vram": "8Gi"})
    body = await (
        await http.post("/filter", json={"pod": p, "nodes": None, "nodenames": ["fits"]})
    ).json()
    assert body["NodeNames"] == ["fits"]


async def test_prioritize_scores_every_candidate_from_0_to_10(http: Client) -> None:
    p = pod("p5", {"ai.compute/vram": "8Gi"})
    resp = await http.post("/prioritize", json=args(p, ["fits", "small", "down"]))
    assert resp.status == 200
    body = await resp.json()
    # kube-scheduler adds each reply's Score to its Host's total: the order is free.
    scores = {h["Host"]: h["Score"] for h in body}
    assert len(body) == 3 and set(scores) == {"fits", "small", "down"}
    assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores.values())
    assert scores["fits"] > 0 and scores["down"] == 0


async def test_bind_is_idempotent_and_never_double_books(
    http: Client, service: SchedulerService
) -> None:
    pods = [pod(f"c{i}", {"ai.compute/vram": "1Gi"}) for i in range(6)]
    for p in pods:
        await http.post("/filter", json=args(p, ["busy"]))

    async def bind(i: int) -> str:
        resp = await http.post(
            "/bind",
            json={
                "PodName": f"pod-c{i}",
                "PodNamespace": "team-a",
                "PodUID": f"c{i}",
                "Node": "busy",
            },
        )
        assert resp.status == 200
        error: str = (await resp.json())["Error"]
        return error

    errors = await asyncio.gather(*(bind(i) for i in range(6)))
    winners = [i for i, e in enumerate(errors) if e == ""]
    assert len(winners) == 1  # one device, six concurrent binds
    assert all(e.startswith("InsufficientDevices:") for e in errors if e)
    assert await bind(winners[0]) == ""  # a retried bind of the winner succeeds
    assert len(service.state.allocations) == 1
    alloc = service.state.allocations[f"c{winners[0]}"]
    assert (alloc.node, alloc.state, alloc.device_ids) == ("busy", "confirmed", ("0",))


async def test_bind_of_a_pod_filter_never_saw_is_an_error(http: Client) -> None:
    body = await (
        await http.post(
            "/bind",
            json={"PodName": "x", "PodNamespace": "team-a", "PodUID": "unseen", "Node": "fits"},
        )
    ).json()
    assert "was not seen by filter" in body["Error"]


async def test_preempt_keeps_only_nodes_where_victims_free_enough(
    http: Client, service: SchedulerService
) -> None:
    for uid, node in (("v1", "busy"), ("v2", "fits")):
        p = pod(uid, {"ai.compute/vram": "1Gi"})
        await http.post("/filter", json=args(p, [node]))
        await http.post(
            "/bind",
            json={"PodName": f"pod-{uid}", "PodNamespace": "team-a", "PodUID": uid, "Node": node},
        )
    big = pod("big", {"ai.compute/vram": "8Gi", "ai.compute/devices": "8"})
    request = {
        "Pod": big,
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": {
            "fits": {"Pods": [{"UID": "v2"}], "NumPDBViolations": 0},
            "busy": {"Pods": [{"UID": "v1"}], "NumPDBViolations": 1},
        },
    }
    body = await (await http.post("/preempt", json=request)).json()
    # On "fits", evicting v2 frees all 8 devices; "busy" has one device in all.
    assert body == {
        "NodeNameToMetaVictims": {"fits": {"Pods": [{"UID": "v2"}], "NumPDBViolations": 0}}
    }
    assert set(service.state.allocations) == {"v1", "v2"}  # preempt changed nothing


async def test_preempt_accepts_full_victim_pods(http: Client) -> None:
    victim = pod("v9", {"ai.compute/vram": "1Gi"})
    await http.post("/filter", json=args(victim, ["busy"]))
    await http.post(
        "/bind",
        json={"PodName": "pod-v9", "PodNamespace": "team-a", "PodUID": "v9", "Node": "busy"},
    )
    request = {
        "Pod": pod("needs-busy", {"ai.compute/vram": "1Gi"}),
        "NodeNameToVictims": {"busy": {"Pods": [victim], "NumPDBViolations": 0}},
        "NodeNameToMetaVictims": None,
    }
    body = await (await http.post("/preempt", json=request)).json()
    assert body == {
        "NodeNameToMetaVictims": {"busy": {"Pods": [{"UID": "v9"}], "NumPDBViolations": 0}}
    }


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/filter", b"{not json", 200, "body is not JSON"),
        ("/filter", b'{"Nodes": null, "NodeNames": ["fits"]}', 200, "expected a Pod object"),
        ("/filter", b'{"Pod": {}, "Nodes": null, "NodeNames": null}', 200, "both null"),
        ("/filter", b'{"Pod": {}, "NodeNames": "fits"}', 200, "expected a list of node names"),
        ("/filter", b"[]", 200, "expected a JSON object"),
        ("/prioritize", b"{not json", 400, "body is not JSON"),
        ("/prioritize", b'{"NodeNames": ["fits"]}', 400, "expected a Pod object"),
        ("/bind", b"{not json", 200, "body is not JSON"),
        ("/bind", b'{"PodName": "x"}', 200, "podnamespace must be a non-empty string"),
        (
            "/preempt",
            b'{"Pod": {}, "NodeNameToMetaVictims": {"a": {"Pods": [{}]}}}',
            400,
            "every victim needs a UID",
        ),
        ("/frobnicate", b"{}", 404, "unknown verb 'frobnicate'"),
    ],
)
async def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(
    http: Client, path: str, body: bytes, status: int, fragment: str
) -> None:
    resp = await http.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == status
    assert fragment in (await resp.json())["Error"]
    ok = await http.post("/filter", json=args(pod("after", {"ai.compute/vram": "1Gi"}), ["fits"]))
    assert (await ok.json())["NodeNames"] == ["fits"]


async def test_invalid_hcs_annotations_fail_filter_with_the_key(http: Client) -> None:
    p = pod("bad", {"ai.compute/vram": "1Gi"}, annotations={"hcs.io/allow-downgrade": "yes"})
    body = await (await http.post("/filter", json=args(p, ["fits"]))).json()
    assert body["Error"].startswith(
        "InvalidAnnotation: metadata.annotations[hcs.io/allow-downgrade]"
    )
    resp = await http.post("/prioritize", json=args(p, ["fits"]))
    assert resp.status == 400


async def test_a_large_full_node_request_is_accepted(http: Client) -> None:
    nodes = [node_object(f"extra-{i:04d}") for i in range(3000)] + [node_object("fits")]
    for n in nodes:
        n["status"]["images"] = [{"names": [f"registry/img-{i}:{'x' * 40}"]} for i in range(4)]
    request = {
        "Pod": pod("huge", {"ai.compute/vram": "1Gi"}),
        "Nodes": {"metadata": {}, "items": nodes},
        "NodeNames": None,
    }
    resp = await http.post("/filter", json=request)
    assert resp.status == 200
    body = await resp.json()
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == ["fits"]
    assert len(body["FailedAndUnresolvableNodes"]) == 3000


async def test_health_readiness_version_and_metrics(http: Client) -> None:
    assert (await http.get("/healthz")).status == 200
    assert (await http.get("/readyz")).status == 200
    assert (await (await http.get("/version")).json())["component"] == "hcs-extender"
    await http.post("/filter", json=args(pod("m", {"ai.compute/vram": "1Gi"}), ["fits", "down"]))
    text = await (await http.get("/metrics")).text()
    assert 'hcs_extender_filter_nodes_total{reason="Fits"} 1.0' in text
    assert 'hcs_extender_filter_nodes_total{reason="NotReady"} 1.0' in text
    assert 'hcs_extender_request_seconds_count{verb="filter"} 1.0' in text
    assert "hcs_inventory_nodes 8.0" in text
    (build,) = [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "hcs_build_info"
    ]
    assert build["component"] == "extender" and build["version"] == __version__


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the one series of `name` with exactly these labels."""
    (value,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    return float(value)


async def test_node_metrics_follow_the_books_per_node_and_vendor(
    http: Client, service: SchedulerService
) -> None:
    """Pins: per-node VRAM/TFLOPS/devices series equal the ComputeNodes' figures and move with
    a bind; unhealthy devices are counted against the engine's health threshold."""
    p = pod("m", {"ai.compute/vram": "1Gi"})
    await http.post("/filter", json=args(p, ["busy"]))
    before = await (await http.get("/metrics")).text()
    bound = await http.post(
        "/bind", json={"PodName": "pod-m", "PodNamespace": "team-a", "PodUID": "m", "Node": "busy"}
    )
    assert (await bound.json())["Error"] == ""
    after = await (await http.get("/metrics")).text()
    for name, node in service.state.nodes.items():
        at = {"node": name, "vendor": node.vendor}
        vram = metric(after, "hcs_node_vram_bytes", **at, state="allocatable")
        assert vram == sum(d.vram_allocatable_mib for d in node.devices) * 2**20
        fp16 = metric(after, "hcs_node_tflops", **at, precision="fp16", state="allocatable")
        assert fp16 == sum(d.fp16_milli_tflops for d in node.devices) / 1000
        assert metric(after, "hcs_node_devices", **at, state="total") == len(node.devices)
        # VRAM used outside HCS has its own series: the four add up (none is overbooked here).
        parts = ("allocated", "free", "other")
        assert vram == sum(metric(after, "hcs_node_vram_bytes", **at, state=k) for k in parts)
    sick = {"node": "sick", "vendor": "nvidia"}
    assert metric(after, "hcs_node_devices", **sick, state="unhealthy") == 2
    assert metric(after, "hcs_node_devices", node="npu", vendor="huawei", state="total") == 8
    busy = {"node": "busy", "vendor": "nvidia"}
    assert metric(before, "hcs_node_devices", **busy, state="idle") == 1
    assert metric(after, "hcs_node_devices", **busy, state="idle") == 0
    assert metric(before, "hcs_node_vram_bytes", **busy, state="allocated") == 0
    assert metric(after, "hcs_node_vram_bytes", **busy, state="allocated") >= 2**30


async def test_filter_errors_and_bind_results_are_counted_by_code(http: Client) -> None:
    await http.post("/filter", data=b"{not json")
    await http.post("/filter", json=args(pod("q", {"ai.compute/vram": "lots"}), ["fits"]))
    await http.post("/filter", json=args(pod("r", {"ai.compute/vram": "1Gi"}), ["fits"]))
    unknown = {"PodName": "ghost", "PodNamespace": "team-a", "PodUID": "ghost", "Node": "nowhere"}
    refused = (await (await http.post("/bind", json=unknown)).json())["Error"]
    text = await (await http.get("/metrics")).text()
    assert metric(text, "hcs_extender_filter_errors_total", code="InvalidRequest") == 1
    assert metric(text, "hcs_extender_filter_errors_total", code="InvalidQuantity") == 1
    # The refused bind is counted under the code its Error starts with.
    code = refused.split(":", 1)[0]
    assert code.isidentifier() and code != "ok"
    assert metric(text, "hcs_extender_binds_total", result=code) == 1


class ExplodingBinder:
    """A binder whose API call fails in a way nobody planned for."""

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: Any) -> None:
        raise RuntimeError("connection pool exhausted")

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def lock(self, node: str, namespace: str, name: str, uid: str) -> None:
        self.locked = (node, uid)

    def unlock(self, node: str, uid: str) -> None:
        self.unlocked = (node, uid)


async def test_an_unexpected_bind_failure_releases_the_devices(aiohttp_client: MakeClient) -> None:
    service = SchedulerService(cluster(), EngineConfig(), binder=ExplodingBinder())
    http = await aiohttp_client(create_app(service))
    p = pod("boom", {"ai.compute/vram": "1Gi"})
    await http.post("/filter", json=args(p, ["busy"]))
    body = await (
        await http.post(
            "/bind",
            json={
                "PodName": "pod-boom",
                "PodNamespace": "team-a",
                "PodUID": "boom",
                "Node": "busy",
            },
        )
    ).json()
    assert body["Error"] == "BindFailed: connection pool exhausted"
    assert service.state.allocations == {}
    again = await (
        await http.post("/filter", json=args(pod("next", {"ai.compute/vram": "1Gi"}), ["busy"]))
    ).json()
    assert again["NodeNames"] == ["busy"]  # the device is free again


async def test_vram_used_outside_hcs_is_its_own_series(aiohttp_client: MakeClient) -> None:
    """16Gi reported in use on a GPU HCS gave nobody: neither allocated nor free, but other."""
    state = ClusterState.from_nodes([make_node("used", n_devices=2, allocated_gi=[16, 0])])
    http = await aiohttp_client(create_app(SchedulerService(state, EngineConfig())))
    text = await (await http.get("/metrics")).text()
    at = {"node": "used", "vendor": "nvidia"}
    gib = {k: metric(text, "hcs_node_vram_bytes", **at, state=k) / 2**30 for k in STATES}
    assert gib == {"allocatable": 160, "allocated": 0, "free": 144, "other": 16}


STATES = ("allocatable", "allocated", "free", "other")
