"""The extender's memory in cluster mode: `hcs extender --kubeconfig` started as a process
against the in-test API server (tests/fake_apiserver.py, real HTTP on loopback) holding
`--nodes` ComputeNodes (hcs.synthetic's mixed four-vendor cluster) and `--pods` bound pods.

Printed: how long until /readyz answers 200 (every ComputeNode and pod listed into the books),
the process's peak resident memory (VmHWM) and its resident memory once ready (VmRSS).
Target (DESIGN §9): <= 300 MB RSS at 50,000 nodes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import free_port, print_row
from device_plugin import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the in-test API server

from hcs.synthetic import node_dict
from tests.fake_apiserver import NODES, PODS, write_kubeconfig
from tests.processes import Started

VENDORS = ("nvidia", "huawei", "hygon", "cambricon")


def _pod(i: int, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"p-{i}",
            "namespace": "bench",
            "uid": f"u-{i}",
            "annotations": {
                "hcs.io/assigned-node": node,
                "hcs.io/assigned-devices": "0",
                "devices.hcs.io/main": "0",
                "hcs.io/request": '{"containers":[{"name":"main","vram":"16Gi"}]}',
            },
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "main", "image": "i", "resources": {"limits": {"ai.compute/vram": "16Gi"}}}
            ],
        },
        "status": {"phase": "Running"},
    }


def _status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def run(n_nodes: int, n_pods: int) -> dict[str, object]:
    server = Server()
    for i in range(n_nodes):
        server.call(server.fake.put, NODES, node_dict(f"node-{i:05d}", VENDORS[i % 4], 8))
    for i in range(n_pods):
        server.call(server.fake.put, PODS, _pod(i, f"node-{i % n_nodes:05d}"))
    folder = Path(tempfile.mkdtemp(prefix="hcs-mem-"))
    kubeconfig = write_kubeconfig(folder / "kubeconfig", server.url)
    port = free_port()
    started = time.perf_counter()
    process = Started("extender", "--kubeconfig", str(kubeconfig), "--port", str(port))
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if process.process.poll() is not None:
                raise RuntimeError(process.stderr)
            time.sleep(0.2)
        ready_s = time.perf_counter() - started
        memory = _status(process.process.pid)
    finally:
        process.stop()
    return {
        "benchmark": "extender, cluster mode",
        "nodes": n_nodes,
        "pods": n_pods,
        "ready after s": round(ready_s, 1),
        "peak RSS MB (VmHWM)": memory["VmHWM"],
        "RSS when ready MB": memory["VmRSS"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--pods", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print_row(run(args.nodes, args.pods), as_json=args.json)


if __name__ == "__main__":
    main()
