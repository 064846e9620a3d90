"""The DRA driver's node end: NodePrepareResources and NodeUnprepareResources through the
driver's gRPC socket (`v1.DRAPlugin`), as kubelet calls them, against the in-test API server
(tests/fake_apiserver.py, real HTTP on loopback) holding the claims.

Each timed Prepare reads one claim (GET), writes its CDI spec and answers the ids; each timed
Unprepare removes it. Two shapes: a 2-device Ascend claim (env, device nodes, driver folders)
and a HAMi-core share of one GPU (the limiter's env and mounts, its folder made and removed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from common import percentile, print_row
from device_plugin import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the in-test API server

from hcs.models import ComputeNode
from hcs.synthetic import node_dict
from hcs.vendors import VendorTable
from node.deviceplugin import HamiCore
from node.dra.v1 import api_pb2, api_pb2_grpc
from node.draplugin import DraPlugin, KubeDra, Preparer, SlicePublisher
from tests.fake_apiserver import CLAIMS


def claim(uid: str, node: str, vendor: str, share: bool) -> dict[str, Any]:
    count = 1 if share else 2
    results: list[dict[str, Any]] = [
        {"request": f"main/{vendor}", "driver": "compute.hcs.io", "pool": node, "device": d}
        for d in (f"{vendor}-{i}" for i in range(count))
    ]
    if share:
        results[0] |= {
            "shareID": f"s-{uid}",
            "consumedCapacity": {"vram": "16Gi", "tflops_fp16": "78", "tflops_fp32": "0"},
        }
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": uid, "namespace": "bench", "uid": uid},
        "spec": {"devices": {"requests": [{"name": "main"}]}},
        "status": {"allocation": {"devices": {"results": results}}},
    }


def bench(server: Server, vendor: str, share: bool, calls: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="hcs-dra-", dir="/tmp"))
    node = f"{vendor}-bench"
    raw = node_dict(node, vendor, 8, shared=share, enforcement="hami-core" if share else "none")
    cn = ComputeNode.from_dict(raw)
    hami = None
    if share:
        (root / "vgpu").mkdir()
        (root / "vgpu" / "libvgpu.so").write_bytes(b"\x7fELF")
        hami = HamiCore.prepare(root / "vgpu", root / "state", VendorTable())
    kube = KubeDra(server.api())
    plugin = DraPlugin(
        Preparer(node, VendorTable(), kube, root / "cdi", lambda: cn, hami=hami),
        SlicePublisher(node, kube),
        root / "plugins",
        root / "registry",
    )
    plugin.serve()
    uids = [f"{vendor}-{'share' if share else 'whole'}-{i}" for i in range(calls)]
    for uid in uids:
        server.call(server.fake.put, CLAIMS, claim(uid, node, vendor, share))
    prepare: list[float] = []
    unprepare: list[float] = []
    try:
        with grpc.insecure_channel(f"unix://{plugin.dra_socket}") as channel:
            stub = api_pb2_grpc.DRAPluginStub(channel)
            for uid in uids:
                c = [api_pb2.Claim(namespace="bench", uid=uid, name=uid)]
                t = time.perf_counter()
                answer = stub.NodePrepareResources(
                    api_pb2.NodePrepareResourcesRequest(claims=c), timeout=10
                )
                prepare.append(time.perf_counter() - t)
                assert answer.claims[uid].error == "", answer.claims[uid].error
                t = time.perf_counter()
                stub.NodeUnprepareResources(
                    api_pb2.NodeUnprepareResourcesRequest(claims=c), timeout=10
                )
                unprepare.append(time.perf_counter() - t)
    finally:
        plugin.stop_servers()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": f"dra prepare {vendor} {'share (hami-core)' if share else '2 devices'}",
        "calls": calls,
        "prepare p50 ms": round(percentile(prepare, 0.5) * 1000, 2),
        "prepare p99 ms": round(percentile(prepare, 0.99) * 1000, 2),
        "unprepare p99 ms": round(percentile(unprepare, 0.99) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = Server()
    print_row(bench(server, "huawei", False, args.calls), as_json=args.json)
    print_row(bench(server, "nvidia", True, args.calls), as_json=args.json)


if __name__ == "__main__":
    main()
