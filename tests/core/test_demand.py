import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from hcs.demand import parse_pod
from hcs.errors import AnnotationError, QuantityError, RequestError
from hcs.vendors import vendor_table_from_dict

REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "reference"
API = client.ApiClient()


def pod(
    *containers: client.V1Container,
    annotations: dict[str, str] | None = None,
    init: list[client.V1Container] | None = None,
) -> dict[str, Any]:
    """A Pod built with the kubernetes client's models, serialized as the API server would."""
    obj = client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=client.V1ObjectMeta(
            name="p", namespace="team-a", uid="uid-1", annotations=annotations
        ),
        spec=client.V1PodSpec(containers=list(containers), init_containers=init),
    )
    result: dict[str, Any] = API.sanitize_for_serialization(obj)
    return result


def container(
    name: str = "main", requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None
) -> client.V1Container:
    def strings(values: dict[str, Any] | None) -> dict[str, str] | None:
        # The API server sends quantities as strings; the client's models insist on it.
        return None if values is None else {k: str(v) for k, v in values.items()}

    return client.V1Container(
        name=name,
        image="img",
        resources=client.V1ResourceRequirements(requests=strings(requests), limits=strings(limits)),
    )


def test_reference_pod_takes_the_request_not_the_limit() -> None:
    raw = yaml.safe_load((REFERENCE / "pod-requests.yaml").read_text(encoding="utf-8"))
    demand = parse_pod(raw)
    (c,) = demand.containers
    assert (c.devices, c.vram_mib, c.fp16_milli_tflops) == (1, 16384, 100_000)
    assert c.limits == {"ai.compute/vram": "32Gi", "ai.compute/tflops-fp16": "200"}
    assert not c.whole


def test_reference_annotated_pod() -> None:
    raw = yaml.safe_load((REFERENCE / "pod-annotations.yaml").read_text(encoding="utf-8"))
    demand = parse_pod(raw)
    assert demand.preference == ("nvidia",)
    assert demand.allow_downgrade
    assert demand.topology == "high-bandwidth"
    assert demand.allowed_vendors[0] == "nvidia" and len(demand.allowed_vendors) == 4


def test_reference_compat_fragments() -> None:
    text = (REFERENCE / "resources-compat.yaml").read_text(encoding="utf-8")
    legacy_text, hcs_text = text.split("\n\n")
    legacy = yaml.safe_load(legacy_text)["resources"]
    hcs = yaml.safe_load(hcs_text)["resources"]
    demand = parse_pod(pod(container(requests=hcs["requests"])))
    assert demand.containers[0].vram_mib == 32 * 1024
    # The legacy fragment names both an NVIDIA and an Ascend resource; each alone is a legacy
    # request, both in one pod cannot run anywhere and say so.
    for name in legacy["limits"]:
        d = parse_pod(pod(container(limits={name: legacy["limits"][name]})))
        assert d.containers[0].devices == 2 and d.containers[0].whole
    with pytest.raises(RequestError, match="several vendors"):
        parse_pod(pod(container(limits=legacy["limits"])))


def test_devices_split_the_amounts_evenly() -> None:
    demand = parse_pod(
        pod(
            container(
                requests={
                    "ai.compute/vram": "100Gi",
                    "ai.compute/devices": "4",
                    "ai.compute/tflops-fp16": "1000",
                    "ai.compute/tflops-fp32": "10",
                }
            )
        )
    )
    (c,) = demand.containers
    assert (c.devices, c.vram_mib, c.fp16_milli_tflops, c.fp32_milli_tflops) == (
        4,
        25600,
        250_000,
        2_500,
    )
    assert demand.total_vram_mib == 102400


def test_uneven_split_rounds_each_device_up() -> None:
    demand = parse_pod(
        pod(container(requests={"ai.compute/vram": "10Mi", "ai.compute/devices": "3"}))
    )
    assert demand.containers[0].vram_mib == 4


def test_limit_alone_counts_as_the_request() -> None:
    demand = parse_pod(pod(container(limits={"ai.compute/vram": "8Gi"})))
    assert demand.containers[0].vram_mib == 8192


def test_legacy_vendor_resources_fix_the_vendor() -> None:
    demand = parse_pod(pod(container(limits={"nvidia.com/gpu": "2"})))
    assert demand.fixed_vendor == "nvidia"
    assert demand.allowed_vendors == ("nvidia",)
    assert demand.containers[0].whole and demand.containers[0].devices == 2
    ascend = parse_pod(pod(container(limits={"huawei.com/Ascend910B3": "1"})))
    assert ascend.fixed_vendor == "huawei"


def test_webhook_mutated_pod_keeps_abstract_amounts_with_its_device_limit() -> None:
    demand = parse_pod(
        pod(
            container(
                requests={
                    "ai.compute/vram": "32Gi",
                    "nvidia.com/gpu": "2",
                    "ai.compute/devices": "2",
                },
                limits={
                    "ai.compute/vram": "32Gi",
                    "nvidia.com/gpu": "2",
                    "ai.compute/devices": "2",
                },
            ),
            annotations={"hcs.io/assigned-vendor": "nvidia"},
        )
    )
    (c,) = demand.containers
    assert (c.devices, c.vram_mib, c.whole) == (2, 16384, False)
    assert demand.fixed_vendor == "nvidia"


def test_containers_asking_nothing_are_left_out() -> None:
    demand = parse_pod(pod(container("sidecar"), container("main", {"ai.compute/vram": "1Gi"})))
    assert [c.name for c in demand.containers] == ["main"]
    assert demand.containers[0].index == 1
    assert not parse_pod(pod(container("plain", {"cpu": "1"}))).asks_for_compute


def test_request_annotation_is_normalized_json() -> None:
    demand = parse_pod(
        pod(container(requests={"ai.compute/vram": "16Gi"}, limits={"ai.compute/vram": "32Gi"}))
    )
    body = json.loads(demand.request_annotation())
    assert body["containers"][0]["vramPerDevice"] == "16Gi"
    assert body["containers"][0]["limits"] == {"ai.compute/vram": "32Gi"}
    assert body["vendors"] == ["nvidia", "huawei", "hygon", "cambricon"]


@pytest.mark.parametrize(
    ("annotations", "error", "fragments"),
    [
        (
            {"hcs.io/vendor-preferance": "nvidia"},
            AnnotationError,
            ["hcs.io/vendor-preferance", "did you mean hcs.io/vendor-preference?"],
        ),
        (
            {"hcs.io/vendor-preference": "nvida"},
            AnnotationError,
            ['"nvida" is not a vendor', "did you mean nvidia?", "any"],
        ),
        ({"hcs.io/vendor-preference": "nvidia,any"}, AnnotationError, ["cannot be combined"]),
        ({"hcs.io/vendor-preference": "nvidia,nvidia"}, AnnotationError, ["listed twice"]),
        ({"hcs.io/vendor-preference": ""}, AnnotationError, ["is not one of"]),
        (
            {"hcs.io/allow-downgrade": "yes"},
            AnnotationError,
            ["hcs.io/allow-downgrade", '"yes" is not one of true, false'],
        ),
        ({"hcs.io/inject-driver": "0"}, AnnotationError, ["hcs.io/inject-driver"]),
        ({"hcs.io/topology-preference": "fast"}, AnnotationError, ["high-bandwidth, low-latency"]),
        ({"hcs.io/assigned-vendor": "amd"}, AnnotationError, ["hcs.io/assigned-vendor"]),
        ({"hcs.io/scheduling-score": "high"}, AnnotationError, ["non-negative integer"]),
        (
            {"hsc.io/vendor-preference": "nvidia"},
            AnnotationError,
            ["did you mean hcs.io/vendor-preference?"],
        ),
    ],
)
def test_bad_annotations_are_errors_naming_key_and_allowed_values(
    annotations: dict[str, str], error: type[Exception], fragments: list[str]
) -> None:
    with pytest.raises(error) as info:
        parse_pod(pod(container(requests={"ai.compute/vram": "1Gi"}), annotations=annotations))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unrelated_annotations_are_untouched() -> None:
    demand = parse_pod(
        pod(
            container(requests={"ai.compute/vram": "1Gi"}),
            annotations={"example.com/owner": "x", "hcs.io/inject-driver": "FALSE"},
        )
    )
    assert not demand.inject_driver


def test_non_string_annotation_value_is_refused() -> None:
    raw = pod(container(requests={"ai.compute/vram": "1Gi"}))
    raw["metadata"]["annotations"] = {"hcs.io/allow-downgrade": True}
    with pytest.raises(AnnotationError, match="expected a string value"):
        parse_pod(raw)


@pytest.mark.parametrize(
    ("requests", "limits", "error", "fragment"),
    [
        (
            {"ai.compute/vram": "32Gi"},
            {"ai.compute/vram": "16Gi"},
            QuantityError,
            'spec.containers[0].resources.limits[ai.compute/vram]: "16Gi" is less than the '
            "request 32Gi",
        ),
        (
            {"ai.compute/vram": "16 GB"},
            None,
            QuantityError,
            "spec.containers[0].resources.requests[ai.compute/vram]",
        ),
        ({"ai.compute/vrm": "16Gi"}, None, RequestError, "did you mean ai.compute/vram?"),
        ({"ai.compute/devices": "0"}, None, QuantityError, "must be at least 1"),
        ({"ai.compute/devices": "1.5"}, None, QuantityError, "whole number"),
        ({"ai.compute/vram": "-1Gi"}, None, QuantityError, "must not be negative"),
        ({"ai.compute/devices": "2"}, {"nvidia.com/gpu": "3"}, RequestError, "contradicts"),
        (None, {"nvidia.com/gpu": "1.5"}, QuantityError, "whole number"),
        (
            None,
            {"huawei.com/Ascend910": "1", "huawei.com/Ascend310P": "1"},
            RequestError,
            "use one",
        ),
    ],
)
def test_bad_requests_name_the_field(
    requests: dict[str, str] | None,
    limits: dict[str, str] | None,
    error: type[Exception],
    fragment: str,
) -> None:
    with pytest.raises(error) as info:
        parse_pod(pod(container(requests=requests, limits=limits)))
    assert fragment in str(info.value)


def sidecar(name: str, **kwargs: Any) -> client.V1Container:
    c = container(name, **kwargs)
    c.restart_policy = "Always"
    return c


@pytest.mark.parametrize(
    ("inits", "apps", "devices", "vram_gib"),
    [
        # init 1 then app 1: the app gets the init's device (kubelet's reuse): one device.
        ([("i", 1, False)], [1], 1, 8),
        # init 2, app 1: two devices for the pod's life.
        ([("i", 2, False)], [1], 2, 16),
        # a native sidecar keeps its device: sidecar 1 + app 1 = 2.
        ([("s", 1, True)], [1], 2, 16),
        # init 1 after a sidecar 1: the init needs a second device beside the sidecar's.
        ([("s", 1, True), ("i", 1, False)], [1], 2, 16),
        # init 3 with two apps of 1: max(3, 2).
        ([("i", 3, False)], [1, 1], 3, 24),
    ],
)
def test_init_containers_count_as_kubernetes_counts_them(
    inits: list[tuple[str, int, bool]], apps: list[int], devices: int, vram_gib: int
) -> None:
    def ask(n: int) -> dict[str, str]:
        return {"ai.compute/vram": f"{8 * n}Gi", "ai.compute/devices": str(n)}

    demand = parse_pod(
        pod(
            *(container(f"app{k}", requests=ask(n)) for k, n in enumerate(apps)),
            init=[
                (sidecar if restartable else container)(name, requests=ask(n))
                for name, n, restartable in inits
            ],
        )
    )
    assert demand.total_devices == devices
    assert demand.total_vram_mib == vram_gib * 1024
    assert sum(c.devices for c in demand.placement) == devices
    assert [c.phase for c in demand.all_containers] == [
        "sidecar" if r else "init" for _, _, r in inits
    ] + ["app"] * len(apps)


def test_legacy_resources_in_init_containers_are_read_too() -> None:
    demand = parse_pod(
        pod(
            container(limits={"nvidia.com/gpu": "1"}),
            init=[container("warm", limits={"nvidia.com/gpu": "2"})],
        )
    )
    assert demand.fixed_vendor == "nvidia" and demand.total_devices == 2
    with pytest.raises(RequestError, match="several vendors"):
        parse_pod(
            pod(
                container(limits={"nvidia.com/gpu": "1"}),
                init=[container("warm", limits={"huawei.com/Ascend910": "1"})],
            )
        )


def test_vendor_conflicts_are_refused() -> None:
    with pytest.raises(RequestError, match="excludes nvidia"):
        parse_pod(
            pod(
                container(limits={"nvidia.com/gpu": "1"}),
                annotations={"hcs.io/vendor-preference": "huawei"},
            )
        )
    with pytest.raises(RequestError, match="contradicts"):
        parse_pod(
            pod(
                container(limits={"nvidia.com/gpu": "1"}),
                annotations={"hcs.io/assigned-vendor": "huawei"},
            )
        )


def test_vendor_lists_and_downgrade() -> None:
    d = parse_pod(
        pod(
            container(requests={"ai.compute/vram": "1Gi"}),
            annotations={"hcs.io/vendor-preference": "huawei, nvidia"},
        )
    )
    assert d.allowed_vendors == ("huawei", "nvidia")
    assert d.preferred_vendor == "huawei"
    d = parse_pod(
        pod(
            container(requests={"ai.compute/vram": "1Gi"}),
            annotations={"hcs.io/vendor-preference": "hygon", "hcs.io/allow-downgrade": "true"},
        )
    )
    assert d.allowed_vendors == ("hygon", "nvidia", "huawei", "cambricon")
    d = parse_pod(
        pod(
            container(requests={"ai.compute/vram": "1Gi"}),
            annotations={"hcs.io/vendor-preference": "any"},
        )
    )
    assert d.preference == () and d.preferred_vendor is None


def test_overridden_device_plugin_names_are_recognised() -> None:
    table = vendor_table_from_dict({"vendors": {"nvidia": {"resource": "nvidia.com/gpu.shared"}}})
    demand = parse_pod(pod(container(limits={"nvidia.com/gpu.shared": "1"})), table)
    assert demand.fixed_vendor == "nvidia"
    assert not parse_pod(pod(container(limits={"nvidia.com/gpu": "1"})), table).asks_for_compute
