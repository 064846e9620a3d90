"""Flags the `hcs` and `kubectl hcs` commands share: the engine's settings, spelled and
defaulted once, so `kubectl hcs` can be given exactly what the extender runs with."""

from __future__ import annotations

import argparse

from hcs.engine import STRATEGIES
from hcs.models import HEARTBEAT_TIMEOUT_S
from hcs.nodelock import LOCK_NAMESPACE


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
