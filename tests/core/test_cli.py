import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hcs_cli.main import main

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = str(ROOT / "examples" / "inventory")
PODS = str(ROOT / "examples" / "pods")


def test_simulate_places_the_example_pods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--inventory", INVENTORY, "--pods", PODS, "-o", "json"]) == 0
    rows = {r["pod"]: r for r in json.loads(capsys.readouterr().out)}  # one JSON document
    assert rows["team-a/ascend-inference"]["vendor"] == "huawei"
    assert rows["team-a/llm-finetune"]["node"].startswith("gpu-")
    assert len(rows["team-a/llm-finetune"]["devices"]) == 4
    assert rows["research/mlu-serving"]["vendor"] == "cambricon"
    too_big = rows["team-a/too-big"]
    assert too_big["outcome"].startswith("denied at admission: InsufficientVRAM")
    assert too_big["placed"] is False and too_big["node"] is None and too_big["devices"] == []
    placed = [r for r in rows.values() if r["placed"]]
    assert placed and all(r["outcome"] == "placed" for r in placed)
    taken = [(r["node"], d) for r in placed for d in r["devices"]]
    exclusive = [t for t in taken if not t[0].startswith("gpu-l40s")]
    assert len(exclusive) == len(set(exclusive))  # no exclusive device given twice


def test_json_and_yaml_say_the_same_and_json_is_an_alias(
    capsys: pytest.CaptureFixture[str],
) -> None:
    outputs = {}
    for fmt in (["-o", "json"], ["--json"], ["-o", "yaml"]):
        assert main(["simulate", "--inventory", INVENTORY, "--pods", PODS, *fmt]) == 0
        outputs[" ".join(fmt)] = capsys.readouterr().out
    assert outputs["-o json"] == outputs["--json"]
    assert yaml.safe_load(outputs["-o yaml"]) == json.loads(outputs["-o json"])


def test_simulate_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--inventory", INVENTORY, "--pods", PODS]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["POD", "VENDOR", "NODE", "DEVICES", "SCORE", "OUTCOME"]
    assert "pods placed" in out


def test_explain_lists_every_node_with_its_reason(capsys: pytest.CaptureFixture[str]) -> None:
    pod = str(ROOT / "examples" / "pods" / "01-training.yaml")
    assert main(["explain", "--inventory", INVENTORY, "--pod", pod, "-o", "json"]) == 0
    explained = json.loads(capsys.readouterr().out)  # one document for every pod of the file
    assert len(explained) >= 2 and all(set(e) == {"pod", "nodes"} for e in explained)
    first = {r["node"]: r for r in explained[0]["nodes"]}
    assert first["gpu-t4-01"]["reason"].startswith("NotReady:")
    assert first["dcu-k100-01"]["reason"].startswith("InsufficientTFLOPS:")
    assert first["gpu-a100-01"]["fits"] and first["gpu-a100-01"]["score"] > 0
    assert first["gpu-a100-01"]["max_free_vram"] == "80Gi"  # a quantity, as the API writes it


def test_validate_reports_bad_fields_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = ROOT / "examples" / "reference" / "computenode.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("vram: 80Gi", "vram: 80 GB"))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert 'spec.devices[0].vram: "80 GB" is not a quantity' in out


def test_bad_inventory_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--inventory", str(tmp_path), "--pods", PODS]) == 2
    assert "error: InvalidInventory:" in capsys.readouterr().err


def test_the_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hcs_cli.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("extender", "simulate", "explain", "validate"):
        assert command in out


def _imports(package: str) -> dict[Path, set[str]]:
    """Top-level names each module of `package` imports."""
    found: dict[Path, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[path] = names
    return found


# The layers (STYLE.md): the core is pure; the servers and the node side stand on it and on the
# cluster I/O package, never on each other; the CLI may use everything.
PACKAGES = {"hcs", "cluster", "extender", "webhook", "serving", "certs", "node", "hcs_cli"}
IO_LIBRARIES = {"aiohttp", "grpc", "kubernetes", "urllib3", "prometheus_client", "subprocess"}
FORBIDDEN = {
    "hcs": (PACKAGES - {"hcs"}) | IO_LIBRARIES,
    "cluster": {"extender", "webhook", "serving", "node", "hcs_cli", "aiohttp", "grpc"},
    "extender": {"webhook", "node", "hcs_cli"},
    "webhook": {"extender", "node", "hcs_cli"},
    "node": {"extender", "webhook", "serving", "hcs_cli", "aiohttp"},
    "certs": PACKAGES - {"certs", "hcs"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_is_below_it(package: str) -> None:
    for path, names in _imports(package).items():
        wrong = names & FORBIDDEN[package]
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_core_is_where_the_layer_rule_looks() -> None:
    # The rule above would pass vacuously on an empty or renamed folder, or if imports went
    # unseen: the core's engine is found, and the watches' kubernetes import is.
    assert ROOT / "hcs" / "engine.py" in _imports("hcs")
    assert "kubernetes" in _imports("cluster")[ROOT / "cluster" / "sync.py"]


def test_a_port_in_use_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["extender", "--inventory", INVENTORY, "--port", str(port)])
    err = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]
    assert code == 2 and len(err) == 1  # no traceback: one line, besides the INFO log
    assert err[0].startswith(f"error: InvalidConfig: cannot listen on 127.0.0.1:{port}")
    assert "--port" in err[0]


def test_json_logs_are_one_object_per_line() -> None:
    import logging

    from hcs_cli.options import JsonFormatter

    record = logging.LogRecord(
        "hcs.test", logging.INFO, __file__, 1, "placed pod=%s", ("a/b",), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "INFO" and entry["logger"] == "hcs.test"
    assert entry["message"] == "placed pod=a/b" and entry["time"]


def test_cluster_commands_say_what_they_need(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    assert main(["controller", "--once", "--no-leader-elect"]) == 2
    err = capsys.readouterr().err
    assert "--kubeconfig" in err and "--inventory" not in err
    assert main(["agent", "--node-name", "n1", "--once"]) == 2
    err = capsys.readouterr().err
    assert "--dry-run" in err and "--inventory" not in err


def test_every_flag_says_what_it_does() -> None:
    from hcs_cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices: Any = sub.choices
    for name, command in choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"hcs {name} {action.option_strings[0]} has no help"


def test_validate_takes_folders_and_the_invalid_examples_say_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    assert main(["validate", str(root / "pods"), str(root / "inventory")]) == 0
    capsys.readouterr()
    assert main(["validate", str(root / "invalid")]) == 1
    out = capsys.readouterr().out
    assert "INVALID typo.yaml#1" in out and "did you mean hcs.io/vendor-preference?" in out


def test_a_bind_wait_out_of_range_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["extender", "--inventory", INVENTORY, "--bind-wait", "-1"]) == 2
    assert "--bind-wait -1.0: expected 0-300 seconds" in capsys.readouterr().err
