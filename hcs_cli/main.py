"""The `hcs` command: extender, webhook, serve, agent, device-plugin, controller, certs,
simulate, explain, validate. (The live-cluster views are `kubectl hcs`, `hcs_cli.kubectl`.)"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import signal
import socket
import sys
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hcs import __version__
from hcs.admission import AdmissionContext, Quotas
from hcs.demand import parse_pod
from hcs.engine import EngineConfig
from hcs.errors import ConfigError, HcsError, ValidationError
from hcs.inventory import load_documents, load_inventory
from hcs.models import HEARTBEAT_INTERVAL_S, ComputeNode, ComputeQuota
from hcs.quota import QuotaBook
from hcs.scheduling import BIND_WAIT_S, SchedulerService
from hcs.simulate import explain, pods_from_paths, simulate
from hcs.state import ClusterState
from hcs.vendors import VENDOR_NAMES, VendorTable, load_vendor_table
from hcs_cli.options import engine_options, heartbeat_option, lock_namespace_option
from hcs_cli.output import print_explanation, print_placements

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from node.deviceplugin import Limiter
from node.discovery import TOOLS


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="cluster mode: kubeconfig to use (default: in-cluster, then ~/.kube/config)",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="cluster mode: /readyz fails when a watch has been silent this long "
        "(default %(default)s)",
    )
    heartbeat_option(p)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line (`--log-format json`), for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


_LOG_FORMAT: list[str] = ["text"]


def _log_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="least severe level logged (default %(default)s)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="text lines, or one JSON object per line for log pipelines (default %(default)s)",
    )


def _configure_logging(level: str, fmt: str | None = None) -> None:
    """One line per decision: time, level, component, message (text or JSON)."""
    handler = logging.StreamHandler()
    if (fmt or _LOG_FORMAT[0]) == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])  # no-op where logging is set up


ANY_PORT = -1  # `--metrics-port any`: the OS picks a free port; the log line names it


def _port(text: str) -> int:
    """A port number, or `any` (a free port the OS picks, logged once bound)."""
    if text == "any":
        return ANY_PORT
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port 0-65535 or 'any'") from None


def _metrics_args(p: argparse.ArgumentParser, *, standalone: bool = False) -> None:
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        metavar="PORT",
        help="serve GET /metrics over plain HTTP on this port, for Prometheus; 'any': a free "
        "port the OS picks, logged (default %(default)s: off)"
        if standalone
        else "also serve GET /metrics and /healthz over plain HTTP on this port, for "
        "Prometheus; 'any': a free port the OS picks, logged (default %(default)s: only on "
        "the main port)",
    )
    p.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        help="address for --metrics-port (default %(default)s)",
    )


def _metrics(args: argparse.Namespace) -> tuple[str, int | None]:
    """(host, port): port None is off, 0 is any free port."""
    port: int = args.metrics_port
    if port == ANY_PORT:
        return args.metrics_host, 0
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port {port}: expected a port 0-65535 or 'any'")
    return args.metrics_host, port or None


def _exit_on_sigterm() -> None:
    """Blocking loops (agent, controller): the kubelet's SIGTERM ends them cleanly, exit 0."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def _serve_registry(args: argparse.Namespace, registry: CollectorRegistry, what: str) -> None:
    """The controller's and the agent's /metrics: prometheus_client's own HTTP server, in a
    thread (they have no other server)."""
    from prometheus_client import start_http_server

    host, port = _metrics(args)
    if port is None:
        return
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} for {what} metrics: {exc.strerror} (another "
            "process has the port? choose another with --metrics-port)"
        ) from None
    bound = server.server_address[1]
    logging.getLogger("hcs").info("serving %s metrics on http://%s:%d/metrics", what, host, bound)


def _webhook_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cert-dir",
        default=".hcs/certs",
        metavar="DIR",
        help="tls.crt and tls.key (made as `hcs certs` does only when neither exists; a given "
        "pair that is incomplete or does not parse stops the start, never replaced; reloaded "
        "when they change) (default %(default)s)",
    )
    p.add_argument(
        "--scheduler-name",
        metavar="NAME",
        help="set spec.schedulerName of admitted pods (e.g. hcs-scheduler)",
    )
    _log_args(p)


def _engine_args(
    p: argparse.ArgumentParser,
    *,
    json_flag: bool = True,
    cluster: bool = False,
    default_inventory: str | None = None,
) -> None:
    help_text = "folder of ComputeNode / ComputeQuota YAML files"
    if cluster:
        help_text += " (local mode; without it: cluster mode through the API server)"
    if default_inventory:
        help_text += " (default %(default)s)"
    p.add_argument(
        "--inventory",
        default=default_inventory,
        required=not cluster and default_inventory is None,
        metavar="DIR",
        help=help_text,
    )
    engine_options(p)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _discovery_args(p: argparse.ArgumentParser) -> None:
    """How the agent and the device plugin find the node's devices."""
    p.add_argument(
        "--tool-output",
        action="append",
        default=[],
        metavar="TOOL=FILE",
        help="read a saved output of TOOL instead of running it (repeatable; TOOL: "
        + ", ".join(TOOLS)
        + ")",
    )
    p.add_argument(
        "--fake-devices",
        metavar="FILE",
        help="the devices of the ComputeNode declared in FILE (clusters without the hardware)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcs",
        description="HCS, the Hetero-Compute-Router: vendor-neutral accelerator scheduling "
        "for Kubernetes.",
        epilog="On a live cluster, `kubectl hcs` (top nodes, top quota, explain pod, simulate) "
        "shows what is used and free and why a pod waits.",
    )
    parser.add_argument("--version", action="version", version=f"hcs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "extender",
        help="run the kube-scheduler extender (HTTP)",
        description="Serve POST /filter, /prioritize, /bind, /preempt and GET /healthz, "
        "/readyz, /metrics, /version for kube-scheduler. With --inventory: local mode "
        "(allocations kept in memory); without: cluster mode (watches ComputeNodes and Pods, "
        "creates Bindings).",
    )
    _engine_args(p, json_flag=False, cluster=True)
    _cluster_args(p)
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
    _metrics_args(p)
    p.add_argument(
        "--max-body-mb",
        type=int,
        default=256,
        metavar="MB",
        help="largest request body accepted (default %(default)s)",
    )
    _log_args(p)

    p = sub.add_parser(
        "webhook",
        help="run the mutating admission webhook (HTTPS)",
        description="Serve POST /mutate (AdmissionReview v1) and GET /healthz, /readyz, "
        "/metrics, /version over TLS. With --inventory: local mode (quota charges in memory); "
        "without: cluster mode (watches ComputeNodes, ComputeQuotas and Pods; charges "
        "ComputeQuota status with compare-and-swap).",
    )
    _engine_args(p, json_flag=False, cluster=True)
    _cluster_args(p)
    _webhook_args(p)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=8443, help="port; 0: a free one, logged (default %(default)s)"
    )
    _metrics_args(p)

    p = sub.add_parser(
        "agent",
        help="publish this node's ComputeNode from the vendor tool (DaemonSet)",
        description="Discover the node's accelerators with the vendor tool (NVML or "
        "nvidia-smi, npu-smi, hy-smi, cnmon), publish its ComputeNode and heartbeat every "
        "--interval seconds. --dry-run prints the ComputeNode instead. A tool output that "
        "lacks a needed figure is published as DiscoveryFailed, naming what is missing.",
    )
    p.add_argument(
        "--node-name",
        required=True,
        metavar="NAME",
        help="the Kubernetes Node (from the downward API: spec.nodeName)",
    )
    p.add_argument(
        "--vendor",
        choices=VENDOR_NAMES,
        help="the vendor (each per-vendor DaemonSet passes it; default: the vendor whose "
        "tool runs successfully)",
    )
    _discovery_args(p)
    p.add_argument(
        "--model-table",
        metavar="FILE",
        help="YAML adding models: MODEL: {fp16: '…', fp32: '…', link: '600GB/s'}",
    )
    p.add_argument(
        "--shared", action="store_true", help="label the node hcs.io/device-sharing: shared"
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="shared node whose device plugin advertises N replicas per device: publish "
        "hcs.io/device-sharing: shared and hcs.io/device-slots: N (pass the plugin the same N; "
        "needs --limiter or --allow-unenforced-sharing)",
    )
    p.add_argument(
        "--limiter",
        choices=["hami-core", "vnpu"],
        default=None,
        help="shared nodes: what enforces each container's share (pass the device plugin the "
        "same); published as hcs.io/share-enforcement",
    )
    p.add_argument(
        "--allow-unenforced-sharing",
        action="store_true",
        help="shared nodes with no --limiter: publish hcs.io/share-enforcement: none (pods "
        "sharing a device are not isolated); without it a shared node needs --limiter",
    )
    p.add_argument(
        "--no-nvml",
        action="store_true",
        help="NVIDIA: run nvidia-smi even where NVML (nvidia-ml-py) loads",
    )
    p.add_argument("--dry-run", action="store_true", help="print the ComputeNode YAML and exit")
    p.add_argument(
        "--interval",
        type=float,
        default=HEARTBEAT_INTERVAL_S,
        metavar="SECONDS",
        help="heartbeat period (default %(default)s)",
    )
    p.add_argument("--once", action="store_true", help="publish once and exit")
    p.add_argument(
        "--kubeconfig", metavar="FILE", help="(default: in-cluster, then ~/.kube/config)"
    )
    _metrics_args(p, standalone=True)
    _log_args(p)

    p = sub.add_parser(
        "controller",
        help="heartbeat expiry and quota recount (leader-elected)",
        description="Mark ComputeNodes whose agent stopped reporting AgentConnected=False / "
        "NotReady (and back), and recompute every ComputeQuota's status from live Pods, every "
        "--interval seconds, while holding a Lease.",
    )
    p.add_argument(
        "--kubeconfig", metavar="FILE", help="(default: in-cluster, then ~/.kube/config)"
    )
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
    _metrics_args(p, standalone=True)
    _log_args(p)

    p = sub.add_parser(
        "serve",
        help="run the extender and the webhook together (local mode)",
        description="Extender (HTTP) and webhook (HTTPS) in one process on one inventory, so "
        "the webhook's routing sees the extender's allocations.",
    )
    _engine_args(p, json_flag=False, default_inventory="examples/inventory")
    _webhook_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--extender-port", type=int, default=8888, help="(default %(default)s)")
    p.add_argument("--webhook-port", type=int, default=8443, help="(default %(default)s)")

    p = sub.add_parser(
        "certs",
        help="make the webhook's CA and serving certificate",
        description="Write ca.crt/ca.key (an existing CA is reused) and tls.crt/tls.key with "
        "the service's DNS names, localhost and 127.0.0.1 as SANs. Keys get mode 0600.",
    )
    p.add_argument("--service", default="hcs-webhook", help="(default %(default)s)")
    p.add_argument("--namespace", default="hcs-system", help="(default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the files")
    p.add_argument(
        "--days",
        type=int,
        default=365,
        metavar="N",
        help="serving certificate validity in days (default %(default)s)",
    )
    p.add_argument(
        "--renew-before",
        type=int,
        metavar="DAYS",
        help="keep a tls.crt that is signed by ca.crt, names the service and is valid for more "
        "than DAYS days; issue a new one otherwise (for a CronJob; default: always issue)",
    )
    printed = p.add_mutually_exclusive_group()
    printed.add_argument(
        "--print-ca-bundle",
        action="store_true",
        help="print the base64 caBundle for the MutatingWebhookConfiguration "
        "(issuing the files first only if there is no CA yet)",
    )
    printed.add_argument(
        "--print-ca-patch",
        action="store_true",
        help="print the JSON patch that puts the caBundle into every HCS webhook: "
        'kubectl patch mutatingwebhookconfiguration hcs-webhook --type=json -p "$(hcs certs '
        '--out DIR --print-ca-patch)"',
    )

    p = sub.add_parser(
        "simulate",
        help="place a stream of pods on an inventory, print a table",
        description="Place pods one after another on an inventory (filter, "
        "prioritize, bind with device selection) and print where "
        "each landed or why it could not.",
    )
    _engine_args(p)
    p.add_argument(
        "--pods",
        required=True,
        nargs="+",
        metavar="PATH",
        help="Pod YAML files or folders (Deployments and Jobs contribute their "
        "pod template, once per replica)",
    )

    p = sub.add_parser(
        "explain",
        help="why a pod can or cannot be placed, node by node",
        description="Evaluate one pod against every node of an inventory and "
        "print each node's outcome, score and figures.",
    )
    _engine_args(p)
    p.add_argument(
        "--pod",
        required=True,
        metavar="FILE",
        help="a YAML file of Pods (each is explained in turn)",
    )

    p = sub.add_parser(
        "validate",
        help="check ComputeNode, ComputeQuota and Pod YAML",
        description="Validate every document of the given YAML files; exit 1 if any is invalid.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--vendor-config", metavar="FILE", help="YAML overriding vendor profiles")

    p = sub.add_parser(
        "device-plugin",
        help="kubelet device plugin that gives containers the devices HCS chose (DaemonSet)",
        description="Serve kubelet's device plugin API (v1beta1) for the vendor's resource: "
        "register on KUBELET_DIR/kubelet.sock (again whenever kubelet restarts), list the "
        "devices the agent's discovery finds, and answer GetPreferredAllocation and Allocate "
        "with the devices the extender bound each container to (docs/node.md).",
    )
    p.add_argument("--node-name", required=True, metavar="NAME", help="this Kubernetes Node")
    p.add_argument("--vendor", required=True, choices=VENDOR_NAMES, help="the node's vendor")
    p.add_argument(
        "--kubelet-dir",
        default="/var/lib/kubelet/device-plugins",
        metavar="DIR",
        help="kubelet's device plugin folder (default %(default)s)",
    )
    _discovery_args(p)
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="shared nodes: advertise each device N times so kubelet admits N pods on it "
        "(the extender's VRAM books decide what fits), until the node's ComputeNode is seen: "
        "from then on its hcs.io/device-slots, which the agent publishes from its own "
        "--replicas, decides (one source); above 1 needs --limiter or "
        "--allow-unenforced-sharing; default %(default)s: exclusive",
    )
    p.add_argument(
        "--limiter",
        choices=["hami-core", "vnpu"],
        default=None,
        help="enforce each fractional container's booking inside the container: hami-core "
        "(NVIDIA; HAMi-core's libvgpu.so from --limiter-dir, which HCS does not ship) or vnpu "
        "(Ascend; ASCEND_VNPU_SPECS names the vNPU template the extender booked, applied by "
        "Ascend Docker Runtime). Without a limiter, --replicas above 1 shares devices with no "
        "isolation and needs --allow-unenforced-sharing",
    )
    p.add_argument(
        "--limiter-dir",
        default="/usr/local/vgpu",
        metavar="DIR",
        help="host folder holding libvgpu.so for --limiter hami-core (default %(default)s)",
    )
    p.add_argument(
        "--limiter-state-dir",
        default="/var/lib/hcs/vgpu",
        metavar="DIR",
        help="host folder for the limiter's per-container folders, cleaned when their pod is "
        "gone (default %(default)s)",
    )
    p.add_argument(
        "--allow-unenforced-sharing",
        action="store_true",
        help="allow --replicas above 1 with no --limiter: pods sharing a device are not "
        "isolated (one can take the whole memory); the node owner's explicit choice",
    )
    p.add_argument(
        "--device-list-strategy",
        default="",
        metavar="LIST",
        help="how Allocate names the devices, comma-separated: envvar (the vendor's device env: "
        "a pod's own env overrides it), volume-mounts (NVIDIA: mounts under "
        "/var/run/nvidia-container-devices, with the toolkit's accept-nvidia-visible-devices-"
        "envvar-when-unprivileged=false), cdi-annotations, cdi-cri (CDI devices "
        "nvidia.com/gpu=<uuid>). Default: volume-mounts for NVIDIA, envvar for the others, "
        "whose devices are device nodes in the answer (docs/node.md)",
    )
    p.add_argument(
        "--min-health",
        type=int,
        default=60,
        metavar="N",
        help="devices below this health score are advertised Unhealthy (default %(default)s)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="re-discovery period for device health (default %(default)s)",
    )
    lock_namespace_option(p)
    p.add_argument("--vendor-config", metavar="FILE", help="YAML overriding vendor profiles")
    p.add_argument(
        "--kubeconfig", metavar="FILE", help="(default: in-cluster, then ~/.kube/config)"
    )
    _log_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _LOG_FORMAT[0] = getattr(args, "log_format", "text")
    try:
        vendors = load_vendor_table(getattr(args, "vendor_config", None))
        if args.command == "validate":
            return _validate(args.files, vendors)
        if args.command == "certs":
            return _certs(args)
        if args.command == "agent":
            return _agent(args)
        if args.command == "device-plugin":
            return _device_plugin(args, vendors)
        if args.command == "controller":
            return _controller(args, vendors)
        config = EngineConfig(min_health=args.min_health, strategy=args.strategy)
        if args.command == "extender":
            from extender.server import cluster_service, local_service, serve

            _configure_logging(args.log_level)
            if not 0 <= args.bind_wait <= 300:
                raise ConfigError(f"--bind-wait {args.bind_wait}: expected 0-300 seconds")
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
                metrics=_metrics(args),
            )
            return 0
        if args.command in ("webhook", "serve"):
            _configure_logging(args.log_level)
            _serve_local(args, config, vendors)
            return 0
        inv = load_inventory(args.inventory)
        for warning in inv.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        state = ClusterState.from_nodes(inv.nodes.values(), vendors)
        if args.command == "simulate":
            placements = simulate(state, pods_from_paths(args.pods), config, vendors)
            print_placements(placements, "json" if args.json else "table")
            return 0
        if not Path(args.pod).is_file():
            raise ConfigError(f"--pod {args.pod}: no such file (expected a YAML file of Pods)")
        for place, pod in pods_from_paths([args.pod]):
            name = (pod.get("metadata") or {}).get("name") or place
            if not args.json:
                print(f"# {name}")
            rows = explain(state, pod, config, vendors)
            print_explanation(rows, "json" if args.json else "table")
        return 0
    except HcsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _controller(args: argparse.Namespace, vendors: VendorTable) -> int:
    from cluster.controllers import (
        ControllerMetrics,
        ControllerRunner,
        run_controllers,
        run_leader_elected,
    )
    from cluster.sync import load_api

    _configure_logging(args.log_level)
    metrics = ControllerMetrics()
    runner = ControllerRunner(
        load_api(args.kubeconfig, hint="pass --kubeconfig FILE (the controller needs a cluster)"),
        heartbeat_timeout_s=args.heartbeat_timeout,
        vendors=vendors,
        metrics=metrics,
    )
    _serve_registry(args, metrics.registry, "controller")
    _exit_on_sigterm()
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


def _agent(args: argparse.Namespace) -> int:
    from cluster.sync import load_api
    from node.agent import (
        AgentMetrics,
        AgentOptions,
        desired_node,
        dump,
        load_model_table,
        parse_tool_outputs,
    )
    from node.agent import run as run_agent
    from node.publish import Publisher

    _configure_logging(args.log_level)
    opts = AgentOptions(
        node_name=args.node_name,
        vendor=args.vendor,
        tool_outputs=parse_tool_outputs(args.tool_output),
        fake_devices=Path(args.fake_devices) if args.fake_devices else None,
        model_table=load_model_table(args.model_table),
        shared=args.shared,
        replicas=args.replicas,
        enforcement=_enforcement(args),
        use_nvml=not args.no_nvml,
    )
    if args.dry_run:
        node, _ = desired_node(opts)
        print(dump(node), end="")
        return 0
    api = load_api(args.kubeconfig, hint="pass --kubeconfig FILE, or --dry-run to print only")
    metrics = AgentMetrics()
    _serve_registry(args, metrics.registry, "agent")
    _exit_on_sigterm()
    run_agent(opts, Publisher(api), args.interval, once=args.once, metrics=metrics)
    return 0


def _limiter_vendor(limiter: str, vendor: str) -> None:
    """A limiter enforces one vendor's devices (hcs.limiter.LIMITER_VENDOR)."""
    from hcs.limiter import LIMITER_VENDOR

    if vendor != LIMITER_VENDOR[limiter]:
        raise ConfigError(
            f"--limiter {limiter}: enforces {LIMITER_VENDOR[limiter]} devices only, not {vendor}"
        )


def _enforcement(args: argparse.Namespace) -> str | None:
    """The agent's published sharing mode; a shared node must state one."""
    if not (args.shared or args.replicas > 1):
        return None
    if args.limiter:
        if args.vendor:
            _limiter_vendor(args.limiter, args.vendor)
        return str(args.limiter)
    if args.allow_unenforced_sharing:
        return "none"
    raise ConfigError(
        "a shared node (--shared or --replicas above 1) without --limiter: pods sharing a "
        "device would not be isolated; pass --limiter hami-core|vnpu, or "
        "--allow-unenforced-sharing to accept that"
    )


def _limiter(args: argparse.Namespace, vendors: VendorTable) -> Limiter | None:
    """The share limiter the plugin hands fractional containers to; refuses sharing that
    nothing enforces unless the node's owner asked for it."""
    from node.deviceplugin import HamiCore, Vnpu

    if args.limiter is None:
        if args.replicas > 1 and not args.allow_unenforced_sharing:
            raise ConfigError(
                f"--replicas {args.replicas} without --limiter: pods sharing a device would not "
                "be isolated (one can take all its memory); pass --limiter hami-core|vnpu, or "
                "--allow-unenforced-sharing to accept that"
            )
        return None
    _limiter_vendor(args.limiter, args.vendor)
    if args.limiter == "vnpu":
        return Vnpu(vendors)
    return HamiCore.prepare(Path(args.limiter_dir), Path(args.limiter_state_dir), vendors)


def _device_plugin(args: argparse.Namespace, vendors: VendorTable) -> int:
    from cluster.sync import load_api
    from hcs.assignment import check_strategies, default_strategies
    from node.agent import AgentOptions, desired_node, parse_tool_outputs
    from node.deviceplugin import (
        Allocator,
        CachedNodeApi,
        DevicePlugin,
        PluginDevice,
        devices_of,
    )
    from node.podcache import NodeCache, Writer

    _configure_logging(args.log_level)
    if args.replicas < 1:
        raise ConfigError(f"--replicas {args.replicas}: expected a whole number >= 1")
    limiter = _limiter(args, vendors)
    opts = AgentOptions(
        node_name=args.node_name,
        vendor=args.vendor,
        tool_outputs=parse_tool_outputs(args.tool_output),
        fake_devices=Path(args.fake_devices) if args.fake_devices else None,
    )
    profile = vendors[args.vendor]
    strategies = check_strategies(
        profile,
        args.device_list_strategy.split(",")
        if args.device_list_strategy
        else default_strategies(profile),
    )
    api = load_api(args.kubeconfig, hint="pass --kubeconfig FILE (the plugin reads pods)")
    cache = NodeCache(api, args.node_name)
    writer = Writer(api, args.lock_namespace)
    allocator = Allocator(
        args.node_name,
        profile,
        CachedNodeApi(cache, writer),
        replicas=args.replicas,
        strategies=strategies,
        limiter=limiter,
    )

    def discover() -> list[PluginDevice] | None:
        node, complete = desired_node(opts)
        return devices_of(node, args.min_health) if complete else None

    kubelet_dir = Path(args.kubelet_dir)
    plugin = DevicePlugin(
        allocator,
        kubelet_dir,
        discover,
        interval=args.interval,
        cache=cache,
        pod_resources=kubelet_dir.parent / "pod-resources" / "kubelet.sock",
    )
    cache.start()
    signal.signal(signal.SIGTERM, lambda *_: plugin.stopping.set())
    try:
        plugin.run()
    except KeyboardInterrupt:
        plugin.stopping.set()
    finally:
        writer.flush(timeout=5.0)  # what was decided goes out before the process ends
        writer.stop()
        cache.stop()
    return 0


def _certs(args: argparse.Namespace) -> int:
    from certs import ca_bundle, ca_bundle_patch, issue, renewal_reason, service_names

    out = Path(args.out)
    printing = args.print_ca_bundle or args.print_ca_patch
    say = sys.stderr if printing else sys.stdout  # stdout carries only what was asked to print
    if args.renew_before is not None and args.renew_before < 0:
        raise ConfigError(f"--renew-before: {args.renew_before} must be 0 or more days")
    if args.renew_before is not None:
        window = dt.timedelta(days=args.renew_before)
        reason = renewal_reason(out, args.service, args.namespace, window)
    elif printing:
        reason = None if (out / "ca.crt").exists() else "no CA yet"
    else:
        reason = "asked to issue"
    if reason is None and args.renew_before is not None:
        print(f"kept {out / 'tls.crt'}: valid for more than {args.renew_before} days", file=say)
    elif reason is not None:
        files = issue(out, args.service, args.namespace, args.days)
        print(
            f"wrote {files.ca_cert}, {files.tls_cert}, {files.tls_key} ({reason}; SANs: "
            f"{', '.join(service_names(args.service, args.namespace))}, 127.0.0.1)",
            file=say,
        )
    if args.print_ca_bundle:
        print(ca_bundle(out))
    if args.print_ca_patch:
        print(json.dumps(ca_bundle_patch(out)))
    return 0


def _serve_local(args: argparse.Namespace, config: EngineConfig, vendors: VendorTable) -> None:
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
        service = SchedulerService(ClusterState(vendors=vendors), config, vendors)
        book = KubeQuotaBook(api)
        sync = ClusterSync(service, api, quota_book=book, stale_after_s=args.stale_after)
        state, quotas = service.state, book
    context = AdmissionContext(state, quotas, vendors, config, args.scheduler_name)
    if sync is not None:
        labels = sync.namespace_labels
        context = replace(context, namespace_labels=lambda ns: labels.get(ns, {}))
    webhook = create_webhook_app(context, sync=sync)
    webhook.cleanup_ctx.append(cert_reloader(tls, certs))
    gc.collect()
    gc.freeze()
    if args.command == "webhook":
        serve_apps(with_metrics((webhook, args.host, args.port, tls), *_metrics(args)))
        return
    extender = create_extender_app(SchedulerService(state, config, vendors))
    serve_apps(
        [
            (extender, args.host, args.extender_port, None),
            (webhook, args.host, args.webhook_port, tls),
        ]
    )


def _validate(files: Sequence[str], vendors: VendorTable) -> int:
    bad = 0
    expanded: list[str] = []
    for file in files:  # a folder means its YAML files, recursively
        folder = Path(file)
        if folder.is_dir():
            expanded += sorted(str(f) for f in folder.rglob("*.y*ml") if f.is_file())
        else:
            expanded.append(file)
    for file in expanded:
        try:
            docs = load_documents(Path(file))
        except HcsError as exc:
            print(f"INVALID {exc.message}")
            bad += 1
            continue
        for place, doc in docs:
            kind = doc.get("kind") if isinstance(doc, dict) else None
            try:
                if kind == "ComputeNode":
                    ComputeNode.from_dict(doc)
                elif kind == "ComputeQuota":
                    ComputeQuota.from_dict(doc)
                elif kind == "Pod":
                    parse_pod(doc, vendors)
                else:
                    print(f"skipped {place}: {kind or 'no kind'}")
                    continue
                print(f"ok      {place}: {kind}")
            except ValidationError as exc:
                bad += 1
                print(f"INVALID {place}: {exc.what}")
                for path, msg in exc.problems:
                    print(f"          {path}: {msg}")
            except HcsError as exc:
                bad += 1
                print(f"INVALID {place}: {exc}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
