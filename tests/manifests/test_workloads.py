"""The deployable manifests: they parse, every built-in object is valid for a current
Kubernetes, and they say what the issue asks (security settings, webhook configuration)."""

import argparse
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hcs_cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.37.0"


def patch_files() -> set[Path]:
    """Files a kustomization names as patches: partial objects, not manifests of their own."""
    out = set()
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        for patch in yaml.safe_load(kustomization.read_text()).get("patches") or []:
            if "path" in patch:  # an inline `patch:` is no file
                out.add(kustomization.parent / patch["path"])
    return out


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    patches = patch_files()
    for path in sorted(set(MANIFESTS.rglob("*.yaml")) - patches):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.relative_to(MANIFESTS)}#{i + 1}", doc))
    return docs


DOCS = documents()


def is_built_in(api_version: str) -> bool:
    """Kubernetes' own groups (core, `apps`, `*.k8s.io`), not an add-on's CRDs (cert-manager,
    Prometheus Operator) the optional components use."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


BUILT_IN = [
    (place, doc)
    for place, doc in DOCS
    if doc.get("kind") not in ("Kustomization", "Component", "KubeSchedulerConfiguration")
    and is_built_in(doc.get("apiVersion", ""))
]


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc.get("kind") == kind]


@pytest.mark.parametrize(("place", "doc"), BUILT_IN, ids=[p for p, _ in BUILT_IN])
def test_every_built_in_object_validates_strictly(place: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_and_they_exist() -> None:
    (kustomization,) = objects("Kustomization")
    listed = set(kustomization["resources"])
    on_disk = {
        str(p.relative_to(MANIFESTS))
        for p in MANIFESTS.rglob("*.yaml")
        if "components" not in p.parts  # optional components are listed by their own file
    }
    on_disk -= {"kustomization.yaml", "scheduler/kube-scheduler-config.yaml"}
    assert listed == on_disk
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (MANIFESTS / file).exists(), file


def test_kubectl_kustomize_renders_when_kubectl_is_here() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # Without kubectl, the same promise checked by hand: every resource exists (above) and
        # every object is namespaced where it must be.
        for _, doc in BUILT_IN:
            cluster_scoped = doc["kind"] in (
                "Namespace",
                "CustomResourceDefinition",
                "ClusterRole",
                "ClusterRoleBinding",
                "MutatingWebhookConfiguration",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
            )
            assert ("namespace" in doc["metadata"]) != cluster_scoped, doc["metadata"]["name"]
        return
    out = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True
    ).stdout
    rendered = list(yaml.safe_load_all(out))
    assert any(
        d["kind"] == "ConfigMap" and d["metadata"]["name"] == "hcs-scheduler-config"
        for d in rendered
    )


def test_the_webhook_configuration_is_safe_for_unrelated_pods() -> None:
    (config,) = objects("MutatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["timeoutSeconds"] == 5
    assert hook["failurePolicy"] == "Fail"
    assert hook["reinvocationPolicy"] == "Never"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["clientConfig"]["service"] == {
        "namespace": "hcs-system",
        "name": "hcs-webhook",
        "path": "/mutate",
        "port": 443,
    }
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["operator"] == "NotIn" and set(expr["values"]) == {"hcs-system", "kube-system"}
    condition = hook["matchConditions"][0]["expression"]
    assert "ai.compute/" in condition and "hcs.io/" in condition


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in objects("Deployment") + objects("DaemonSet")
    ]


DEVICE_NODE_AGENTS = {"hcs-agent-huawei", "hcs-agent-hygon", "hcs-agent-cambricon"}


@pytest.mark.parametrize(("name", "spec"), pod_specs(), ids=[n for n, _ in pod_specs()])
def test_workloads_run_non_root_read_only_with_resources(name: str, spec: dict[str, Any]) -> None:
    """Every workload has a read-only root and resources; all but the agents that must open
    device nodes run without privilege, as non-root, with every capability dropped."""
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        if name in DEVICE_NODE_AGENTS:
            assert sc["privileged"] is True and "allowPrivilegeEscalation" not in sc
            writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
            assert all(
                p.startswith("/dev/") or p == "/var/lib/kubelet/device-plugins" for p in writable
            )
            continue
        assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        if c["name"] == "device-plugin":  # root only to create its socket in kubelet's folder
            assert sc["runAsUser"] == 0
            continue
        assert spec.get("securityContext", {}).get("runAsNonRoot", True)


def test_one_agent_daemonset_per_vendor_with_what_its_tool_needs() -> None:
    agents = {d["metadata"]["name"]: d for d in objects("DaemonSet")}
    assert set(agents) == {f"hcs-agent-{v}" for v in ("nvidia", "huawei", "hygon", "cambricon")}
    for name, ds in agents.items():
        vendor = name.removeprefix("hcs-agent-")
        pod = ds["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"hcs.io/vendor": vendor}
        for container in pod["containers"]:
            args = container["args"]
            assert args[args.index("--vendor") + 1] == vendor
    for ds in agents.values():  # beside each agent, the device plugin with kubelet's folder
        pod = ds["spec"]["template"]["spec"]
        names = [c["name"] for c in pod["containers"]]
        assert names == ["agent", "device-plugin"]
        plugin = pod["containers"][1]
        mounts = {m["mountPath"] for m in plugin["volumeMounts"]}
        assert {"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources"} <= mounts
        assert plugin["args"][:1] == ["device-plugin"]
    nvidia = agents["hcs-agent-nvidia"]["spec"]["template"]["spec"]
    assert nvidia["runtimeClassName"] == "nvidia"
    assert [v["hostPath"]["path"] for v in nvidia["volumes"]] == [
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet/pod-resources",
        "/dev/null",  # mounted at /var/run/nvidia-container-devices/all: every GPU
    ]
    for c in nvidia["containers"]:
        by_path = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert by_path["/var/run/nvidia-container-devices/all"] == "all-gpus", c["name"]
    env = {e["name"]: e.get("value") for e in nvidia["containers"][0]["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"

    def host_paths(vendor: str) -> set[str]:
        volumes = agents[f"hcs-agent-{vendor}"]["spec"]["template"]["spec"]["volumes"]
        return {v["hostPath"]["path"] for v in volumes}

    assert {
        "/usr/local/Ascend/driver",
        "/usr/local/bin/npu-smi",
        "/dev/davinci_manager",
        "/dev/devmm_svm",
        "/dev/hisi_hdc",
    } <= host_paths("huawei")
    assert {"/opt/hyhal", "/dev/kfd", "/dev/dri"} <= host_paths("hygon")
    assert {"/usr/bin/cnmon", "/dev/cambricon_ctl"} <= host_paths("cambricon")
    (namespace,) = [n for n in objects("Namespace") if n["metadata"]["name"] == "hcs-system"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_the_webhook_is_highly_available_and_probed() -> None:
    (deployment,) = [d for d in objects("Deployment") if d["metadata"]["name"] == "hcs-webhook"]
    assert deployment["spec"]["replicas"] >= 2
    (pdb,) = objects("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "tls", "secret": {"secretName": "hcs-webhook-tls"}}]


def test_hcs_containers_run_real_hcs_commands() -> None:
    parser = build_parser()
    for name, spec in pod_specs():
        for c in spec["containers"]:
            if c["image"] != "hcs":
                continue
            args = [a.replace("$(NODE_NAME)", "n1") for a in c["args"]]
            parsed = parser.parse_args(args)
            assert parsed.command == c["args"][0], name


def test_optional_components_list_files_that_exist() -> None:
    for kustomization in (MANIFESTS / "components").rglob("kustomization.yaml"):
        doc = yaml.safe_load(kustomization.read_text())
        assert doc["kind"] == "Component"
        patches = doc.get("patches", [])
        files = [*doc.get("resources", []), *(p["path"] for p in patches if "path" in p)]
        assert all("path" in p or "patch" in p for p in patches), kustomization
        assert files, kustomization
        for file in files:
            assert (kustomization.parent / file).exists(), file
    (runtime_class,) = objects("RuntimeClass")
    assert runtime_class["metadata"]["name"] == runtime_class["handler"] == "nvidia"


def test_every_image_is_set_in_one_place_and_the_scheduler_respects_version_skew() -> None:
    """Images are bare names the kustomization maps (one variable each); kube-scheduler defaults
    to the oldest minor the install guide supports, never newer than the cluster."""
    (kustomization,) = objects("Kustomization")
    mapped = {i["name"]: i for i in kustomization["images"]}
    for name, spec in pod_specs():
        for c in spec["containers"]:
            assert c["image"] in mapped, (name, c["image"])
    scheduler = mapped["kube-scheduler"]
    assert scheduler["newName"] == "registry.k8s.io/kube-scheduler"
    guide = (ROOT / "docs" / "install.md").read_text()
    minimum = guide.split("Kubernetes ", 1)[1].split(" or newer", 1)[0]
    assert scheduler["newTag"].startswith(f"v{minimum}."), (scheduler["newTag"], minimum)


def test_every_optional_component_renders_with_the_base(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    components = sorted(p.parent for p in (MANIFESTS / "components").rglob("kustomization.yaml"))
    assert {c.name for c in components} >= {"cert-manager", "monitoring", "runtimeclass"}
    if kubectl is None:  # test_optional_components_list_files_that_exist checks the files
        pytest.skip("kubectl is not installed here")
    base = os.path.relpath(MANIFESTS, tmp_path)
    listed = ", ".join(os.path.relpath(c, tmp_path) for c in components)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\ncomponents: [{listed}]\n")
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert {"ServiceMonitor", "Certificate", "RuntimeClass", "Deployment"} <= kinds


def test_the_extender_timeout_outlasts_a_waiting_bind() -> None:
    """kube-scheduler gives each extender call `httpTimeout`; a bind may wait `--bind-wait`
    for its node's lock, then make its API calls (lock, Binding, read-back, 1.5 s each)."""
    from cluster.kubeio import CALL_TIMEOUT_S

    config = yaml.safe_load((MANIFESTS / "scheduler" / "kube-scheduler-config.yaml").read_text())
    (extender,) = config["extenders"]
    timeout = float(extender["httpTimeout"].removesuffix("s"))
    parser = build_parser()
    waits = [
        parser.parse_args(c["args"]).bind_wait
        for _, spec in pod_specs()
        for c in spec["containers"]
        if c["image"] == "hcs" and c["args"][0] == "extender"
    ]
    assert waits, "no extender container in the manifests"
    assert all(timeout > wait + 3 * CALL_TIMEOUT_S for wait in waits), (timeout, waits)


def _with_component(
    tmp_path: Path, component: str, daemonset: str
) -> tuple[dict[str, Any], argparse.Namespace, argparse.Namespace]:
    """The DaemonSet as rendered with `component`, and its agent's and plugin's arguments."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    base = os.path.relpath(MANIFESTS, tmp_path)
    path = os.path.relpath(MANIFESTS / "components" / component, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\ncomponents: [{path}]\n")
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    (ds,) = [d for d in yaml.safe_load_all(out) if d and d["metadata"]["name"] == daemonset]
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    parser = build_parser()
    by_name = {c["name"]: c for c in spec["containers"]}
    agent, plugin = (
        parser.parse_args([a.replace("$(NODE_NAME)", "n") for a in by_name[name]["args"]])
        for name in ("agent", "device-plugin")
    )
    return spec, agent, plugin


def test_the_hami_core_component_enforces_shares_with_host_paths(tmp_path: Path) -> None:
    """The agent and the plugin state the same replicas and limiter; the plugin's library and
    state folders are mounted at their host paths (Allocate answers kubelet with host paths)."""
    spec, agent, plugin = _with_component(tmp_path, "hami-core", "hcs-agent-nvidia")
    plugin_c = {c["name"]: c for c in spec["containers"]}["device-plugin"]
    assert agent.replicas == plugin.replicas > 1
    assert agent.limiter == plugin.limiter == "hami-core"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in plugin_c["volumeMounts"]}
    for folder in (plugin.limiter_dir, plugin.limiter_state_dir):
        assert volumes[mounts[folder]["name"]]["hostPath"]["path"] == folder
    assert mounts[plugin.limiter_dir].get("readOnly") is True
    assert not mounts[plugin.limiter_state_dir].get("readOnly")


def test_the_vnpu_component_states_one_mode_on_both_containers(tmp_path: Path) -> None:
    _, agent, plugin = _with_component(tmp_path, "vnpu", "hcs-agent-huawei")
    assert agent.replicas == plugin.replicas > 1
    assert agent.limiter == plugin.limiter == "vnpu"
    assert agent.vendor == plugin.vendor == "huawei"


def test_each_device_plugin_is_ready_only_once_registered() -> None:
    """The readiness probe checks the file the plugin keeps while it is registered with the
    running kubelet: the plugin's socket name with `.ready`, in the folder it is given."""
    parser = build_parser()
    probed = 0
    for _, spec in pod_specs():
        for c in spec["containers"]:
            if c["image"] != "hcs" or c["args"][0] != "device-plugin":
                continue
            args = parser.parse_args([a.replace("$(NODE_NAME)", "n") for a in c["args"]])
            ready = Path(args.kubelet_dir) / f"hcs-{args.vendor}.ready"
            command = " ".join(c["readinessProbe"]["exec"]["command"])
            assert f"'{ready}'" in command, command
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert args.kubelet_dir in mounts
            probed += 1
    assert probed == 4


def test_the_kubectl_only_overlay_sets_both_images() -> None:
    """docs/install.md's way without a standalone kustomize: an overlay with `images:`."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    overlay = MANIFESTS.parent / "overlay"
    wanted = {
        i["name"]: i for i in yaml.safe_load((overlay / "kustomization.yaml").read_text())["images"]
    }
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    images = {
        c["image"]
        for doc in yaml.safe_load_all(out)
        if doc and doc.get("kind") in ("Deployment", "DaemonSet")
        for c in doc["spec"]["template"]["spec"]["containers"]
    }
    hcs = wanted["registry.example.com/hcs/hcs"]
    scheduler = wanted["registry.k8s.io/kube-scheduler"]
    assert images == {
        f"{hcs['newName']}:{hcs['newTag']}",
        f"registry.k8s.io/kube-scheduler:{scheduler['newTag']}",
    }


def test_make_image_says_when_docker_has_no_buildkit(tmp_path: Path) -> None:
    """The Dockerfile's RUN --mount needs BuildKit: a docker without buildx is named, one line,
    before anything is built."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed here")
    docker = tmp_path / "docker"
    docker.write_text('#!/bin/sh\n[ "$1" = buildx ] && exit 1\necho built "$@"\n')
    docker.chmod(0o755)
    root = MANIFESTS.parent
    done = subprocess.run(
        [make, "-s", "-C", str(root), "image", f"ENGINE={docker}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "has no BuildKit (the Dockerfile uses RUN --mount)" in done.stderr
    assert "built" not in done.stdout
    docker.write_text('#!/bin/sh\necho built "$@"\n')  # buildx present: it builds
    done = subprocess.run(
        [make, "-s", "-C", str(root), "image", f"ENGINE={docker}", "IMAGE=x:1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "built build -t x:1 ." in done.stdout
