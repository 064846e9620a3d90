"""The node default is safe: a pod's own env cannot widen its GPUs. A pod is admitted by the
webhook, bound by the extender and allocated by the HCS device plugin over kubelet's gRPC; then
the container's GPUs are worked out by kubelet's env rules and the NVIDIA toolkit's
(tests/node/container_runtime.py). The pod's spec is then tampered with as if it had escaped
admission (a namespace exempt from the policies, a cluster without them): under `envvar` it sees
every GPU; under the default `volume-mounts` with the toolkit settings docs/node.md gives, and
under CDI, it sees its own."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hcs.assignment import container_devices, default_strategies
from hcs.vendors import VendorTable
from hcs_cli.main import build_parser
from tests.node.container_runtime import Toolkit, visible_gpus
from tests.node.harness import stored
from tests.node.test_device_plugin import Cluster, cluster

__all__ = ["cluster"]  # the simulated cluster fixture

GPUS = [f"GPU-gpu-1-{i}" for i in range(4)]
SAFE_TOOLKIT = Toolkit(accept_envvar_unprivileged=False, accept_volume_mounts=True)
CUDA_IMAGE = {"NVIDIA_VISIBLE_DEVICES": "all"}  # what nvidia/cuda images set


async def allocated_pod(cluster: Cluster, strategies: tuple[str, ...]) -> tuple[Any, Any]:
    """(the stored pod, the Allocate answer of its GPU container `m`), with a sidecar `s` that
    asks for nothing."""
    node = cluster.nodes["gpu-1"]
    assert node.plugin is not None
    node.plugin.allocator.strategies = strategies
    pod = cluster.pod([("m", {"ai.compute/vram": "1Gi"}), ("s", {})], vendor="nvidia")
    pod = await cluster.create(pod)
    assert await cluster.schedule(pod, "gpu-1") == ""
    answer = (await cluster.admit(pod, "gpu-1")).answers["m"]
    return stored(cluster.fake, pod), answer


def own_gpu(pod: dict[str, Any]) -> set[str]:
    (dev,) = container_devices(pod["metadata"]["annotations"])["m"]
    return {f"GPU-gpu-1-{dev}"}


def tampered(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """The container `name` with NVIDIA_VISIBLE_DEVICES=all in its spec."""
    c: dict[str, Any] = copy.deepcopy(container(pod, name))
    env = [e for e in c.get("env") or [] if e["name"] != "NVIDIA_VISIBLE_DEVICES"]
    c["env"] = [*env, {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    return c


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in pod["spec"]["containers"] if c["name"] == name)
    return found


class _NoAnswer:
    """A container kubelet made no Allocate call for (it asks for no GPU)."""

    envs: dict[str, str] = {}  # noqa: RUF012
    annotations: dict[str, str] = {}  # noqa: RUF012
    mounts: tuple[Any, ...] = ()
    cdi_devices: tuple[Any, ...] = ()


NONE = _NoAnswer()


def test_the_plugin_defaults_to_volume_mounts_for_nvidia_and_device_nodes_elsewhere() -> None:
    table = VendorTable()
    assert default_strategies(table["nvidia"]) == ("volume-mounts",)
    for vendor in ("huawei", "hygon", "cambricon"):
        assert default_strategies(table[vendor]) == ("envvar",)
    args = build_parser().parse_args(["device-plugin", "--node-name", "n", "--vendor", "nvidia"])
    assert args.device_list_strategy == ""  # the vendor's default above


async def test_under_envvar_a_pod_that_names_all_gpus_sees_them_all(cluster: Cluster) -> None:
    pod, answer = await allocated_pod(cluster, ("envvar",))
    toolkit = Toolkit()  # the toolkit's defaults
    assert visible_gpus(answer, container(pod, "m"), pod, GPUS, toolkit=toolkit) == own_gpu(pod)
    wide = tampered(pod, "m")
    assert visible_gpus(answer, wide, pod, GPUS, toolkit=toolkit) == set(GPUS)


async def test_under_volume_mounts_the_pods_env_cannot_widen_its_gpus(cluster: Cluster) -> None:
    pod, answer = await allocated_pod(cluster, ("volume-mounts",))
    mine = own_gpu(pod)
    assert visible_gpus(answer, container(pod, "m"), pod, GPUS, toolkit=SAFE_TOOLKIT) == mine
    assert visible_gpus(answer, tampered(pod, "m"), pod, GPUS, toolkit=SAFE_TOOLKIT) == mine
    # A CUDA image's own NVIDIA_VISIBLE_DEVICES=all changes nothing either.
    seen = visible_gpus(
        answer, container(pod, "m"), pod, GPUS, toolkit=SAFE_TOOLKIT, image_env=CUDA_IMAGE
    )
    assert seen == mine
    # The sidecar that asked for nothing: its guard env, or a tampered "all", gets no GPU.
    for side in (container(pod, "s"), tampered(pod, "s")):
        assert (
            visible_gpus(NONE, side, pod, GPUS, toolkit=SAFE_TOOLKIT, image_env=CUDA_IMAGE) == set()
        )
    # Without the toolkit setting, that sidecar would see every GPU: the setting is required.
    assert visible_gpus(
        NONE, tampered(pod, "s"), pod, GPUS, toolkit=Toolkit(accept_volume_mounts=True)
    ) == set(GPUS)


@pytest.mark.parametrize(
    ("strategies", "toolkit", "containerd_cdi"),
    [
        (("cdi-cri",), None, True),  # containerd's own CDI injection, runc
        (("cdi-annotations",), Toolkit(accept_envvar_unprivileged=False, mode="cdi"), False),
    ],
    ids=["cdi-cri", "cdi-annotations"],
)
async def test_under_cdi_the_pods_env_cannot_widen_its_gpus(
    cluster: Cluster,
    strategies: tuple[str, ...],
    toolkit: Toolkit | None,
    containerd_cdi: bool,
) -> None:
    pod, answer = await allocated_pod(cluster, strategies)
    mine = own_gpu(pod)
    for c in (container(pod, "m"), tampered(pod, "m")):
        seen = visible_gpus(answer, c, pod, GPUS, toolkit=toolkit, containerd_cdi=containerd_cdi)
        assert seen == mine
    assert "NVIDIA_VISIBLE_DEVICES" not in answer.envs  # nothing for an env to override


async def test_a_bad_strategy_is_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hcs_cli.main import main

    for vendor, strategy, says in (
        ("nvidia", "envvars", "'envvars' is not one of"),
        ("huawei", "volume-mounts", "volume-mounts is NVIDIA's container runtime's"),
        ("hygon", "cdi-cri", "cdi-cri needs a cdiKind for hygon"),
    ):
        argv = ["device-plugin", "--node-name", "n", "--vendor", vendor]
        assert main([*argv, "--device-list-strategy", strategy]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: InvalidConfig: --device-list-strategy") and says in err


@pytest.mark.parametrize("toolkit", [Toolkit(), SAFE_TOOLKIT], ids=["defaults", "safe"])
def test_the_shipped_nvidia_agent_sees_every_gpu_either_way(toolkit: Toolkit) -> None:
    """It asks for every GPU by mount (read where the pod env is ignored) and by env."""
    import yaml

    from tests.webhook.test_admission import ROOT

    docs = yaml.safe_load_all((ROOT / "manifests" / "agent.yaml").read_text())
    (agent,) = [d for d in docs if d["metadata"]["name"] == "hcs-agent-nvidia"]
    spec = agent["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}

    class Mounts(_NoAnswer):
        """The pod's own volume mounts reach the runtime as OCI mounts too."""

        def __init__(self, c: dict[str, Any]) -> None:
            self.mounts = tuple(
                _Mount(m["mountPath"])
                for m in c.get("volumeMounts") or []
                if volumes[m["name"]].get("hostPath", {}).get("path") == "/dev/null"
            )

    pod = {"metadata": {"annotations": {}}, "spec": spec}
    for c in spec["containers"]:
        assert visible_gpus(Mounts(c), c, pod, GPUS, toolkit=toolkit) == set(GPUS), c["name"]


class _Mount:
    def __init__(self, path: str) -> None:
        self.container_path = path
