"""`hcs webhook --dra`: a pod's `ai.compute/*` becomes a claim on a ResourceClaimTemplate named
by its shape (the patch applied with jsonpatch and the result a valid Pod), quota is charged as
before, vendor resource names stay with the device plugin, and the controller creates the
template and recounts quota from what the webhook recorded."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from kubernetes import client

from cluster.controllers import ControllerRunner, claim_templates, count_quotas
from hcs.admission import AdmissionContext, review
from hcs.demand import A_CLAIM_TEMPLATE, A_CLAIM_TEMPLATE_SPEC, parse_pod
from hcs.dra import DRIVER, template_name
from hcs.quota import demand_amounts
from hcs.synthetic import quota_dict
from tests.fake_apiserver import FakeApiServer
from tests.webhook.test_admission import applied, container, ctx, k8s_pod, request_for

__all__ = ["ctx"]  # the admission context fixture

ASK = {"ai.compute/vram": "80Gi", "ai.compute/devices": "2", "ai.compute/tflops-fp16": "200"}


def dra(context: AdmissionContext) -> AdmissionContext:
    return replace(context, dra=True)


def test_ai_compute_becomes_a_claim_on_a_template_named_by_shape(ctx: AdmissionContext) -> None:
    pod = k8s_pod(
        container("trainer", ASK, ASK),
        container("sidecar"),  # asks nothing: untouched
        annotations={"hcs.io/vendor-preference": "huawei,nvidia"},
    )
    result = applied(pod, review(request_for(pod), dra(ctx)))
    trainer, sidecar = result["spec"]["containers"]
    res = trainer["resources"]
    assert not [k for s in ("requests", "limits") for k in res.get(s) or {} if "ai.compute" in k]
    assert res["claims"] == [{"name": "hcs-compute", "request": "trainer"}]
    assert "claims" not in (sidecar.get("resources") or {})
    annotations = result["metadata"]["annotations"]
    name = annotations[A_CLAIM_TEMPLATE]
    assert result["spec"]["resourceClaims"] == [
        {"name": "hcs-compute", "resourceClaimTemplateName": name}
    ]
    spec = json.loads(annotations[A_CLAIM_TEMPLATE_SPEC])
    assert template_name(spec) == name
    (request,) = spec["spec"]["devices"]["requests"]
    assert request["name"] == "trainer"
    assert [s["deviceClassName"] for s in request["firstAvailable"]] == [
        f"huawei.{DRIVER}",
        f"nvidia.{DRIVER}",
    ]
    # Another pod of the same shape gets the same template.
    again = applied(pod, review(request_for(pod, uid="req-2"), dra(ctx)))
    assert again["metadata"]["annotations"][A_CLAIM_TEMPLATE] == name


def test_quota_is_charged_as_in_device_plugin_mode(ctx: AdmissionContext) -> None:
    from hcs.quota import QuotaBook

    pod = k8s_pod(container("trainer", ASK, ASK))
    books = {}
    for mode, context in (("plugin", ctx), ("dra", dra(ctx))):
        quotas = QuotaBook(dict(ctx.quotas.quotas))  # type: ignore[attr-defined]
        response = review(request_for(pod, uid=mode), replace(context, quotas=quotas))
        assert response["allowed"]
        books[mode] = quotas.used
    assert books["dra"] == books["plugin"]
    assert any(used["vram"] for used in books["dra"].values())  # some quota was charged


def test_vendor_resource_names_stay_with_the_device_plugin(ctx: AdmissionContext) -> None:
    pod = k8s_pod(container("legacy", {"nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"}))
    response = review(request_for(pod), dra(ctx))
    result = applied(pod, response)
    assert "resourceClaims" not in result["spec"]
    assert A_CLAIM_TEMPLATE not in result["metadata"].get("annotations", {})
    assert any("stays with the device plugin" in w for w in response.get("warnings", []))


def test_the_controller_recounts_a_claimed_pod_as_admission_charged_it(
    ctx: AdmissionContext,
) -> None:
    pod = k8s_pod(container("trainer", ASK, ASK))
    result = applied(pod, review(request_for(pod), dra(ctx)))
    result["metadata"]["uid"] = "u-1"
    result["status"] = {"phase": "Pending"}
    namespace = result["metadata"]["namespace"]
    quota = quota_dict({"vram": "1Ti", "devices": "16"}, namespace=namespace)
    (count,) = count_quotas([quota], [result])
    expected = demand_amounts(parse_pod(pod))
    assert count.used["vram"] == expected["vram"] == 80 * 1024  # 80Gi over two devices
    assert count.used["devices"] == 2
    assert count.used["tflops-fp16"] == expected["tflops-fp16"] == 200_000


async def test_templates_from_pods_are_created_once_and_forged_specs_are_not(
    ctx: AdmissionContext, aiohttp_server: Any
) -> None:
    pod = k8s_pod(container("trainer", ASK, ASK))
    result = applied(pod, review(request_for(pod), dra(ctx)))
    forged = json.loads(json.dumps(result))
    forged["metadata"]["name"] = "forged"
    spec = json.loads(forged["metadata"]["annotations"][A_CLAIM_TEMPLATE_SPEC])
    spec["spec"]["devices"]["requests"][0]["firstAvailable"][0]["count"] = 64
    forged["metadata"]["annotations"][A_CLAIM_TEMPLATE_SPEC] = json.dumps(spec)
    templates = claim_templates([result, forged])
    name = result["metadata"]["annotations"][A_CLAIM_TEMPLATE]
    namespace = result["metadata"]["namespace"]
    assert list(templates) == [f"{namespace}/{name}"]  # the forged one names another shape

    fake = FakeApiServer()
    server = await aiohttp_server(fake.app())
    cfg = client.Configuration()
    cfg.host = str(server.make_url("")).rstrip("/")
    runner = ControllerRunner(client.ApiClient(cfg))
    first = await asyncio.to_thread(runner.ensure_claim_templates, [result])
    second = await asyncio.to_thread(runner.ensure_claim_templates, [result])
    assert first == [f"{namespace}/{name}"] and second == []
    stored = fake.objects["resourceclaimtemplates"][f"{namespace}/{name}"]
    assert stored["spec"] == templates[f"{namespace}/{name}"]["spec"]


def test_an_init_container_uses_the_app_request_that_holds_it(ctx: AdmissionContext) -> None:
    """A claim's devices stay the pod's for its whole life: an init container an app's request
    covers runs on that app's devices (kubelet runs it first), one that none covers and a
    native sidecar (running beside the apps) get requests of their own."""
    small = {"ai.compute/vram": "8Gi"}
    big = {"ai.compute/vram": "100Gi", "ai.compute/devices": "4"}
    sidecar = container("log", small, small)
    sidecar.restart_policy = "Always"
    pod = k8s_pod(
        container("train", ASK, ASK),
        init=[container("fetch", small, small), container("warm", big, big), sidecar],
        annotations={"hcs.io/vendor-preference": "nvidia"},
    )
    result = applied(pod, review(request_for(pod), dra(ctx)))
    refs = {
        c["name"]: c["resources"]["claims"][0]["request"]
        for kind in ("initContainers", "containers")
        for c in result["spec"][kind]
    }
    assert refs == {"fetch": "train", "warm": "warm", "log": "log", "train": "train"}
    spec = json.loads(result["metadata"]["annotations"][A_CLAIM_TEMPLATE_SPEC])
    assert [r["name"] for r in spec["spec"]["devices"]["requests"]] == ["warm", "log", "train"]


def test_a_pod_with_claims_of_its_own_keeps_them_beside_hcs(ctx: AdmissionContext) -> None:
    """A pod already using DRA for something else (a NIC, its own claim) keeps those claims;
    HCS's is added beside them, and a name already taken is refused, never overwritten."""
    pod = k8s_pod(
        container("trainer", ASK, ASK), annotations={"hcs.io/vendor-preference": "nvidia"}
    )
    pod["spec"]["resourceClaims"] = [{"name": "nic", "resourceClaimTemplateName": "rdma"}]
    pod["spec"]["containers"][0]["resources"]["claims"] = [{"name": "nic"}]
    result = applied(pod, review(request_for(pod), dra(ctx)))
    assert [c["name"] for c in result["spec"]["resourceClaims"]] == ["nic", "hcs-compute"]
    assert result["spec"]["containers"][0]["resources"]["claims"] == [
        {"name": "nic"},
        {"name": "hcs-compute", "request": "trainer"},
    ]
    taken = k8s_pod(
        container("trainer", ASK, ASK), annotations={"hcs.io/vendor-preference": "nvidia"}
    )
    taken["spec"]["resourceClaims"] = [{"name": "hcs-compute", "resourceClaimName": "mine"}]
    response = review(request_for(taken, uid="req-9"), dra(ctx))
    assert response["allowed"] is False
    assert "spec.resourceClaims[0].name" in response["status"]["message"]
    assert "rename" in response["status"]["message"]
