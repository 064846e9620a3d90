"""`hcs validate` catches what an operator types wrong: unknown keys in a pod's resources,
bad pod templates of workloads (built-in and other projects'), empty or scalar files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hcs_cli.main import main


def write(tmp_path: Path, name: str, *docs: object) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs) if docs else "")
    return str(path)


def container(resources: dict[str, object]) -> dict[str, object]:
    return {"name": "main", "image": "i", "resources": resources}


def template(resources: dict[str, object]) -> dict[str, object]:
    return {"spec": {"containers": [container(resources)]}}


def validate(capsys: pytest.CaptureFixture[str], *files: str) -> tuple[int, str]:
    code = main(["validate", *files])
    return code, capsys.readouterr().out


def test_a_misspelt_resources_key_is_named_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [container({"requets": {"ai.compute/vram": "16Gi"}})]},
    }
    code, out = validate(capsys, write(tmp_path, "pod.yaml", pod))
    assert code == 1
    assert "spec.containers[main].resources.requets: unknown key (did you mean requests?)" in out


@pytest.mark.parametrize(
    ("kind", "spec", "where"),
    [
        ("Deployment", {"replicas": 2, "template": None}, "spec.template"),
        ("StatefulSet", {"template": None}, "spec.template"),
        ("DaemonSet", {"template": None}, "spec.template"),
        ("ReplicaSet", {"template": None}, "spec.template"),
        ("Job", {"template": None}, "spec.template"),
        (
            "CronJob",
            {"jobTemplate": {"spec": {"template": None}}},
            "spec.jobTemplate.spec.template",
        ),
        (
            "PyTorchJob",
            {"pytorchReplicaSpecs": {"Worker": {"template": None}}},
            "spec.pytorchReplicaSpecs.Worker.template",
        ),
        (
            "RayCluster",
            {"workerGroupSpecs": [{"template": None}]},
            "spec.workerGroupSpecs[0].template",
        ),
    ],
)
def test_workload_templates_are_validated_not_skipped(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    spec: dict[str, object],
    where: str,
) -> None:
    def filled(resources: dict[str, object]) -> Any:
        """`spec` with each `template: None` replaced by a pod template asking `resources`."""

        def fill(value: Any) -> Any:
            if isinstance(value, dict):
                return {
                    k: template(resources) if k == "template" else fill(v) for k, v in value.items()
                }
            if isinstance(value, list):
                return [fill(v) for v in value]
            return value

        return fill(spec)

    good = {
        "kind": kind,
        "metadata": {"name": "w"},
        "spec": filled({"limits": {"ai.compute/vram": "8Gi"}}),
    }
    bad = {
        "kind": kind,
        "metadata": {"name": "w"},
        "spec": filled({"limits": {"ai.compute/vrm": "8Gi"}}),
    }
    code, out = validate(capsys, write(tmp_path, "good.yaml", good))
    assert code == 0 and f"ok      good.yaml#1: {kind}" in out, out
    code, out = validate(capsys, write(tmp_path, "bad.yaml", bad))
    assert code == 1, out
    assert f"{where}: InvalidRequest:" in out and "did you mean ai.compute/vram?" in out, out


def test_a_workload_without_a_template_is_invalid_and_other_kinds_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}
    config = {"kind": "ConfigMap", "metadata": {"name": "c"}}
    code, out = validate(capsys, write(tmp_path, "w.yaml", empty, config))
    assert code == 1
    assert "no pod template (spec.template)" in out
    assert "skipped w.yaml#2: ConfigMap" in out


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "empty (no YAML document)"), ("hello\n", "got str"), ("3\n", "got int")],
)
def test_empty_and_scalar_files_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    code, out = validate(capsys, str(path))
    assert code == 1 and words in out, out
