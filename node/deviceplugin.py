"""`hcs device-plugin`: kubelet's device plugin (API v1beta1) for the vendor's resource, so the
device the extender chose is the device the container gets, and kubelet's books equal HCS's.

A thin shell: the rules (which pod kubelet admits, reuse, realignment, what to record) are
`hcs.nodeplan`; the node's pods and ComputeNode are kept in memory by `node.podcache`, so
`GetPreferredAllocation` and `Allocate` never wait on the API server (kubelet calls them with no
deadline, inside the loop that admits every pod of the node). What the plugin decides is laid
over its cache at once and written afterwards, in order, with retries; what a crash loses before
the write lands is written again from kubelet's PodResources API (`reconcile`).

Allocate's answer comes from the vendor table (hcs.assignment.allocation), the same entries the
webhook's env comes from. On shared nodes each device is advertised as N kubelet devices
`<id>::<k>`, N being the `hcs.io/device-slots` the agent publishes on the ComputeNode (one
source for both containers; `--replicas` until the ComputeNode is seen).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol

import grpc

from hcs.assignment import ContainerDevices, allocation, check_strategies, default_strategies
from hcs.errors import ConfigError, HcsError
from hcs.limiter import (
    HAMI_LIBRARY,
    HAMI_LIBRARY_PATH,
    DeviceSize,
    Enforcement,
    HamiPaths,
    container_demand,
    hami_core,
    model_templates,
    vnpu,
)
from hcs.models import SLOTS_LABEL
from hcs.nodeplan import (
    REPLICA,
    AllocateError,
    Books,
    Decision,
    NodeDevice,
    Repeat,
    decide_allocate,
    device_of,
    kubelet_ids,
    live,
    prefer,
    reconcile,
    requesting,
)
from hcs.quantity import milli_tflops, vram_mib
from hcs.vendors import VendorProfile, VendorTable
from node.podresources import list_devices
from node.v1beta1 import api_pb2, api_pb2_grpc

log = logging.getLogger("hcs.deviceplugin")

API_VERSION: Final = "v1beta1"
KUBELET_SOCKET: Final = "kubelet.sock"
WAITING_LOG_S: Final = 30.0
"""While the plugin waits (kubelet's socket absent, no devices yet), it says so this often."""
HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"
PluginDevice = NodeDevice
__all__ = ["REPLICA", "AllocateError", "Allocator", "DevicePlugin", "PluginDevice", "requesting"]


def devices_of(compute_node: Mapping[str, Any], min_health: int = 60) -> list[NodeDevice]:
    """The plugin's devices from a ComputeNode (the agent's discovery): below `min_health`, or
    re-indexed (`unschedulable`), a device is advertised Unhealthy."""
    out = []
    for d in (compute_node.get("spec") or {}).get("devices") or []:
        out.append(
            NodeDevice(
                id=str(d["id"]),
                healthy=int(d.get("healthScore", 0)) >= min_health and not d.get("unschedulable"),
                numa=(d.get("topology") or {}).get("numaNode"),
                identity=d.get("identity"),
                model=str(d.get("model") or ""),
                vram_mib=_size(vram_mib, d.get("vram")),
                fp16_milli_tflops=_size(milli_tflops, (d.get("compute") or {}).get("fp16")),
                fp32_milli_tflops=_size(milli_tflops, (d.get("compute") or {}).get("fp32")),
            )
        )
    return out


def _size(convert: Callable[..., int], value: Any) -> int:
    """A capacity from the ComputeNode, 0 when absent or unreadable (no share is derived)."""
    try:
        return convert(value, round_up=False) if value is not None else 0
    except HcsError:
        return 0


@dataclass(frozen=True)
class HamiCore:
    """`--limiter hami-core`: HAMi-core (installed by the node's owner in `library_dir`)
    enforces each fractional container's booking (hcs.limiter). Per-container folders live
    under `state_dir` and go when their pod is gone."""

    library_dir: Path
    state_dir: Path
    vendors: VendorTable

    @classmethod
    def prepare(cls, library_dir: Path, state_dir: Path, vendors: VendorTable) -> HamiCore:
        """Check the library and lay out `state_dir`; ConfigError in one line otherwise."""
        library = library_dir / HAMI_LIBRARY
        if not library.is_file() or not os.access(library, os.R_OK):
            raise ConfigError(
                f"--limiter hami-core: {library} is missing or unreadable; HCS does not ship "
                "HAMi-core: install libvgpu.so there (--limiter-dir) or run without --limiter"
            )
        try:
            (state_dir / "containers").mkdir(parents=True, exist_ok=True)
            (state_dir / "vgpulock").mkdir(exist_ok=True)
            (state_dir / "ld.so.preload").write_text(HAMI_LIBRARY_PATH + "\n")
        except OSError as exc:
            raise ConfigError(f"--limiter-state-dir {state_dir}: {exc.strerror}") from None
        return cls(library_dir, state_dir, vendors)

    def enforce(
        self, pod: Mapping[str, Any], container: str, devices: Sequence[NodeDevice]
    ) -> Enforcement | None:
        demand = container_demand(pod, container, self.vendors)
        if demand is None:
            return None
        sizes = [DeviceSize(d.vram_mib, d.fp16_milli_tflops) for d in devices]
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        folder = self.state_dir / "containers" / f"{uid}_{container}"
        enforcement = hami_core(demand, sizes, **asdict(self.paths(folder)))
        if enforcement is not None:
            folder.mkdir(exist_ok=True)
        return enforcement

    def paths(self, folder: Path) -> HamiPaths:
        """HAMi-core's host paths for a container (or claim request) whose own folder is
        `folder`: the library here, the node's lock folder and preload file."""
        return HamiPaths(
            str(self.library_dir),
            str(folder),
            str(self.state_dir / "vgpulock"),
            str(self.state_dir / "ld.so.preload"),
        )

    def clean(self, live_uids: set[str]) -> list[str]:
        """Remove the folders of containers whose pod is gone; their names."""
        gone = []
        for folder in (self.state_dir / "containers").iterdir():
            if folder.name.split("_", 1)[0] not in live_uids:
                shutil.rmtree(folder, ignore_errors=True)
                gone.append(folder.name)
        return gone


@dataclass(frozen=True)
class Vnpu:
    """`--limiter vnpu`: Ascend Docker Runtime cuts the chip into the vNPU template HCS booked
    (`ASCEND_VNPU_SPECS`, hcs.limiter.vnpu); the templates per chip come from the vendor
    table, the same entries the extender books by."""

    vendors: VendorTable

    def enforce(
        self, pod: Mapping[str, Any], container: str, devices: Sequence[NodeDevice]
    ) -> Enforcement | None:
        demand = container_demand(pod, container, self.vendors)
        if demand is None or not devices:
            return None
        first = devices[0]
        options = model_templates(
            self.vendors, "huawei", first.model, first.fp16_milli_tflops, first.fp32_milli_tflops
        )
        sizes = [DeviceSize(d.vram_mib, d.fp16_milli_tflops) for d in devices]
        return vnpu(demand, options, sizes)

    def clean(self, live_uids: set[str]) -> list[str]:
        """Nothing kept on the node: the runtime destroys a vNPU with its container."""
        return []


Limiter = HamiCore | Vnpu


def published_view(
    found: list[NodeDevice], published: Mapping[str, Any] | None
) -> tuple[list[NodeDevice], int | None]:
    """Local discovery with what the agent published laid over it: devices the agent marked
    re-indexed (`unschedulable`) are Unhealthy here too, and the slots per device."""
    if not published:
        return found, None
    flagged = {
        str(d.get("id"))
        for d in (published.get("spec") or {}).get("devices") or []
        if d.get("unschedulable")
    }
    labels = (published.get("metadata") or {}).get("labels") or {}
    try:
        slots: int | None = int(labels[SLOTS_LABEL]) if SLOTS_LABEL in labels else 1
    except ValueError:
        slots = None
    return [replace(d, healthy=False) if d.id in flagged else d for d in found], slots


class NodeApi(Protocol):
    """What the plugin reads and writes: the node's pods from memory, writes queued."""

    def pods(self) -> list[dict[str, Any]]: ...

    def record(self, pod: Mapping[str, Any], annotations: Mapping[str, str]) -> None: ...

    def release(self, node: str, uid: str) -> None: ...

    def wait_for_change(self, timeout: float) -> bool:
        """Wait until the cached view changes (a watch event), at most `timeout` seconds."""
        ...


WATCH_GRACE_S: Final = 2.0
"""How long Allocate waits for its watch to show a pod it cannot identify yet: kubelet and the
plugin learn of a binding from two watches, and kubelet may be first."""


@dataclass
class Allocator:
    """The plugin's answers to kubelet over `hcs.nodeplan`, without gRPC."""

    node: str
    profile: VendorProfile
    api: NodeApi
    replicas: int = 1
    strategies: tuple[str, ...] = ()
    """How Allocate names the devices (hcs.assignment.STRATEGIES); empty: the vendor's default,
    one where a pod's own env cannot widen them."""
    devices: list[NodeDevice] = field(default_factory=list)
    limiter: Limiter | None = None
    """The share limiter Allocate hands fractional containers to (None: no enforcement)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.strategies = check_strategies(
            self.profile, self.strategies or default_strategies(self.profile)
        )

    @property
    def resource(self) -> str:
        """The resource this node's devices are advertised as (the vendor table, by model:
        the webhook adds the same name to pods routed here)."""
        model = self.devices[0].model if self.devices else ""
        return self.profile.resource_for(model)

    def kubelet_devices(self) -> list[tuple[str, NodeDevice]]:
        return kubelet_ids(self.devices, self.replicas)

    @staticmethod
    def device_of(kubelet_id: str) -> str:
        return device_of(kubelet_id)

    def _books(self) -> Books:
        return Books(tuple(live(self.api.pods())), tuple(self.devices))

    def _answer(
        self, devices: Sequence[str], pod: Mapping[str, Any], container: str
    ) -> ContainerDevices:
        identities = {d.id: d.identity for d in self.devices if d.identity}
        answer = allocation(self.profile, devices, identities, strategies=self.strategies)
        if self.limiter is None:
            return answer
        by_id = {d.id: d for d in self.devices}
        enforced = self.limiter.enforce(pod, container, [by_id[d] for d in devices if d in by_id])
        if enforced is None:
            return answer
        return replace(
            answer,
            envs={**answer.envs, **enforced.envs},
            mounts=(*answer.mounts, *((c, h) for c, h, ro in enforced.mounts if ro)),
            writable_mounts=tuple((c, h) for c, h, ro in enforced.mounts if not ro),
        )

    def preferred(self, available: Sequence[str], must: Sequence[str], size: int) -> list[str]:
        """GetPreferredAllocation; any failure is no preference (logged), never an error:
        an error would fail the pod's admission."""
        deadline = time.monotonic() + WATCH_GRACE_S
        try:
            with self._lock:
                while True:
                    chosen = prefer(self._books(), self.resource, available, must, size)
                    left = deadline - time.monotonic()
                    if chosen is not None or left <= 0 or not self.api.wait_for_change(left):
                        return chosen or []
        except Exception as exc:
            log.warning("GetPreferredAllocation %s: no preference (%s)", list(available), exc)
            return []

    def allocate(self, kubelet: Sequence[str]) -> ContainerDevices:
        """Allocate for one container: identify it, answer, record (queued). A pod the cache
        does not show yet is waited for, briefly, on the watch (never on a request)."""
        deadline = time.monotonic() + WATCH_GRACE_S
        with self._lock:
            while True:
                try:
                    decision = decide_allocate(
                        self._books(),
                        self.resource,
                        kubelet,
                        node=self.node,
                        vendor=self.profile.name,
                    )
                    break
                except AllocateError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self.api.wait_for_change(left):
                        raise
            if isinstance(decision, Repeat):
                return self._answer(decision.devices, decision.pod, decision.container)
            self._apply(decision)
            return self._answer(decision.devices, decision.want.pod, decision.want.container)

    def clean_limiter(self) -> list[str]:
        """Remove the limiter's folders of containers whose pod is no longer live."""
        if self.limiter is None:
            return []
        uids = {str((p.get("metadata") or {}).get("uid")) for p in live(self.api.pods())}
        gone = self.limiter.clean(uids)
        for name in gone:
            log.info("limiter: removed the folder of %s (its pod is gone)", name)
        return gone

    def reconcile(self, given: Mapping[tuple[str, str], Mapping[str, Sequence[str]]]) -> int:
        """Record what kubelet really gave (PodResources) where the books miss it: the writes
        a crash lost, or a pod admitted while the plugin was away. Returns how many."""
        with self._lock:
            decisions = reconcile(
                self._books(), self.resource, given, node=self.node, vendor=self.profile.name
            )
            for d in decisions:
                self._apply(d)
            return len(decisions)

    def _apply(self, decision: Decision) -> None:
        want = decision.want
        self.api.record(want.pod, decision.annotations)
        if decision.moved:
            log.info(
                "pod %s (%s): kubelet gave %s instead of HCS's %s; the books follow",
                want.key,
                want.container,
                ",".join(decision.devices),
                ",".join(want.assigned or ()),
            )
        elif not want.by_hcs:
            log.info(
                "pod %s (%s) placed without HCS: devices %s",
                want.key,
                want.container,
                ",".join(decision.devices),
            )
        if decision.release:
            uid = str((want.pod.get("metadata") or {}).get("uid"))
            self.api.release(self.node, uid)


# ------------------------------------------------------------------------------------ gRPC


class _Servicer(api_pb2_grpc.DevicePluginServicer):
    """gRPC method names are kubelet's (the wire contract), hence CamelCase."""

    def __init__(self, plugin: DevicePlugin) -> None:
        self.plugin = plugin

    def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
        seen = -1
        while context.is_active() and not self.plugin.stopping.is_set():
            with self.plugin.changed:
                if self.plugin.generation == seen:
                    self.plugin.changed.wait(timeout=1.0)
                    continue
                seen = self.plugin.generation
                message = self.plugin.list_response()
            yield message

    def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        responses = []
        for req in request.container_requests:
            ids = self.plugin.allocator.preferred(
                list(req.available_deviceIDs), list(req.must_include_deviceIDs), req.allocation_size
            )
            responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def Allocate(self, request: Any, context: Any) -> Any:
        responses = []
        for req in request.container_requests:
            try:
                answer = self.plugin.allocator.allocate(list(req.devices_ids))
            except HcsError as exc:
                log.warning("Allocate %s refused: %s", list(req.devices_ids), exc.message)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, exc.message)
            except Exception as exc:  # the API server could not be read: no guess
                log.warning("Allocate %s failed: %s", list(req.devices_ids), exc)
                context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot identify the pod: {exc}")
            responses.append(
                api_pb2.ContainerAllocateResponse(
                    envs=answer.envs,
                    devices=[
                        api_pb2.DeviceSpec(container_path=p, host_path=p, permissions="rw")
                        for p in answer.device_nodes
                    ],
                    cdi_devices=[api_pb2.CDIDevice(name=n) for n in answer.cdi_devices],
                    mounts=[
                        *(
                            api_pb2.Mount(container_path=c, host_path=h, read_only=True)
                            for c, h in answer.mounts
                        ),
                        *(
                            api_pb2.Mount(container_path=c, host_path=h, read_only=False)
                            for c, h in answer.writable_mounts
                        ),
                    ],
                    annotations=answer.annotations,
                )
            )
        return api_pb2.AllocateResponse(container_responses=responses)

    def PreStartContainer(self, request: Any, context: Any) -> Any:
        return api_pb2.PreStartContainerResponse()


class DevicePlugin:
    """Serves the plugin socket, registers with kubelet, re-registers when kubelet restarts,
    and streams device health as discovery changes."""

    def __init__(
        self,
        allocator: Allocator,
        kubelet_dir: Path,
        discover: Callable[[], list[PluginDevice] | None],
        *,
        interval: float = 30.0,
        socket_name: str | None = None,
        cache: Any = None,
        pod_resources: Path | None = None,
    ) -> None:
        self.allocator = allocator
        self.kubelet_dir = Path(kubelet_dir)
        self.discover = discover
        self.interval = interval
        self.socket_name = socket_name or f"hcs-{allocator.profile.name}.sock"
        self.cache = cache
        """The node's pods and ComputeNode in memory (node.podcache.NodeCache): the plugin
        registers once it has listed them, and reads the published slots and re-indexed
        devices from the ComputeNode."""
        self.pod_resources = pod_resources
        """kubelet's PodResources socket: what kubelet really gave, for `reconcile`."""
        self.changed = threading.Condition()
        self.generation = 0
        self.stopping = threading.Event()
        self.registrations = 0
        self.discovered = False
        """Discovery succeeded once: before that the resource name is unknown (a 310P node
        would register huawei.com/Ascend910), so nothing is registered."""
        self.registered_as: str | None = None
        self._server: Any = None
        self._kubelet_socket: tuple[int, int] | None = None
        self._said: dict[str, float] = {}
        """When each waiting message was last logged (one per `waiting_log_s`)."""
        self.waiting_log_s = WAITING_LOG_S

    @property
    def socket_path(self) -> Path:
        return self.kubelet_dir / self.socket_name

    @property
    def ready_path(self) -> Path:
        """Exists while the plugin is registered with the running kubelet: the DaemonSet's
        readiness probe checks it. It lives in kubelet's folder, which kubelet empties when it
        starts, so a kubelet restart makes the plugin unready until it registers again."""
        return self.socket_path.with_suffix(".ready")

    def _ready(self, ready: bool) -> None:
        try:
            if ready:
                self.ready_path.write_text(f"{self.registered_as}\n")
            else:
                self.ready_path.unlink(missing_ok=True)
        except OSError as exc:
            self._say("ready-file", "cannot write %s: %s", self.ready_path, exc.strerror)

    def _say(self, what: str, message: str, *args: object) -> None:
        """Log a waiting condition at once, then every `waiting_log_s` while it lasts."""
        now = time.monotonic()
        last = self._said.get(what)
        if last is None or now - last >= self.waiting_log_s:
            self._said[what] = now
            log.warning(message, *args)

    def list_response(self) -> Any:
        return api_pb2.ListAndWatchResponse(
            devices=[
                api_pb2.Device(
                    ID=kid,
                    health=HEALTHY if d.healthy else UNHEALTHY,
                    topology=(
                        api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=d.numa)])
                        if d.numa is not None
                        else None
                    ),
                )
                for kid, d in self.allocator.kubelet_devices()
            ]
        )

    def refresh(self) -> bool:
        """Re-discover; a failed discovery marks every known device Unhealthy. The agent's
        ComputeNode, where cached, marks re-indexed devices Unhealthy and sets the slots."""
        found = self.discover()
        if found is None:
            found = [replace(d, healthy=False) for d in self.allocator.devices]
        else:
            self.discovered = True
        published = self.cache.compute_node if self.cache is not None else None
        found, slots = published_view(found, published)
        replicas = self.allocator.replicas if slots is None else slots
        if slots is not None and slots != self.allocator.replicas:
            log.info("advertising %d replicas per device, as the ComputeNode says", slots)
        if found == self.allocator.devices and replicas == self.allocator.replicas:
            return False
        with self.changed:
            self.allocator.devices = found
            self.allocator.replicas = replicas
            self.generation += 1
            self.changed.notify_all()
        return True

    def reconcile(self) -> int:
        """Write what kubelet really gave where the books miss it (PodResources)."""
        if self.pod_resources is None or not self.pod_resources.exists():
            return 0
        try:
            given = list_devices(self.pod_resources, self.allocator.resource)
        except grpc.RpcError as exc:
            log.warning("PodResources List failed (%s); reconciling later", exc.code())
            return 0
        fixed = self.allocator.reconcile(given)
        if fixed:
            log.info("recorded %d allocation(s) from kubelet's PodResources", fixed)
        return fixed

    def serve(self) -> None:
        """(Re)create the plugin socket and serve it."""
        self.stop_server()
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        api_pb2_grpc.add_DevicePluginServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0.5).wait()
            self._server = None

    def register(self) -> None:
        """Register the resource on kubelet.sock (raises grpc.RpcError if kubelet is absent)."""
        target = f"unix://{self.kubelet_dir / KUBELET_SOCKET}"
        with grpc.insecure_channel(target) as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(
                api_pb2.RegisterRequest(
                    version=API_VERSION,
                    endpoint=self.socket_name,
                    resource_name=self.allocator.resource,
                    options=api_pb2.DevicePluginOptions(get_preferred_allocation_available=True),
                ),
                timeout=5.0,
            )
        self.registrations += 1
        self.registered_as = self.allocator.resource
        log.info(
            "registered %s on %s as %s",
            self.allocator.resource,
            target,
            self.socket_name,
        )

    def _kubelet_socket_id(self) -> tuple[int, int] | None:
        """Inode and change time of kubelet.sock: a re-created socket may reuse the inode."""
        try:
            st = os.stat(self.kubelet_dir / KUBELET_SOCKET)
        except OSError:
            return None
        return st.st_ino, st.st_ctime_ns

    def step(self) -> None:
        """One watch round: (re)serve and register when kubelet's socket is new, or when our
        own socket was removed (kubelet empties the folder when it starts)."""
        current = self._kubelet_socket_id()
        if current is None:
            self._ready(False)
            self._kubelet_socket = None
            where = self.kubelet_dir / KUBELET_SOCKET
            why = "no such folder" if not self.kubelet_dir.is_dir() else "kubelet is not there"
            self._say(
                "kubelet",
                "waiting for kubelet: %s does not exist (%s; --kubelet-dir must be the host's "
                "kubelet device-plugins folder, mounted at the same path)",
                where,
                why,
            )
            return
        self._said.pop("kubelet", None)
        if not self.discovered:
            self._say("discovery", "waiting for the vendor tool to list the devices")
            return
        if self.cache is not None and not self.cache.synced.is_set():
            # Allocate must be able to answer from memory first
            self._say("pods", "waiting for this node's pods from the API server")
            return
        try:
            self.allocator.clean_limiter()
        except OSError as exc:
            log.warning("limiter: cleaning folders failed: %s", exc)
        renamed = self.registered_as not in (None, self.allocator.resource)
        if renamed:
            log.info(
                "discovery says %s, not %s: registering again",
                self.allocator.resource,
                self.registered_as,
            )
        if current != self._kubelet_socket or not self.socket_path.exists() or renamed:
            self._ready(False)  # a new kubelet knows nothing of us until we register
            self.serve()
            try:
                self.register()
                self._kubelet_socket = current
                self._ready(True)
            except grpc.RpcError as exc:
                self._kubelet_socket = None
                self._ready(False)
                log.warning("registering with kubelet failed (%s); retrying", exc.code())

    def run(self, poll: float = 0.5) -> None:
        """Until `stopping` is set: watch kubelet's socket, re-discover every interval."""
        log.info(
            "device plugin for %s on node %s: serving %s, registering on %s",
            self.allocator.profile.name,
            self.allocator.node,
            self.socket_path,
            self.kubelet_dir / KUBELET_SOCKET,
        )
        self._ready(False)
        self.refresh()
        next_refresh = time.monotonic() + self.interval
        reconciled = False
        try:
            while not self.stopping.is_set():
                self.step()
                if not reconciled and self.registered_as is not None:
                    self.reconcile()  # what a crash before the last writes left
                    reconciled = True
                if time.monotonic() >= next_refresh or not self.discovered:
                    self.refresh()
                    if reconciled:
                        self.reconcile()
                    next_refresh = time.monotonic() + self.interval
                self.stopping.wait(poll)
        finally:
            with self.changed:
                self.changed.notify_all()
            self._ready(False)
            self.stop_server()


class CachedNodeApi:
    """NodeApi over the in-memory cache (reads) and the writer (writes, afterwards)."""

    def __init__(self, cache: Any, writer: Any) -> None:
        self.cache = cache
        self.writer = writer

    def pods(self) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = self.cache.pods()
        return pods

    def record(self, pod: Mapping[str, Any], annotations: Mapping[str, str]) -> None:
        meta = pod.get("metadata") or {}
        self.cache.record(str(meta.get("uid")), annotations)
        self.writer.annotate(str(meta.get("namespace")), str(meta.get("name")), annotations)

    def release(self, node: str, uid: str) -> None:
        self.writer.release(node, uid)

    def wait_for_change(self, timeout: float) -> bool:
        changed: bool = self.cache.wait_for_change(timeout)
        return changed
