"""`hcs_build_info`: which HCS a process runs, one series in every component's registry, so a
dashboard can join any series with the version that produced it."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Gauge

from hcs import __version__


def register_build_info(registry: CollectorRegistry, component: str) -> None:
    """hcs_build_info{version, component, python} = 1."""
    Gauge(
        "hcs_build_info",
        "The HCS build this process runs (always 1)",
        ["version", "component", "python"],
        registry=registry,
    ).labels(__version__, component, platform.python_version()).set(1)
