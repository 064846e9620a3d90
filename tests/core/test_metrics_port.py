"""`--metrics-port`: the extender and the webhook, started as processes, serve /metrics over
plain HTTP on a port of their own, and only the operational endpoints there."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = str(ROOT / "examples" / "inventory")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str, deadline: float) -> tuple[int, str]:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize(
    ("command", "series"),
    [
        (["extender", "--inventory", INVENTORY], "hcs_node_vram_bytes"),
        (["webhook", "--inventory", INVENTORY], "hcs_webhook_review_seconds"),
    ],
)
def test_metrics_are_served_on_their_own_plain_port(
    command: list[str], series: str, tmp_path: Path
) -> None:
    port, metrics = free_port(), free_port()
    extra = ["--cert-dir", str(tmp_path)] if command[0] == "webhook" else []
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from hcs_cli.main import main; sys.exit(main())",
            *command,
            *extra,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(metrics),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status, text = get(f"http://127.0.0.1:{metrics}/metrics", deadline)
        assert status == 200 and series in text
        assert get(f"http://127.0.0.1:{metrics}/healthz", deadline)[0] == 200
        assert get(f"http://127.0.0.1:{metrics}/readyz", deadline)[0] == 404  # only metrics
    finally:
        process.terminate()
        _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert f"serving hcs-{command[0]}-metrics on http://127.0.0.1:{metrics}" in err


def test_a_port_out_of_range_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from hcs_cli.main import main

    assert main(["extender", "--inventory", INVENTORY, "--metrics-port", "70000"]) == 2
    assert "--metrics-port 70000: expected a port 0-65535" in capsys.readouterr().err
