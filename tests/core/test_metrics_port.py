"""`--metrics-port`: the extender, the webhook, the controller and the agent, started as
processes, serve /metrics over plain HTTP on a port of their own (the extender and the webhook
only the operational endpoints there)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hcs.synthetic import quota_dict
from tests.fake_apiserver import QUOTAS, FakeApiServer, write_kubeconfig
from tests.processes import Started

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = str(ROOT / "examples" / "inventory")


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
    extra = ["--cert-dir", str(tmp_path)] if command[0] == "webhook" else []
    started = Started(
        *command,
        *extra,
        *("--host", "127.0.0.1", "--port", "0"),
        *("--metrics-host", "127.0.0.1", "--metrics-port", "any"),
    )
    try:
        main = started.port(f"hcs-{command[0]}")
        metrics = started.port(f"hcs-{command[0]}-metrics")
        assert main != metrics and 0 not in (main, metrics)
        deadline = time.monotonic() + 30
        status, text = get(f"http://127.0.0.1:{metrics}/metrics", deadline)
        assert status == 200 and series in text
        assert f'hcs_build_info{{component="{command[0]}"' in text
        assert get(f"http://127.0.0.1:{metrics}/healthz", deadline)[0] == 200
        assert get(f"http://127.0.0.1:{metrics}/readyz", deadline)[0] == 404  # only metrics
    finally:
        code, err = started.stop()
    assert code == 0, err


def test_a_port_out_of_range_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from hcs_cli.main import main

    assert main(["extender", "--inventory", INVENTORY, "--metrics-port", "70000"]) == 2
    assert "--metrics-port 70000: expected a port 0-65535" in capsys.readouterr().err


AGENT_FIX = ROOT / "tests" / "agent" / "fixtures"


@pytest.mark.parametrize(
    ("command", "series"),
    [
        (
            ["controller", "--no-leader-elect"],
            'hcs_quota_vram_hard_bytes{namespace="team-a",quota="q"',
        ),
        (
            [
                "agent",
                "--node-name",
                "gpu-1",
                "--vendor",
                "nvidia",
                "--tool-output",
                f"nvidia-smi={AGENT_FIX / 'nvidia-smi-a100-nounits.csv'}",
                "--tool-output",
                f"nvidia-smi-topo={AGENT_FIX / 'nvidia-smi-topo-a100.txt'}",
            ],
            'hcs_device_health_score{device="0",model="A100-80G",node="gpu-1",vendor="nvidia"}',
        ),
    ],
    ids=["controller", "agent"],
)
async def test_the_controller_and_the_agent_serve_metrics(
    command: list[str], series: str, aiohttp_server: Any, tmp_path: Path
) -> None:
    """They have no HTTP server of their own: --metrics-port starts prometheus_client's."""
    fake = FakeApiServer()
    fake.put(
        QUOTAS,
        quota_dict({"vram": "100Gi"}),
    )
    server = await aiohttp_server(fake.app())
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")))
    started = Started(
        *command,
        *("--interval", "0.2", "--kubeconfig", str(kubeconfig)),
        *("--metrics-host", "127.0.0.1", "--metrics-port", "any"),
    )
    try:
        metrics = await asyncio.to_thread(started.port, f"{command[0]} metrics")
        deadline = time.monotonic() + 30
        text = ""
        while series not in text:  # the first round or discovery fills the series
            assert started.process.poll() is None, started.stderr
            assert time.monotonic() < deadline, text
            status, text = await asyncio.to_thread(
                get, f"http://127.0.0.1:{metrics}/metrics", deadline
            )
            assert status == 200
            await asyncio.sleep(0.1)
        assert f'hcs_build_info{{component="{command[0]}"' in text
    finally:
        code, err = await asyncio.to_thread(started.stop)
    assert code == 0, err  # SIGTERM ends the loop cleanly


def test_a_port_that_is_not_a_number_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from hcs_cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["extender", "--inventory", INVENTORY, "--metrics-port", "nine"])
    assert exit_.value.code == 2
    assert "--metrics-port: 'nine': expected a port 0-65535 or 'any'" in capsys.readouterr().err
