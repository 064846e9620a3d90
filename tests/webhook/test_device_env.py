"""No device env outside HCS's answer, in every pod the webhook sees: a container that asks for no
device of a vendor may not set that vendor's device-selection env (literal or valueFrom) beyond a
no-device value, and a requesting container may set one only to exactly what HCS sets. Refusals
name the container and the variable and charge nothing; every admitted pod is patched with
jsonpatch and validated as a Pod."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from hcs.admission import AdmissionContext, review
from hcs.models import ComputeQuota
from hcs.quota import QuotaBook
from hcs.state import ClusterState
from hcs.synthetic import make_node
from hcs.vendors import VendorTable
from tests.webhook.test_admission import applied, container, env_of, k8s_pod, request_for

# The device-selection variables the security review named (issue 17), vendor by vendor.
REVIEWED = {
    "nvidia": {"NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"},
    "huawei": {"ASCEND_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"},
    "hygon": {"HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"},
    "cambricon": {"CAMBRICON_VISIBLE_DEVICES", "MLU_VISIBLE_DEVICES"},
}
VRAM = {"ai.compute/vram": "8Gi"}
NVIDIA = {"hcs.io/vendor-preference": "nvidia"}


def context() -> tuple[AdmissionContext, QuotaBook]:
    quota = ComputeQuota.from_dict(
        {
            "apiVersion": "hcs.io/v1alpha1",
            "kind": "ComputeQuota",
            "metadata": {"name": "q", "namespace": "team-a"},
            "spec": {"hard": {"vram": "1000Gi"}},
        }
    )
    book = QuotaBook({("team-a", "q"): quota})
    nodes = [
        make_node("g"),
        make_node("npu", "huawei"),
        make_node("dcu", "hygon"),
        make_node("mlu", "cambricon"),
    ]
    return AdmissionContext(ClusterState.from_nodes(nodes), book), book


def var(name: str, value: str | None = None, **source: Any) -> client.V1EnvVar:
    return client.V1EnvVar(
        name=name, value=value, value_from=client.V1EnvVarSource(**source) if source else None
    )


def denied(pod: dict[str, Any], book: QuotaBook, ctx: AdmissionContext) -> str:
    response = review(request_for(pod), ctx)
    assert response["allowed"] is False, response
    assert response["status"]["code"] == 400
    assert book.used[("team-a", "q")]["vram"] == 0, "a refused pod was charged"
    return response["status"]["message"]


def test_the_vendor_table_names_every_reviewed_variable_and_nothing_else() -> None:
    table = VendorTable()
    assert {v: set(p.selection_envs) for v, p in table.profiles.items()} == REVIEWED


@pytest.mark.parametrize(
    ("vendor", "name"), sorted((v, n) for v, names in REVIEWED.items() for n in names)
)
def test_a_sidecar_that_asks_for_nothing_cannot_name_devices(vendor: str, name: str) -> None:
    ctx, book = context()
    side = container("sidecar", env=[var(name, "0,1,2,3,4,5,6,7")])
    pod = k8s_pod(container(requests=VRAM), side, annotations=NVIDIA)
    message = denied(pod, book, ctx)
    assert f"spec.containers[1].env[{name}]" in message
    assert f"container sidecar asks for no {vendor} device" in message


@pytest.mark.parametrize(
    "source",
    [
        {"config_map_key_ref": client.V1ConfigMapKeySelector(name="gpus", key="all")},
        {"secret_key_ref": client.V1SecretKeySelector(name="gpus", key="all")},
        {"field_ref": client.V1ObjectFieldSelector(field_path="metadata.annotations['mine']")},
    ],
)
def test_a_value_from_elsewhere_is_refused_since_hcs_cannot_check_it(source: Any) -> None:
    ctx, book = context()
    side = container("sidecar", env=[var("NVIDIA_VISIBLE_DEVICES", **source)])
    message = denied(k8s_pod(container(requests=VRAM), side), book, ctx)
    assert "spec.containers[1].env[NVIDIA_VISIBLE_DEVICES]" in message
    assert "valueFrom" in message


def test_an_init_container_cannot_name_devices_either() -> None:
    ctx, book = context()
    init = container("prepare", env=[var("NVIDIA_VISIBLE_DEVICES", "all")])
    pod = k8s_pod(container(requests=VRAM), init=[init])
    message = denied(pod, book, ctx)
    assert "spec.initContainers[0].env[NVIDIA_VISIBLE_DEVICES]" in message


def test_a_pod_asking_for_no_accelerator_but_seen_by_the_webhook_is_checked_too() -> None:
    ctx, _ = context()
    pod = k8s_pod(
        container("cpu", env=[var("ASCEND_VISIBLE_DEVICES", "0-7")]),
        annotations={"hcs.io/inject-driver": "false"},
    )
    response = review(request_for(pod), ctx)
    assert response["allowed"] is False
    assert "spec.containers[0].env[ASCEND_VISIBLE_DEVICES]" in response["status"]["message"]
    fine = k8s_pod(container("cpu"), annotations={"hcs.io/inject-driver": "false"})
    assert review(request_for(fine), ctx)["allowed"] is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NVIDIA_VISIBLE_DEVICES", "void"),
        ("NVIDIA_VISIBLE_DEVICES", "none"),
        ("NVIDIA_VISIBLE_DEVICES", ""),
        ("CUDA_VISIBLE_DEVICES", "-1"),
        ("ASCEND_VISIBLE_DEVICES", ""),
    ],
)
def test_no_device_values_are_fine_in_a_container_that_asks_for_nothing(
    name: str, value: str
) -> None:
    ctx, _ = context()
    side = container("sidecar", env=[var(name, value)])
    pod = k8s_pod(container(requests=VRAM), side, annotations=NVIDIA)
    out = applied(pod, review(request_for(pod), ctx))
    env = env_of(out["spec"]["containers"][1])
    assert env[name] == value
    # Kept as written, and the guard still applies where the container did not set it.
    if name != "NVIDIA_VISIBLE_DEVICES":
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_a_requesting_container_may_set_exactly_what_hcs_sets() -> None:
    ctx, _ = context()
    own = [
        var(
            "NVIDIA_VISIBLE_DEVICES",
            field_ref=client.V1ObjectFieldSelector(
                api_version="v1", field_path="metadata.annotations['devices.hcs.io/main']"
            ),
        ),
        var("CUDA_VISIBLE_DEVICES", "0,1"),
    ]
    pod = k8s_pod(
        container(requests={**VRAM, "ai.compute/devices": "2"}, env=own),
        annotations={"hcs.io/vendor-preference": "nvidia"},
    )
    out = applied(pod, review(request_for(pod), ctx))
    env = out["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env].count("NVIDIA_VISIBLE_DEVICES") == 1
    assert env_of(out["spec"]["containers"][0])["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.mark.parametrize(
    ("entry", "wants"),
    [
        (var("CUDA_VISIBLE_DEVICES", "0,1"), 'HCS sets "0"'),
        (var("NVIDIA_VISIBLE_DEVICES", "0"), "HCS sets valueFrom.fieldRef"),
        (
            var(
                "NVIDIA_VISIBLE_DEVICES",
                field_ref=client.V1ObjectFieldSelector(
                    field_path="metadata.annotations['devices.hcs.io/other']"
                ),
            ),
            "devices.hcs.io/main",
        ),
    ],
)
def test_a_requesting_container_cannot_choose_other_devices(
    entry: client.V1EnvVar, wants: str
) -> None:
    ctx, book = context()
    pod = k8s_pod(
        container(requests=VRAM, env=[entry]), annotations={"hcs.io/vendor-preference": "nvidia"}
    )
    message = denied(pod, book, ctx)
    assert f"spec.containers[0].env[{entry.name}]" in message and wants in message


def test_a_requesting_container_cannot_set_another_vendors_variable() -> None:
    ctx, book = context()
    pod = k8s_pod(
        container(requests=VRAM, env=[var("ASCEND_VISIBLE_DEVICES", "0")]),
        annotations={"hcs.io/vendor-preference": "nvidia"},
    )
    assert "asks for no huawei device" in denied(pod, book, ctx)


def test_a_variable_hcs_never_sets_is_refused_in_a_requesting_container() -> None:
    ctx, book = context()
    pod = k8s_pod(
        container(requests=VRAM, env=[var("ROCR_VISIBLE_DEVICES", "0")]),
        annotations={"hcs.io/vendor-preference": "hygon"},
    )
    message = denied(pod, book, ctx)
    assert "spec.containers[0].env[ROCR_VISIBLE_DEVICES]" in message
    assert "HCS sets nothing" in message


def test_a_requesting_init_container_gets_its_own_devices_and_no_guard() -> None:
    """An init container that names the vendor's resource is patched like an app container:
    its own device env (the guard would take its GPU away under the envvar strategy)."""
    ctx, _ = context()
    init = client.V1Container(
        name="warmup",
        image="cuda:12",
        env=[var("CUDA_VISIBLE_DEVICES", "0")],
        resources=client.V1ResourceRequirements(
            requests={"nvidia.com/gpu": "1"}, limits={"nvidia.com/gpu": "1"}
        ),
    )
    pod = k8s_pod(container(requests=VRAM), init=[init])
    out = applied(pod, review(request_for(pod), ctx))
    env = env_of(out["spec"]["initContainers"][0])
    assert env["NVIDIA_VISIBLE_DEVICES"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['devices.hcs.io/warmup']"}
    }
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
