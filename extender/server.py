"""Start the extender: load the state, build the app, serve until stopped."""

from __future__ import annotations

import gc
import logging

from cluster.sync import ClusterSync, KubeBinder, load_api
from extender.app import DEFAULT_MAX_BODY, create_app
from hcs.engine import EngineConfig
from hcs.inventory import load_inventory
from hcs.nodelock import LOCK_NAMESPACE
from hcs.scheduling import SchedulerService
from hcs.state import ClusterState
from hcs.vendors import VendorTable
from serving import serve_apps, with_metrics

log = logging.getLogger("hcs.extender")


def local_service(inventory: str, config: EngineConfig, vendors: VendorTable) -> SchedulerService:
    """Local mode: ComputeNodes from a folder, allocations in memory."""
    inv = load_inventory(inventory)
    for warning in inv.warnings:
        log.warning("%s", warning)
    state = ClusterState.from_nodes(inv.nodes.values(), vendors)
    log.info("local inventory %s: %d nodes, %d devices", inventory, state.n_nodes, state.n_devices)
    return SchedulerService(state, config, vendors)


def cluster_service(
    config: EngineConfig,
    vendors: VendorTable,
    kubeconfig: str | None,
    *,
    stale_after_s: float = 120.0,
    lock_namespace: str = LOCK_NAMESPACE,
) -> tuple[SchedulerService, ClusterSync]:
    """Cluster mode: ComputeNodes and Pods watched through the API server, Bindings created
    (after taking the node's lock, a Lease in `lock_namespace`)."""
    api = load_api(kubeconfig)
    service = SchedulerService(
        # The arrays only: no ComputeNode object is kept (hcs.state.ClusterState.keep_nodes).
        ClusterState(vendors=vendors, keep_nodes=False),
        config,
        vendors,
        binder=KubeBinder(api, lock_namespace),
    )
    return service, ClusterSync(service, api, stale_after_s=stale_after_s)


def serve(
    service: SchedulerService,
    host: str,
    port: int,
    *,
    sync: ClusterSync | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    shutdown_timeout: float = 10.0,
    metrics: tuple[str, int | None] = ("0.0.0.0", None),
) -> None:
    # The inventory's model objects live as long as the process: keep the cyclic GC off them,
    # so collections triggered by per-request garbage stay short.
    gc.collect()
    gc.freeze()
    app = create_app(service, max_body=max_body, sync=sync)
    mode = "cluster mode" if sync else "local mode"
    log.info("extender starting on http://%s:%d (%s)", host, port, mode)
    serve_apps(with_metrics((app, host, port, None), *metrics), shutdown_timeout=shutdown_timeout)
