"""`kubectl hcs` against the in-test API server: top nodes and quota, explain a pending pod,
simulate on the live books; its calls are exactly the hcs-viewer ClusterRole; it runs as a
kubectl plugin."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes import client

from hcs.synthetic import node_dict, quota_dict
from hcs_cli.kubectl import main
from tests.fake_apiserver import NODES, PODS, QUOTAS, FakeApiServer, write_kubeconfig
from tests.manifests.test_rbac import granted, used

MakeServer = Callable[[web.Application], Awaitable[TestServer]]
API = client.ApiClient()


def now(offset: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


def pod(
    name: str,
    requests: dict[str, str],
    *,
    namespace: str = "team-a",
    node: str | None = None,
    annotations: dict[str, str] | None = None,
    containers: int = 1,
) -> dict[str, Any]:
    obj = client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=client.V1ObjectMeta(
            name=name, namespace=namespace, uid=f"uid-{name}", annotations=annotations
        ),
        spec=client.V1PodSpec(
            node_name=node,
            containers=[
                client.V1Container(
                    name=f"c{i}",
                    image="img",
                    resources=client.V1ResourceRequirements(requests=requests, limits=requests),
                )
                for i in range(containers)
            ],
        ),
        status=client.V1PodStatus(phase="Running" if node else "Pending"),
    )
    result: dict[str, Any] = API.sanitize_for_serialization(obj)
    return result


def quota(name: str, namespace: str, hard: dict[str, str], used: dict[str, str] | None) -> Any:
    obj = quota_dict(hard, name=name, namespace=namespace, used=used)
    if used is not None:
        obj["status"]["hard"] = hard
    return obj


def cluster() -> FakeApiServer:
    """gpu-1: 8 x 80Gi, two taken by a pod HCS placed; gpu-2: its agent went silent; npu-1:
    8 x 64Gi, one taken by a pod another scheduler placed (no HCS assignment)."""
    fake = FakeApiServer()
    # GPU 7 has 16Gi in use by a process HCS did not place (the tool reports it).
    used = [0] * 7 + [16]
    fake.put(NODES, node_dict("gpu-1", "nvidia", 8, vram_gi=80, heartbeat=now(), allocated_gi=used))
    fake.put(
        NODES,
        node_dict(
            "gpu-2",
            "nvidia",
            4,
            vram_gi=80,
            heartbeat=now(-600),
            shared=True,
            enforcement="hami-core",
        ),
    )
    fake.put(NODES, node_dict("npu-1", "huawei", 8, vram_gi=64, heartbeat=now()))
    fake.put(
        PODS,
        pod(
            "running",
            {"ai.compute/devices": "2"},
            node="gpu-1",
            annotations={
                "hcs.io/assigned-vendor": "nvidia",
                "hcs.io/assigned-node": "gpu-1",
                "hcs.io/assigned-devices": "0,1",
            },
        ),
    )
    fake.put(PODS, pod("elsewhere", {"huawei.com/Ascend910": "1"}, node="npu-1", namespace="x"))
    fake.put(
        PODS,
        pod(
            "big",
            {"ai.compute/devices": "7"},
            annotations={"hcs.io/assigned-vendor": "nvidia"},
        ),
    )
    fake.put(
        QUOTAS,
        quota(
            "gpus", "team-a", {"vram": "200Gi", "devices": "4"}, {"vram": "160Gi", "devices": "2"}
        ),
    )
    fake.put(QUOTAS, quota("fresh", "team-b", {"devices": "8"}, None))
    return fake


@pytest.fixture(autouse=True)
def _keep_client_default() -> Iterator[None]:
    """The plugin loads its kubeconfig as the client's default, as kubectl would in its own
    process; put the test process's default back."""
    saved = client.Configuration.get_default_copy()
    yield
    client.Configuration.set_default(saved)


async def serve(make_server: MakeServer, fake: FakeApiServer, tmp_path: Path) -> Path:
    server = await make_server(fake.app())
    return write_kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")), "team-a")


async def run(
    capsys: pytest.CaptureFixture[str], kubeconfig: Path, *argv: str
) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, [*argv, "--kubeconfig", str(kubeconfig)])
    out, err = capsys.readouterr()
    return code, out, err


def columns(line: str, header: str, names: list[str]) -> list[str]:
    """Cells of an aligned table row, cut where each header name starts."""
    starts: list[int | None] = []
    for n in names:
        found = re.search(rf"(?<!\S){re.escape(n)}(?!\S)", header)
        assert found, f"no column {n} in {header!r}"
        starts.append(found.start())
    return [line[a:b].strip() for a, b in itertools.pairwise([*starts, None])]


async def test_top_nodes_shows_used_and_free_per_node_and_vendor(
    aiohttp_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = await serve(aiohttp_server, cluster(), tmp_path)
    code, out, _ = await run(capsys, kubeconfig, "top", "nodes", "-o", "json")
    assert code == 0
    doc = json.loads(out)
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert nodes["gpu-1"]["status"] == "Ready"
    assert nodes["gpu-1"]["devices"] == {"total": 8, "used": 2, "unhealthy": 0}
    assert nodes["gpu-1"]["vram"] == {
        "allocatable": "640Gi",
        "allocated": "160Gi",
        "free": "464Gi",
        "other": "16Gi",  # used outside HCS: allocated + free + other = allocatable
    }
    assert nodes["gpu-2"]["status"] == "AgentNotConnected"  # heartbeat 10 minutes old
    # The pod another scheduler placed holds one whole Ascend device, as the extender counts it.
    assert nodes["npu-1"]["devices"]["used"] == 1
    assert nodes["npu-1"]["vram"]["free"] == "448Gi"
    vendors = {v["name"]: v for v in doc["vendors"]}
    assert vendors["nvidia"]["devices"] == {"total": 12, "used": 2, "unhealthy": 0}
    assert vendors["nvidia"]["status"] == "1/2 nodes ready"
    assert vendors["huawei"]["vram"]["allocatable"] == "512Gi"

    code, out, _ = await run(capsys, kubeconfig, "top", "nodes")
    assert code == 0
    nodes_table, vendor_table = out.strip().split("\n\n")
    header, *rows = nodes_table.splitlines()
    names = [
        *("NAME", "VENDOR", "STATUS", "SHARING", "DEVICES", "UNHEALTHY"),
        *("VRAM-USED", "VRAM-FREE", "VRAM-OTHER", "VRAM", "FP16-USED", "FP16-FREE"),
    ]
    cells = {r.split()[0]: columns(r, header, names) for r in rows}
    # Two A100s of 312 dense FP16 TFLOPS each are taken, six are free.
    assert cells["gpu-1"] == [
        *("gpu-1", "nvidia", "Ready", "exclusive", "2/8", "0"),
        *("160Gi", "464Gi", "16Gi", "640Gi", "624", "1872"),
    ]
    assert cells["gpu-2"][3] == "shared (hami-core)"  # how its shares are kept
    assert cells["npu-1"][4] == "1/8"
    vheader, *vrows = vendor_table.splitlines()
    assert vheader.split()[:3] == ["VENDOR", "NODES", "DEVICES"]
    assert [r.split()[:2] for r in vrows] == [["nvidia", "1/2"], ["huawei", "1/1"]]

    code, out, _ = await run(capsys, kubeconfig, "top", "nodes", "--vendor", "huawei", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert [n["name"] for n in doc["nodes"]] == ["npu-1"]
    assert [v["name"] for v in doc["vendors"]] == ["huawei"]


async def test_top_quota_shows_used_against_hard(
    aiohttp_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = cluster()
    kubeconfig = await serve(aiohttp_server, fake, tmp_path)
    code, out, _ = await run(capsys, kubeconfig, "top", "quota")  # the context's namespace
    assert code == 0
    header, *rows = out.strip().splitlines()
    names = ["NAMESPACE", "NAME", "RESOURCE", "USED", "HARD", "USE"]
    assert [columns(r, header, names) for r in rows] == [
        ["team-a", "gpus", "ai.compute/vram", "160Gi", "200Gi", "80%"],
        ["team-a", "gpus", "ai.compute/devices", "2", "4", "50%"],
    ]
    assert fake.calls[-1][1] == "/apis/hcs.io/v1alpha1/namespaces/team-a/computequotas"

    code, out, _ = await run(capsys, kubeconfig, "top", "quota", "-A", "-o", "yaml")
    rows = yaml.safe_load(out)
    fresh = next(r for r in rows if r["namespace"] == "team-b")
    assert fresh == {
        "namespace": "team-b",
        "name": "fresh",
        "resource": "ai.compute/devices",
        "hard": "8",
        "used": None,
        "percent": None,
    }
    code, out, _ = await run(capsys, kubeconfig, "top", "quota", "-n", "nobody")
    assert code == 0 and out.strip() == "No ComputeQuotas in this namespace"


async def test_explain_says_why_a_pod_is_pending_from_the_live_books(
    aiohttp_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = cluster()
    kubeconfig = await serve(aiohttp_server, fake, tmp_path)
    code, out, _ = await run(capsys, kubeconfig, "explain", "pod", "big")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Pod team-a/big: Pending, waiting for a node"
    assert "c0: 7 device(s) on nvidia" in lines[1]
    header = next(line for line in lines if line.startswith("NODE"))
    table = {line.split()[0]: line for line in lines[lines.index(header) + 1 :] if line.strip()}
    # gpu-1 has six free devices (two are the running pod's); gpu-2's agent is silent.
    assert "InsufficientDevices: fewer than 7 free devices" in table["gpu-1"]
    cells = columns(
        table["gpu-1"], header, ["NODE", "FITS", "SCORE", "DEVICES", "FREE", "HEALTHY-FREE"]
    )
    assert cells[1:5] == ["no", "0", "8", "6"]
    assert "AgentNotConnected" in table["gpu-2"]
    assert "VendorNotSupported" in table["npu-1"]
    assert lines[-1] == (
        "0 of 3 nodes fit now: 1 InsufficientDevices, 1 AgentNotConnected, 1 VendorNotSupported"
    )

    # The running pod ends: the same question now has an answer, from the live books.
    fake.delete(PODS, "team-a/running")
    code, out, _ = await run(capsys, kubeconfig, "explain", "pod", "team-a/big", "-o", "json")
    doc = json.loads(out)
    assert doc["state"] == "pending" and doc["vendor"] == "nvidia"
    assert [n["node"] for n in doc["nodes"] if n["fits"]] == ["gpu-1"]
    assert doc["verdict"].startswith("1 of 3 nodes fit now (best: gpu-1")

    code, _, err = await run(capsys, kubeconfig, "explain", "pod", "team-a/nope")
    assert code == 2 and err.strip() == "error: InvalidConfig: pod team-a/nope: not found"


async def test_explain_a_bound_pod_says_where_it_is(
    aiohttp_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = await serve(aiohttp_server, cluster(), tmp_path)
    code, out, _ = await run(capsys, kubeconfig, "explain", "pod", "team-a/running")
    assert code == 0
    assert out.splitlines()[0] == "Pod team-a/running: Running, bound to gpu-1 (0,1)"
    assert "NODE" not in out  # nothing to explain node by node


async def test_simulate_places_pods_on_the_live_books_and_writes_nothing(
    aiohttp_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = cluster()
    kubeconfig = await serve(aiohttp_server, fake, tmp_path)
    pods = tmp_path / "pods.yaml"
    pods.write_text(
        yaml.safe_dump_all(
            [
                pod("six", {"ai.compute/devices": "6"}),
                pod("one-more", {"ai.compute/devices": "1"}),
            ]
        )
    )
    code, out, _ = await run(capsys, kubeconfig, "simulate", "-f", str(pods), "-o", "json")
    assert code == 0
    rows = {r["pod"]: r for r in json.loads(out)}
    # gpu-1's six free devices (0 and 1 are taken), then only npu-1 is left for the next pod.
    assert rows["team-a/six"]["node"] == "gpu-1"
    assert sorted(rows["team-a/six"]["devices"]) == [str(i) for i in range(2, 8)]
    assert rows["team-a/one-more"]["node"] == "npu-1"
    assert rows["team-a/one-more"]["vendor"] == "huawei"
    writes = [c for c in fake.calls if c[0] != "GET"]
    assert writes == [] and fake.bindings == []

    code, _, err = await run(capsys, kubeconfig, "simulate", "-f", str(tmp_path / "none.yaml"))
    assert code == 2 and "-f " in err and "no such file" in err


async def test_the_plugin_calls_exactly_what_the_viewer_role_grants(
    aiohttp_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = cluster()
    kubeconfig = await serve(aiohttp_server, fake, tmp_path)
    pods = tmp_path / "p.yaml"
    pods.write_text(yaml.safe_dump(pod("x", {"ai.compute/devices": "1"})))
    for argv in (
        ["top", "nodes"],
        ["top", "quota"],
        ["top", "quota", "-A"],
        ["explain", "pod", "big"],
        ["simulate", "-f", str(pods)],
    ):
        code, _, err = await run(capsys, kubeconfig, *argv)
        assert code == 0, err
    assert used(fake.calls) == granted("hcs-viewer")


async def test_an_unreachable_cluster_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    code, out, err = await run(capsys, kubeconfig, "top", "nodes")
    assert code == 1 and out == ""
    assert err.startswith("error: cannot reach the API server at http://127.0.0.1:9")
    assert len(err.strip().splitlines()) == 1


async def test_a_cluster_without_the_crds_says_so(
    aiohttp_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await aiohttp_server(web.Application())  # answers 404 to everything
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")))
    for argv, plural in ((["top", "nodes"], "computenodes"), (["top", "quota"], "computequotas")):
        code, out, err = await run(capsys, kubeconfig, *argv)
        assert code == 2 and out == ""
        assert err.strip() == (
            f"error: InvalidConfig: the cluster does not serve {plural}.hcs.io: are HCS's CRDs "
            "installed? (kubectl apply -k manifests/)"
        )


async def test_kubectl_runs_it_as_a_plugin(aiohttp_server: MakeServer, tmp_path: Path) -> None:
    """`kubectl hcs` finds the console script on PATH (where kubectl is installed; else the
    console script itself, which is what kubectl would run)."""
    kubeconfig = await serve(aiohttp_server, cluster(), tmp_path)
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "kubectl-hcs").exists()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["KUBECONFIG"] = str(kubeconfig)
    kubectl = shutil.which("kubectl", path=env["PATH"])
    command = [kubectl, "hcs"] if kubectl else [str(bin_dir / "kubectl-hcs")]
    proc = await asyncio.create_subprocess_exec(
        *command,
        "top",
        "nodes",
        "-o",
        "json",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert [n["name"] for n in json.loads(out)["nodes"]] == ["gpu-1", "gpu-2", "npu-1"]
