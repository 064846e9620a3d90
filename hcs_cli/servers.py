"""`hcs extender`, `hcs webhook` and `hcs serve`: the two servers, alone or together."""

from __future__ import annotations

import argparse
import gc
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from hcs.admission import AdmissionContext, Quotas
from hcs.engine import EngineConfig
from hcs.errors import ConfigError
from hcs.inventory import load_inventory
from hcs.quota import QuotaBook
from hcs.scheduling import BIND_WAIT_S, SchedulerService
from hcs.state import ClusterState
from hcs.vendors import VendorTable
from hcs_cli.options import (
    cluster_args,
    configure_logging,
    engine_args,
    lock_namespace_option,
    log_args,
    metrics,
    metrics_args,
    webhook_args,
)


def add_parsers(sub: Any) -> None:
    """The server commands."""
    p = sub.add_parser(
        "extender",
        help="run the kube-scheduler extender (HTTP)",
        description="Serve POST /filter, /prioritize, /bind, /preempt and GET /healthz, "
        "/readyz, /metrics, /version for kube-scheduler. With --inventory: local mode "
        "(allocations kept in memory); without: cluster mode (watches ComputeNodes and Pods, "
        "creates Bindings).",
    )
    engine_args(p, json_flag=False, cluster=True)
    cluster_args(p)
    lock_namespace_option(p)
    p.add_argument(
        "--bind-wait",
        type=float,
        default=BIND_WAIT_S,
        metavar="SECONDS",
        help="cluster mode: a bind for a node whose lock another pod holds waits its turn in "
        "the node's FIFO queue this long at most, then answers NodeAdmitting (keep it below "
        "kube-scheduler's extender httpTimeout; default %(default)s)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=8888, help="port; 0: a free one, logged (default %(default)s)"
    )
    metrics_args(p)
    p.add_argument(
        "--max-body-mb",
        type=int,
        default=256,
        metavar="MB",
        help="largest request body accepted (default %(default)s)",
    )
    log_args(p)
    p.set_defaults(run=run_extender)
    p = sub.add_parser(
        "webhook",
        help="run the mutating admission webhook (HTTPS)",
        description="Serve POST /mutate (AdmissionReview v1) and GET /healthz, /readyz, "
        "/metrics, /version over TLS. With --inventory: local mode (quota charges in memory); "
        "without: cluster mode (watches ComputeNodes, ComputeQuotas and Pods; charges "
        "ComputeQuota status with compare-and-swap).",
    )
    engine_args(p, json_flag=False, cluster=True)
    cluster_args(p)
    webhook_args(p)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=8443, help="port; 0: a free one, logged (default %(default)s)"
    )
    metrics_args(p)
    p.set_defaults(run=run_webhook)
    p = sub.add_parser(
        "serve",
        help="run the extender and the webhook together (local mode)",
        description="Extender (HTTP) and webhook (HTTPS) in one process on one inventory, so "
        "the webhook's routing sees the extender's allocations.",
    )
    engine_args(p, json_flag=False, default_inventory="examples/inventory")
    webhook_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--extender-port", type=int, default=8888, help="(default %(default)s)")
    p.add_argument("--webhook-port", type=int, default=8443, help="(default %(default)s)")
    p.set_defaults(run=run_webhook)


def _config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(min_health=args.min_health, strategy=args.strategy)


def run_extender(args: argparse.Namespace, vendors: VendorTable) -> int:
    from extender.server import cluster_service, local_service, serve

    configure_logging(args.log_level)
    if not 0 <= args.bind_wait <= 300:
        raise ConfigError(f"--bind-wait {args.bind_wait}: expected 0-300 seconds")
    config = _config(args)
    if args.inventory:
        service, sync = local_service(args.inventory, config, vendors), None
    else:
        config = replace(config, heartbeat_max_age_s=args.heartbeat_timeout)
        service, sync = cluster_service(
            config,
            vendors,
            args.kubeconfig,
            stale_after_s=args.stale_after,
            lock_namespace=args.lock_namespace,
        )
        service.bind_wait_s = args.bind_wait
    serve(
        service,
        args.host,
        args.port,
        sync=sync,
        max_body=args.max_body_mb * 2**20,
        metrics=metrics(args),
    )
    return 0


def run_webhook(args: argparse.Namespace, vendors: VendorTable) -> int:
    """`hcs webhook` and `hcs serve`."""
    configure_logging(args.log_level)
    _serve_webhook(args, _config(args), vendors)
    return 0


def _serve_webhook(args: argparse.Namespace, config: EngineConfig, vendors: VendorTable) -> None:
    """`hcs webhook` (local or cluster mode) and `hcs serve` (local: both servers share one
    state, so the webhook's routing sees the extender's allocations)."""
    from certs import serving_files
    from cluster.sync import ClusterSync, KubeQuotaBook, load_api
    from extender.app import create_app as create_extender_app
    from serving import serve_apps, with_metrics
    from webhook.app import cert_reloader, ssl_context
    from webhook.app import create_app as create_webhook_app

    made = not (Path(args.cert_dir) / "tls.crt").exists()
    certs = serving_files(args.cert_dir)  # checks a given pair; makes one only where none is
    if made:
        logging.getLogger("hcs").info("made a CA and serving certificate in %s", certs.folder)
    tls = ssl_context(certs)
    sync = None
    quotas: Quotas
    if args.inventory:
        inv = load_inventory(args.inventory)
        for warning in inv.warnings:
            logging.getLogger("hcs").warning("%s", warning)
        state = ClusterState.from_nodes(inv.nodes.values(), vendors)
        quotas = QuotaBook(dict(inv.quotas))
    else:  # cluster mode (the webhook alone: `serve` always has an inventory)
        config = replace(config, heartbeat_max_age_s=args.heartbeat_timeout)
        api = load_api(args.kubeconfig)
        # The arrays only: no ComputeNode object is kept (hcs.state.ClusterState.keep_nodes).
        service = SchedulerService(ClusterState(vendors=vendors, keep_nodes=False), config, vendors)
        book = KubeQuotaBook(api)
        sync = ClusterSync(service, api, quota_book=book, stale_after_s=args.stale_after)
        state, quotas = service.state, book
    context = AdmissionContext(state, quotas, vendors, config, args.scheduler_name, dra=args.dra)
    if sync is not None:
        labels = sync.namespace_labels
        context = replace(context, namespace_labels=lambda ns: labels.get(ns, {}))
    webhook = create_webhook_app(context, sync=sync)
    webhook.cleanup_ctx.append(cert_reloader(tls, certs))
    gc.collect()
    gc.freeze()
    if args.command == "webhook":
        serve_apps(with_metrics((webhook, args.host, args.port, tls), *metrics(args)))
        return
    extender = create_extender_app(SchedulerService(state, config, vendors))
    serve_apps(
        [
            (extender, args.host, args.extender_port, None),
            (webhook, args.host, args.webhook_port, tls),
        ]
    )
