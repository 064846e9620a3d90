"""`hcs device-plugin`: kubelet's device plugin (API v1beta1) for the vendor's resource, so the
device the extender chose is the device the container gets, and kubelet's books equal HCS's.

Kubelet never says which pod an Allocate serves. The plugin decides it from the API server,
with certainty or not at all:

- the pods bound to this node that ask for the resource and have not been admitted yet (no
  container status, not every requesting container in `hcs.io/allocated`) are the candidates;
  each one's next container in kubelet's order (init containers first) is the one kubelet would
  allocate;
- a candidate bound by HCS carries that container's devices in `devices.hcs.io/<container>`; the
  bind's node lock (hcs.nodelock) means at most one such pod is waiting on the node;
- a candidate placed without HCS (another scheduler, a preset nodeName, a legacy resource in an
  excluded namespace) may take devices that HCS's books show free; the plugin then writes the
  assignment annotations on it, so the extender's ledger counts it;
- exactly one candidate must agree with kubelet's request (its devices, or its count and free
  devices). Otherwise Allocate fails with a clear error: kubelet marks the pod
  `UnexpectedAdmissionError` and its controller re-creates it. A wrong device is never handed out.

GetPreferredAllocation answers with the same choice, so kubelet books the devices HCS chose.
Allocate's answer comes from the vendor table (hcs.assignment.allocation), the same entries the
webhook's env comes from. What kubelet allocated is recorded in `hcs.io/allocated`, so a
repeated Allocate (kubelet restarted) gets the same answer; when every requesting container of
the lock's holder is allocated, the lock is released.

On shared nodes (`--replicas N`) each device is advertised as N kubelet devices `<id>::<k>`, so
kubelet admits several pods per device; the extender's per-device VRAM books decide what fits.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
import orjson
from kubernetes import client

from cluster.lease import NodeLock
from hcs.assignment import (
    A_ALLOCATED,
    ContainerDevices,
    allocation,
    check_strategies,
    container_annotations,
    container_devices,
    default_strategies,
    held_ids,
)
from hcs.demand import A_ASSIGNED_DEVICES, A_ASSIGNED_NODE, A_ASSIGNED_VENDOR
from hcs.errors import HcsError
from hcs.nodelock import LOCK_NAMESPACE
from hcs.vendors import VendorProfile
from node.v1beta1 import api_pb2, api_pb2_grpc

log = logging.getLogger("hcs.deviceplugin")

API_VERSION: Final = "v1beta1"
KUBELET_SOCKET: Final = "kubelet.sock"
HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"
REPLICA: Final = "::"


class AllocateError(HcsError):
    """The pod kubelet is admitting cannot be identified for certain, or its devices differ."""

    code = "InvalidRequest"


@dataclass(frozen=True)
class PluginDevice:
    id: str
    healthy: bool
    numa: int | None = None
    identity: str | None = None
    model: str = ""


def devices_of(compute_node: Mapping[str, Any], min_health: int = 60) -> list[PluginDevice]:
    """The plugin's devices from the agent's ComputeNode (the same discovery)."""
    out = []
    for d in (compute_node.get("spec") or {}).get("devices") or []:
        out.append(
            PluginDevice(
                id=str(d["id"]),
                healthy=int(d.get("healthScore", 0)) >= min_health and not d.get("unschedulable"),
                numa=(d.get("topology") or {}).get("numaNode"),
                identity=d.get("identity"),
                model=str(d.get("model") or ""),
            )
        )
    return out


class NodeApi(Protocol):
    """The API calls the plugin makes (blocking)."""

    def pods_on(self, node: str) -> list[dict[str, Any]]: ...

    def annotate(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None: ...

    def release(self, node: str, uid: str) -> None: ...


def requesting(pod: Mapping[str, Any], resource: str) -> list[tuple[str, int]]:
    """(container, count) of the containers asking for `resource`, in kubelet's order."""
    spec = pod.get("spec") or {}
    out = []
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        res = c.get("resources") or {}
        value = (res.get("limits") or {}).get(resource) or (res.get("requests") or {}).get(resource)
        try:
            count = int(str(value)) if value is not None else 0
        except ValueError:
            count = 0
        if count > 0:
            out.append((str(c.get("name")), count))
    return out


def allocated(pod: Mapping[str, Any]) -> dict[str, list[str]]:
    """`hcs.io/allocated`: container -> the kubelet device IDs Allocate answered for."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(A_ALLOCATED) or "{}"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class _Want:
    """A pending pod's next container that kubelet may be allocating."""

    pod: dict[str, Any]
    container: str
    count: int
    assigned: tuple[str, ...] | None
    """HCS's choice for the container; None for a pod placed without HCS."""

    @property
    def key(self) -> str:
        meta = self.pod["metadata"]
        return f"{meta.get('namespace')}/{meta.get('name')}"


@dataclass
class Allocator:
    """The plugin's decisions, without gRPC (tested directly and through the server)."""

    node: str
    profile: VendorProfile
    api: NodeApi
    replicas: int = 1
    strategies: tuple[str, ...] = ()
    """How Allocate names the devices (hcs.assignment.STRATEGIES); empty: the vendor's default,
    one where a pod's own env cannot widen them."""
    devices: list[PluginDevice] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------- devices

    @property
    def resource(self) -> str:
        """The resource this node's devices are advertised as (the vendor table, by model:
        the webhook adds the same name to pods routed here)."""
        model = self.devices[0].model if self.devices else ""
        return self.profile.resource_for(model)

    def kubelet_devices(self) -> list[tuple[str, PluginDevice]]:
        """(kubelet device ID, device): the device itself, or its replicas when shared."""
        if self.replicas <= 1:
            return [(d.id, d) for d in self.devices]
        return [(f"{d.id}{REPLICA}{k}", d) for d in self.devices for k in range(self.replicas)]

    @staticmethod
    def device_of(kubelet_id: str) -> str:
        return kubelet_id.split(REPLICA, 1)[0]

    # ---------------------------------------------------------------- kubelet calls

    def preferred(self, available: Sequence[str], must: Sequence[str], size: int) -> list[str]:
        """GetPreferredAllocation: the devices of the container kubelet is admitting, as kubelet
        IDs among `available`; empty (no preference) when that container is not certain."""
        with self._lock:
            pods = self._live_pods()
            want, _ = self._admitting(pods, size)
            if want is None:
                return []  # not certain: kubelet picks, Allocate decides
            return self._pick(want, pods, available, must) or []

    def allocate(self, kubelet_ids: Sequence[str]) -> ContainerDevices:
        """Allocate for one container: identify it for certain, answer, record, unlock."""
        with self._lock:
            pods = self._live_pods()
            repeat = self._repeat(pods, kubelet_ids)
            if repeat is not None:
                return repeat
            device_ids = [self.device_of(k) for k in kubelet_ids]
            unknown = [d for d in device_ids if d not in {x.id for x in self.devices}]
            if unknown:
                raise AllocateError(f"{self.node}: kubelet asked for unknown devices {unknown}")
            want, wants = self._admitting(pods, len(kubelet_ids))
            if want is None:
                pending = ", ".join(f"{w.key} ({w.container}: {w.count})" for w in wants) or "none"
                same = sum(w.count == len(kubelet_ids) for w in wants)
                why = "several pods could be" if same else "no pending pod asks for that many"
                raise AllocateError(
                    f"{self.node}: cannot tell for certain which pod kubelet is admitting with "
                    f"{self.resource} {list(kubelet_ids)}: {why} (pending: {pending})"
                )
            if want.assigned is not None and sorted(want.assigned) != sorted(device_ids):
                raise AllocateError(
                    f"{self.node}: kubelet chose {list(kubelet_ids)} for {want.key} "
                    f"({want.container}), HCS bound it to {','.join(want.assigned)}: refusing "
                    "rather than giving it devices HCS's books do not show it holding"
                )
            if want.assigned is None and (
                len(set(device_ids)) != len(device_ids) or not set(device_ids) <= self._free(pods)
            ):
                raise AllocateError(
                    f"{self.node}: {want.key} ({want.container}) was placed without HCS, and "
                    f"{list(kubelet_ids)} are not free in HCS's books"
                )
            ordered = list(want.assigned) if want.assigned is not None else device_ids
            self._record(want, pods, kubelet_ids, ordered)
            return self._answer(ordered)

    # ---------------------------------------------------------------- internals

    def __post_init__(self) -> None:
        self.strategies = check_strategies(
            self.profile, self.strategies or default_strategies(self.profile)
        )

    def _answer(self, devices: Sequence[str]) -> ContainerDevices:
        return allocation(self.profile, devices, self._identities(), strategies=self.strategies)

    def _identities(self) -> dict[str, str]:
        return {d.id: d.identity for d in self.devices if d.identity}

    def _live_pods(self) -> list[dict[str, Any]]:
        return [
            p
            for p in self.api.pods_on(self.node)
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]

    def _repeat(
        self, pods: list[dict[str, Any]], kubelet_ids: Sequence[str]
    ) -> ContainerDevices | None:
        """The same answer for a container kubelet already allocated (e.g. after a restart)."""
        for pod in pods:
            for container, ids in allocated(pod).items():
                if sorted(ids) == sorted(kubelet_ids):
                    annotations = (pod.get("metadata") or {}).get("annotations") or {}
                    devices = container_devices(annotations).get(container)
                    if devices is not None:
                        return self._answer(devices)
        return None

    def _admitting(self, pods: list[dict[str, Any]], size: int) -> tuple[_Want | None, list[_Want]]:
        """The container kubelet is admitting with `size` devices, if certain: kubelet may be
        admitting any pending pod whose next container asks for that many, so exactly one may.
        Also every pending container, for messages."""
        wants = self._wanted(pods)
        same = [w for w in wants if w.count == size]
        return (same[0] if len(same) == 1 else None), wants

    def _wanted(self, pods: list[dict[str, Any]]) -> list[_Want]:
        out = []
        for pod in pods:
            status = pod.get("status") or {}
            if status.get("containerStatuses") or status.get("initContainerStatuses"):
                continue  # already admitted by kubelet
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            done = allocated(pod)
            annotations = (pod.get("metadata") or {}).get("annotations") or {}
            assigned = container_devices(annotations)
            for name, count in requesting(pod, self.resource):
                if name not in done:
                    out.append(_Want(pod, name, count, assigned.get(name)))
                    break
        return out

    def _held(self, pods: list[dict[str, Any]]) -> set[str]:
        held: set[str] = set()
        for pod in pods:
            held |= held_ids((pod.get("metadata") or {}).get("annotations") or {})
        return held

    def _free(self, pods: list[dict[str, Any]]) -> set[str]:
        """Healthy devices no pod holds in HCS's books (for pods placed without HCS)."""
        return {d.id for d in self.devices if d.healthy} - self._held(pods)

    def _pick(
        self,
        want: _Want,
        pods: list[dict[str, Any]],
        available: Sequence[str],
        must: Sequence[str],
    ) -> list[str] | None:
        by_device: dict[str, list[str]] = {}
        for k in available:
            by_device.setdefault(self.device_of(k), []).append(k)
        if want.assigned is not None:
            if any(not by_device.get(d) for d in want.assigned):
                return None
            return [sorted(by_device[d])[0] for d in want.assigned]
        free = sorted(self._free(pods) & set(by_device), key=_order)
        chosen = [d for d in dict.fromkeys(self.device_of(m) for m in must) if d in free]
        chosen += [d for d in free if d not in chosen][: want.count - len(chosen)]
        if len(chosen) < want.count:
            return None
        return [sorted(by_device[d])[0] for d in chosen]

    def _record(
        self,
        want: _Want,
        pods: list[dict[str, Any]],
        kubelet_ids: Sequence[str],
        devices: list[str],
    ) -> None:
        meta = want.pod["metadata"]
        done = {**allocated(want.pod), want.container: list(kubelet_ids)}
        annotations = {A_ALLOCATED: orjson.dumps(done).decode()}
        if want.assigned is None:
            # Placed without HCS: write the assignment so the extender's ledger counts it.
            current = container_devices(meta.get("annotations") or {})
            current[want.container] = tuple(devices)
            pod_wide = list(dict.fromkeys(d for ids in current.values() for d in ids))
            annotations |= container_annotations([(want.container, devices)])
            annotations |= {
                A_ASSIGNED_DEVICES: ",".join(pod_wide),
                A_ASSIGNED_NODE: self.node,
                A_ASSIGNED_VENDOR: self.profile.name,
            }
            log.info(
                "pod %s/%s (%s) placed without HCS: devices %s",
                meta.get("namespace"),
                meta.get("name"),
                want.container,
                ",".join(devices),
            )
        self.api.annotate(str(meta.get("namespace")), str(meta.get("name")), annotations)
        names = {n for n, _ in requesting(want.pod, self.resource)}
        if names <= set(done):
            self.api.release(self.node, str(meta.get("uid")))


def _order(dev_id: str) -> tuple[int, str]:
    return (int(dev_id), "") if dev_id.isdigit() else (1 << 30, dev_id)


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
                        api_pb2.Mount(container_path=c, host_path=h, read_only=True)
                        for c, h in answer.mounts
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
    ) -> None:
        self.allocator = allocator
        self.kubelet_dir = Path(kubelet_dir)
        self.discover = discover
        self.interval = interval
        self.socket_name = socket_name or f"hcs-{allocator.profile.name}.sock"
        self.changed = threading.Condition()
        self.generation = 0
        self.stopping = threading.Event()
        self.registrations = 0
        self._server: Any = None
        self._kubelet_socket: tuple[int, int] | None = None

    @property
    def socket_path(self) -> Path:
        return self.kubelet_dir / self.socket_name

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
        """Re-discover; a failed discovery marks every known device Unhealthy."""
        found = self.discover()
        if found is None:
            found = [PluginDevice(d.id, False, d.numa, d.identity) for d in self.allocator.devices]
        if found == self.allocator.devices:
            return False
        with self.changed:
            self.allocator.devices = found
            self.generation += 1
            self.changed.notify_all()
        return True

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
            return
        if current != self._kubelet_socket or not self.socket_path.exists():
            self.serve()
            try:
                self.register()
                self._kubelet_socket = current
            except grpc.RpcError as exc:
                self._kubelet_socket = None
                log.warning("registering with kubelet failed (%s); retrying", exc.code())

    def run(self, poll: float = 0.5) -> None:
        """Until `stopping` is set: watch kubelet's socket, re-discover every interval."""
        self.refresh()
        next_refresh = time.monotonic() + self.interval
        try:
            while not self.stopping.is_set():
                self.step()
                if time.monotonic() >= next_refresh:
                    self.refresh()
                    next_refresh = time.monotonic() + self.interval
                self.stopping.wait(poll)
        finally:
            with self.changed:
                self.changed.notify_all()
            self.stop_server()


class KubeNodeApi:
    """NodeApi through the API server: the node's pods, annotation patches, the node lock."""

    def __init__(self, api: Any, lock_namespace: str = LOCK_NAMESPACE) -> None:
        self.core = client.CoreV1Api(api)
        self.locks = NodeLock(api, lock_namespace)

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        raw: Any = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}", _preload_content=False, _request_timeout=4
        )
        items: list[dict[str, Any]] = orjson.loads(raw.data).get("items") or []
        return items

    def annotate(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        body: Any = {"metadata": {"annotations": dict(annotations)}}
        self.core.patch_namespaced_pod(
            name,
            namespace,
            body,
            _content_type="application/merge-patch+json",
            _preload_content=False,
            _request_timeout=4,
        )

    def release(self, node: str, uid: str) -> None:
        self.locks.release(node, uid)
