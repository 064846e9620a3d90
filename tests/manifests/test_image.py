"""The Dockerfile installs exactly the package the manifests run: the `hcs` console script as
the entrypoint, built from every package pyproject ships, as the user the manifests expect."""

from __future__ import annotations

import fnmatch
import shlex
import tomllib
from pathlib import Path
from typing import Any

from tests.manifests.test_workloads import pod_specs

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per Dockerfile instruction, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            out.append([])
        out[-1].append((word, rest))
    return out


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_entrypoint_is_the_console_script_the_manifests_call() -> None:
    runtime = stages()[-1]
    entry = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert entry == ['["hcs"]']
    assert pyproject()["project"]["scripts"]["hcs"] == "hcs_cli.main:main"
    images = {c["image"] for _, spec in pod_specs() for c in spec["containers"]}
    assert "hcs" in images  # the name kustomization maps to the built image


def test_the_build_copies_every_shipped_package_and_nothing_is_ignored() -> None:
    build = stages()[0]
    copied = {src for word, rest in build if word == "COPY" for src in shlex.split(rest)[:-1]}
    shipped = {
        p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert shipped <= copied, (
        f"packages pyproject ships but the image does not copy: {shipped - copied}"
    )
    assert {"pyproject.toml", "README.md", "LICENSE"} <= copied  # the build reads all three
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()
    ]
    for src in copied:
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), src
        assert (ROOT / src).exists(), src


def test_the_runtime_installs_the_project_with_extras_it_declares() -> None:
    runtime = stages()[-1]
    installs = [rest for word, rest in runtime if word == "RUN" and "pip install" in rest]
    assert len(installs) == 1
    words = shlex.split(installs[0])
    project = pyproject()["project"]
    wanted = [w for w in words if w.split("[")[0] == project["name"]]
    assert len(wanted) == 1, words
    extras = wanted[0].partition("[")[2].rstrip("]").split(",")
    assert set(extras) <= set(project["optional-dependencies"]) - {"dev"}
    assert "--no-index" in words  # only the wheels built from this tree


def test_the_runtime_matches_the_manifests_user_and_python() -> None:
    runtime = stages()[-1]
    base = runtime[0][1]
    minor = pyproject()["project"]["requires-python"].removeprefix(">=")
    assert base.startswith(f"python:{minor}"), base  # the probes run `python -c`
    assert [rest for word, rest in runtime if word == "USER"] == ["65532:65532"]
    for name, spec in pod_specs():
        for c in spec["containers"]:
            if c["image"] != "hcs":
                continue
            user = c["securityContext"].get(
                "runAsUser", spec.get("securityContext", {}).get("runAsUser")
            )
            assert user in (65532, 0), name  # 0 only where the manifests say why
            for probe in ("livenessProbe", "readinessProbe"):
                command = (c.get(probe) or {}).get("exec", {}).get("command")
                if command:
                    assert command[0] == "python", (name, probe)
