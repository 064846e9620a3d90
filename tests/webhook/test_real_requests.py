"""What AdmissionReviews from real clusters and pods written for HAMi showed (issue 12): each
point pinned, every allowed case applied with jsonpatch and validated as a Pod."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from hcs.admission import AdmissionContext, review
from hcs.demand import parse_pod
from hcs.errors import HcsError
from hcs.models import ComputeNode, ComputeQuota
from hcs.quota import QuotaBook
from hcs.state import ClusterState
from hcs.synthetic import make_node
from tests.webhook.test_admission import applied, container, env_of, k8s_pod, request_for
from tests.webhook.test_webhook_https import Webhook, review_body, webhook

__all__ = ["webhook"]  # the HTTPS fixture


def context(quota: dict[str, str] | None = None) -> tuple[AdmissionContext, QuotaBook]:
    quotas = {}
    if quota is not None:
        quotas[("team-a", "q")] = ComputeQuota.from_dict(
            {
                "apiVersion": "hcs.io/v1alpha1",
                "kind": "ComputeQuota",
                "metadata": {"name": "q", "namespace": "team-a"},
                "spec": {"hard": quota},
            }
        )
    book = QuotaBook(quotas)
    nodes = [make_node("g"), make_node("npu", "huawei"), make_node("dcu", "hygon")]
    return AdmissionContext(ClusterState.from_nodes(nodes), book), book


def test_fractional_values_are_denied_before_any_charge() -> None:
    """kube-apiserver refuses fractional extended resources: admitting (and charging) such a
    pod would leak the charge."""
    ctx, book = context({"tflops-fp16": "100"})
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi", "ai.compute/tflops-fp16": "0.5"}))
    response = review(request_for(pod), ctx)
    assert not response["allowed"] and response["status"]["code"] == 400
    message = response["status"]["message"]
    assert "requests[ai.compute/tflops-fp16]" in message and "whole number" in message
    assert "ask for 1" in message
    assert book.used[("team-a", "q")]["tflops-fp16"] == 0
    ok = k8s_pod(container(requests={"ai.compute/vram": "1.5Gi", "ai.compute/tflops-fp16": "1"}))
    applied(ok, review(request_for(ok, uid="r2"), ctx))  # 1.5Gi is a whole number of bytes


def test_init_containers_and_native_sidecars_get_the_guard() -> None:
    ctx, _ = context()
    sidecar = client.V1Container(name="proxy", image="envoy", restart_policy="Always")
    init = client.V1Container(name="fetch", image="curl")
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}), init=[init, sidecar])
    out = applied(pod, review(request_for(pod), ctx))
    for c in out["spec"]["initContainers"]:
        assert env_of(c)["NVIDIA_VISIBLE_DEVICES"] == "void", c["name"]


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ("NVIDIA_VISIBLE_DEVICES", "spec.containers[0].env[NVIDIA_VISIBLE_DEVICES]"),
        ("CUDA_VISIBLE_DEVICES", "spec.containers[0].env[CUDA_VISIBLE_DEVICES]"),
    ],
)
def test_a_requesting_container_cannot_choose_its_devices(env: str, where: str) -> None:
    ctx, book = context({"vram": "100Gi"})
    pod = k8s_pod(
        container(
            requests={"ai.compute/vram": "8Gi"}, env=[client.V1EnvVar(name=env, value="0,1")]
        ),
        annotations={"hcs.io/vendor-preference": "nvidia"},
    )
    response = review(request_for(pod), ctx)
    assert not response["allowed"] and where in response["status"]["message"]
    assert book.used[("team-a", "q")]["vram"] == 0


def test_a_container_that_asked_for_nothing_cannot_see_all_devices() -> None:
    ctx, _ = context()
    greedy = container("side", env=[client.V1EnvVar(name="NVIDIA_VISIBLE_DEVICES", value="all")])
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}), greedy)
    response = review(request_for(pod), ctx)
    assert not response["allowed"]
    assert "spec.containers[1].env[NVIDIA_VISIBLE_DEVICES]" in response["status"]["message"]


@pytest.mark.parametrize("domain", ["ecs.io", "gcs.io", "acs.io", "hcs.io.example.com"])
def test_unrelated_domains_pass(domain: str) -> None:
    pod = k8s_pod(
        container(requests={"ai.compute/vram": "8Gi"}),
        annotations={f"{domain}/owner": "x", f"{domain}/vendor": "y"},
    )
    parse_pod(pod)  # no error


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("hsc.io/vendor-preference", "hcs.io/vendor-preference"),
        ("hcs.com/allow-downgrade", "hcs.io/allow-downgrade"),
        ("hcs.oi/topology-preference", "hcs.io/topology-preference"),
    ],
)
def test_plausible_typos_of_hcs_keys_still_get_did_you_mean(key: str, suggestion: str) -> None:
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}), annotations={key: "true"})
    with pytest.raises(HcsError, match=f"did you mean {suggestion}"):
        parse_pod(pod)


@pytest.mark.parametrize(
    ("field", "value"),
    [("kind", "Pod"), ("object", "Pod"), ("operation", 7), ("dryRun", "yes"), ("namespace", [])],
)
async def test_a_malformed_review_is_400_not_500(webhook: Webhook, field: str, value: Any) -> None:
    body = review_body("bad-1")
    body["request"][field] = value
    resp = await webhook.post(body)
    assert resp.status == 400
    assert f"request.{field}" in await resp.text()
    good = await webhook.post(review_body("good-1"))  # still serving
    assert good.status == 200


def test_every_denial_leaves_an_info_line(caplog: pytest.LogCaptureFixture) -> None:
    ctx, _ = context({"vram": "4Gi"})
    caplog.set_level("INFO", logger="hcs.webhook")
    bad = k8s_pod(
        container(requests={"ai.compute/vram": "8Gi"}),
        annotations={"hcs.io/topology-preference": "far"},
    )
    over = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    for i, pod in enumerate((bad, over)):
        assert not review(request_for(pod, uid=f"d{i}"), ctx)["allowed"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("deny ")]
    assert len(lines) == 2
    assert "pod=team-a/train" in lines[0] and "code=InvalidAnnotation" in lines[0]
    assert "topology-preference" in lines[0]
    assert "code=QuotaExceeded" in lines[1]


def limits_of(c: dict[str, Any]) -> dict[str, str]:
    res = c.get("resources") or {}
    for key, value in (res.get("requests") or {}).items():  # request == limit where both
        assert res["limits"][key] == value
    assert not any("mem" in k for k in (res.get("requests") or {}))  # HAMi's keys are gone
    return dict(res["limits"])


@pytest.mark.parametrize(
    ("resources", "vendor", "expected"),
    [
        (
            {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "4000"},
            "nvidia",
            {"nvidia.com/gpu": "2", "ai.compute/vram": "8000Mi", "ai.compute/devices": "2"},
        ),
        (
            {"huawei.com/Ascend910B3": "1", "huawei.com/Ascend910B3-memory": "2000"},
            "huawei",
            # The 910B3 name becomes the family's advertised name; its model stays a
            # constraint (hcs.io/request).
            {
                "huawei.com/Ascend910": "1",
                "ai.compute/vram": "2000Mi",
                "ai.compute/devices": "1",
            },
        ),
        (
            {"huawei.com/Ascend910B3-memory": "2000"},  # memory alone: one device, not 2,000
            "huawei",
            {"huawei.com/Ascend910": "1", "ai.compute/vram": "2000Mi", "ai.compute/devices": "1"},
        ),
        (
            {"hygon.com/dcunum": "1", "hygon.com/dcumem": "16384"},
            "hygon",
            {"hygon.com/dcu": "1", "ai.compute/vram": "16384Mi", "ai.compute/devices": "1"},
        ),
    ],
)
def test_hami_pods_are_read_as_ai_compute(
    resources: dict[str, str], vendor: str, expected: dict[str, str]
) -> None:
    ctx, _ = context()
    pod = k8s_pod(container("main", limits=resources))
    out = applied(pod, review(request_for(pod), ctx))
    assert out["metadata"]["annotations"]["hcs.io/assigned-vendor"] == vendor
    assert limits_of(out["spec"]["containers"][0]) == expected
    demand = parse_pod(out)  # the extender reads the rewritten pod the same way
    assert demand.model == ("Ascend910B3*" if "huawei.com/Ascend910B3" in resources else None)
    (c,) = demand.containers
    per_device = int(expected["ai.compute/vram"].removesuffix("Mi")) // int(
        expected["ai.compute/devices"]
    )
    assert (c.devices, c.vram_mib, c.whole) == (
        int(expected["ai.compute/devices"]),
        per_device,
        False,
    )


@pytest.mark.parametrize(
    "resource",
    ["nvidia.com/gpucores", "nvidia.com/gpumem-percentage", "hygon.com/dcucores"],
)
def test_hami_shares_hcs_cannot_express_are_refused_by_name(resource: str) -> None:
    ctx, _ = context()
    pod = k8s_pod(container("main", limits={"nvidia.com/gpu": "1", resource: "30"}))
    response = review(request_for(pod), ctx)
    assert not response["allowed"]
    assert f"limits[{resource}]: HAMi's {resource}" in response["status"]["message"]


def test_the_images_library_path_is_never_dropped() -> None:
    """A container env var would replace the image's LD_LIBRARY_PATH (NGC's cuda/compat), and
    the webhook cannot see the image's value: it extends one the spec sets and otherwise
    leaves the variable alone, offering the driver folders as HCS_DRIVER_LIBRARY_PATH."""
    ctx, _ = context()
    plain = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    env = env_of(applied(plain, review(request_for(plain), ctx))["spec"]["containers"][0])
    assert "LD_LIBRARY_PATH" not in env
    assert env["HCS_DRIVER_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"
    own = k8s_pod(
        container(
            requests={"ai.compute/vram": "8Gi"},
            env=[client.V1EnvVar(name="LD_LIBRARY_PATH", value="/usr/local/cuda/compat/lib")],
        )
    )
    out = applied(own, review(request_for(own, uid="r2"), ctx))
    assert env_of(out["spec"]["containers"][0])["LD_LIBRARY_PATH"] == (
        "/usr/local/nvidia/lib64:/usr/local/cuda/compat/lib"
    )


def test_the_resource_added_is_the_one_the_vendors_nodes_advertise() -> None:
    """A fleet of Ascend 310P nodes advertises huawei.com/Ascend310P: the webhook adds that,
    and the device plugin registers the same name (one table, by model)."""
    from hcs.synthetic import node_dict
    from hcs.vendors import VendorTable
    from node.deviceplugin import Allocator, PluginDevice

    nodes = []
    for i in range(3):
        raw = node_dict(f"p{i}", "huawei", 4)
        for dev in raw["spec"]["devices"]:
            dev["model"] = "Ascend310P3"
        nodes.append(ComputeNode.from_dict(raw))
    ctx = AdmissionContext(ClusterState.from_nodes(nodes), QuotaBook({}))
    pod = k8s_pod(
        container(requests={"ai.compute/vram": "8Gi"}),
        annotations={"hcs.io/vendor-preference": "huawei"},
    )
    out = applied(pod, review(request_for(pod), ctx))
    assert limits_of(out["spec"]["containers"][0])["huawei.com/Ascend310P"] == "1"
    assert "huawei.com/Ascend910" not in out["spec"]["containers"][0]["resources"]["limits"]
    plugin = Allocator("p0", VendorTable()["huawei"], api=None)  # type: ignore[arg-type]
    plugin.devices = [PluginDevice("0", True, model="Ascend310P3")]
    assert plugin.resource == "huawei.com/Ascend310P"
    plugin.devices = [PluginDevice("0", True, model="Ascend910B3")]
    assert plugin.resource == "huawei.com/Ascend910"
    # A legacy pod asking for the 910 family cannot land on 310P nodes: refused, not admitted
    # to wait forever for a name no node advertises.
    legacy = k8s_pod(container(limits={"huawei.com/Ascend910": "1"}))
    refused = review(request_for(legacy, uid="r2"), ctx)
    assert refused["allowed"] is False
    assert "advertising huawei.com/Ascend910" in refused["status"]["message"]


def test_inject_runtime_sets_the_vendors_runtime_class() -> None:
    ctx, _ = context()
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    assert applied(pod, review(request_for(pod), ctx))["spec"]["runtimeClassName"] == "nvidia"
    off = k8s_pod(
        container(requests={"ai.compute/vram": "8Gi"}),
        annotations={"hcs.io/inject-runtime": "false"},
    )
    assert "runtimeClassName" not in applied(off, review(request_for(off, uid="r2"), ctx))["spec"]
    own = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    own["spec"]["runtimeClassName"] = "kata-nvidia"
    out = applied(own, review(request_for(own, uid="r3"), ctx))
    assert out["spec"]["runtimeClassName"] == "kata-nvidia"  # the pod's choice is kept
    npu = k8s_pod(
        container(requests={"ai.compute/vram": "8Gi"}),
        annotations={"hcs.io/vendor-preference": "huawei"},
    )
    assert "runtimeClassName" not in applied(npu, review(request_for(npu, uid="r4"), ctx))["spec"]


def image_pod(image: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}), annotations=annotations)
    pod["spec"]["containers"][0]["image"] = image
    return pod


def test_a_cuda_image_goes_to_nvidia_even_where_others_have_more_room() -> None:
    """Routing without a preference once took the vendor with most free VRAM: a CUDA image on
    Cambricon. The image's rule implies NVIDIA; downgrade stays off unless the pod allows it."""
    nodes = [make_node("g", vram_gi=16, n_devices=1), make_node("m", "cambricon", n_devices=8)]
    ctx = AdmissionContext(ClusterState.from_nodes(nodes), QuotaBook({}))
    cuda = image_pod("nvcr.io/nvidia/pytorch:24.05-py3")
    out = applied(cuda, review(request_for(cuda), ctx))
    assert out["metadata"]["annotations"]["hcs.io/assigned-vendor"] == "nvidia"
    plain = image_pod("python:3.12")  # says nothing: most free VRAM, as before
    out = applied(plain, review(request_for(plain, uid="r2"), ctx))
    assert out["metadata"]["annotations"]["hcs.io/assigned-vendor"] == "cambricon"


def test_the_default_preference_comes_from_config() -> None:
    from hcs.vendors import vendor_table_from_dict

    vendors = vendor_table_from_dict({"defaultVendorPreference": ["huawei"]})
    nodes = [make_node("g"), make_node("npu", "huawei")]
    ctx = AdmissionContext(ClusterState.from_nodes(nodes), QuotaBook({}), vendors)
    pod = image_pod("python:3.12")
    out = applied(pod, review(request_for(pod), ctx))
    assert out["metadata"]["annotations"]["hcs.io/assigned-vendor"] == "huawei"


def test_image_rebinding_swaps_in_the_routed_vendors_build() -> None:
    from hcs.vendors import vendor_table_from_dict

    vendors = vendor_table_from_dict(
        {
            "imageRules": [
                {
                    "image": "nvcr.io/nvidia/pytorch:*",
                    "vendor": "nvidia",
                    "builds": {"huawei": "ascendhub.huawei.com/public-ascendhub/pytorch:*"},
                }
            ]
        }
    )
    nodes = [make_node("npu", "huawei")]  # no GPU at all: the pod is downgraded to Ascend
    ctx = AdmissionContext(ClusterState.from_nodes(nodes), QuotaBook({}), vendors)
    allow = {"hcs.io/allow-downgrade": "true", "hcs.io/image-rebinding": "true"}
    pod = image_pod("nvcr.io/nvidia/pytorch:24.05-py3", allow)
    response = review(request_for(pod), ctx)
    out = applied(pod, response)
    assert out["metadata"]["annotations"]["hcs.io/assigned-vendor"] == "huawei"
    assert out["spec"]["containers"][0]["image"] == (
        "ascendhub.huawei.com/public-ascendhub/pytorch:24.05-py3"
    )
    assert out["metadata"]["annotations"]["hcs.io/original-images"] == (
        '{"main":"nvcr.io/nvidia/pytorch:24.05-py3"}'
    )
    # Without rebinding the image runs only on NVIDIA: never routed to Huawei, where it would
    # not run; with no GPU node at all it is refused, naming the vendor.
    off = image_pod("nvcr.io/nvidia/pytorch:24.05-py3", {"hcs.io/allow-downgrade": "true"})
    refused = review(request_for(off, uid="r2"), ctx)
    assert refused["allowed"] is False
    assert refused["status"]["message"].startswith("VendorNotSupported: no node of vendor nvidia")
    # Rebinding on, but no rule names the image: it runs unchanged, and the pod is told.
    other = image_pod("registry.example.com/triton:24.05", allow)
    told = review(request_for(other, uid="r3"), ctx)
    assert any("no imageRules entry names" in w for w in told.get("warnings", []))
    assert applied(other, told)["spec"]["containers"][0]["image"] == (
        "registry.example.com/triton:24.05"
    )


def test_a_hami_share_warns_when_no_node_of_its_vendor_enforces_shares() -> None:
    pod = k8s_pod(container("main", limits={"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4000"}))
    ctx, _ = context()  # exclusive nodes only
    answer = review(request_for(pod), ctx)
    assert answer["allowed"]
    (warning,) = [w for w in answer.get("warnings", []) if "enforces" in w]
    assert warning.startswith("hcs: nvidia.com/gpumem became ai.compute/vram, but no nvidia node")
    for mode, warns in (("none", True), ("hami-core", False)):
        shared = make_node("g2", shared=True, enforcement=mode)
        ctx = AdmissionContext(ClusterState.from_nodes([make_node("g"), shared]), QuotaBook({}))
        answer = review(request_for(pod, uid=mode), ctx)
        assert any("enforces shares" in w for w in answer.get("warnings", [])) is warns, mode
    plain = k8s_pod(container("main", limits={"ai.compute/vram": "4000Mi"}))  # not HAMi's
    answer = review(request_for(plain, uid="plain"), context()[0])
    assert not any("enforces shares" in w for w in answer.get("warnings", []))
