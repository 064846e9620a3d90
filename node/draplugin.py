"""`hcs dra-plugin`: HCS as the DRA driver `compute.hcs.io` on one node, for every vendor.

- Publishes the node's ResourceSlices from the agent's discovery (`hcs.dra.resource_slices`),
  bumping the pool's generation whenever the devices change (`SlicePublisher`).
- Registers with kubelet through `plugins_registry` (`GetInfo`: type `DRAPlugin`, name
  `compute.hcs.io`, `v1.DRAPlugin` and `v1beta1.DRAPlugin`).
- Serves `NodePrepareResources` / `NodeUnprepareResources` (`Preparer`): reads the claim's
  allocation, writes a CDI spec per claim (or names NVIDIA's own CDI devices where the node has
  NVIDIA's spec), answers the CDI ids; both idempotent.

Kubelet tells a DRA driver exactly which claim, and so which pod, it prepares: no node lock, no
guessing (compare the device plugin, docs/node.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
import yaml
from kubernetes import client

from cluster.kubeio import CALL_TIMEOUT_S, read_json
from hcs.dra import (
    DRIVER,
    NVIDIA_CDI_KIND,
    base_request,
    cdi_edits,
    cdi_spec_file,
    claim_cdi,
    consumed,
    device_name,
    enforcement_edits,
    is_part,
    merge_edits,
    resource_slices,
    share_enforcement,
    slices_changed,
    with_sharing,
)
from hcs.errors import HcsError
from hcs.limiter import HamiPaths
from hcs.models import ComputeNode, Device
from hcs.vendors import VendorTable
from node.deviceplugin import HamiCore
from node.dra.v1 import api_pb2 as dra_v1
from node.dra.v1 import api_pb2_grpc as dra_v1_grpc
from node.dra.v1beta1 import api_pb2 as dra_v1beta1
from node.dra.v1beta1 import api_pb2_grpc as dra_v1beta1_grpc
from node.pluginregistration.v1 import api_pb2 as reg_pb
from node.pluginregistration.v1 import api_pb2_grpc as reg_grpc

log = logging.getLogger("hcs.draplugin")

SUPPORTED_VERSIONS: Final = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
NVIDIA_CDI_DIRS: Final = (Path("/etc/cdi"), Path("/var/run/cdi"))


class ClaimReader(Protocol):
    def read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ResourceClaim, or None when it does not exist."""


class SliceStore(Protocol):
    def list_slices(self, node: str) -> list[dict[str, Any]]: ...
    def create_slice(self, obj: Mapping[str, Any]) -> None: ...
    def replace_slice(self, obj: Mapping[str, Any]) -> None: ...
    def delete_slice(self, name: str) -> None: ...


@dataclass(frozen=True)
class Prepared:
    request: str
    """The claim's request (no subrequest): kubelet matches it to `resources.claims[].request`."""
    pool: str
    device: str
    cdi_ids: tuple[str, ...]
    share_id: str | None = None


def nvidia_cdi_devices(dirs: Sequence[Path]) -> set[str]:
    """Device names of NVIDIA's own CDI spec (`nvidia.com/gpu`: by index, by UUID, `all`)
    found in `dirs`, as the NVIDIA Container Toolkit writes it (`nvidia-ctk cdi generate`)."""
    names: set[str] = set()
    for folder in dirs:
        try:
            files = sorted(folder.iterdir())
        except OSError:
            continue
        for path in files:
            if path.suffix not in (".json", ".yaml", ".yml"):
                continue
            try:
                spec = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(spec, dict) and spec.get("kind") == NVIDIA_CDI_KIND:
                names |= {str(d.get("name")) for d in spec.get("devices") or [] if d}
    return names


class LastDiscovery:
    """The node as last discovered: the plugin's loop refreshes it (the vendor tool runs once
    a round), Prepare reads it (never runs the tool while kubelet waits)."""

    def __init__(self, discover: Callable[[], ComputeNode | None]) -> None:
        self.discover = discover
        self.node: ComputeNode | None = None

    def refresh(self) -> ComputeNode | None:
        self.node = self.discover()
        return self.node

    def __call__(self) -> ComputeNode | None:
        return self.node if self.node is not None else self.refresh()


@dataclass
class PublishedSharing:
    """The node as discovered, sharing as the agent published it (`hcs.dra.with_sharing`):
    the agent's flags are the one source of a node's sharing, for the extender, quota and
    the slices alike. A node whose shares HAMi-core keeps, on which HAMi-core is not installed
    (`hami_installed`), is published unshared: never a share nothing enforces. When the
    ComputeNode cannot be read, the last one read stands."""

    discover: Callable[[], Mapping[str, Any] | None]
    read_published: Callable[[], Mapping[str, Any] | None]
    hami_installed: bool = False
    last: Mapping[str, Any] | None = None

    def __call__(self) -> ComputeNode | None:
        raw = self.discover()
        if raw is None:
            return None
        try:
            self.last = self.read_published()
        except Exception as exc:  # the API server may be away: keep what was read
            log.warning("reading the agent's ComputeNode failed (%s); sharing as before", exc)
        node = ComputeNode.from_dict(with_sharing(raw, self.last))
        if node.share_enforcement == "hami-core" and not self.hami_installed:
            log.error(
                "the agent publishes shares kept by HAMi-core, which is not installed here "
                "(--limiter-dir): devices published unshared"
            )
            return ComputeNode.from_dict(with_sharing(raw, None))
        return node


@dataclass
class Preparer:
    """NodePrepareResources / NodeUnprepareResources without gRPC."""

    node: str
    vendors: VendorTable
    claims: ClaimReader
    cdi_dir: Path
    discovered: Callable[[], ComputeNode | None]
    nvidia_cdi_dirs: Sequence[Path] = NVIDIA_CDI_DIRS
    hami: HamiCore | None = None
    """HAMi-core's library and state folders, where the node's shares are kept by it."""

    def prepare(self, namespace: str, uid: str, name: str) -> list[Prepared]:
        """The claim's devices on this node with their CDI ids; raises HcsError naming what is
        wrong (answered as that claim's error)."""
        claim = self.claims.read_claim(namespace, name)
        if claim is None:
            raise HcsError(f"ResourceClaim {namespace}/{name} not found")
        found_uid = str((claim.get("metadata") or {}).get("uid") or "")
        if found_uid != uid:
            raise HcsError(
                f"ResourceClaim {namespace}/{name} is {found_uid}, not {uid} (re-created)"
            )
        allocation = (claim.get("status") or {}).get("allocation") or {}
        results = [
            r
            for r in (allocation.get("devices") or {}).get("results") or []
            if r.get("driver") == DRIVER and r.get("pool") == self.node
        ]
        if not results:
            return []
        for i, config in enumerate((allocation.get("devices") or {}).get("config") or []):
            opaque = (config or {}).get("opaque") or {}
            if opaque.get("driver") == DRIVER:
                source = "the DeviceClass" if config.get("source") == "FromClass" else "the claim"
                raise HcsError(
                    f"status.allocation.devices.config[{i}]: {DRIVER} takes no opaque "
                    f"configuration (from {source}); ask through the requests' capacities and "
                    "selectors instead, and remove it"
                )
        cn = self.discovered()
        if cn is None:
            raise HcsError("the node's devices are not discovered yet; kubelet retries")
        by_name = {device_name(cn.vendor, d.id): d for d in cn.devices}
        missing = [r["device"] for r in results if r.get("device") not in by_name]
        if missing:
            raise HcsError(f"device(s) {', '.join(missing)} of pool {self.node} are not on it")
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for r in results:
            groups.setdefault(base_request(str(r.get("request") or "")), []).append(r)
        edits: dict[str, dict[str, Any]] = {}
        ids: dict[tuple[str, str], tuple[str, ...]] = {}
        # NVIDIA's spec read once per claim (it can be large), not per request.
        nvidia = nvidia_cdi_devices(self.nvidia_cdi_dirs) if cn.vendor == "nvidia" else set()
        for request, rs in groups.items():
            given = [by_name[r["device"]] for r in rs]
            shares = [consumed(r) for r in rs]
            parted = any(is_part(s, d) for s, d in zip(shares, given, strict=True))
            hami = self._hami(uid, request) if parted else None
            limits = enforcement_edits(share_enforcement(cn, self.vendors, given, shares, hami))
            own = self._nvidia_ids(nvidia, given) if nvidia else None
            if own is not None:  # NVIDIA's devices, HCS's spec for the limiter only
                for r, cdi in zip(rs, own, strict=True):
                    ids[(request, r["device"])] = (cdi,)
                if limits:
                    edits[request] = limits
            else:
                edits[request] = merge_edits(cdi_edits(self.vendors[cn.vendor], given), limits)
        if edits:
            spec, names = claim_cdi(uid, edits)
            self._write(uid, spec)
            for request, cdi in names.items():  # once per request: kubelet joins the ids
                first = groups[request][0]["device"]
                ids[(request, first)] = (*ids.get((request, first), ()), cdi)
        else:
            self.unprepare(uid)
        return [
            Prepared(
                request,
                self.node,
                str(r["device"]),
                ids.get((request, r["device"]), ()),
                str(r["shareID"]) if r.get("shareID") else None,
            )
            for request, rs in groups.items()
            for r in rs
        ]

    def _hami(self, uid: str, request: str) -> HamiPaths | None:
        """HAMi-core's host paths for one claim request (its own folder, made here)."""
        if self.hami is None:
            return None
        folder = self.hami.state_dir / "claims" / f"{uid}_{request}"
        folder.mkdir(parents=True, exist_ok=True)
        return self.hami.paths(folder)

    @staticmethod
    def _nvidia_ids(nvidia: set[str], given: Sequence[Device]) -> list[str] | None:
        """NVIDIA's own CDI ids, by UUID, where its spec (`nvidia`: the names it has) names
        every device; else None."""
        if not all(d.identity in nvidia for d in given):
            return None
        return [f"{NVIDIA_CDI_KIND}={d.identity}" for d in given]

    def _write(self, uid: str, spec: Mapping[str, Any]) -> None:
        """Atomically (a reader never sees half a spec), the same bytes on a repeat; two calls
        for one claim at once (kubelet's workers, two pods sharing a claim) each write their
        own temporary file."""
        self.cdi_dir.mkdir(parents=True, exist_ok=True)
        target = self.cdi_dir / cdi_spec_file(uid)
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, target)

    def unprepare(self, uid: str) -> None:
        """Remove the claim's spec and limiter folders (done already, or never written:
        nothing to do)."""
        (self.cdi_dir / cdi_spec_file(uid)).unlink(missing_ok=True)
        if self.hami is not None:
            for folder in (self.hami.state_dir / "claims").glob(f"{uid}_*"):
                shutil.rmtree(folder, ignore_errors=True)


def _answer(pb: Any, prepared: Sequence[Prepared]) -> list[Any]:
    """Devices in `pb`'s version; `share_id` only where the version has it (v1)."""
    shares = "share_id" in pb.Device.DESCRIPTOR.fields_by_name
    return [
        pb.Device(
            request_names=[p.request],
            pool_name=p.pool,
            device_name=p.device,
            cdi_device_ids=list(p.cdi_ids),
            **({"share_id": p.share_id} if shares and p.share_id else {}),
        )
        for p in prepared
    ]


def _servicer(pb: Any, base: type, preparer: Preparer) -> Any:
    """The DRAPlugin service for one API version (`pb` its messages): each claim answered on
    its own, an error for one never failing the others."""

    class Servicer(base):  # type: ignore[misc]
        def NodePrepareResources(self, request: Any, context: Any) -> Any:
            out = pb.NodePrepareResourcesResponse()
            for c in request.claims:
                try:
                    devices = _answer(pb, preparer.prepare(c.namespace, c.uid, c.name))
                    out.claims[c.uid].CopyFrom(pb.NodePrepareResourceResponse(devices=devices))
                except Exception as exc:  # one claim's error, never the call's
                    message = exc.message if isinstance(exc, HcsError) else repr(exc)
                    log.warning("prepare %s/%s (%s): %s", c.namespace, c.name, c.uid, message)
                    out.claims[c.uid].CopyFrom(pb.NodePrepareResourceResponse(error=message))
            return out

        def NodeUnprepareResources(self, request: Any, context: Any) -> Any:
            out = pb.NodeUnprepareResourcesResponse()
            for c in request.claims:
                try:
                    preparer.unprepare(c.uid)
                    out.claims[c.uid].CopyFrom(pb.NodeUnprepareResourceResponse())
                except OSError as exc:
                    out.claims[c.uid].CopyFrom(pb.NodeUnprepareResourceResponse(error=str(exc)))
            return out

    return Servicer()


class _Registration(reg_grpc.RegistrationServicer):
    def __init__(self, endpoint: Path, status: Callable[[bool, str], None]) -> None:
        self.endpoint = endpoint
        self.status = status

    def GetInfo(self, request: Any, context: Any) -> Any:
        return reg_pb.PluginInfo(
            type="DRAPlugin",
            name=DRIVER,
            endpoint=str(self.endpoint),
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        self.status(request.plugin_registered, request.error)
        return reg_pb.RegistrationStatusResponse()


@dataclass
class SlicePublisher:
    """The node's ResourceSlices on the API server, the pool's generation bumped on change."""

    node: str
    store: SliceStore
    min_health: int = 60
    generation: int | None = None
    vendors: VendorTable = field(default_factory=VendorTable)

    def _slices(self, cn: ComputeNode, generation: int) -> list[dict[str, Any]]:
        return resource_slices(cn, generation, min_health=self.min_health, vendors=self.vendors)

    def publish(self, cn: ComputeNode) -> bool:
        """Write the slices if they differ from what is published; whether anything was."""
        existing = self.store.list_slices(self.node)
        if self.generation is None:
            self.generation = max(
                [int((s.get("spec") or {}).get("pool", {}).get("generation", 0)) for s in existing]
                or [0]
            )
        wanted = self._slices(cn, self.generation)
        if existing and not slices_changed(existing, wanted):
            return False
        self.generation += 1
        wanted = self._slices(cn, self.generation)
        current = {s["metadata"]["name"]: s for s in existing}
        for obj in wanted:
            name = obj["metadata"]["name"]
            if name in current:
                version = current[name]["metadata"].get("resourceVersion")
                self.store.replace_slice(
                    {**obj, "metadata": {**obj["metadata"], "resourceVersion": version}}
                )
            else:
                self.store.create_slice(obj)
        for name in set(current) - {o["metadata"]["name"] for o in wanted}:
            self.store.delete_slice(name)
        log.info(
            "published %d device(s) of %s in pool generation %d",
            sum(len(o["spec"]["devices"]) for o in wanted),
            self.node,
            self.generation,
        )
        return True


@dataclass
class DraPlugin:
    """Registration and DRA sockets, and the slice loop."""

    preparer: Preparer
    publisher: SlicePublisher
    plugin_dir: Path
    """Where dra.sock is served (kubelet's convention: `/var/lib/kubelet/plugins/<driver>`)."""
    registry_dir: Path
    """kubelet's plugin registration folder (`/var/lib/kubelet/plugins_registry`)."""
    interval: float = 30.0
    stopping: threading.Event = field(default_factory=threading.Event)
    registered: bool = False
    _servers: list[Any] = field(default_factory=list)

    @property
    def dra_socket(self) -> Path:
        return self.plugin_dir / "dra.sock"

    @property
    def registration_socket(self) -> Path:
        return self.registry_dir / f"{DRIVER}-reg.sock"

    def _on_status(self, registered: bool, error: str) -> None:
        self.registered = registered
        if registered:
            log.info("kubelet registered %s (endpoint %s)", DRIVER, self.dra_socket)
        else:
            log.warning("kubelet refused the registration: %s", error)

    def serve(self) -> None:
        self.stop_servers()
        for path in (self.dra_socket, self.registration_socket):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
        dra = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        dra_v1_grpc.add_DRAPluginServicer_to_server(
            _servicer(dra_v1, dra_v1_grpc.DRAPluginServicer, self.preparer), dra
        )
        dra_v1beta1_grpc.add_DRAPluginServicer_to_server(
            _servicer(dra_v1beta1, dra_v1beta1_grpc.DRAPluginServicer, self.preparer), dra
        )
        dra.add_insecure_port(f"unix://{self.dra_socket}")
        dra.start()
        reg = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        reg_grpc.add_RegistrationServicer_to_server(
            _Registration(self.dra_socket, self._on_status), reg
        )
        reg.add_insecure_port(f"unix://{self.registration_socket}")
        reg.start()
        self._servers = [dra, reg]
        log.info(
            "DRA driver %s: serving %s, registering through %s",
            DRIVER,
            self.dra_socket,
            self.registration_socket,
        )

    def stop_servers(self) -> None:
        for server in self._servers:
            server.stop(grace=0.5).wait()
        self._servers = []

    def step(self) -> None:
        """Publish the slices from a fresh discovery; serve again if a socket was removed."""
        if not (self.dra_socket.exists() and self.registration_socket.exists()):
            self.serve()
        refresh = getattr(self.preparer.discovered, "refresh", None)
        cn = refresh() if refresh is not None else self.preparer.discovered()
        if cn is None:
            log.warning("no devices discovered yet: nothing published")
            return
        try:
            self.publisher.publish(cn)
        except Exception as exc:  # the API server may be away: try again next round
            log.warning("publishing ResourceSlices failed: %s", exc)

    def run(self, poll: float = 1.0) -> None:
        self.serve()
        next_round = 0.0
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= next_round:
                    self.step()
                    next_round = time.monotonic() + self.interval
                self.stopping.wait(poll)
        finally:
            self.stop_servers()
            for path in (self.dra_socket, self.registration_socket):
                path.unlink(missing_ok=True)


class KubeDra:
    """ClaimReader and SliceStore over the API server (`resource.k8s.io/v1`), raw JSON."""

    def __init__(self, api: Any) -> None:
        self.resource: Any = client.ResourceV1Api(api)

    def read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return read_json(self.resource.read_namespaced_resource_claim, name, namespace)

    # Every call bounded (CALL_TIMEOUT_S): kubelet waits on Prepare, nothing may hang it.

    def list_slices(self, node: str) -> list[dict[str, Any]]:
        # By field (node names may be longer than a label value's 63 characters).
        fields = f"spec.nodeName={node},spec.driver={DRIVER}"
        resp = self.resource.list_resource_slice(field_selector=fields, **_RAW)
        items: list[dict[str, Any]] = json.loads(resp.data).get("items") or []
        return [s for s in items if (s.get("spec") or {}).get("driver") == DRIVER]

    def create_slice(self, obj: Mapping[str, Any]) -> None:
        self.resource.create_resource_slice(dict(obj), **_RAW)

    def replace_slice(self, obj: Mapping[str, Any]) -> None:
        self.resource.replace_resource_slice(obj["metadata"]["name"], dict(obj), **_RAW)

    def delete_slice(self, name: str) -> None:
        self.resource.delete_resource_slice(name, **_RAW)


_RAW: Final[dict[str, Any]] = {"_preload_content": False, "_request_timeout": CALL_TIMEOUT_S}
