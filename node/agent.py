"""`hcs agent`: discover, build the ComputeNode, publish it (or print it with --dry-run), and
heartbeat every interval. A failed discovery, or devices that do not form a valid ComputeNode,
publishes DiscoveryFailed (`HardwareHealthy=False`) with the reason and keeps the last spec; it
never stops the agent and never publishes nothing (which would look like a dead agent).

Each cycle compares device identities with the ComputeNode published before (node.identity):
IDs that now name another physical device are published unschedulable while pods hold them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge

from cluster.buildinfo import register_build_info
from hcs.errors import ConfigError, HcsError, ValidationError
from hcs.inventory import load_documents
from hcs.models import ComputeNode
from hcs.quantity import milli_tflops
from hcs.vendors import DEFAULT_PROFILES, VendorName
from node.computenode import MODEL_TABLE, ModelFigures, build_compute_node, build_status
from node.discovery import TOOLS, DiscoveryError, ToolRunner, detect_vendor, discover
from node.identity import held_device_ids, unschedulable_devices

log = logging.getLogger("hcs.agent")


@dataclass(frozen=True)
class AgentOptions:
    node_name: str
    vendor: VendorName | None = None
    tool_outputs: Mapping[str, Path] | None = None
    fake_devices: Path | None = None
    model_table: Mapping[str, ModelFigures] | None = None
    shared: bool = False
    replicas: int = 1
    """Shared nodes: containers per device, as the device plugin advertises replicas."""
    enforcement: str | None = None
    """Shared nodes: what keeps containers to their shares (hcs.models.ENFORCEMENTS), published
    as `hcs.io/share-enforcement`; the extender shares devices only on nodes that state it."""
    use_nvml: bool = True


def parse_tool_outputs(values: list[str]) -> dict[str, Path]:
    out = {}
    for value in values:
        tool, sep, file = value.partition("=")
        if not sep or tool not in TOOLS or not file:
            raise ConfigError(
                f"--tool-output {value!r}: expected TOOL=FILE with TOOL one of {', '.join(TOOLS)}"
            )
        out[tool] = Path(file)
    return out


def load_model_table(path: str | None) -> dict[str, ModelFigures]:
    table = dict(MODEL_TABLE)
    if path is None:
        return table
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--model-table {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--model-table {path}: expected MODEL: {{fp16, fp32, link}}")
    for model, figures in data.items():
        if not isinstance(figures, dict) or not {"fp16", "fp32"} <= set(figures):
            raise ConfigError(f"--model-table {path}: {model}: expected {{fp16, fp32[, link]}}")
        for key in ("fp16", "fp32"):
            try:
                milli_tflops(figures[key], f"{model}.{key}")
            except HcsError as exc:
                raise ConfigError(f"--model-table {path}: {model}.{key}: {exc.message}") from None
        table[str(model)] = ModelFigures(
            str(figures["fp16"]),
            str(figures["fp32"]),
            str(figures.get("link", "")),
            source=f"--model-table {path}",
        )
    return table


def desired_node(
    opts: AgentOptions,
    previous: Mapping[str, Any] | None = None,
    held: Callable[[], set[str] | None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """The ComputeNode to publish, and whether its spec is trustworthy (False: discovery
    failed, publish the status only). `previous` is the ComputeNode published before; `held`
    tells the device IDs live pods hold (None: unknown), asked only when some ID moved."""
    if opts.fake_devices is not None:
        return _fake(opts), True
    runner = ToolRunner(opts.tool_outputs)
    vendor = opts.vendor or detect_vendor(runner)
    if vendor is None:
        return _failed(
            opts,
            "nvidia",
            "NoVendorTool",
            "no vendor tool ran (nvidia-smi, npu-smi, hy-smi, cnmon); pass --vendor, or "
            "--tool-output with the device tool's output",
        ), False
    try:
        devices, topology = discover(vendor, runner, use_nvml=opts.use_nvml)
    except DiscoveryError as exc:
        log.warning("discovery failed: %s", exc.message)
        return _failed(opts, vendor, "DiscoveryFailed", exc.message), False
    marks = unschedulable_devices(previous, devices, None)
    if marks and held is not None:
        marks = unschedulable_devices(previous, devices, held())
    for dev_id, why in sorted(marks.items()):
        log.warning("device %s: %s", dev_id, why)
    try:
        node = build_compute_node(
            opts.node_name,
            vendor,
            devices,
            topology,
            table=opts.model_table,
            shared=opts.shared or opts.replicas > 1,
            slots=opts.replicas if opts.replicas > 1 else None,
            enforcement=opts.enforcement,
            unschedulable=marks,
        )
        ComputeNode.from_dict(node)  # what we publish must be what HCS accepts
    except HcsError as exc:
        message = f"the devices read do not form a valid ComputeNode: {exc.message}"
        log.warning("discovery failed: %s", message)
        return _failed(opts, vendor, "DiscoveryFailed", message), False
    return node, True


def held_ids(publisher: Any, node: str, vendor: VendorName | None) -> set[str] | None:
    """Device IDs held by live pods on `node`; None when unknown (the list failed, or a pod
    holds the vendor's resource without HCS's annotation)."""
    profiles = [DEFAULT_PROFILES[vendor]] if vendor else list(DEFAULT_PROFILES.values())
    try:
        pods = publisher.pods_on(node)
    except HcsError as exc:
        log.warning("cannot tell which devices pods hold: %s", exc)
        return None
    return held_device_ids(pods, lambda r: any(p.owns_resource(r) for p in profiles))


def _failed(opts: AgentOptions, vendor: VendorName, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "hcs.io/v1alpha1",
        "kind": "ComputeNode",
        "metadata": {"name": opts.node_name, "labels": {"vendor": vendor}},
        "spec": {
            "vendor": vendor,
            "nodeSelector": {"kubernetes.io/hostname": opts.node_name},
            "capacity": {"vram": "0", "tflops-fp16": "0", "tflops-fp32": "0"},
            "devices": [],
        },
        "status": build_status(healthy=False, reason=reason, message=message[:400]),
    }


def _fake(opts: AgentOptions) -> dict[str, Any]:
    assert opts.fake_devices is not None
    docs = [
        d
        for _, d in load_documents(opts.fake_devices)
        if isinstance(d, dict) and d.get("kind") == "ComputeNode"
    ]
    if not docs:
        raise ConfigError(f"--fake-devices {opts.fake_devices}: no ComputeNode in it")
    chosen = next((d for d in docs if d["metadata"].get("name") == opts.node_name), docs[0])
    node = {
        **chosen,
        "metadata": {**chosen["metadata"], "name": opts.node_name},
        "spec": {**chosen["spec"], "nodeSelector": {"kubernetes.io/hostname": opts.node_name}},
        "status": build_status(
            healthy=True, reason="", message=f"declared inventory ({opts.fake_devices.name})"
        ),
    }
    try:
        ComputeNode.from_dict(node)
    except ValidationError as exc:
        raise ConfigError(f"--fake-devices {opts.fake_devices}: {exc.message}") from None
    return node


class AgentMetrics:
    """The agent's series, in a registry of its own (`hcs agent --metrics-port`). Labelled by
    node too, since a DaemonSet's pods are scraped one by one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        register_build_info(self.registry, "agent")
        r = self.registry
        self.discovery_failures = Counter(
            "hcs_agent_discovery_failures",
            "Cycles that published a failed discovery, by reason (DiscoveryFailed, NoVendorTool)",
            ["node", "reason"],
            registry=r,
        )
        self.publish_failures = Counter(
            "hcs_agent_publish_failures",
            "Cycles whose ComputeNode could not be written to the API server",
            ["node"],
            registry=r,
        )
        self.last_success = Gauge(
            "hcs_agent_last_success_timestamp_seconds",
            "When a complete discovery was last published (Unix time)",
            ["node"],
            registry=r,
        )
        self.devices = Gauge(
            "hcs_agent_devices", "Devices the last discovery found", ["node", "vendor"], registry=r
        )
        self.health = Gauge(
            "hcs_device_health_score",
            "Each device's healthScore (0-100) as published; below the extender's "
            "--min-health (default 60) it is not used",
            ["node", "vendor", "device", "model"],
            registry=r,
        )
        self.unschedulable = Gauge(
            "hcs_device_unschedulable",
            "1 for a device published unschedulable (its ID moved while pods held it)",
            ["node", "vendor", "device"],
            registry=r,
        )

    def record(self, node: Mapping[str, Any], complete: bool) -> None:
        """Record one cycle's ComputeNode (before it is written)."""
        name = str(node["metadata"]["name"])
        if not complete:
            conditions = (node.get("status") or {}).get("conditions") or []
            reason = next(
                (c.get("reason") for c in conditions if c.get("type") == "HardwareHealthy"),
                None,
            )
            self.discovery_failures.labels(name, str(reason or "DiscoveryFailed")).inc()
            return
        vendor = str(node["spec"]["vendor"])
        devices = node["spec"].get("devices") or []
        self.devices.labels(name, vendor).set(len(devices))
        self.health.clear()
        self.unschedulable.clear()
        for dev in devices:
            dev_id = str(dev["id"])
            self.health.labels(name, vendor, dev_id, str(dev.get("model", ""))).set(
                float(dev.get("healthScore", 0))
            )
            self.unschedulable.labels(name, vendor, dev_id).set(
                1.0 if dev.get("unschedulable") else 0.0
            )

    def published(self, node: Mapping[str, Any], complete: bool, now: float) -> None:
        if complete:
            self.last_success.labels(str(node["metadata"]["name"])).set(now)


def run(
    opts: AgentOptions,
    publisher: Any,
    interval: float,
    *,
    once: bool = False,
    metrics: AgentMetrics | None = None,
) -> None:
    """Publish now and every `interval` seconds (heartbeats) until interrupted."""
    previous: dict[str, Any] | None = None
    first = True
    while True:
        try:
            if first:
                previous = publisher.read(opts.node_name)
                first = False
            node, complete = desired_node(
                opts, previous, lambda: held_ids(publisher, opts.node_name, opts.vendor)
            )
            if metrics is not None:
                metrics.record(node, complete)
            outcome = publisher.publish(node, status_only=not complete)
            if complete:
                previous = node
            if metrics is not None:
                metrics.published(node, complete, time.time())
            log.info("ComputeNode %s %s", opts.node_name, outcome)
        except HcsError as exc:
            log.error("publishing failed: %s", exc)
            if metrics is not None:
                metrics.publish_failures.labels(opts.node_name).inc()
        if once:
            return
        time.sleep(interval)


def dump(node: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(node), sort_keys=False)
