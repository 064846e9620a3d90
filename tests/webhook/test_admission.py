"""Admission decisions and the Pod mutation. Every allowed case is applied with `jsonpatch` to
the Pod as received, and the result must still be a valid Pod."""

import base64
import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from hcs.admission import (
    AdmissionContext,
    AdmissionRequest,
    AdmissionResponse,
    ReviewError,
    parse_review,
    pointer,
    review,
)
from hcs.engine import EngineConfig
from hcs.inventory import load_inventory
from hcs.ledger import Ledger
from hcs.models import ComputeQuota
from hcs.quota import QuotaBook
from hcs.state import ClusterState
from hcs.synthetic import make_node, quota_dict
from tests.webhook.reviews import admission_review

ROOT = Path(__file__).resolve().parents[2]
API = client.ApiClient()
K8S_VERSION = "1.37.0"


def k8s_pod(
    *containers: client.V1Container,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    generate_name: str | None = None,
    volumes: list[client.V1Volume] | None = None,
    init: list[client.V1Container] | None = None,
    priority_class: str | None = None,
) -> dict[str, Any]:
    """A Pod as the API server hands it to admission: built with the client's models,
    defaulted (schedulerName), no uid yet, name absent for generateName pods."""
    pod = client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=client.V1ObjectMeta(
            name=None if generate_name else "train",
            generate_name=generate_name,
            namespace="team-a",
            annotations=annotations,
            labels=labels,
        ),
        spec=client.V1PodSpec(
            containers=list(containers),
            init_containers=init,
            volumes=volumes,
            scheduler_name="default-scheduler",
            priority_class_name=priority_class,
        ),
    )
    data: dict[str, Any] = API.sanitize_for_serialization(pod)
    return data


def container(
    name: str = "main",
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    env: list[client.V1EnvVar] | None = None,
) -> client.V1Container:
    return client.V1Container(
        name=name,
        image="pytorch:2.4",
        env=env,
        resources=client.V1ResourceRequirements(requests=requests, limits=limits),
    )


def request_for(
    pod: dict[str, Any], *, uid: str = "req-1", dry_run: bool = False, operation: str = "CREATE"
) -> AdmissionRequest:
    return parse_review(admission_review(pod, uid=uid, dry_run=dry_run, operation=operation))


@pytest.fixture
def ctx() -> AdmissionContext:
    inv = load_inventory(ROOT / "examples" / "inventory")
    state = ClusterState.from_nodes(inv.nodes.values())
    return AdmissionContext(state, QuotaBook(dict(inv.quotas)), scheduler_name="hcs-scheduler")


def applied(pod: dict[str, Any], response: AdmissionResponse) -> dict[str, Any]:
    """Apply the patch as the API server would and check the result is a valid Pod."""
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"], validate=True))
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
    kubernetes_validate.validate(result, K8S_VERSION, strict=True)
    client.V1Pod.from_dict(result)  # still decodes as a Pod (typed: no `true` for "true")
    for c in result["spec"]["containers"]:
        res = c.get("resources") or {}
        for name, value in (res.get("requests") or {}).items():
            if "/" in name:  # extended resources: request == limit, and a limit exists
                assert (res.get("limits") or {}).get(name) == value, (c["name"], name)
    return result


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env") or []}


def test_reference_pod_is_routed_and_mutated(ctx: AdmissionContext) -> None:
    raw = yaml.safe_load((ROOT / "examples/reference/pod-requests.yaml").read_text())
    pod = k8s_pod(
        container(
            "trainer",
            raw["spec"]["containers"][0]["resources"]["requests"],
            raw["spec"]["containers"][0]["resources"]["limits"],
        )
    )
    resp = review(request_for(pod), ctx)
    out = applied(pod, resp)
    ann = out["metadata"]["annotations"]
    assert ann["hcs.io/assigned-vendor"] == "nvidia"
    request = json.loads(ann["hcs.io/request"])
    assert request["containers"][0]["limits"] == {
        "ai.compute/vram": "32Gi",
        "ai.compute/tflops-fp16": "200",
    }
    main = out["spec"]["containers"][0]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main["resources"]["limits"]["ai.compute/vram"] == "16Gi"  # the request, made equal
    env = env_of(main)
    assert env["NVIDIA_VISIBLE_DEVICES"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['devices.hcs.io/trainer']"}
    }
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert "LD_LIBRARY_PATH" not in env  # left to the image (docs/webhook.md)
    assert env["HCS_DRIVER_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"
    assert {v["name"] for v in out["spec"]["volumes"]} == {"nvidia-driver", "nvidia-libraries"}
    assert {m["mountPath"] for m in main["volumeMounts"]} == {
        "/usr/local/nvidia",
        "/run/nvidia/driver",
    }
    assert out["spec"]["schedulerName"] == "hcs-scheduler"


def test_reference_annotated_pod_keeps_its_annotations(ctx: AdmissionContext) -> None:
    raw = yaml.safe_load((ROOT / "examples/reference/pod-annotations.yaml").read_text())
    pod = k8s_pod(
        container("trainer", {"ai.compute/vram": "16Gi"}),
        annotations=raw["metadata"]["annotations"],
    )
    out = applied(pod, review(request_for(pod), ctx))
    for key, value in raw["metadata"]["annotations"].items():
        assert out["metadata"]["annotations"][key] == value
    assert out["metadata"]["annotations"]["hcs.io/assigned-vendor"] == "nvidia"


def test_a_pod_created_with_what_hcs_writes_is_refused(ctx: AdmissionContext) -> None:
    """An already-admitted pod re-created as is (or a hand-written assigned-vendor) would be
    neither charged nor patched; the webhook runs once per CREATE (reinvocationPolicy Never)."""
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    once = applied(pod, review(request_for(pod), ctx))
    again = review(request_for(once, uid="req-2"), ctx)
    assert not again["allowed"] and again["status"]["code"] == 403
    assert again["status"]["message"].startswith(
        "InvalidAnnotation: metadata.annotations[hcs.io/assigned-vendor]: set by HCS"
    )
    for key in ("hcs.io/assigned-devices", "hcs.io/scheduling-score", "devices.hcs.io/main"):
        forged = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}), annotations={key: "0"})
        denied = review(request_for(forged), ctx)
        assert not denied["allowed"] and key in denied["status"]["message"]


def test_existing_env_volumes_and_annotations_are_kept(ctx: AdmissionContext) -> None:
    pod = k8s_pod(
        container(
            requests={"ai.compute/vram": "8Gi"},
            env=[
                client.V1EnvVar(name="NCCL_DEBUG", value="INFO"),
                client.V1EnvVar(name="MODEL", value="llama"),
            ],
        ),
        annotations={"example.com/owner": "team-a"},
        volumes=[client.V1Volume(name="nvidia-driver", empty_dir=client.V1EmptyDirVolumeSource())],
    )
    out = applied(pod, review(request_for(pod), ctx))
    env = out["spec"]["containers"][0]["env"]
    assert env_of(out["spec"]["containers"][0])["NCCL_DEBUG"] == "INFO"
    assert env[:2] == pod["spec"]["containers"][0]["env"]
    assert out["metadata"]["annotations"]["example.com/owner"] == "team-a"
    # The pod's own `nvidia-driver` emptyDir keeps its name and is not mounted at the driver
    # path: the injected hostPath takes another name.
    volumes = {v["name"]: v for v in out["spec"]["volumes"]}
    assert "emptyDir" in volumes["nvidia-driver"]
    assert volumes["nvidia-driver-hcs"]["hostPath"] == {"path": "/usr/local/nvidia"}
    mounts = {m["mountPath"]: m for m in out["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/usr/local/nvidia"]["name"] == "nvidia-driver-hcs"
    assert all(m["readOnly"] for m in mounts.values())


def test_generate_name_pods_without_a_name(ctx: AdmissionContext) -> None:
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}), generate_name="train-7d9f-")
    assert "name" not in pod["metadata"]
    out = applied(pod, review(request_for(pod), ctx))
    assert out["metadata"]["generateName"] == "train-7d9f-"


def test_guard_env_on_containers_that_asked_for_nothing(ctx: AdmissionContext) -> None:
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}), container("sidecar"))
    out = applied(pod, review(request_for(pod), ctx))
    assert env_of(out["spec"]["containers"][1]) == {"NVIDIA_VISIBLE_DEVICES": "void"}
    assert "resources" not in out["spec"]["containers"][1] or not out["spec"]["containers"][1][
        "resources"
    ].get("limits")


def test_inject_driver_false_skips_mounts(ctx: AdmissionContext) -> None:
    pod = k8s_pod(
        container(requests={"ai.compute/vram": "8Gi"}),
        annotations={"hcs.io/inject-driver": "false"},
    )
    out = applied(pod, review(request_for(pod), ctx))
    assert "volumes" not in out["spec"]
    assert "LD_LIBRARY_PATH" not in env_of(out["spec"]["containers"][0])
    assert "HCS_DRIVER_LIBRARY_PATH" not in env_of(out["spec"]["containers"][0])


def test_ascend_routing_uses_the_ascend_profile(ctx: AdmissionContext) -> None:
    pod = k8s_pod(
        container(requests={"ai.compute/vram": "32Gi", "ai.compute/devices": "2"}),
        annotations={"hcs.io/vendor-preference": "huawei"},
    )
    out = applied(pod, review(request_for(pod), ctx))
    main = out["spec"]["containers"][0]
    assert main["resources"]["limits"]["huawei.com/Ascend910"] == "2"
    env = env_of(main)
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1"
    assert env["ASCEND_VISIBLE_DEVICES"]["fieldRef"]["fieldPath"].endswith(
        f"['devices.hcs.io/{main['name']}']"
    )
    ro = {m["mountPath"]: m["readOnly"] for m in main["volumeMounts"]}
    assert ro["/usr/local/bin/npu-smi"] is True


def test_downgrade_warns(ctx: AdmissionContext) -> None:
    # Fill the only Cambricon node, then ask for Cambricon with downgrade allowed.
    ledger = Ledger(ctx.state)
    from hcs.demand import parse_pod

    filler = parse_pod(
        {
            "metadata": {"name": "f", "uid": "filler"},
            "spec": {
                "containers": [
                    {"name": "c", "resources": {"requests": {"ai.compute/devices": "8"}}}
                ]
            },
        },
        ctx.vendors,
    )
    ledger.assume(filler, "mlu-370-01")
    pod = k8s_pod(
        container(requests={"ai.compute/vram": "8Gi"}),
        annotations={"hcs.io/vendor-preference": "cambricon", "hcs.io/allow-downgrade": "true"},
    )
    resp = review(request_for(pod), ctx)
    out = applied(pod, resp)
    assert out["metadata"]["annotations"]["hcs.io/assigned-vendor"] != "cambricon"
    assert resp["warnings"] and all(len(w) < 120 for w in resp["warnings"])
    assert "routed to" in resp["warnings"][0]


@pytest.mark.parametrize(
    ("pod", "code", "fragment"),
    [
        (
            k8s_pod(container(requests={"ai.compute/vram": "16 GB"})),
            400,
            "InvalidQuantity: spec.containers[0].resources.requests[ai.compute/vram]",
        ),
        (
            k8s_pod(
                container(requests={"ai.compute/vram": "32Gi"}, limits={"ai.compute/vram": "16Gi"})
            ),
            400,
            "is less than the request",
        ),
        (
            k8s_pod(
                container(requests={"ai.compute/vram": "1Gi"}),
                annotations={"hcs.io/vendor-preferance": "nvidia"},
            ),
            400,
            "did you mean hcs.io/vendor-preference?",
        ),
        (k8s_pod(container(requests={"ai.compute/vram": "500Gi"})), 403, "InsufficientVRAM:"),
        (
            k8s_pod(
                container(requests={"ai.compute/vram": "1Gi", "ai.compute/tflops-fp32": "10"}),
                annotations={"hcs.io/vendor-preference": "huawei"},
            ),
            403,
            "InsufficientTFLOPS:",
        ),
    ],
)
def test_denials_carry_the_code_and_the_field(
    ctx: AdmissionContext, pod: dict[str, Any], code: int, fragment: str
) -> None:
    resp = review(request_for(pod), ctx)
    assert resp["allowed"] is False and "patch" not in resp
    assert resp["status"]["code"] == code
    assert fragment in resp["status"]["message"]


def test_vendor_not_supported_when_no_node_of_the_vendor_exists() -> None:
    ctx = AdmissionContext(ClusterState.from_nodes([make_node("g")]), QuotaBook())
    pod = k8s_pod(
        container(requests={"ai.compute/vram": "1Gi"}),
        annotations={"hcs.io/vendor-preference": "hygon"},
    )
    resp = review(request_for(pod), ctx)
    assert resp["status"]["message"].startswith("VendorNotSupported:")


def quota(hard: dict[str, str], **spec: Any) -> ComputeQuota:
    return ComputeQuota.from_dict(quota_dict(hard, **spec))


def test_quota_is_charged_and_then_exceeded() -> None:
    book = QuotaBook({("team-a", "q"): quota({"vram": "20Gi", "devices": "4"})})
    ctx = AdmissionContext(ClusterState.from_nodes([make_node("g")]), book)
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    assert review(request_for(pod, uid="a"), ctx)["allowed"]
    assert review(request_for(pod, uid="a"), ctx)["allowed"]  # a retried review: charged once
    assert review(request_for(pod, uid="b"), ctx)["allowed"]
    assert book.used[("team-a", "q")]["vram"] == 16 * 1024
    denied = review(request_for(pod, uid="c"), ctx)
    assert denied["allowed"] is False and denied["status"]["code"] == 403
    assert denied["status"]["message"] == (
        "QuotaExceeded: team-a/q: vram requested 8Gi, used 16Gi, hard 20Gi"
    )
    assert book.used[("team-a", "q")]["vram"] == 16 * 1024  # the denial charged nothing


def test_dry_run_decides_but_never_charges() -> None:
    book = QuotaBook({("team-a", "q"): quota({"vram": "8Gi"})})
    ctx = AdmissionContext(ClusterState.from_nodes([make_node("g")]), book)
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    assert review(request_for(pod, uid="d1", dry_run=True), ctx)["allowed"]
    assert book.used[("team-a", "q")]["vram"] == 0
    too_big = k8s_pod(container(requests={"ai.compute/vram": "9Gi"}))
    assert review(request_for(too_big, uid="d2", dry_run=True), ctx)["allowed"] is False


def test_quota_scopes_and_selectors_decide_which_pods_count() -> None:
    book = QuotaBook(
        {
            ("team-a", "high"): quota({"vram": "1Gi"}, scopes=[{"priority": "high"}]),
            ("team-a", "labelled"): quota({"vram": "1Gi"}, selector={"matchLabels": {"tier": "x"}}),
        }
    )
    ctx = AdmissionContext(ClusterState.from_nodes([make_node("g")]), book)
    plain = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    assert review(request_for(plain, uid="p1"), ctx)["allowed"]
    high = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}), priority_class="high")
    assert "team-a/high" in review(request_for(high, uid="p2"), ctx)["status"]["message"]
    labelled = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}), labels={"tier": "x"})
    assert "team-a/labelled" in review(request_for(labelled, uid="p3"), ctx)["status"]["message"]


def test_other_operations_and_kinds_pass_untouched(ctx: AdmissionContext) -> None:
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    assert review(request_for(pod, operation="UPDATE"), ctx) == {"uid": "req-1", "allowed": True}
    plain = k8s_pod(container(requests={"cpu": "1"}))
    assert review(request_for(plain), ctx) == {"uid": "req-1", "allowed": True}


def test_not_an_admission_review_is_refused() -> None:
    bodies: tuple[Any, ...] = (
        [],
        {"kind": "AdmissionReview"},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
    )
    for body in bodies:
        with pytest.raises(ReviewError):
            parse_review(body)


def test_json_pointers_are_escaped() -> None:
    assert (
        pointer("metadata", "annotations", "hcs.io/assigned-vendor")
        == "/metadata/annotations/hcs.io~1assigned-vendor"
    )
    assert pointer("a~b/c", 0) == "/a~0b~1c/0"


def test_engine_config_is_used_for_routing() -> None:
    ctx = AdmissionContext(
        ClusterState.from_nodes([make_node("g", health=[50] * 8)]),
        QuotaBook(),
        engine=EngineConfig(min_health=40),
    )
    pod = k8s_pod(container(requests={"ai.compute/vram": "8Gi"}))
    assert "warnings" not in review(request_for(pod), ctx)
