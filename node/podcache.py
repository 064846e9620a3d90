"""The device plugin's view of its node, kept in memory, and its writes, sent afterwards.

Kubelet calls `GetPreferredAllocation` and `Allocate` with no deadline, inside the loop that
admits every pod of the node: a plugin that asks the API server there stalls the node for as
long as the API server takes. So the plugin answers from memory:

- `NodeCache` lists the node's pods (field selector `spec.nodeName`) and its ComputeNode once,
  then keeps them current with watches, re-listing after any failure (with backoff). What the
  plugin has decided but the API server does not show yet is kept as an overlay on the cached
  pod until a watch event shows it, so a later call never reads a stale record.
- `Writer` sends the records (one merge patch per decision) and the lock releases in order from
  one thread, retrying until they land; a pod that is gone drops its writes.

A crash between answering kubelet and writing loses the write; kubelet has the allocation in its
checkpoint and never calls Allocate again for it. The plugin heals from kubelet's PodResources
API at start and every round (`DevicePlugin.reconcile`).
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from cluster.lease import NodeLock
from hcs.models import API_GROUP

log = logging.getLogger("hcs.deviceplugin")
LIST_TIMEOUT_S = 10.0
WATCH_TIMEOUT_S = 300


class NodeCache:
    """The node's live pods and its ComputeNode, list-then-watch, in memory."""

    def __init__(
        self, api: client.ApiClient, node: str, *, backoff: tuple[float, float] = (0.2, 5.0)
    ):
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.node = node
        self.backoff = backoff
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}
        self._overlay: dict[str, dict[str, str]] = {}
        self.compute_node: dict[str, Any] | None = None
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.changed = threading.Condition()
        self.version = 0

    # ------------------------------------------------------------------ reading

    def pods(self) -> list[dict[str, Any]]:
        """The node's pods as last seen, with what the plugin decided laid over them."""
        with self._lock:
            out = []
            for uid, seen in self._pods.items():
                extra = self._overlay.get(uid)
                if extra:
                    meta = dict(seen.get("metadata") or {})
                    meta["annotations"] = {**(meta.get("annotations") or {}), **extra}
                    seen = {**seen, "metadata": meta}  # noqa: PLW2901
                out.append(seen)
            return out

    def record(self, uid: str, annotations: Mapping[str, str]) -> None:
        """Lay a decision over the cached pod until the API server shows it."""
        with self._lock:
            self._overlay[uid] = {**self._overlay.get(uid, {}), **annotations}

    def pending_writes(self) -> int:
        with self._lock:
            return len(self._overlay)

    # ------------------------------------------------------------------ feeds

    def start(self) -> None:
        for name, lister, apply in (
            ("pods", self._list_pods, self._apply_pod),
            ("computenode", self._list_node, self._apply_node),
        ):
            t = threading.Thread(
                target=self._run, args=(name, lister, apply), daemon=True, name=f"cache-{name}"
            )
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def _list_pods(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        return self.core.list_pod_for_all_namespaces, {
            "field_selector": f"spec.nodeName={self.node}"
        }

    def _list_node(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        return self.custom.list_cluster_custom_object, {
            "group": API_GROUP,
            "version": "v1alpha1",
            "plural": "computenodes",
            "field_selector": f"metadata.name={self.node}",
        }

    def _run(
        self,
        name: str,
        lister: Callable[[], tuple[Callable[..., Any], dict[str, Any]]],
        apply: Callable[[str, dict[str, Any]], None],
    ) -> None:
        failures = 0
        call, kwargs = lister()
        while not self._stop.is_set():
            try:
                raw: Any = call(**kwargs, _request_timeout=LIST_TIMEOUT_S, _preload_content=False)
                data = orjson.loads(raw.data)
                self._replace(name, data.get("items") or [], apply)
                failures = 0
                version = str(data["metadata"]["resourceVersion"])
                while not self._stop.is_set():
                    w = watch.Watch()
                    for event in w.stream(
                        call, **kwargs, resource_version=version, timeout_seconds=WATCH_TIMEOUT_S
                    ):
                        if self._stop.is_set():
                            w.stop()
                            return
                        kind, obj = event["type"], event["raw_object"]
                        if kind == "ERROR":
                            raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if kind != "BOOKMARK":
                            apply(kind, obj)
                            self._notify()
            except Exception as exc:  # every failure ends in a re-list after a backoff
                failures += 1
                delay = min(self.backoff[1], self.backoff[0] * 2 ** (failures - 1))
                delay *= 0.5 + random.random() / 2
                log.warning("%s: list/watch failed (%s); re-listing in %.1fs", name, exc, delay)
                self._stop.wait(delay)

    def _notify(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    def wait_for_change(self, timeout: float) -> bool:
        """Wait for the next watch event (or re-list); False when none came in time."""
        with self.changed:
            seen = self.version
            return self.changed.wait_for(lambda: self.version != seen, timeout)

    def _replace(
        self, name: str, items: list[dict[str, Any]], apply: Callable[[str, dict[str, Any]], None]
    ) -> None:
        if name == "pods":
            with self._lock:
                self._pods = {}
        else:
            self.compute_node = None
        for obj in items:
            apply("ADDED", obj)
        if name == "pods":
            self.synced.set()
        self._notify()

    def _apply_pod(self, kind: str, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if (pod.get("spec") or {}).get("nodeName") != self.node:
            kind = "DELETED"  # not (or no longer) this node's
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(uid, None)
                self._overlay.pop(uid, None)
                return
            self._pods[uid] = pod
            extra = self._overlay.get(uid)
            shown = (pod.get("metadata") or {}).get("annotations") or {}
            if extra and all(shown.get(k) == v for k, v in extra.items()):
                del self._overlay[uid]  # the API server has it now

    def _apply_node(self, kind: str, obj: dict[str, Any]) -> None:
        self.compute_node = None if kind == "DELETED" else obj


class Writer:
    """Sends the plugin's records and lock releases in order, retrying until they land."""

    def __init__(
        self,
        api: client.ApiClient,
        lock_namespace: str,
        *,
        backoff: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.locks = NodeLock(api, lock_namespace)
        self.backoff = backoff
        self._queue: collections.deque[tuple[str, tuple[Any, ...]]] = collections.deque()
        self._ready = threading.Condition()
        self._busy = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="plugin-writer")
        self._thread.start()

    def annotate(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        self._put("annotate", (namespace, name, dict(annotations)))

    def release(self, node: str, uid: str) -> None:
        self._put("release", (node, uid))

    def _put(self, op: str, args: tuple[Any, ...]) -> None:
        with self._ready:
            self._queue.append((op, args))
            self._ready.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued write landed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(min(left, 0.05))
        return True

    def stop(self) -> None:
        self._stop.set()
        with self._ready:
            self._ready.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._ready:
                while not self._queue and not self._stop.is_set():
                    self._ready.wait(0.5)
                if self._stop.is_set():
                    return
                op, args = self._queue[0]
                self._busy = True
            self._send(op, args)
            with self._ready:
                self._queue.popleft()
                self._busy = False
                self._ready.notify_all()

    def _send(self, op: str, args: tuple[Any, ...]) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if op == "annotate":
                    namespace, name, annotations = args
                    self.core.patch_namespaced_pod(
                        name,
                        namespace,
                        {"metadata": {"annotations": annotations}},
                        _content_type="application/merge-patch+json",
                        _preload_content=False,
                        _request_timeout=LIST_TIMEOUT_S,
                    )
                else:
                    self.locks.release(*args)
                return
            except ApiException as exc:
                if exc.status == 404:
                    log.info("%s %s: gone, nothing to write", op, args[:2])
                    return
                reason = f"{exc.status} {exc.reason}"
            except Exception as exc:  # a timeout or a reset: the API server may be slow
                reason = str(exc)
            failures += 1
            delay = min(self.backoff[1], self.backoff[0] * 2 ** (failures - 1))
            log.warning("%s %s failed (%s); retrying in %.1fs", op, args[:2], reason, delay)
            self._stop.wait(delay)
