"""`hcs controller`: heartbeat expiry and quota recount, leader-elected."""

from __future__ import annotations

import argparse
import socket
import uuid
from typing import Any

from hcs.errors import ConfigError
from hcs.vendors import VendorTable
from hcs_cli.options import (
    configure_logging,
    exit_on_sigterm,
    heartbeat_option,
    kubeconfig_option,
    log_args,
    metrics_args,
    serve_registry,
)


def add_parsers(sub: Any) -> None:
    """The controller command."""
    p = sub.add_parser(
        "controller",
        help="heartbeat expiry and quota recount (leader-elected)",
        description="Mark ComputeNodes whose agent stopped reporting AgentConnected=False / "
        "NotReady (and back), and recompute every ComputeQuota's status from live Pods, every "
        "--interval seconds, while holding a Lease.",
    )
    kubeconfig_option(p)
    p.add_argument(
        "--interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often to check heartbeats and recount quotas (default %(default)s)",
    )
    heartbeat_option(p)
    p.add_argument(
        "--lease",
        default="hcs-system/hcs-controller",
        metavar="NS/NAME",
        help="the Lease held by the active replica (default %(default)s)",
    )
    p.add_argument(
        "--no-leader-elect", action="store_true", help="run without a Lease (a single replica)"
    )
    p.add_argument("--once", action="store_true", help="one round, then exit")
    metrics_args(p, standalone=True)
    log_args(p)
    p.set_defaults(run=run_controller)


def run_controller(args: argparse.Namespace, vendors: VendorTable) -> int:
    from cluster.controllers import (
        ControllerMetrics,
        ControllerRunner,
        run_controllers,
        run_leader_elected,
    )
    from cluster.sync import load_api

    configure_logging(args.log_level)
    metrics = ControllerMetrics()
    runner = ControllerRunner(
        load_api(args.kubeconfig, hint="pass --kubeconfig FILE (the controller needs a cluster)"),
        heartbeat_timeout_s=args.heartbeat_timeout,
        vendors=vendors,
        metrics=metrics,
    )
    serve_registry(args, metrics.registry, "controller")
    exit_on_sigterm()
    if args.once or args.no_leader_elect:
        metrics.leader.set(1)
        run_controllers(runner, args.interval, once=args.once)
        return 0
    namespace, _, name = args.lease.partition("/")
    if not namespace or not name:
        raise ConfigError(f"--lease {args.lease!r}: expected NAMESPACE/NAME")
    run_leader_elected(
        runner,
        args.interval,
        namespace=namespace,
        name=name,
        # Unique per process (client-go's default): two replicas sharing a hostname
        # (hostNetwork) must still be two candidates.
        identity=f"{socket.gethostname()}_{uuid.uuid4()}",
    )
    return 0
