"""Webhook over TLS: AdmissionReviews with keep-alive against a 5,000-node inventory.

A server process runs the webhook (local mode, a synthetic N-node x 8-device inventory, a
ComputeQuota in the namespace, certificates made by `hcs certs`); this process sends
AdmissionReviews for new pods (each with its own uid, as the API server sends them) over one
keep-alive TLS connection that verifies the CA and the service name, and prints p50 / p99 and
reviews per second. Target (DESIGN §9): p99 <= 3 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from common import free_port, print_row, wait_for_port

SHAPES: tuple[tuple[dict[str, str], dict[str, str]], ...] = (
    ({"ai.compute/vram": "24Gi"}, {}),
    (
        {"ai.compute/vram": "160Gi", "ai.compute/devices": "4", "ai.compute/tflops-fp16": "800"},
        {"hcs.io/topology-preference": "high-bandwidth"},
    ),
    ({"ai.compute/vram": "40Gi"}, {"hcs.io/vendor-preference": "huawei,nvidia"}),
)


def _review(i: int) -> bytes:
    requests, annotations = SHAPES[i % len(SHAPES)]
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": f"bench-{i}",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "bench",
                "operation": "CREATE",
                "dryRun": False,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "generateName": "bench-",
                        "namespace": "bench",
                        "labels": {"app": "bench"},
                        "annotations": annotations,
                    },
                    "spec": {
                        "schedulerName": "default-scheduler",
                        "containers": [
                            {
                                "name": "main",
                                "image": "pytorch:2.4",
                                "resources": {"requests": requests, "limits": requests},
                            },
                            {"name": "sidecar", "image": "envoy:1.30"},
                        ],
                    },
                },
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        }
    )


def _serve(port: int, n_nodes: int, cert_dir: str, ready: Any) -> None:
    import gc
    import logging

    from certs import issue
    from hcs.admission import AdmissionContext
    from hcs.models import ComputeQuota
    from hcs.quota import QuotaBook
    from hcs.state import ClusterState
    from hcs.synthetic import random_cluster
    from serving import serve_apps
    from webhook.app import create_app, ssl_context

    logging.basicConfig(level=logging.WARNING)
    certs = issue(cert_dir)
    state = ClusterState.from_nodes(random_cluster(n_nodes, 7))
    quota = ComputeQuota.from_dict(
        {
            "apiVersion": "hcs.io/v1alpha1",
            "kind": "ComputeQuota",
            "metadata": {"name": "bench", "namespace": "bench"},
            "spec": {"hard": {"vram": "1000000Ti", "devices": "100000000"}},
        }
    )
    context = AdmissionContext(
        state, QuotaBook({("bench", "bench"): quota}), scheduler_name="hcs-scheduler"
    )
    gc.collect()
    gc.freeze()
    ready.set()
    serve_apps([(create_app(context), "127.0.0.1", port, ssl_context(certs))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import http.client

    port = free_port()
    with tempfile.TemporaryDirectory() as cert_dir:
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        server = ctx.Process(target=_serve, args=(port, args.nodes, cert_dir, ready), daemon=True)
        server.start()
        try:
            if not ready.wait(600):
                print("server did not start", file=sys.stderr)
                return 1
            wait_for_port(port)
            tls = ssl.create_default_context(cafile=str(Path(cert_dir) / "ca.crt"))
            conn = http.client.HTTPSConnection("localhost", port, context=tls)
            headers = {"Content-Type": "application/json"}
            bodies = [_review(i) for i in range(args.iterations + 50)]
            samples: list[float] = []
            denied = 0
            start = time.perf_counter()
            for i, body in enumerate(bodies):
                t0 = time.perf_counter()
                conn.request("POST", "/mutate?timeout=5s", body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                elapsed = time.perf_counter() - t0
                if i < 50:  # warm-up (TLS handshake, first requests)
                    start = time.perf_counter()
                    continue
                samples.append(elapsed * 1e3)
                if resp.status != 200 or not orjson.loads(payload)["response"]["allowed"]:
                    denied += 1
            total = time.perf_counter() - start
            conn.close()
        finally:
            server.terminate()
            server.join(10)
    ordered = sorted(samples)
    row = {
        "nodes": args.nodes,
        "reviews": len(samples),
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(ordered[int(0.99 * len(ordered))], 3),
        "reviews_per_s": round(len(samples) / total),
        "denied": denied,
    }
    print_row(row, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
