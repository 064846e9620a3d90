"""A pod through DRA, end to end, per vendor: the webhook (`--dra`) turns its `ai.compute/*`
into a claim template, `hcs controller` creates the template, the resourceclaim controller and
kube-scheduler's allocator (imitated from the published rules, tests/dra_allocator.py) allocate
from the slices `hcs dra-plugin` published and the shipped DeviceClasses, and the imitated
kubelet prepares the claim: the CDI edits give exactly the allocated devices. A claim whose
preferred vendor is full falls back to the next; preparing twice answers the same; unprepare
removes the edits."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from cluster.controllers import ControllerRunner
from hcs.admission import AdmissionContext, parse_review, review
from hcs.dra import DRIVER
from hcs.models import ComputeNode
from hcs.quota import QuotaBook
from hcs.state import ClusterState
from hcs.vendors import VENDOR_NAMES, VendorTable
from node.draplugin import DraPlugin, KubeDra, Preparer, SlicePublisher
from tests.dra_allocator import InUse, allocate
from tests.fake_apiserver import CLAIMS, SLICES, TEMPLATES, FakeApiServer
from tests.node.harness import api_client, compute_node
from tests.node.kubelet import short_dir
from tests.node.test_dra_plugin import ImitatedKubelet, wait_until
from tests.webhook.reviews import admission_review

CLASSES = Path(__file__).resolve().parents[2] / "manifests" / "components" / "dra"
NODES = {"nvidia": "gpu-1", "huawei": "npu-1", "hygon": "dcu-1", "cambricon": "mlu-1"}


def device_classes() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((CLASSES / "deviceclasses.yaml").read_text())
    return {d["metadata"]["name"]: d for d in docs if d}


def _fixed(node: ComputeNode) -> Any:
    """The node's discovery: always this ComputeNode."""
    return lambda: node


class Cluster:
    """The in-test API server, one node per vendor running `hcs dra-plugin`, and the admission
    and controller sides of HCS against them."""

    def __init__(self, fake: FakeApiServer, url: str) -> None:
        self.fake = fake
        self.api = api_client(url)
        self.nodes = {v: ComputeNode.from_dict(compute_node(n, v, 4)) for v, n in NODES.items()}
        self.root = short_dir()
        self.plugins: dict[str, DraPlugin] = {}
        self.threads: list[threading.Thread] = []
        for vendor, node in self.nodes.items():
            kube = KubeDra(self.api)
            base = self.root / vendor
            plugin = DraPlugin(
                Preparer(node.name, VendorTable(), kube, base / "cdi", _fixed(node)),
                SlicePublisher(node.name, kube),
                base / "plugins" / DRIVER,
                base / "plugins_registry",
                interval=0.1,
            )
            thread = threading.Thread(target=plugin.run, kwargs={"poll": 0.02}, daemon=True)
            thread.start()
            self.plugins[vendor], self.threads = plugin, [*self.threads, thread]
        state = ClusterState.from_nodes(self.nodes.values())
        self.admission = AdmissionContext(state, QuotaBook({}), dra=True)
        self.controller = ControllerRunner(self.api)
        self.in_use = InUse()

    def close(self) -> None:
        for plugin in self.plugins.values():
            plugin.stopping.set()
        for thread in self.threads:
            thread.join(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def admit(self, name: str, limits: dict[str, str], annotations: dict[str, str]) -> Any:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "ml", "annotations": annotations},
            "spec": {
                "containers": [{"name": "main", "image": "i", "resources": {"limits": limits}}]
            },
        }
        response = review(parse_review(admission_review(pod, uid=f"r-{name}")), self.admission)
        assert response["allowed"], response
        ops = json.loads(base64.b64decode(response["patch"]))
        admitted = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
        admitted["metadata"]["uid"] = f"u-{name}"
        return admitted

    def claim_for(self, pod: dict[str, Any]) -> dict[str, Any]:
        """`hcs controller` creates the template; the resourceclaim controller makes the pod's
        claim from it; the allocator allocates it (None results: unsatisfiable)."""
        self.controller.ensure_claim_templates([pod])
        (ref,) = pod["spec"]["resourceClaims"]
        template = self.fake.objects[TEMPLATES][f"ml/{ref['resourceClaimTemplateName']}"]
        claim = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {
                "name": f"{pod['metadata']['name']}-{ref['name']}",
                "namespace": "ml",
                "uid": f"claim-{pod['metadata']['uid']}",
            },
            "spec": template["spec"]["spec"],
        }
        results = allocate(
            claim["spec"], self.fake.objects[SLICES].values(), device_classes(), self.in_use
        )
        assert results is not None, "the allocator found no devices"
        self.in_use.record(results)
        claim["status"] = {"allocation": {"devices": {"results": results}}}
        return self.fake.put(CLAIMS, claim)


@pytest.fixture
async def cluster(aiohttp_server: Any) -> Any:
    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    c = Cluster(fake, str(server.make_url("")).rstrip("/"))
    await wait_until(lambda: len(fake.objects[SLICES]) == len(NODES), timeout=20)
    yield c
    await asyncio.to_thread(c.close)


def prepared_env(
    cluster: Cluster, vendor: str, claim: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    plugin = cluster.plugins[vendor]
    kubelet = ImitatedKubelet(plugin.registry_dir.parent)
    info = kubelet.register()
    meta = claim["metadata"]
    answer = kubelet.prepare(info, (meta["namespace"], meta["uid"], meta["name"]))
    result = answer.claims[meta["uid"]]
    assert result.error == "", result.error
    spec = json.loads((plugin.preparer.cdi_dir / f"{DRIVER}-{meta['uid']}.json").read_text())
    return (kubelet, info, answer), spec["devices"][0]["containerEdits"]


@pytest.mark.parametrize("vendor", VENDOR_NAMES)
async def test_a_pod_gets_exactly_its_allocated_devices_through_dra(
    cluster: Cluster, vendor: str
) -> None:
    pod = cluster.admit(
        "train",
        {"ai.compute/vram": "16Gi", "ai.compute/devices": "2"},
        {"hcs.io/vendor-preference": vendor},
    )
    claim = await asyncio.to_thread(cluster.claim_for, pod)
    results = claim["status"]["allocation"]["devices"]["results"]
    assert [r["request"] for r in results] == [f"main/{vendor}"] * 2
    assert {r["pool"] for r in results} == {NODES[vendor]}
    given = [r["device"].removeprefix(f"{vendor}-") for r in results]
    (kubelet, info, answer), edits = await asyncio.to_thread(prepared_env, cluster, vendor, claim)
    assert [d.device_name for d in answer.claims[claim["metadata"]["uid"]].devices] == [
        r["device"] for r in results
    ]
    env = dict(e.split("=", 1) for e in edits["env"])
    nodes = [n["path"] for n in edits.get("deviceNodes") or []]
    profile = VendorTable()[vendor]
    node = cluster.nodes[vendor]
    if profile.device_env:
        named = env[profile.device_env].split(",")
        expected = [
            (d.identity or d.id) if profile.device_env_form == "identities" else d.id
            for d in node.devices
            if d.id in given
        ]
        assert sorted(named) == sorted(expected)
    if profile.logical_env:
        assert env[profile.logical_env] == "0,1"
    per_device = [t for t in profile.device_nodes]
    for d in node.devices:  # exactly the allocated devices' nodes, no other's
        own = [t.format(id=d.id, render=128 + int(d.id)) for t in per_device]
        assert all((p in nodes) == (d.id in given) for p in own), (d.id, nodes)
    meta = claim["metadata"]
    again = await asyncio.to_thread(
        kubelet.prepare, info, (meta["namespace"], meta["uid"], meta["name"])
    )
    assert again == answer
    await asyncio.to_thread(kubelet.unprepare, info, (meta["namespace"], meta["uid"], meta["name"]))
    assert not list(cluster.plugins[vendor].preparer.cdi_dir.glob("*.json"))


async def test_a_full_preferred_vendor_falls_back_to_the_next(cluster: Cluster) -> None:
    prefs = {"hcs.io/vendor-preference": "huawei,nvidia", "hcs.io/allow-downgrade": "true"}
    first = cluster.admit("first", {"ai.compute/vram": "8Gi", "ai.compute/devices": "4"}, prefs)
    claim = await asyncio.to_thread(cluster.claim_for, first)
    assert {r["request"] for r in claim["status"]["allocation"]["devices"]["results"]} == {
        "main/huawei"
    }
    # huawei's four NPUs are taken: the same shape now lands on the next vendor in order.
    second = cluster.admit("second", {"ai.compute/vram": "8Gi", "ai.compute/devices": "4"}, prefs)
    claim = await asyncio.to_thread(cluster.claim_for, second)
    results = claim["status"]["allocation"]["devices"]["results"]
    assert {r["request"] for r in results} == {"main/nvidia"}
    assert {r["pool"] for r in results} == {"gpu-1"}
    _, edits = await asyncio.to_thread(prepared_env, cluster, "nvidia", claim)
    env = dict(e.split("=", 1) for e in edits["env"])
    assert len(env["NVIDIA_VISIBLE_DEVICES"].split(",")) == 4
