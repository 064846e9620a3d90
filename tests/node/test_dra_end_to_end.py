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
from node.deviceplugin import HamiCore
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

    def __init__(
        self, fake: FakeApiServer, url: str, sharing: dict[str, str] | None = None
    ) -> None:
        """`sharing`: vendor -> the enforcement its node shares devices under."""
        self.fake = fake
        self.api = api_client(url)
        sharing = sharing or {}
        self.nodes = {
            v: ComputeNode.from_dict(
                compute_node(n, v, 4, shared=v in sharing, enforcement=sharing.get(v, "none"))
            )
            for v, n in NODES.items()
        }
        self.root = short_dir()
        self.plugins: dict[str, DraPlugin] = {}
        self.threads: list[threading.Thread] = []
        for vendor, node in self.nodes.items():
            kube = KubeDra(self.api)
            base = self.root / vendor
            hami = None
            if sharing.get(vendor) == "hami-core":
                (base / "vgpu").mkdir(parents=True)
                (base / "vgpu" / "libvgpu.so").write_bytes(b"\x7fELF")
                hami = HamiCore.prepare(base / "vgpu", base / "state", VendorTable())
            plugin = DraPlugin(
                Preparer(node.name, VendorTable(), kube, base / "cdi", _fixed(node), hami=hami),
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

    def admit(
        self,
        name: str,
        limits: dict[str, str],
        annotations: dict[str, str],
        more: dict[str, dict[str, str]] | None = None,
    ) -> Any:
        """The webhook's pod: container `main` asking `limits`, and `more` containers."""
        containers = [
            {"name": c, "image": "i", "resources": {"limits": lim}}
            for c, lim in {"main": limits, **(more or {})}.items()
        ]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "ml", "annotations": annotations},
            "spec": {"containers": containers},
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

    def claim_or_none(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self.claim_for(pod)
        except AssertionError:
            return None


async def _start(aiohttp_server: Any, sharing: dict[str, str] | None = None) -> Cluster:
    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    c = Cluster(fake, str(server.make_url("")).rstrip("/"), sharing)
    await wait_until(lambda: len(fake.objects[SLICES]) == len(NODES), timeout=20)
    return c


@pytest.fixture
async def cluster(aiohttp_server: Any) -> Any:
    c = await _start(aiohttp_server)
    yield c
    await asyncio.to_thread(c.close)


@pytest.fixture
async def shared(aiohttp_server: Any) -> Any:
    """NVIDIA shares under HAMi-core, Ascend under vNPU, the others stay exclusive."""
    c = await _start(aiohttp_server, {"nvidia": "hami-core", "huawei": "vnpu"})
    yield c
    await asyncio.to_thread(c.close)


def container_edits(plugin: DraPlugin, ids: list[str]) -> dict[str, Any]:
    """What a CDI-enabled runtime gives a container for these CDI ids: every named device's
    containerEdits from the specs in the CDI folder, in order (env entries later in the list
    override earlier ones of the same name)."""
    known: dict[str, dict[str, Any]] = {}
    for path in plugin.preparer.cdi_dir.glob("*.json"):
        spec = json.loads(path.read_text())
        for d in spec["devices"]:
            known[f"{spec['kind']}={d['name']}"] = d["containerEdits"]
    env: dict[str, str] = {}
    nodes: list[str] = []
    mounts: list[dict[str, Any]] = []
    for cdi in ids:
        edits = known[cdi]  # an unknown id fails the container's creation
        env.update(e.split("=", 1) for e in edits.get("env") or [])
        nodes += [n["path"] for n in edits.get("deviceNodes") or []]
        mounts += edits.get("mounts") or []
    return {"env": env, "deviceNodes": nodes, "mounts": mounts}


def prepared_env(
    cluster: Cluster, vendor: str, claim: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """`prepare`, and the containerEdits of the claim's (one) request in HCS's spec."""
    kubelet, info, prepared = prepare(cluster, vendor, claim)
    uid = claim["metadata"]["uid"]
    spec = json.loads(
        (cluster.plugins[vendor].preparer.cdi_dir / f"{DRIVER}-{uid}.json").read_text()
    )
    return (kubelet, info, prepared), spec["devices"][0]["containerEdits"]


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
    assert [d.device_name for d in answer.devices] == [r["device"] for r in results]
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
    assert again.claims[meta["uid"]] == answer
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


def prepare(cluster: Cluster, vendor: str, claim: dict[str, Any]) -> tuple[Any, Any, Any]:
    """kubelet registers the node's driver and prepares the claim: (kubelet, info, answer)."""
    kubelet = ImitatedKubelet(cluster.plugins[vendor].registry_dir.parent)
    info = kubelet.register()
    meta = claim["metadata"]
    answer = kubelet.prepare(info, (meta["namespace"], meta["uid"], meta["name"]))
    prepared = answer.claims[meta["uid"]]
    assert prepared.error == "", prepared.error
    return kubelet, info, prepared


def named_devices(vendor: str, env: dict[str, str], nodes: list[str], cluster: Cluster) -> set[str]:
    """The device ids a container's env and device nodes give it."""
    profile = VendorTable()[vendor]
    node = cluster.nodes[vendor]
    by_identity = {(d.identity or d.id): d.id for d in node.devices}
    named: set[str] = set()
    if profile.device_env and env.get(profile.device_env):
        for item in env[profile.device_env].split(","):
            named.add(by_identity.get(item, item))
    for d in node.devices:
        own = [t.format(id=d.id, render=128 + int(d.id)) for t in profile.device_nodes]
        if own and all(p in nodes for p in own):
            named.add(d.id)
    return named


@pytest.mark.parametrize("vendor", VENDOR_NAMES)
async def test_each_container_gets_its_own_requests_devices_only(
    cluster: Cluster, vendor: str
) -> None:
    pod = cluster.admit(
        "two",
        {"ai.compute/vram": "16Gi", "ai.compute/devices": "2"},
        {"hcs.io/vendor-preference": vendor},
        more={"helper": {"ai.compute/vram": "8Gi"}},
    )
    claims = pod["spec"]["containers"]
    assert [c["resources"]["claims"] for c in claims] == [
        [{"name": "hcs-compute", "request": "main"}],
        [{"name": "hcs-compute", "request": "helper"}],
    ]
    claim = await asyncio.to_thread(cluster.claim_for, pod)
    results = claim["status"]["allocation"]["devices"]["results"]
    by_request: dict[str, set[str]] = {}
    for r in results:
        by_request.setdefault(r["request"].split("/")[0], set()).add(
            r["device"].removeprefix(f"{vendor}-")
        )
    kubelet, _, prepared = await asyncio.to_thread(prepare, cluster, vendor, claim)
    plugin = cluster.plugins[vendor]
    for container in ("main", "helper"):
        ids = kubelet.cdi_ids(prepared, container)
        assert ids, f"kubelet gives {container} no CDI device: its request is not named"
        edits = container_edits(plugin, ids)
        got = named_devices(vendor, edits["env"], edits["deviceNodes"], cluster)
        assert got == by_request[container], (container, edits)


async def test_shares_of_one_gpu_are_each_held_to_what_their_claim_consumed(
    shared: Cluster,
) -> None:
    nvidia = {"hcs.io/vendor-preference": "nvidia"}
    claims = []
    for name in ("a", "b"):
        pod = shared.admit(
            name, {"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "78"}, nvidia
        )
        claims.append(await asyncio.to_thread(shared.claim_for, pod))
    (ra,), (rb,) = (c["status"]["allocation"]["devices"]["results"] for c in claims)
    assert ra["device"] == rb["device"] == "nvidia-0"  # both on one GPU, first fit
    assert ra["shareID"] != rb["shareID"]
    assert ra["consumedCapacity"] == {
        "vram": "16384Mi",
        "tflops_fp16": "78",
        "tflops_fp32": "0",
    }
    uuid = shared.nodes["nvidia"].devices[0].identity
    plugin = shared.plugins["nvidia"]
    for claim, result in zip(claims, (ra, rb), strict=True):
        kubelet, info, prepared = await asyncio.to_thread(prepare, shared, "nvidia", claim)
        (device,) = prepared.devices
        assert device.share_id == result["shareID"]
        edits = container_edits(plugin, kubelet.cdi_ids(prepared, "main"))
        assert edits["env"]["NVIDIA_VISIBLE_DEVICES"] == uuid
        # The driver folders come too, read-only (the webhook cannot add them in DRA mode).
        assert {"/usr/local/nvidia", "/run/nvidia/driver"} <= {
            m["containerPath"] for m in edits["mounts"] if m["options"][0] == "ro"
        }
        assert edits["env"]["CUDA_DEVICE_MEMORY_LIMIT_0"] == "16384m"
        assert edits["env"]["CUDA_DEVICE_SM_LIMIT"] == "25"  # 78 of 312 TFLOPS
        library = {m["containerPath"]: m for m in edits["mounts"]}
        assert library["/usr/local/vgpu/libvgpu.so"]["options"][0] == "ro"
        own = Path(library["/usr/local/vgpu/containers"]["hostPath"])
        assert own.is_dir() and claim["metadata"]["uid"] in own.name
        meta = claim["metadata"]
        await asyncio.to_thread(
            kubelet.unprepare, info, (meta["namespace"], meta["uid"], meta["name"])
        )
        assert not own.exists()
    # A pod asking for a device, no VRAM: a whole one, so not the shared GPU; nothing limits it.
    whole = shared.admit("w", {"ai.compute/devices": "1"}, nvidia)
    claim = await asyncio.to_thread(shared.claim_for, whole)
    (r,) = claim["status"]["allocation"]["devices"]["results"]
    assert r["device"] == "nvidia-1"
    assert r["consumedCapacity"]["vram"] == "81920Mi"  # the whole of it
    kubelet, _, prepared = await asyncio.to_thread(prepare, shared, "nvidia", claim)
    edits = container_edits(plugin, kubelet.cdi_ids(prepared, "main"))
    assert not any(k.startswith("CUDA_DEVICE_") for k in edits["env"])
    assert not [m for m in edits["mounts"] if "vgpu" in m["containerPath"]]


async def test_npu_shares_take_the_smallest_vnpu_template_and_fill_the_chip(
    shared: Cluster,
) -> None:
    huawei = {"hcs.io/vendor-preference": "huawei"}
    placed = []
    for i in range(5):
        pod = shared.admit(f"n{i}", {"ai.compute/vram": "10Gi"}, huawei)
        claim = await asyncio.to_thread(shared.claim_for, pod)
        (r,) = claim["status"]["allocation"]["devices"]["results"]
        placed.append((claim, r))
    # 10Gi rounds up to vir05_1c_16g (16Gi): four fill the 64Gi chip, the fifth takes the next.
    assert [r["device"] for _, r in placed] == ["huawei-0"] * 4 + ["huawei-1"]
    assert {r["consumedCapacity"]["vram"] for _, r in placed} == {"16384Mi"}
    claim, _ = placed[4]
    kubelet, _, prepared = await asyncio.to_thread(prepare, shared, "huawei", claim)
    edits = container_edits(shared.plugins["huawei"], kubelet.cdi_ids(prepared, "main"))
    assert edits["env"]["ASCEND_VNPU_SPECS"] == "vir05_1c_16g"
    assert edits["env"]["ASCEND_VISIBLE_DEVICES"] == "1"
    # A share larger than every template takes the whole chip (the policy's last value).
    big = shared.admit("big", {"ai.compute/vram": "40Gi"}, huawei)
    claim = await asyncio.to_thread(shared.claim_for, big)
    (r,) = claim["status"]["allocation"]["devices"]["results"]
    assert r["device"] == "huawei-2" and r["consumedCapacity"]["vram"] == "65536Mi"
    kubelet, _, prepared = await asyncio.to_thread(prepare, shared, "huawei", claim)
    edits = container_edits(shared.plugins["huawei"], kubelet.cdi_ids(prepared, "main"))
    assert "ASCEND_VNPU_SPECS" not in edits["env"]
