"""An imitation of kubelet's device manager over the real v1beta1 proto.

It serves `Registration` on `DIR/kubelet.sock`, dials a plugin when it registers, keeps its
`ListAndWatch` stream open, and admits pods as kubelet does: per container asking for the
resource (init containers first), GetPreferredAllocation (its answer used if it fits), then
Allocate with the chosen IDs. Its books (pod -> container -> device IDs) survive `restart()`, as
kubelet's checkpoint does; a restart re-creates `kubelet.sock` and deletes every plugin socket.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from node.deviceplugin import requesting
from node.v1beta1 import api_pb2, api_pb2_grpc


class AdmissionError(Exception):
    """Kubelet would mark the pod UnexpectedAdmissionError."""


@dataclass
class Admitted:
    ids: dict[str, list[str]] = field(default_factory=dict)
    """Container -> the kubelet device IDs allocated."""
    answers: dict[str, Any] = field(default_factory=dict)
    """Container -> the ContainerAllocateResponse."""


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    def Register(self, request: Any, context: Any) -> Any:
        self.kubelet.registered(request)
        return api_pb2.Empty()


class FakeKubelet:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.requests: list[Any] = []
        self.devices: dict[str, str] = {}
        """Kubelet device ID -> health, from the latest ListAndWatch message."""
        self.list_messages = 0
        self.books: dict[str, Admitted] = {}
        """Pod UID -> what kubelet allocated (kept across restarts: the checkpoint)."""
        self.options: Any = None
        self._server: Any = None
        self._channel: Any = None
        self._stub: Any = None
        self._update = threading.Condition()
        self.start()

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        (self.dir / "kubelet.sock").unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix://{self.dir / 'kubelet.sock'}")
        server.start()
        self._server = server

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
        if self._channel is not None:
            self._channel.close()

    def registered(self, request: Any) -> None:
        with self._update:
            self.devices = {}  # a (re)registered plugin lists its devices anew
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

    def admit(self, pod: dict[str, Any], resource: str) -> Admitted:
        """Admit `pod` as kubelet does; AdmissionError if Allocate fails (nothing is kept)."""
        uid = pod["metadata"]["uid"]
        done = self.books.get(uid, Admitted())
        for name, count in requesting(pod, resource):
            if name in done.ids:
                continue
            available = sorted(
                i for i, h in self.devices.items() if h == "Healthy" and i not in self.in_use()
            )
            if len(available) < count:
                raise AdmissionError(f"{name}: {count} {resource} wanted, {len(available)} free")
            chosen = available[:count]
            if self.options.get_preferred_allocation_available:
                pref = self._stub.GetPreferredAllocation(
                    api_pb2.PreferredAllocationRequest(
                        container_requests=[
                            api_pb2.ContainerPreferredAllocationRequest(
                                available_deviceIDs=available, allocation_size=count
                            )
                        ]
                    ),
                    timeout=10,
                )
                ids = list(pref.container_responses[0].deviceIDs)
                if len(ids) == count and set(ids) <= set(available):
                    chosen = ids
            try:
                answer = self._stub.Allocate(
                    api_pb2.AllocateRequest(
                        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=chosen)]
                    ),
                    timeout=10,
                )
            except grpc.RpcError as exc:
                self.books.pop(uid, None)
                raise AdmissionError(f"{name}: {exc.details()}") from None
            done.ids[name] = chosen
            done.answers[name] = answer.container_responses[0]
            self.books[uid] = done
        return done

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


def short_dir() -> Path:
    """Unix socket paths are limited to 107 bytes: a short folder under /tmp."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="hcs-dp-", dir="/tmp"))
