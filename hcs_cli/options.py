"""Flags the `hcs` and `kubectl hcs` commands share, declared once: the engine's settings
(so `kubectl hcs` can be given exactly what the extender runs with), cluster access, logging,
metrics, the webhook's certificates, device discovery."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from hcs.engine import STRATEGIES
from hcs.errors import ConfigError
from hcs.models import HEARTBEAT_TIMEOUT_S
from hcs.nodelock import LOCK_NAMESPACE
from node.discovery import TOOLS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def engine_options(p: argparse.ArgumentParser) -> None:
    """--strategy, --min-health, --vendor-config."""
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="binpack",
        help="score nodes by packing VRAM tightly or spreading it (default binpack)",
    )
    p.add_argument(
        "--min-health",
        type=int,
        default=60,
        metavar="N",
        help="devices with healthScore below N are not used (default 60)",
    )
    p.add_argument(
        "--vendor-config",
        metavar="FILE",
        help="YAML overriding vendor profiles (device-plugin names, env, mounts)",
    )


def heartbeat_option(p: argparse.ArgumentParser) -> None:
    """--heartbeat-timeout, the one age after which a ComputeNode's agent counts as gone."""
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=HEARTBEAT_TIMEOUT_S,
        metavar="SECONDS",
        help="a ComputeNode whose agent heartbeat is older is AgentNotConnected (default "
        "%(default)s: two missed 30 s beats plus 30 s of clock skew)",
    )


def lock_namespace_option(p: argparse.ArgumentParser) -> None:
    """--lock-namespace: where bind takes and the device plugin releases the node locks."""
    p.add_argument(
        "--lock-namespace",
        default=LOCK_NAMESPACE,
        metavar="NS",
        help="cluster mode: namespace of the node locks, Leases hcs-node-<node> (default "
        "%(default)s; kept apart from hcs-system so the node agents' role never reaches the "
        "leader leases)",
    )


def cluster_args(p: argparse.ArgumentParser) -> None:
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


class JsonFormatter(logging.Formatter):
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


LOG_FORMAT: list[str] = ["text"]


def log_args(p: argparse.ArgumentParser) -> None:
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


def configure_logging(level: str, fmt: str | None = None) -> None:
    """One line per decision: time, level, component, message (text or JSON)."""
    handler = logging.StreamHandler()
    if (fmt or LOG_FORMAT[0]) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])  # no-op where logging is set up


ANY_PORT = -1  # `--metrics-port any`: the OS picks a free port; the log line names it


def port(text: str) -> int:
    """A port number, or `any` (a free port the OS picks, logged once bound)."""
    if text == "any":
        return ANY_PORT
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port 0-65535 or 'any'") from None


def metrics_args(p: argparse.ArgumentParser, *, standalone: bool = False) -> None:
    p.add_argument(
        "--metrics-port",
        type=port,
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


def metrics(args: argparse.Namespace) -> tuple[str, int | None]:
    """(host, port): port None is off, 0 is any free port."""
    port: int = args.metrics_port
    if port == ANY_PORT:
        return args.metrics_host, 0
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port {port}: expected a port 0-65535 or 'any'")
    return args.metrics_host, port or None


def exit_on_sigterm() -> None:
    """Blocking loops (agent, controller): the kubelet's SIGTERM ends them cleanly, exit 0."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def serve_registry(args: argparse.Namespace, registry: CollectorRegistry, what: str) -> None:
    """The controller's and the agent's /metrics: prometheus_client's own HTTP server, in a
    thread (they have no other server)."""
    from prometheus_client import start_http_server

    host, port = metrics(args)
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


def webhook_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cert-dir",
        default=".hcs/certs",
        metavar="DIR",
        help="tls.crt and tls.key (made as `hcs certs` does only when neither exists; a given "
        "pair that is incomplete or does not parse stops the start, never replaced; reloaded "
        "when they change) (default %(default)s)",
    )
    p.add_argument(
        "--dra",
        action="store_true",
        help="turn ai.compute/* requests into a ResourceClaim of driver compute.hcs.io (its "
        "template created by hcs controller) instead of device-plugin resources (docs/dra.md)",
    )
    p.add_argument(
        "--scheduler-name",
        metavar="NAME",
        help="set spec.schedulerName of admitted pods (e.g. hcs-scheduler)",
    )
    log_args(p)


def engine_args(
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
        output_option(p)


OUTPUTS = ("table", "json", "yaml")


def output_option(p: argparse.ArgumentParser) -> None:
    """-o/--output table|json|yaml, as `kubectl hcs` spells it; --json stays as its alias."""
    p.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default="table",
        help="table (default), or json or yaml: one document, quantities as strings",
    )
    p.add_argument(
        "--json", dest="output", action="store_const", const="json", help="the same as -o json"
    )


def discovery_args(p: argparse.ArgumentParser) -> None:
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


def reader_left() -> int:
    """The reader of stdout went away (`hcs simulate … | head`): stop quietly, as Unix tools
    do, exit 0. Python would otherwise report the pipe when it flushes stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def kubeconfig_option(p: argparse.ArgumentParser) -> None:
    """--kubeconfig for the commands that always need a cluster (agent, plugins, controller)."""
    p.add_argument(
        "--kubeconfig", metavar="FILE", help="(default: in-cluster, then ~/.kube/config)"
    )
