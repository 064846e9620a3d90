"""Bursts onto nodes: from the first scheduling cycle to the last admission.

Pods are created at once and pass through an imitation of kube-scheduler's loop (one scheduling
cycle at a time, asynchronous binds, 1 s to 10 s backoff after a refused bind) against the
extender in cluster mode (HTTP, the in-test API server on loopback), and per node an imitation
of kubelet's device manager admitting pods one after another through `hcs device-plugin`'s
gRPC Allocate (`tests/node/burst.py`, `tests/node/harness.py`).

- 8 one-GPU pods onto one empty 8-GPU node. Target: <= 3 s.
- 64 one-GPU pods onto 8 such nodes. Target: <= 5 s.

Each runs with binds waiting their turn in the node's queue (`--bind-wait`, 10 s) and with the
baseline `--bind-wait 0`: a bind meeting the node's lock is refused and kube-scheduler backs off.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from common import print_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the in-test API server, kubelet

from extender.app import create_app
from hcs.scheduling import BIND_WAIT_S
from tests.fake_apiserver import FakeApiServer
from tests.node.burst import JsonClient, one_gpu_pod, run_burst
from tests.node.harness import SimNode, api_client, cluster_extender, compute_node, put_nodes


async def scenario(n_nodes: int, n_pods: int, bind_wait: float, seed: int) -> dict[str, object]:
    fake = FakeApiServer()
    computes = [compute_node(f"gpu-{i}", "nvidia", 8, vram_gi=80) for i in range(n_nodes)]
    put_nodes(fake, *computes)
    api_server = TestServer(fake.app())
    await api_server.start_server()
    url = str(api_server.make_url("")).rstrip("/")
    service, sync = cluster_extender(url, watch_timeout_s=5)
    service.bind_wait_s = bind_wait
    http: TestClient[Any, Any] = TestClient(TestServer(create_app(service, sync=sync)))
    await http.start_server()
    nodes = [SimNode(c["metadata"]["name"], "nvidia", c, api_client(url)) for c in computes]
    try:
        deadline = time.monotonic() + 30
        while service.state.n_nodes < n_nodes or not sync.readiness()[0]:
            assert time.monotonic() < deadline, "the extender never synced"
            await asyncio.sleep(0.02)
        for node in nodes:
            await asyncio.to_thread(node.start)
        pods = [one_gpu_pod(f"p{i}") for i in range(n_pods)]
        outcome = await run_burst(fake, JsonClient(http), list(nodes), pods, seed=seed, timeout=300)
    finally:
        for node in nodes:
            await asyncio.to_thread(node.close)
        await http.close()
        await api_server.close()
    return {
        "scenario": f"{n_pods} one-GPU pods onto {n_nodes} empty 8-GPU node(s)",
        "bind_wait_s": bind_wait,
        "first_cycle_to_last_admission_s": round(outcome.last_admission_s, 3),
        "refused_binds": len(outcome.refused_binds),
        "scheduling_cycles": outcome.cycles,
        "target_s": 3.0 if n_nodes == 1 else 5.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="kube-scheduler's tie-breaks")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the --bind-wait 0 runs (slow: backoff)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    waits = [BIND_WAIT_S] if args.no_baseline else [BIND_WAIT_S, 0.0]
    for n_nodes, n_pods in ((1, 8), (8, 64)):
        for wait in waits:
            row = asyncio.run(scenario(n_nodes, n_pods, wait, args.seed))
            print_row(row, as_json=args.json)


if __name__ == "__main__":
    main()
