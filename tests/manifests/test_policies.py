"""Who may change HCS's books, checked by evaluating the shipped ValidatingAdmissionPolicies, the
webhook's matchConditions and the RBAC rules the way kube-apiserver does (tests/fake_admission:
cel-python, kube-apiserver's matching rules). Each case runs as a tenant or as a node's service
account; ordinary HCS pods, patched by the webhook (jsonpatch, validated as Pods), still pass
every policy, and so does every workload HCS ships."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from kubernetes import client

from hcs import policies
from hcs.admission import review
from hcs.nodelock import LOCK_NAMESPACE
from tests.fake_admission import (
    Admission,
    Denial,
    Rbac,
    Request,
    namespace_object,
    service_account,
    webhook_matches,
)
from tests.webhook.test_admission import K8S_VERSION, ROOT, applied, container, k8s_pod, request_for
from tests.webhook.test_admission import ctx as webhook_ctx

MANIFESTS = ROOT / "manifests"
API = client.ApiClient()
TENANT = "team-a"
AGENT = ("hcs-system", "hcs-agent")
__all__ = ["webhook_ctx"]  # the admission context fixture


def base_documents() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k manifests/` creates (the kustomization's resources)."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return docs


DOCS = base_documents()


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


@pytest.fixture
def admission() -> Admission:
    return Admission(DOCS, [d for d in DOCS if d["kind"] == "Namespace"])


def webhook_called(pod: dict[str, Any], namespace: str = TENANT) -> list[str]:
    (config,) = of_kind("MutatingWebhookConfiguration")
    namespaces = {
        n["metadata"]["name"]: namespace_object(n["metadata"]["name"], n["metadata"]["labels"])
        for n in of_kind("Namespace")
    }
    namespaces.setdefault(namespace, namespace_object(namespace))
    return webhook_matches(config, create(pod, namespace), namespaces)


def create(pod: dict[str, Any], namespace: str = TENANT, **who: Any) -> Request:
    who = who or {
        "user": "system:serviceaccount:kube-system:replicaset-controller",
        "groups": ["system:serviceaccounts"],
    }
    return Request("CREATE", "pods", namespace=namespace, object=pod, **who)


def update(old: dict[str, Any], new: dict[str, Any], resource: str = "pods", **who: Any) -> Request:
    meta = new["metadata"]
    return Request(
        "UPDATE",
        resource,
        namespace=meta["namespace"],
        name=meta["name"],
        object=new,
        old_object=old,
        **who,
    )


def policies_of(denials: list[Denial]) -> set[str]:
    return {d.policy for d in denials}


def var(name: str, value: str | None = None, **source: Any) -> client.V1EnvVar:
    return client.V1EnvVar(
        name=name, value=value, value_from=client.V1EnvVarSource(**source) if source else None
    )


def bound_pod(
    node: str = "gpu-1", annotations: dict[str, str] | None = None, *containers: Any
) -> dict[str, Any]:
    """A running tenant pod bound by HCS (as read back from the API server)."""
    pod = k8s_pod(
        *(containers or (container(limits={"nvidia.com/gpu": "1"}),)),
        annotations={"hcs.io/assigned-vendor": "nvidia", **(annotations or {})},
    )
    pod["metadata"].update(namespace=TENANT, uid="u-1", resourceVersion="7")
    pod["spec"]["nodeName"] = node
    return pod


# --------------------------------------------------------------------------- the files


def test_the_policy_and_webhook_files_are_what_the_generator_writes() -> None:
    """Both are generated from the vendor table: the resource names the webhook is sent pods
    for are the table's (HAMi's, the aliases it rewrites)."""
    hint = (
        "stale: run python -m hcs.policies --webhook-config manifests/webhook-configuration.yaml "
        "manifests/policies.yaml"
    )
    assert (MANIFESTS / "policies.yaml").read_text() == policies.render(policies.policies()), hint
    assert (MANIFESTS / "webhook-configuration.yaml").read_text() == policies.render_webhook(), hint


def test_every_policy_and_binding_and_the_webhook_configuration_render_and_validate() -> None:
    import kubernetes_validate

    kubectl = shutil.which("kubectl")
    if kubectl:  # the real renderer where it is installed (it is on the development machine)
        out = subprocess.run(
            [kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True
        ).stdout
        rendered = [d for d in yaml.safe_load_all(out) if d]
    else:
        rendered = DOCS
    kinds = [(d["kind"], d["metadata"]["name"]) for d in rendered]
    names = {"hcs-device-env", "hcs-pod-assignments", "hcs-pod-annotations", "hcs-node-scope"}
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        assert {n for k, n in kinds if k == kind} == names
    assert ("MutatingWebhookConfiguration", "hcs-webhook") in kinds
    for doc in rendered:
        if doc["kind"].startswith("ValidatingAdmissionPolicy"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_sites_vendor_config_changes_the_device_env_policy(tmp_path: Path) -> None:
    config = tmp_path / "vendors.yaml"
    config.write_text(
        "vendors:\n  nvidia:\n"
        "    resource: nvidia.com/gpu.shared\n"
        "    aliases: ['nvidia.com/mig-*']\n"
    )
    out = tmp_path / "policies.yaml"
    assert policies.main(["--vendor-config", str(config), str(out)]) == 0
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    adm = Admission(docs, [namespace_object(TENANT)])
    for resource, admitted in (("nvidia.com/gpu.shared", True), ("nvidia.com/mig-1g.10gb", True)):
        pod = k8s_pod(
            container(
                limits={resource: "1"},
                env=[
                    var(
                        "NVIDIA_VISIBLE_DEVICES",
                        field_ref=client.V1ObjectFieldSelector(
                            field_path="metadata.annotations['devices.hcs.io/main']"
                        ),
                    )
                ],
            )
        )
        assert (adm.review(create(pod)) == []) is admitted, resource
    pod = k8s_pod(container(limits={"nvidia.com/gpu": "1"}, env=[var("CUDA_VISIBLE_DEVICES", "0")]))
    assert policies_of(adm.review(create(pod))) == {"hcs-device-env"}  # no longer NVIDIA's name


# --------------------------------------------------------------------------- shipped workloads


def workload_pods() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for doc in of_kind("Deployment") + of_kind("DaemonSet"):
        template = copy.deepcopy(doc["spec"]["template"])
        meta = template["metadata"]
        meta.update(
            generateName=doc["metadata"]["name"] + "-", namespace=doc["metadata"]["namespace"]
        )
        out.append((doc["metadata"]["name"], {"apiVersion": "v1", "kind": "Pod", **template}))
    return out


@pytest.mark.parametrize(("name", "pod"), workload_pods(), ids=[n for n, _ in workload_pods()])
def test_every_shipped_workload_passes_every_shipped_policy(
    name: str, pod: dict[str, Any], admission: Admission
) -> None:
    namespace = pod["metadata"]["namespace"]
    assert admission.review(create(pod, namespace)) == [], name
    assert "hcs-device-env" in {b["spec"]["policyName"] for b in admission.bindings}


def test_the_agents_pass_only_because_their_namespace_is_exempt(admission: Admission) -> None:
    (pod,) = [p for n, p in workload_pods() if n == "hcs-agent-nvidia"]
    moved = copy.deepcopy(pod)
    moved["metadata"]["namespace"] = TENANT
    (denial,) = admission.review(create(moved))
    assert denial.policy == "hcs-device-env"
    assert "container agent sets NVIDIA_VISIBLE_DEVICES" in denial.message
    admission.namespace("gpu-tools", {"hcs.io/device-env": "unrestricted"})
    assert admission.review(create(moved, "gpu-tools")) == []


# --------------------------------------------------------------------------- tenants: device env


@pytest.mark.parametrize(
    "env",
    [
        var("NVIDIA_VISIBLE_DEVICES", "all"),
        var("NVIDIA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7"),
        var(
            "NVIDIA_VISIBLE_DEVICES",
            config_map_key_ref=client.V1ConfigMapKeySelector(name="gpus", key="ids"),
        ),
        var("CUDA_VISIBLE_DEVICES", "0"),
        var("ASCEND_VISIBLE_DEVICES", "0-7"),
        var("ASCEND_RT_VISIBLE_DEVICES", "0"),
        var("HIP_VISIBLE_DEVICES", "0"),
        var("ROCR_VISIBLE_DEVICES", "0"),
        var("CAMBRICON_VISIBLE_DEVICES", "0"),
        var("MLU_VISIBLE_DEVICES", "0"),
    ],
    ids=lambda e: f"{e.name}={e.value or 'valueFrom'}",
)
def test_a_pod_the_webhook_never_sees_cannot_set_device_env(
    env: client.V1EnvVar, admission: Admission
) -> None:
    pod = k8s_pod(container("cpu", env=[env]))
    assert webhook_called(pod) == []  # no ai.compute, no hcs.io annotation
    (denial,) = admission.review(create(pod))
    assert denial.policy == "hcs-device-env" and denial.reason == "Forbidden"
    assert f"spec.containers: container cpu sets {env.name}" in denial.message


def test_init_containers_are_checked_and_no_device_values_pass(admission: Admission) -> None:
    init = container("fetch", env=[var("NVIDIA_VISIBLE_DEVICES", "all")])
    (denial,) = admission.review(create(k8s_pod(container("cpu"), init=[init])))
    assert "spec.initContainers: container fetch sets NVIDIA_VISIBLE_DEVICES" in denial.message
    quiet = [var("NVIDIA_VISIBLE_DEVICES", "void"), var("CUDA_VISIBLE_DEVICES", "-1")]
    assert admission.review(create(k8s_pod(container("cpu", env=quiet)))) == []
    assert admission.review(create(k8s_pod(container("cpu", env=[var("PATH", "/bin")])))) == []


def test_a_legacy_gpu_pod_gets_its_own_devices_only(admission: Admission) -> None:
    gpu = {"nvidia.com/gpu": "1"}
    wide = k8s_pod(container(limits=gpu, env=[var("NVIDIA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")]))
    assert webhook_called(wide) == []
    assert policies_of(admission.review(create(wide))) == {"hcs-device-env"}
    logical = k8s_pod(container(limits=gpu, env=[var("CUDA_VISIBLE_DEVICES", "0")]))
    assert admission.review(create(logical)) == []
    own = var(
        "NVIDIA_VISIBLE_DEVICES",
        field_ref=client.V1ObjectFieldSelector(
            api_version="v1", field_path="metadata.annotations['devices.hcs.io/main']"
        ),
    )
    assert admission.review(create(k8s_pod(container(limits=gpu, env=[own])))) == []
    other = var(
        "NVIDIA_VISIBLE_DEVICES",
        field_ref=client.V1ObjectFieldSelector(field_path="metadata.annotations['wide']"),
    )
    assert admission.review(create(k8s_pod(container(limits=gpu, env=[other])))) != []
    # Asking for a Huawei NPU does not allow choosing NVIDIA GPUs.
    npu = k8s_pod(
        container(limits={"huawei.com/Ascend910": "1"}, env=[var("NVIDIA_VISIBLE_DEVICES", "0")])
    )
    assert policies_of(admission.review(create(npu))) == {"hcs-device-env"}


def test_kubectl_debug_cannot_add_a_container_that_sees_every_gpu(admission: Admission) -> None:
    old = bound_pod()
    debug = {
        "name": "debugger",
        "image": "busybox",
        "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}],
    }
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [debug]
    (denial,) = admission.review(update(old, new, "pods/ephemeralcontainers"))
    assert (
        "spec.ephemeralContainers: container debugger sets NVIDIA_VISIBLE_DEVICES" in denial.message
    )
    del debug["env"]
    assert admission.review(update(old, new, "pods/ephemeralcontainers")) == []


@pytest.mark.parametrize(
    "env",
    [
        var("CUDA_DEVICE_MEMORY_LIMIT_0", "0"),  # HAMi-core: 0 means no limit
        var("CUDA_DEVICE_MEMORY_LIMIT", "80g"),
        var("CUDA_DEVICE_SM_LIMIT", "100"),
        var("GPU_CORE_UTILIZATION_POLICY", "disable"),
        var("CUDA_DISABLE_CONTROL", "true"),
        var("CUDA_DEVICE_MEMORY_SHARED_CACHE", "/tmp/mine"),
        var("ASCEND_VNPU_SPECS", "vir10_3c_32g"),  # a larger vNPU than was booked
        var("CUDA_DEVICE_SM_LIMIT", field_ref=client.V1ObjectFieldSelector(field_path="x")),
    ],
    ids=lambda e: e.name,
)
def test_no_container_sets_a_share_limiters_setting(
    env: client.V1EnvVar, admission: Admission, webhook_ctx: Any
) -> None:
    """Kubelet applies the pod's env after the device plugin's: a container's own value would
    undo the share HCS booked. Refused by the policy for pods the webhook never sees (a legacy
    GPU pod, an ephemeral container) and by the webhook for the pods it does."""
    legacy = k8s_pod(container("train", limits={"nvidia.com/gpu": "1"}, env=[env]))
    assert webhook_called(legacy) == []
    (denial,) = admission.review(create(legacy))
    assert denial.policy == "hcs-device-env" and denial.reason == "Forbidden"
    assert (
        f"spec.containers: container train sets {env.name}, a setting of the share limiter"
        in denial.message
    )
    old = bound_pod()
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [
        {"name": "dbg", "image": "busybox", "env": [API.sanitize_for_serialization(env)]}
    ]
    (denial,) = admission.review(update(old, new, "pods/ephemeralcontainers"))
    assert "container dbg sets" in denial.message
    asks = {"ai.compute/vram": "8Gi"}
    pod = k8s_pod(container("train", asks, asks, env=[env]))
    assert webhook_called(pod) != []
    before = copy.deepcopy(webhook_ctx.quotas.used)
    response = review(request_for(pod), webhook_ctx)
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert f"env[{env.name}]" in message and "container train" in message
    assert webhook_ctx.quotas.used == before  # nothing charged
    # Names that merely look alike are the container's own business.
    alike = [var("CUDA_DEVICE_ORDER", "PCI_BUS_ID"), var("MY_CUDA_DEVICE_SM_LIMIT", "1")]
    assert admission.review(create(k8s_pod(container("cpu", env=alike)))) == []


# --------------------------------------------------------------------------- tenants: assignments


@pytest.mark.parametrize(
    "key",
    ["devices.hcs.io/main", "hcs.io/assigned-devices", "hcs.io/assigned-node", "hcs.io/allocated"],
)
def test_a_pod_created_carrying_an_assignment_is_refused(
    key: str, admission: Admission, webhook_ctx: Any
) -> None:
    pod = k8s_pod(container(limits={"nvidia.com/gpu": "1"}), annotations={key: "7"})
    # The webhook is now asked, and refuses it; and if it were down or skipped, the policy does.
    assert webhook_called(pod) == ["pods.hcs.io"]
    answer = review(request_for(pod), webhook_ctx)
    assert answer["allowed"] is False and key in answer["status"]["message"]
    (denial,) = admission.review(create(pod))
    assert denial.policy == "hcs-pod-assignments" and key in denial.message


@pytest.mark.parametrize(
    "annotations",
    [None, {"hcs.io/vendor-preference": "nvidia", "hcs.io/inject-driver": "false"}],
    ids=["plain", "with-hcs-annotations"],
)
def test_an_ordinary_hcs_pod_patched_by_the_webhook_passes_every_policy(
    annotations: dict[str, str] | None, admission: Admission, webhook_ctx: Any
) -> None:
    pod = k8s_pod(
        container("trainer", requests={"ai.compute/vram": "16Gi", "ai.compute/devices": "2"}),
        container("sidecar", env=[var("LOG_LEVEL", "info")]),
        annotations=annotations,
        init=[container("fetch")],
    )
    assert webhook_called(pod) == ["pods.hcs.io"]
    patched = applied(pod, review(request_for(pod), webhook_ctx))
    # kube-apiserver runs the policies after the mutating webhook, on the patched pod.
    assert admission.review(create(patched)) == []
    assert admission.evaluated == ["hcs-device-env", "hcs-pod-assignments"]


def test_the_webhook_patch_is_what_the_policies_expect_of_a_requesting_container(
    admission: Admission, webhook_ctx: Any
) -> None:
    """The device env the webhook writes is the one form the policy lets a requesting container
    have: if either changes, this fails."""
    pod = k8s_pod(container("trainer", requests={"ai.compute/vram": "8Gi"}))
    ops = json.loads(base64.b64decode(review(request_for(pod), webhook_ctx)["patch"]))
    patched = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
    env = patched["spec"]["containers"][0]["env"]
    device = next(e for e in env if e["name"] == "NVIDIA_VISIBLE_DEVICES")
    device["valueFrom"]["fieldRef"]["fieldPath"] = "metadata.annotations['devices.hcs.io/x']"
    assert policies_of(admission.review(create(patched))) == {"hcs-device-env"}


# --------------------------------------------------------------------------- annotation updates


def annotated(pod: dict[str, Any], **changes: str) -> dict[str, Any]:
    new = copy.deepcopy(pod)
    new["metadata"]["annotations"].update(changes)
    return new


def test_only_the_node_agent_changes_hcs_annotations(admission: Admission) -> None:
    pod = bound_pod(annotations={"hcs.io/assigned-devices": "0", "devices.hcs.io/main": "0"})
    moved = annotated(pod, **{"hcs.io/assigned-devices": "7", "devices.hcs.io/main": "7"})
    (denial,) = admission.review(update(pod, moved))
    assert denial.policy == "hcs-pod-annotations" and "hcs.io/assigned-devices" in denial.message
    # The status subresource is no side door.
    assert policies_of(admission.review(update(pod, moved, "pods/status"))) == {
        "hcs-pod-annotations"
    }
    # Another HCS account is not the agent: no more blanket hcs-system exemption.
    webhook_sa = service_account("hcs-system", "hcs-webhook")
    assert policies_of(admission.review(update(pod, moved, **webhook_sa))) == {
        "hcs-pod-annotations"
    }
    # The tenant's own annotations are the tenant's.
    assert admission.review(update(pod, annotated(pod, **{"team.example.com/owner": "x"}))) == []
    # The agent of the pod's node records an allocation.
    allocated = annotated(pod, **{"hcs.io/allocated": '{"main":["0"]}'})
    assert admission.review(update(pod, allocated, **service_account(*AGENT, node="gpu-1"))) == []


# --------------------------------------------------------------------------- the node's account


def as_node(node: str | None = "gpu-1") -> dict[str, Any]:
    return service_account(*AGENT, node=node)


def test_a_node_annotates_only_its_own_pods_and_only_with_the_plugins_keys(
    admission: Admission,
) -> None:
    mine = bound_pod("gpu-1")
    record = {"hcs.io/allocated": '{"main":["0"]}', "devices.hcs.io/main": "0"}
    ok = annotated(mine, **record, **{"hcs.io/assigned-node": "gpu-1"})
    assert admission.review(update(mine, ok, **as_node())) == []
    theirs = bound_pod("gpu-2")
    (denial,) = admission.review(update(theirs, annotated(theirs, **record), **as_node()))
    assert denial.policy == "hcs-node-scope" and "not bound to node gpu-1" in denial.message
    cases: dict[str, Callable[[dict[str, Any]], Any]] = {
        "image": lambda p: p["spec"]["containers"][0].update(image="attacker/miner:latest"),
        "label": lambda p: p["metadata"].setdefault("labels", {}).update(team="root"),
        "request": lambda p: p["metadata"]["annotations"].update({"hcs.io/request": "{}"}),
        "foreign": lambda p: p["metadata"]["annotations"].update({"example.com/x": "y"}),
        "node": lambda p: p["metadata"]["annotations"].update({"hcs.io/assigned-node": "gpu-2"}),
        "owner": lambda p: p["metadata"].update(
            ownerReferences=[{"apiVersion": "v1", "kind": "Node", "name": "gpu-1", "uid": "n"}]
        ),
    }
    for what, change in cases.items():
        new = copy.deepcopy(mine)
        change(new)
        assert policies_of(admission.review(update(mine, new, **as_node()))) == {
            "hcs-node-scope"
        }, what


def test_a_token_without_the_node_claim_is_refused(admission: Admission) -> None:
    mine = bound_pod("gpu-1")
    new = annotated(mine, **{"hcs.io/allocated": "{}"})
    denials = admission.review(update(mine, new, **as_node(None)))
    assert any("the token names no node" in d.message for d in denials)


def computenode(name: str) -> dict[str, Any]:
    return {"apiVersion": "hcs.io/v1alpha1", "kind": "ComputeNode", "metadata": {"name": name}}


def test_a_node_writes_only_its_own_computenode(admission: Admission) -> None:
    for operation, resource, name, admitted in (
        ("CREATE", "computenodes", "gpu-1", True),
        ("CREATE", "computenodes", "gpu-2", False),
        ("UPDATE", "computenodes", "gpu-2", False),
        ("UPDATE", "computenodes/status", "gpu-1", True),
        ("UPDATE", "computenodes/status", "gpu-2", False),
    ):
        old = computenode(name) if operation == "UPDATE" else None
        request = Request(
            operation,
            resource,
            group="hcs.io",
            version="v1alpha1",
            name=name,
            object=computenode(name),
            old_object=old,
            **as_node(),
        )
        denials = admission.review(request)
        assert (denials == []) is admitted, (operation, resource, name, denials)
    # The controller (heartbeat expiry) is not narrowed: the policy is the agent's only.
    controller = service_account("hcs-system", "hcs-controller")
    request = Request(
        "UPDATE",
        "computenodes/status",
        group="hcs.io",
        version="v1alpha1",
        name="gpu-2",
        object=computenode("gpu-2"),
        old_object=computenode("gpu-2"),
        **controller,
    )
    assert admission.review(request) == []


def lease(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"holderIdentity": ""},
    }


def test_a_node_reaches_its_own_lock_and_never_the_leader_leases(admission: Admission) -> None:
    rbac = Rbac(DOCS)
    user = as_node()["user"]
    for namespace, name, admitted in (
        (LOCK_NAMESPACE, "hcs-node-gpu-1", True),
        (LOCK_NAMESPACE, "hcs-node-gpu-2", False),
        ("hcs-system", "hcs-scheduler", False),
        ("hcs-system", "hcs-controller", False),
    ):
        request = Request(
            "UPDATE",
            "leases",
            group="coordination.k8s.io",
            namespace=namespace,
            name=name,
            object=lease(namespace, name),
            old_object=lease(namespace, name),
            **as_node(),
        )
        allowed = rbac.allows(
            user, "update", "coordination.k8s.io", "leases", namespace=namespace, name=name
        )
        allowed = allowed and admission.review(request) == []
        assert allowed is admitted, (namespace, name)
    # RBAC alone keeps the leader leases out of reach (the policy aside).
    for name in ("hcs-scheduler", "hcs-controller"):
        for verb in ("get", "update", "patch", "create", "delete"):
            assert not rbac.allows(
                user, verb, "coordination.k8s.io", "leases", namespace="hcs-system", name=name
            )
    # The leader leases themselves stay where their owners look for them.
    scheduler = service_account("hcs-system", "hcs-scheduler")["user"]
    controller = service_account("hcs-system", "hcs-controller")["user"]
    leases = ("coordination.k8s.io", "leases")
    assert rbac.allows(scheduler, "update", *leases, namespace="hcs-system")
    assert rbac.allows(controller, "update", *leases, namespace="hcs-system")
    assert rbac.allows(scheduler, "create", *leases, namespace=LOCK_NAMESPACE)


def test_the_node_account_has_no_other_write(admission: Admission) -> None:
    rbac = Rbac(DOCS)
    user = as_node()["user"]
    for verb, group, resource, namespace in (
        ("create", "", "pods", TENANT),
        ("delete", "", "pods", TENANT),
        ("update", "", "pods/status", TENANT),
        ("create", "", "pods/binding", TENANT),
        ("delete", "hcs.io", "computenodes", ""),
        ("update", "hcs.io", "computequotas", TENANT),
        ("patch", "apps", "daemonsets", "hcs-system"),
        ("get", "", "secrets", "hcs-system"),
    ):
        assert not rbac.allows(user, verb, group, resource, namespace=namespace), (verb, resource)
    # What it has, the policy narrows to its node (tests above).
    assert rbac.allows(user, "patch", "", "pods", namespace=TENANT)
    assert rbac.allows(user, "create", "hcs.io", "computenodes")


# --------------------------------------------------------------------------- the contract


def test_the_policies_name_the_account_the_node_daemonsets_run_under() -> None:
    agents = [d for d in of_kind("DaemonSet") if d["metadata"]["name"].startswith("hcs-agent-")]
    assert len(agents) == 4
    for ds in agents:
        template = ds["spec"]["template"]["spec"]
        account = f"system:serviceaccount:{ds['metadata']['namespace']}:"
        assert account + template["serviceAccountName"] == policies.AGENT_ACCOUNT
        # ...and every container of it runs the node side under that account (no other token).
        assert template.get("automountServiceAccountToken", True) is True


def test_the_leader_leases_stay_where_they_were() -> None:
    config = yaml.safe_load((MANIFESTS / "scheduler" / "kube-scheduler-config.yaml").read_text())
    election = config["leaderElection"]
    assert (election["resourceNamespace"], election["resourceName"]) == (
        "hcs-system",
        "hcs-scheduler",
    )
    (controller,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "hcs-controller"]
    args = controller["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--lease") + 1] == "hcs-system/hcs-controller"
    # The node locks live apart, where the extender and the device plugins look by default.
    assert LOCK_NAMESPACE != "hcs-system"
    assert LOCK_NAMESPACE in {n["metadata"]["name"] for n in of_kind("Namespace")}
