"""`components/dra`: DeviceClasses equal to what the vendor table generates, the driver
container in every agent DaemonSet with kubelet's and CDI's folders at their host paths, RBAC
covering exactly the driver's calls, and a policy keeping each node's driver to its own slices
(evaluated as kube-apiserver would)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hcs.dra import device_classes, resource_slices
from hcs.models import ComputeNode
from hcs.synthetic import node_dict
from hcs.vendors import VendorTable
from hcs_cli.main import build_parser
from tests.fake_admission import Admission, Request, service_account

COMPONENT = Path(__file__).resolve().parents[2] / "manifests" / "components" / "dra"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((COMPONENT / name).read_text()) if d]


def test_the_device_classes_are_the_vendor_tables() -> None:
    assert docs("deviceclasses.yaml") == device_classes(VendorTable())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    tmp = tmp_path_factory.mktemp("dra")
    base = os.path.relpath(COMPONENT.parents[1], tmp)
    (tmp / "kustomization.yaml").write_text(
        f"resources: [{base}]\ncomponents: [{os.path.relpath(COMPONENT, tmp)}]\n"
    )
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_every_agent_daemonset_runs_the_driver_with_kubelets_folders(
    rendered: list[dict[str, Any]],
) -> None:
    agents = [
        d
        for d in rendered
        if d["kind"] == "DaemonSet" and d["metadata"]["name"].startswith("hcs-agent-")
    ]
    assert len(agents) == 4
    parser = build_parser()
    for ds in agents:
        spec = ds["spec"]["template"]["spec"]
        (c,) = [c for c in spec["containers"] if c["name"] == "dra-plugin"]
        args = parser.parse_args([a.replace("$(NODE_NAME)", "n") for a in c["args"]])
        volumes = {v["name"]: v for v in spec["volumes"]}
        host = {m["mountPath"]: volumes[m["name"]]["hostPath"]["path"] for m in c["volumeMounts"]}
        # kubelet dials the paths GetInfo names: they must be the host's own, and kubelet's.
        assert args.registry_dir == "/var/lib/kubelet/plugins_registry"
        assert args.plugin_dir == "/var/lib/kubelet/plugins/compute.hcs.io"
        assert host[args.registry_dir] == args.registry_dir
        assert host["/var/lib/kubelet/plugins"] == "/var/lib/kubelet/plugins"
        assert host[args.cdi_dir] == args.cdi_dir == "/var/run/cdi"
        assert args.vendor == ds["metadata"]["name"].removeprefix("hcs-agent-")
        assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "hcs-agent"
        if args.vendor == "nvidia":  # HAMi-core's host folders, at their own paths
            assert host[args.limiter_dir] == args.limiter_dir
            assert host[args.limiter_state_dir] == args.limiter_state_dir
            (library,) = [m for m in c["volumeMounts"] if m["mountPath"] == args.limiter_dir]
            assert library.get("readOnly") is True


def test_rbac_grants_the_drivers_calls_and_no_more(rendered: list[dict[str, Any]]) -> None:
    (role,) = [
        d
        for d in rendered
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "hcs-dra-plugin"
    ]
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    # node/draplugin.KubeDra: list/create/replace/delete slices, read claims. (It also reads
    # its node's ComputeNode for the sharing the agent published: the agent's own role.)
    assert granted == {
        ("resourceslices", "list"),
        ("resourceslices", "create"),
        ("resourceslices", "update"),
        ("resourceslices", "delete"),
        ("resourceclaims", "get"),
    }
    (binding,) = [
        d
        for d in rendered
        if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == "hcs-dra-plugin"
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "hcs-agent", "namespace": "hcs-system"}
    ]


def slice_for(node: str, driver: str = "compute.hcs.io") -> dict[str, Any]:
    (s,) = resource_slices(ComputeNode.from_dict(node_dict(node, "nvidia", 2)), generation=1)
    s["spec"]["driver"] = driver
    return s


def write(operation: str, obj: dict[str, Any], node: str | None) -> Request:
    who = service_account("hcs-system", "hcs-agent", node=node)
    return Request(
        operation,
        "resourceslices",
        group="resource.k8s.io",
        name=obj["metadata"]["name"],
        object=None if operation == "DELETE" else obj,
        old_object=obj if operation != "CREATE" else None,
        **who,
    )


def test_a_nodes_driver_writes_only_its_own_slices() -> None:
    admission = Admission(docs("policy.yaml"))
    mine, theirs = slice_for("gpu-1"), slice_for("gpu-2")
    for operation in ("CREATE", "UPDATE", "DELETE"):
        assert admission.review(write(operation, mine, "gpu-1")) == []
        (denial,) = admission.review(write(operation, theirs, "gpu-1"))
        assert denial.policy == "hcs-dra-node-scope"
        assert "writes only its own node's compute.hcs.io ResourceSlices" in denial.message
    (denial,) = admission.review(write("CREATE", slice_for("gpu-1", "gpu.nvidia.com"), "gpu-1"))
    assert denial.policy == "hcs-dra-node-scope"  # another driver's slices: not ours to write
    denials = admission.review(write("CREATE", mine, None))  # a token without the node
    assert any("carries no node name" in d.message for d in denials), denials
    other = Request(
        "CREATE", "resourceslices", group="resource.k8s.io", name="x", object=theirs, user="bob"
    )
    assert admission.review(other) == []  # only the agents' account is held to this


def test_the_controller_may_read_and_create_claim_templates(rendered: list[dict[str, Any]]) -> None:
    roles = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ClusterRole"}
    rules = roles["hcs-dra-controller"]["rules"]
    granted = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    # cluster/controllers.ControllerRunner.ensure_claim_templates: read, create where missing.
    assert granted == {("resourceclaimtemplates", "get"), ("resourceclaimtemplates", "create")}
    (binding,) = [
        d
        for d in rendered
        if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == "hcs-dra-controller"
    ]
    sa = {d["metadata"]["name"] for d in rendered if d["kind"] == "ServiceAccount"}
    (subject,) = binding["subjects"]
    assert subject["name"] in sa and subject["name"] == "hcs-controller"


def claim_request(
    resource: str, name: str, devices: dict[str, Any], namespace: str = "ml", **who: Any
) -> Request:
    spec = {"devices": devices}
    kind = "ResourceClaimTemplate" if resource == "resourceclaimtemplates" else "ResourceClaim"
    obj = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"spec": spec} if kind == "ResourceClaimTemplate" else spec,
    }
    who = who or {"user": "alice", "groups": ["system:authenticated"]}
    return Request(
        "CREATE",
        resource,
        group="resource.k8s.io",
        namespace=namespace,
        name=name,
        object=obj,
        **who,
    )


def test_claims_on_hcs_classes_come_from_hcs_where_quota_is_charged() -> None:
    """A tenant's own claim or template on compute.hcs.io would take devices no ComputeQuota
    sees; a template squatting hcs-compute-<hash> would hand HCS's pods what the tenant wrote."""
    from hcs.demand import parse_pod
    from hcs.dra import claim_template_spec, template_name

    admission = Admission(docs("policy.yaml"))
    admission.namespace("lab", {"hcs.io/dra-claims": "direct"})
    exact = {"requests": [{"name": "g", "exactly": {"deviceClassName": "nvidia.compute.hcs.io"}}]}
    fallback = {
        "requests": [
            {
                "name": "g",
                "firstAvailable": [
                    {"name": "a", "deviceClassName": "gpu.nvidia.com"},
                    {"name": "b", "deviceClassName": "compute.hcs.io"},
                ],
            }
        ]
    }
    theirs = {"requests": [{"name": "g", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}
    for resource in ("resourceclaims", "resourceclaimtemplates"):
        for devices in (exact, fallback):
            (denial,) = admission.review(claim_request(resource, "mine", devices))
            assert denial.policy == "hcs-dra-claims" and denial.reason == "Forbidden"
            assert "ask ai.compute/* instead" in denial.message
            assert admission.review(claim_request(resource, "mine", devices, "lab")) == []
        assert admission.review(claim_request(resource, "mine", theirs)) == []  # not HCS's
    # The template hcs controller makes from an admitted pod, and the claim the resourceclaim
    # controller makes from it, pass; the same name written by a tenant does not.
    pod = {
        "metadata": {"name": "p", "namespace": "ml", "annotations": {}},
        "spec": {
            "containers": [{"name": "main", "resources": {"limits": {"ai.compute/vram": "16Gi"}}}]
        },
    }
    spec = claim_template_spec(parse_pod(pod, VendorTable()))
    name = template_name(spec)
    controller = service_account("hcs-system", "hcs-controller")
    claims = service_account("kube-system", "resource-claim-controller")
    devices = spec["spec"]["devices"]
    assert (
        admission.review(claim_request("resourceclaimtemplates", name, devices, **controller)) == []
    )
    assert (
        admission.review(claim_request("resourceclaims", "p-hcs-compute-x", devices, **claims))
        == []
    )
    denials = admission.review(claim_request("resourceclaimtemplates", name, theirs))
    assert [d.policy for d in denials] == ["hcs-dra-claims"]
    assert "hcs-compute-* are HCS's" in denials[0].message
