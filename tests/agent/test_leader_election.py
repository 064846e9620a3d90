"""Two `hcs controller` replicas on one API server, as the manifests run them (2 replicas,
leader-elected on the Lease hcs-system/hcs-controller): exactly one leads and writes; when it
stops, the other takes over once the lease runs out."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hcs.synthetic import quota_dict
from tests.core.test_metrics_port import free_port, get
from tests.fake_apiserver import LEASES, QUOTAS, FakeApiServer, write_kubeconfig

ROOT = Path(__file__).resolve().parents[2]


def leader_flag(port: int) -> int | None:
    try:
        _, text = get(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 1)
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("hcs_controller_leader "):
            return int(float(line.split()[1]))
    return None


async def test_two_controllers_elect_one_leader_and_hand_over(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    fake = FakeApiServer()
    fake.put(QUOTAS, quota_dict({"vram": "100Gi"}))
    server = await aiohttp_server(fake.app())
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")))
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from hcs_cli.main import main; sys.exit(main())",
                *("controller", "--interval", "0.2", "--kubeconfig", str(kubeconfig)),
                *("--lease", "hcs-system/hcs-controller"),
                *("--metrics-host", "127.0.0.1", "--metrics-port", str(port)),
            ],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        deadline = time.monotonic() + 30
        flags: list[int | None] = [None, None]
        while sorted(f for f in flags if f is not None) != [0, 1]:
            assert time.monotonic() < deadline, f"no single leader: {flags}"
            await asyncio.sleep(0.2)
            flags = [await asyncio.to_thread(leader_flag, p) for p in ports]
        leader = flags.index(1)
        holder = fake.objects[LEASES]["hcs-system/hcs-controller"]["spec"]["holderIdentity"]
        assert holder
        # The leader's rounds write the quota's status (the follower's would too, if it ran).
        await asyncio.sleep(0.5)
        assert fake.status_updates >= 1
        procs[leader].send_signal(signal.SIGTERM)
        await asyncio.to_thread(procs[leader].wait, 15)
        other = 1 - leader
        deadline = time.monotonic() + 40  # the lease (15 s) must run out first
        while await asyncio.to_thread(leader_flag, ports[other]) != 1:
            assert time.monotonic() < deadline, "the follower never took over"
            await asyncio.sleep(0.5)
        new = fake.objects[LEASES]["hcs-system/hcs-controller"]["spec"]["holderIdentity"]
        assert new and new != holder
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                await asyncio.to_thread(p.wait, 15)
