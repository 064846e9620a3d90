"""Two `hcs controller` replicas on one API server, as the manifests run them (2 replicas,
leader-elected on the Lease hcs-system/hcs-controller): exactly one leads and writes; when it
stops, the other takes over once the lease runs out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from hcs.synthetic import quota_dict
from tests.core.test_metrics_port import get
from tests.fake_apiserver import LEASES, QUOTAS, FakeApiServer, write_kubeconfig
from tests.processes import Started

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
    procs = [
        Started(
            *("controller", "--interval", "0.2", "--kubeconfig", str(kubeconfig)),
            *("--lease", "hcs-system/hcs-controller"),
            *("--metrics-host", "127.0.0.1", "--metrics-port", "any"),
        )
        for _ in range(2)
    ]
    try:
        ports = [await asyncio.to_thread(p.port, "controller metrics") for p in procs]
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
        while fake.status_updates < 1:
            assert time.monotonic() < deadline, "the leader never wrote the quota's status"
            await asyncio.sleep(0.1)
        code, _ = await asyncio.to_thread(procs[leader].stop)
        assert code == 0
        other = 1 - leader
        deadline = time.monotonic() + 40  # the lease (15 s) must run out first
        while await asyncio.to_thread(leader_flag, ports[other]) != 1:
            assert time.monotonic() < deadline, "the follower never took over"
            await asyncio.sleep(0.5)
        new = fake.objects[LEASES]["hcs-system/hcs-controller"]["spec"]["holderIdentity"]
        assert new and new != holder
    finally:
        for p in procs:
            await asyncio.to_thread(p.stop)
