"""`hcs agent` and `hcs device-plugin`: the node side (DaemonSets)."""

from __future__ import annotations

import argparse
import signal
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hcs.errors import ConfigError
from hcs.models import HEARTBEAT_INTERVAL_S, ComputeNode
from hcs.vendors import VENDOR_NAMES, VendorTable
from hcs_cli.options import (
    configure_logging,
    discovery_args,
    exit_on_sigterm,
    kubeconfig_option,
    lock_namespace_option,
    log_args,
    metrics_args,
    serve_registry,
)

if TYPE_CHECKING:
    from node.agent import AgentOptions
    from node.deviceplugin import Limiter


def add_parsers(sub: Any) -> None:
    """The node commands."""
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
    discovery_args(p)
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
    kubeconfig_option(p)
    metrics_args(p, standalone=True)
    log_args(p)
    p.set_defaults(run=run_agent)
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
    discovery_args(p)
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
    limiter_dir_args(
        p,
        library="for --limiter hami-core",
        state="the limiter's per-container folders, cleaned when their pod is gone",
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
    kubeconfig_option(p)
    log_args(p)
    p.set_defaults(run=run_device_plugin)
    p = sub.add_parser(
        "dra-plugin",
        help="HCS as the DRA driver compute.hcs.io: ResourceSlices, Prepare/Unprepare (DaemonSet)",
        description="Publish this node's devices as ResourceSlices of driver compute.hcs.io (one "
        "pool per node, capacities in ai.compute units; shared by capacity when the agent's "
        "ComputeNode says the node shares, with HAMi-core or vNPU keeping each share), register "
        "with kubelet through --registry-dir, and serve NodePrepareResources/"
        "NodeUnprepareResources on --plugin-dir/dra.sock, answering CDI ids per claim request "
        "(docs/dra.md).",
    )
    p.add_argument("--node-name", required=True, metavar="NAME", help="this Kubernetes Node")
    p.add_argument("--vendor", required=True, choices=VENDOR_NAMES, help="the node's vendor")
    discovery_args(p)
    p.add_argument(
        "--registry-dir",
        default="/var/lib/kubelet/plugins_registry",
        metavar="DIR",
        help="kubelet's plugin registration folder (default %(default)s)",
    )
    p.add_argument(
        "--plugin-dir",
        default="/var/lib/kubelet/plugins/compute.hcs.io",
        metavar="DIR",
        help="where the driver's dra.sock is served (default %(default)s)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the node's ResourceSlices as YAML and exit"
    )
    p.add_argument(
        "--cdi-dir",
        default="/var/run/cdi",
        metavar="DIR",
        help="where the claims' CDI specs are written (default %(default)s)",
    )
    p.add_argument(
        "--min-health",
        type=int,
        default=60,
        metavar="N",
        help="devices below this health score are not published (default %(default)s)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="re-discovery and slice publication period (default %(default)s)",
    )
    limiter_dir_args(
        p,
        library="for NVIDIA nodes the agent publishes as shared under hami-core; HCS does not "
        "ship it, and without it the devices are published unshared",
        state="HAMi-core's per-claim folders, removed at unprepare",
    )
    p.add_argument("--vendor-config", metavar="FILE", help="YAML overriding vendor profiles")
    kubeconfig_option(p)
    log_args(p)
    p.set_defaults(run=run_dra_plugin)


def limiter_dir_args(p: argparse.ArgumentParser, *, library: str, state: str) -> None:
    """HAMi-core's host folders, the same defaults for the device plugin and the DRA driver
    (components/hami-core and components/dra mount them at these paths)."""
    p.add_argument(
        "--limiter-dir",
        default="/usr/local/vgpu",
        metavar="DIR",
        help=f"host folder holding HAMi-core's libvgpu.so, {library} (default %(default)s)",
    )
    p.add_argument(
        "--limiter-state-dir",
        default="/var/lib/hcs/vgpu",
        metavar="DIR",
        help=f"host folder for {state} (default %(default)s)",
    )


def run_agent(args: argparse.Namespace, vendors: VendorTable) -> int:
    from cluster.sync import load_api
    from node.agent import (
        AgentMetrics,
        desired_node,
        dump,
        load_model_table,
    )
    from node.agent import run as run_loop
    from node.publish import Publisher

    configure_logging(args.log_level)
    opts = replace(
        _discovery(args),
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
    serve_registry(args, metrics.registry, "agent")
    exit_on_sigterm()
    run_loop(opts, Publisher(api), args.interval, once=args.once, metrics=metrics)
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


def run_device_plugin(args: argparse.Namespace, vendors: VendorTable) -> int:
    from cluster.sync import load_api
    from hcs.assignment import check_strategies, default_strategies
    from node.agent import desired_node
    from node.deviceplugin import (
        Allocator,
        CachedNodeApi,
        DevicePlugin,
        PluginDevice,
        devices_of,
    )
    from node.podcache import NodeCache, Writer

    configure_logging(args.log_level)
    if args.replicas < 1:
        raise ConfigError(f"--replicas {args.replicas}: expected a whole number >= 1")
    limiter = _limiter(args, vendors)
    opts = _discovery(args)
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


def run_dra_plugin(args: argparse.Namespace, vendors: VendorTable) -> int:
    from cluster.sync import load_api
    from node.agent import desired_node
    from node.deviceplugin import HamiCore
    from node.draplugin import (
        DraPlugin,
        KubeDra,
        LastDiscovery,
        Preparer,
        PublishedSharing,
        SlicePublisher,
    )
    from node.publish import Publisher

    configure_logging(args.log_level)
    opts = _discovery(args)

    def discover() -> dict[str, Any] | None:
        node, complete = desired_node(opts)
        return node if complete else None

    if args.dry_run:
        from hcs.dra import resource_slices

        found = discover()
        if found is None:
            raise ConfigError("the vendor tool's output is incomplete: no slices to print")
        slices = resource_slices(
            ComputeNode.from_dict(found), 1, min_health=args.min_health, vendors=vendors
        )
        print(yaml.safe_dump_all(slices, sort_keys=False), end="")
        return 0
    api = load_api(args.kubeconfig, hint="pass --kubeconfig FILE (the driver reads claims)")
    kube = KubeDra(api)
    hami = None
    if args.vendor == "nvidia":
        try:
            hami = HamiCore.prepare(Path(args.limiter_dir), Path(args.limiter_state_dir), vendors)
        except ConfigError:
            hami = None  # shares under hami-core are then published unshared (PublishedSharing)
    published = Publisher(api)
    sharing = PublishedSharing(
        discover, lambda: published.read(args.node_name), hami_installed=hami is not None
    )
    plugin = DraPlugin(
        Preparer(
            args.node_name, vendors, kube, Path(args.cdi_dir), LastDiscovery(sharing), hami=hami
        ),
        SlicePublisher(args.node_name, kube, min_health=args.min_health, vendors=vendors),
        Path(args.plugin_dir),
        Path(args.registry_dir),
        interval=args.interval,
    )
    signal.signal(signal.SIGTERM, lambda *_: plugin.stopping.set())
    try:
        plugin.run()
    except KeyboardInterrupt:
        plugin.stopping.set()
    return 0


def _discovery(args: argparse.Namespace) -> AgentOptions:
    """How the agent, the device plugin and the DRA driver find the node's devices (the same
    flags, `discovery_args`)."""
    from node.agent import AgentOptions, parse_tool_outputs

    return AgentOptions(
        node_name=args.node_name,
        vendor=args.vendor,
        tool_outputs=parse_tool_outputs(args.tool_output),
        fake_devices=Path(args.fake_devices) if args.fake_devices else None,
    )
