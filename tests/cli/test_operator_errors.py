"""The error paths an operator meets in the second hour, run as real processes: one line naming
the file or flag, never a traceback; output piped into `head` ends quietly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from hcs.synthetic import node_dict
from tests.fake_apiserver import NODES, FakeApiServer, write_kubeconfig
from tests.processes import ROOT

MakeServer = Callable[[web.Application], Awaitable[TestServer]]
HCS = "import sys; from hcs_cli.main import main; sys.exit(main())"
KUBECTL_HCS = "import sys; from hcs_cli.kubectl import main; sys.exit(main())"


def run(program: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("out", ["/dev/null/x", "/proc/hcs-certs", "FILE"])
def test_certs_out_that_cannot_be_a_folder_is_one_line(tmp_path: Path, out: str) -> None:
    if out == "FILE":
        out = str(tmp_path / "a-file")
        Path(out).write_text("x")
    one_line(run(HCS, "certs", "--out", out), f"--out {out}", "cannot write")


@pytest.fixture
def kubeconfigs(tmp_path: Path) -> dict[str, Path]:
    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(256)) * 4)
    broken = tmp_path / "broken"
    broken.write_text("clusters: [ {name: a\n")
    return {"binary": binary, "broken": broken, "missing": tmp_path / "missing"}


@pytest.mark.parametrize("kind", ["binary", "broken", "missing"])
@pytest.mark.parametrize(
    "program",
    [(HCS, "extender"), (HCS, "controller"), (KUBECTL_HCS, "top", "nodes")],
    ids=["hcs-extender", "hcs-controller", "kubectl-hcs"],
)
def test_a_bad_kubeconfig_is_one_line_naming_it(
    kubeconfigs: dict[str, Path], kind: str, program: tuple[str, ...]
) -> None:
    path = kubeconfigs[kind]
    done = run(program[0], *program[1:], "--kubeconfig", str(path))
    why = {"binary": "not a kubeconfig", "broken": "not a kubeconfig", "missing": "no such file"}
    one_line(done, f"kubeconfig {path}", why[kind])


def test_no_kubeconfig_anywhere_names_where_it_looked(tmp_path: Path) -> None:
    env_path = tmp_path / "nowhere" / "config"
    done = subprocess.run(
        [sys.executable, "-c", KUBECTL_HCS, "top", "nodes"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        env={"KUBECONFIG": str(env_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    one_line(done, f"kubeconfig {env_path}: no such file", "KUBECONFIG")


def read_one_line_then_close(program: str, *args: str) -> tuple[int, str, str]:
    """What `… | head -1` does: read a line, close the pipe, let the writer finish."""
    proc = subprocess.Popen(
        [sys.executable, "-c", program, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=120), first, err


def test_hcs_simulate_into_head_ends_quietly(tmp_path: Path) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "many", "namespace": "ml"},
        "spec": {
            "replicas": 3000,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "i",
                            "resources": {"limits": {"ai.compute/vram": "1Gi"}},
                        }
                    ]
                }
            },
        },
    }
    pods = tmp_path / "many.yaml"
    pods.write_text(yaml.safe_dump(deployment))
    for fmt in ([], ["--json"]):
        code, first, err = read_one_line_then_close(
            HCS, "simulate", "--inventory", "examples/inventory", "--pods", str(pods), *fmt
        )
        assert first, err
        assert code == 0 and err == "", (code, err)


async def test_kubectl_hcs_into_head_ends_quietly(
    aiohttp_server: MakeServer, tmp_path: Path
) -> None:
    fake = FakeApiServer()
    for i in range(1500):
        fake.put(NODES, node_dict(f"node-{i:05d}", "nvidia", 8))
    server = await aiohttp_server(fake.app())
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")))
    args: tuple[Any, ...] = ("top", "nodes", "-o", "json", "--kubeconfig", str(kubeconfig))
    code, first, err = await asyncio.to_thread(read_one_line_then_close, KUBECTL_HCS, *args)
    assert first, err
    assert code == 0 and err == "", (code, err)
    assert "Broken pipe" not in err and "cannot reach" not in err
