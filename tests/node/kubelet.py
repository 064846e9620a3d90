"""An imitation of kubelet's device manager over the real v1beta1 proto, following kubelet's own
rules (`pkg/kubelet/cm/devicemanager/manager.go`, as `shared/spec/KUBELET-DEVICE-MANAGER.md`
states them), and of its PodResources API. It imports no HCS code, only the wire stubs.

It serves `Registration` on `DIR/device-plugins/kubelet.sock`, dials a plugin when it registers,
keeps its `ListAndWatch` stream open, and admits pods one at a time: for each container of
`initContainers + containers` asking for the resource, `devicesToAllocate`:

1. devices already booked for the container: no call;
2. reuse first: devices of the pod's earlier non-restartable init containers (a sidecar's and an
   app container's are not reusable once they took them), in Go map order (random), without
   asking the plugin;
3. available = healthy - in use; too few: the pod fails;
4. with a NUMA affinity for the container (the topology manager's, given per container by the
   test) and devices that advertise topology: fewer needed than aligned -> the plugin's
   preference over aligned + already allocated, intersected with aligned, then any aligned;
   otherwise all aligned first, then the preference over available + allocated, then any;
   without an affinity: the preference, then any. "Any" is Go map order: random;
5. Allocate with those IDs; an error fails the pod (nothing of it is kept).

Its books (pod -> container -> device IDs) survive `restart()`, as kubelet's checkpoint does; a
restart re-creates `kubelet.sock` and deletes every plugin socket. `DIR/pod-resources/kubelet.sock`
answers `v1.PodResourcesLister/List` from the same books.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from node.podresources.v1 import api_pb2 as pr_pb2
from node.podresources.v1 import api_pb2_grpc as pr_grpc
from node.v1beta1 import api_pb2, api_pb2_grpc


class AdmissionError(Exception):
    """Kubelet would mark the pod UnexpectedAdmissionError."""


@dataclass
class Admitted:
    ids: dict[str, list[str]] = field(default_factory=dict)
    """Container -> the kubelet device IDs allocated."""
    answers: dict[str, Any] = field(default_factory=dict)
    """Container -> the ContainerAllocateResponse."""
    preferred_calls: int = 0
    namespace: str = ""
    name: str = ""


def _count(c: Mapping[str, Any], resource: str) -> int:
    res = c.get("resources") or {}
    value = (res.get("limits") or {}).get(resource) or (res.get("requests") or {}).get(resource)
    return int(str(value)) if value is not None else 0


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    def Register(self, request: Any, context: Any) -> Any:
        self.kubelet.registered(request)
        return api_pb2.Empty()


class _PodResources(pr_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    def List(self, request: Any, context: Any) -> Any:
        return self.kubelet.pod_resources()


class FakeKubelet:
    def __init__(self, directory: Path, *, seed: int = 0) -> None:
        self.root = directory
        self.dir = directory / "device-plugins"
        self.dir.mkdir(parents=True, exist_ok=True)
        (directory / "pod-resources").mkdir(exist_ok=True)
        self.requests: list[Any] = []
        self.devices: dict[str, str] = {}
        """Kubelet device ID -> health, from the latest ListAndWatch message."""
        self.numa: dict[str, int | None] = {}
        self.list_messages = 0
        self.books: dict[str, Admitted] = {}
        """Pod UID -> what kubelet allocated (kept across restarts: the checkpoint)."""
        self.resource = ""
        self.options: Any = None
        self.rng = random.Random(seed)
        """Go map order."""
        self._server: Any = None
        self._pr_server: Any = None
        self._channel: Any = None
        self._stub: Any = None
        self._update = threading.Condition()
        self.start()

    # ------------------------------------------------------------- lifecycle

    @property
    def pod_resources_socket(self) -> Path:
        return self.root / "pod-resources" / "kubelet.sock"

    def start(self) -> None:
        (self.dir / "kubelet.sock").unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix://{self.dir / 'kubelet.sock'}")
        server.start()
        self._server = server
        if self._pr_server is None:
            self.pod_resources_socket.unlink(missing_ok=True)
            pr = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            pr_grpc.add_PodResourcesListerServicer_to_server(_PodResources(self), pr)
            pr.add_insecure_port(f"unix://{self.pod_resources_socket}")
            pr.start()
            self._pr_server = pr

    def restart(self) -> None:
        """Kubelet restarts: it forgets every plugin, removes their sockets, new kubelet.sock."""
        self._server.stop(grace=0).wait()
        if self._channel is not None:
            self._channel.close()
        self._stub = None
        with self._update:
            self.devices = {}
        for sock in self.dir.glob("*.sock"):
            sock.unlink()
        self.start()

    def stop(self) -> None:
        self._server.stop(grace=0).wait()
        if self._pr_server is not None:
            self._pr_server.stop(grace=0).wait()
        if self._channel is not None:
            self._channel.close()

    def registered(self, request: Any) -> None:
        with self._update:
            self.devices = {}  # a (re)registered plugin lists its devices anew
            self.resource = request.resource_name
        self.requests.append(request)
        channel = grpc.insecure_channel(f"unix://{self.dir / request.endpoint}")
        stub = api_pb2_grpc.DevicePluginStub(channel)
        self.options = stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
        self._channel, self._stub = channel, stub
        threading.Thread(target=self._watch, args=(stub,), daemon=True).start()

    def _watch(self, stub: Any) -> None:
        try:
            for message in stub.ListAndWatch(api_pb2.Empty()):
                with self._update:
                    self.devices = {d.ID: d.health for d in message.devices}
                    self.numa = {
                        d.ID: (d.topology.nodes[0].ID if d.topology.nodes else None)
                        for d in message.devices
                    }
                    self.list_messages += 1
                    self._update.notify_all()
        except grpc.RpcError:
            pass  # the plugin or this kubelet went away

    def wait_devices(self, predicate: Any = bool, timeout: float = 10.0) -> dict[str, str]:
        with self._update:
            if not self._update.wait_for(lambda: predicate(self.devices), timeout):
                raise AssertionError(f"devices never became as expected: {self.devices}")
            return dict(self.devices)

    # ------------------------------------------------------------- admission

    def in_use(self) -> set[str]:
        return {i for a in self.books.values() for ids in a.ids.values() for i in ids}

    def _shuffled(self, ids: set[str] | list[str]) -> list[str]:
        out = sorted(ids)
        self.rng.shuffle(out)
        return out

    def admit(
        self,
        pod: dict[str, Any],
        resource: str,
        *,
        affinity: Mapping[str, set[int]] | None = None,
        timeout: float = 10.0,
    ) -> Admitted:
        """Admit `pod` as kubelet does; AdmissionError if Allocate fails (nothing is kept).
        `affinity`: container -> the NUMA nodes the topology manager aligned it to."""
        meta = pod["metadata"]
        uid = meta["uid"]
        done = self.books.get(uid) or Admitted(namespace=meta["namespace"], name=meta["name"])
        spec = pod["spec"]
        reusable: set[str] = set()
        for kind in ("initContainers", "containers"):
            for c in spec.get(kind) or []:
                name = c["name"]
                needed = _count(c, resource)
                if needed <= 0:
                    continue
                restartable = kind == "initContainers" and c.get("restartPolicy") == "Always"
                if name not in done.ids:
                    try:
                        ids = self._devices_to_allocate(
                            done,
                            name,
                            needed,
                            reusable,
                            affinity=(affinity or {}).get(name),
                            timeout=timeout,
                        )
                        answer = self._stub.Allocate(
                            api_pb2.AllocateRequest(
                                container_requests=[
                                    api_pb2.ContainerAllocateRequest(devices_ids=ids)
                                ]
                            ),
                            timeout=timeout,
                        )
                    except grpc.RpcError as exc:
                        self.books.pop(uid, None)
                        raise AdmissionError(f"{name}: {exc.details()}") from None
                    except AdmissionError:
                        self.books.pop(uid, None)
                        raise
                    done.ids[name] = ids
                    done.answers[name] = answer.container_responses[0]
                    self.books[uid] = done
                got = set(done.ids[name])
                if kind == "initContainers" and not restartable:
                    reusable |= got
                else:
                    reusable -= got
        return done

    def _devices_to_allocate(
        self,
        done: Admitted,
        name: str,
        needed_total: int,
        reusable: set[str],
        *,
        affinity: set[int] | None,
        timeout: float,
    ) -> list[str]:
        allocated: list[str] = []

        def remaining_from(ids: list[str] | set[str]) -> bool:
            for i in self._shuffled(ids) if isinstance(ids, set) else ids:
                if len(allocated) >= needed_total:
                    break
                if i not in allocated:
                    allocated.append(i)
            return len(allocated) >= needed_total

        if remaining_from(set(reusable)):
            return allocated
        in_use = self.in_use()
        available = {i for i, h in self.devices.items() if h == "Healthy" and i not in in_use}
        needed = needed_total - len(allocated)
        if len(available) < needed:
            raise AdmissionError(f"{name}: {needed} {self.resource} wanted, {len(available)} free")
        if affinity is None or all(self.numa.get(i) is None for i in available):
            aligned: set[str] = set()
            rest = available
        else:
            aligned = {i for i in available if self.numa.get(i) in affinity}
            rest = available - aligned
        if needed < len(aligned):
            preferred = self._preferred(
                done, aligned | set(allocated), allocated, needed_total, timeout
            )
            if remaining_from([i for i in preferred if i in aligned]):
                return allocated
            if remaining_from(aligned):
                return allocated
            raise AdmissionError(f"{name}: allocated fewer than required")
        if remaining_from(aligned):
            return allocated
        preferred = self._preferred(
            done, available | set(allocated), allocated, needed_total, timeout
        )
        if remaining_from([i for i in preferred if i in available]):
            return allocated
        if remaining_from(rest):
            return allocated
        raise AdmissionError(f"{name}: allocated fewer than required")

    def _preferred(
        self, done: Admitted, available: set[str], must: list[str], size: int, timeout: float
    ) -> list[str]:
        if not self.options.get_preferred_allocation_available:
            return []
        done.preferred_calls += 1
        pref = self._stub.GetPreferredAllocation(
            api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=sorted(available),
                        must_include_deviceIDs=list(must),
                        allocation_size=size,
                    )
                ]
            ),
            timeout=timeout,
        )
        return list(pref.container_responses[0].deviceIDs)

    def allocate_again(self, ids: list[str]) -> Any:
        """Kubelet re-running Allocate for devices it already books (after a restart)."""
        answer = self._stub.Allocate(
            api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)]
            ),
            timeout=10,
        )
        return answer.container_responses[0]

    def forget(self, uid: str) -> None:
        """The pod ended: kubelet frees its devices."""
        self.books.pop(uid, None)

    def pod_resources(self) -> Any:
        return pr_pb2.ListPodResourcesResponse(
            pod_resources=[
                pr_pb2.PodResources(
                    name=a.name,
                    namespace=a.namespace,
                    containers=[
                        pr_pb2.ContainerResources(
                            name=c,
                            devices=[
                                pr_pb2.ContainerDevices(resource_name=self.resource, device_ids=ids)
                            ],
                        )
                        for c, ids in a.ids.items()
                    ],
                )
                for a in self.books.values()
            ]
        )


def short_dir() -> Path:
    """Unix socket paths are limited to 107 bytes: a short folder under /tmp."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="hcs-dp-", dir="/tmp"))
