"""Cluster mode: the inventory and allocations from the API server, kept current by watches.

ComputeNodes and non-terminated Pods are listed, then watched from the list's resourceVersion.
Allocations are rebuilt from Pod annotations (`hcs.io/assigned-node`, `hcs.io/assigned-devices`)
so a restart loses nothing: the API server, not this process, is the record. A watch that
fails (connection lost, 410 Gone, a bad response) is re-listed after a backoff, and the re-list
replaces what the previous one knew.

The official `kubernetes` client is blocking: each resource's list/watch loop runs in a thread
of its own and hands every change to the event loop (`call_soon_threadsafe`), so the state is
only ever touched from the loop's thread, like the extender's requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from kubernetes import client, watch
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from cluster.kubeio import CALL_TIMEOUT_S, list_pages, read_pod
from cluster.lease import NodeLock
from hcs.demand import (
    PodDemand,
)
from hcs.errors import HcsError, ValidationError
from hcs.models import API_GROUP, ComputeNode, ComputeQuota
from hcs.nodelock import LOCK_NAMESPACE
from hcs.podbooks import allocation_from_pod, unplaced_holding
from hcs.quota import QuotaExceededError, applies, demand_amounts, render
from hcs.scheduling import BindError, SchedulerService

log = logging.getLogger("hcs.cluster")
VERSION = "v1alpha1"
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


# --------------------------------------------------------------------------- binding


class KubeBinder:
    """Creates Bindings (with the device annotations), reads Pods, and takes the node lock
    (hcs.nodelock) through the API server."""

    def __init__(self, api: client.ApiClient, lock_namespace: str = LOCK_NAMESPACE) -> None:
        self.core = client.CoreV1Api(api)
        self.locks = NodeLock(api, lock_namespace)

    def lock(self, node: str, namespace: str, name: str, uid: str) -> None:
        """Raises NodeBusyError while another pod is between bind and Allocate on `node`."""
        try:
            self.locks.acquire(node, namespace, name, uid)
        except ApiException as exc:
            raise BindError(
                f"node lock: API server answered {exc.status} {exc.reason}: {_status_message(exc)}"
            ) from None

    def unlock(self, node: str, uid: str) -> None:
        try:
            self.locks.release(node, uid)
        except Exception as exc:  # the next bind takes a stale lock over anyway
            log.warning("node %s: releasing the lock of %s failed: %s", node, uid, exc)

    def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str]
    ) -> None:
        body = client.V1Binding(
            api_version="v1",
            kind="Binding",
            metadata=client.V1ObjectMeta(name=name, uid=uid, annotations=dict(annotations)),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        try:
            # The reply is a Status, not a Binding: do not let the client deserialize it.
            self.core.create_namespaced_pod_binding(
                name, namespace, body, _preload_content=False, _request_timeout=CALL_TIMEOUT_S
            )
        except ApiException as exc:
            if exc.status == 409:
                pod = self.get_pod(namespace, name)
                spec = (pod or {}).get("spec") or {}
                meta = (pod or {}).get("metadata") or {}
                if spec.get("nodeName") == node and meta.get("uid") == uid:
                    return  # a retried bind that already landed: success
            raise BindError(
                f"API server answered {exc.status} {exc.reason}: {_status_message(exc)}",
                status=exc.status,
            ) from None
        except Exception as exc:  # connection refused, reset, timeout: the outcome is unknown
            raise BindError(f"cannot reach the API server: {exc}") from None

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return read_pod(self.core, namespace, name)


def _status_message(exc: ApiException) -> str:
    try:
        return str(orjson.loads(exc.body or b"{}").get("message") or exc.body)
    except orjson.JSONDecodeError:
        return str(exc.body)


# --------------------------------------------------------------------------- sync


@dataclass
class _Feed:
    """One resource kept in step: listed with `call(*args, **kwargs)`, then watched with it."""

    name: str
    call: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    synced: bool = False
    last_contact: float = 0.0
    failures: int = 0
    known: set[str] = field(default_factory=set)

    def pages(self) -> Iterator[tuple[list[dict[str, Any]], str]]:
        """The list in pages (`cluster.kubeio.list_pages`: 500 objects at a time, each applied
        before the next is asked)."""
        return list_pages(self.call, *self.args, **self.kwargs)


class ClusterSync:
    """Keeps a SchedulerService's state in step with the API server."""

    def __init__(
        self,
        service: SchedulerService,
        api: client.ApiClient,
        *,
        quota_book: KubeQuotaBook | None = None,
        stale_after_s: float = 120.0,
        watch_timeout_s: int = 60,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.service = service
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.stale_after_s = stale_after_s
        self.watch_timeout_s = watch_timeout_s
        self.backoff = backoff
        self.quota_book = quota_book
        self.nodes = _Feed(
            "computenodes",
            self.custom.list_cluster_custom_object,
            (API_GROUP, VERSION, "computenodes"),
        )
        self.pods = _Feed(
            "pods",
            self.core.list_pod_for_all_namespaces,
            kwargs={"field_selector": ACTIVE_PODS},
        )
        self.quotas = _Feed(
            "computequotas",
            self.custom.list_cluster_custom_object,
            (API_GROUP, VERSION, "computequotas"),
        )
        self.namespace_labels: dict[str, dict[str, str]] = {}
        """Namespace -> labels (the webhook reads their Pod Security level)."""
        self.namespaces = _Feed("namespaces", self.core.list_namespace)
        self.feeds = [self.nodes, self.pods] + (
            [self.quotas, self.namespaces] if quota_book else []
        )
        # Until every feed is listed (and again after a failed watch, until the re-list is
        # applied) the books are incomplete: the service refuses to place anything.
        service.gate = self.not_serving
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------- lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for feed in self.feeds:
            t = threading.Thread(
                target=self._run_feed, args=(feed,), name=f"hcs-watch-{feed.name}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> None:
        """List every feed once and apply it in the calling thread, without watching: a
        one-shot view of the books by the same rules the watches follow (`kubectl hcs`).
        ComputeNodes come first, so every pod can be charged to its node's devices."""
        for feed in self.feeds:
            listed: set[str] = set()
            for items, _ in feed.pages():
                self._apply_page(feed, items, listed)
            self._end_list(feed, listed)
            feed.last_contact = time.time()

    def not_serving(self) -> str | None:
        """Why filter and bind must not decide now (None: the books are complete)."""
        ready, why = self.readiness()
        return None if ready else why

    def readiness(self) -> tuple[bool, str]:
        now = time.time()
        for feed in self.feeds:
            if not feed.synced:
                return False, f"not ready: {feed.name} not listed yet"
            if now - feed.last_contact > self.stale_after_s:
                return False, (
                    f"not ready: no news of {feed.name} for {now - feed.last_contact:.0f}s"
                )
        return True, "ready: synced with the API server"

    # ------------------------------------------------------------- list / watch threads

    def _run_feed(self, feed: _Feed) -> None:
        while not self._stop.is_set():
            if feed is self.pods and not self.nodes.synced:
                # Pods are charged to their nodes' devices: list them once the nodes are known.
                self._stop.wait(0.05)
                continue
            try:
                listed: set[str] = set()
                version = ""
                for items, page_version in feed.pages():
                    self._hand_over(self._apply_page, feed, items, listed)
                    version = page_version  # the list's: every page carries it
                    feed.last_contact = time.time()
                self._hand_over(self._end_list, feed, listed)
                feed.last_contact = time.time()
                feed.failures = 0
                self._watch(feed, version)
            except Exception as exc:  # every failure ends in a re-list after a backoff
                feed.synced = False  # events may have been missed: incomplete until re-listed
                feed.failures += 1
                delay = min(self.backoff[1], self.backoff[0] * 2 ** (feed.failures - 1))
                delay *= 0.5 + random.random() / 2
                log.warning(
                    "%s: list/watch failed (%s); re-listing in %.1fs", feed.name, exc, delay
                )
                self._stop.wait(delay)

    def _watch(self, feed: _Feed, version: str) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            stream = w.stream(
                feed.call,
                *feed.args,
                **feed.kwargs,
                resource_version=version,
                timeout_seconds=self.watch_timeout_s,
            )
            for event in stream:
                if self._stop.is_set():
                    w.stop()
                    return
                kind, obj = event["type"], event["raw_object"]
                if kind == "ERROR":
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                feed.last_contact = time.time()
                if kind != "BOOKMARK":
                    self._hand_over(self._apply, feed, kind, obj)
            feed.last_contact = time.time()  # the server ended the watch on time: still in touch

    def _hand_over(self, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) on the event loop and wait for it (keeps events in order)."""
        assert self._loop is not None
        done = threading.Event()

        def call() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("applying a change failed")
            finally:
                done.set()

        self._loop.call_soon_threadsafe(call)
        while not done.wait(0.5):
            if self._stop.is_set():
                return

    # ------------------------------------------------------------- applying (loop thread)

    def _apply_page(self, feed: _Feed, items: list[dict[str, Any]], listed: set[str]) -> None:
        """One page of a fresh list: apply every object, remember it was listed."""
        for obj in items:
            listed.add(_key(feed, obj))
            self._apply(feed, "ADDED", obj)

    def _end_list(self, feed: _Feed, listed: set[str]) -> None:
        """The list is complete: forget what it no longer has; the feed is in step."""
        for key in feed.known - listed:
            self._forget(feed, key)
        feed.known = listed
        feed.synced = True
        log.info("%s listed: %d objects", feed.name, len(listed))

    def _apply(self, feed: _Feed, kind: str, obj: dict[str, Any]) -> None:
        key = _key(feed, obj)
        if kind == "DELETED":
            self._forget(feed, key)
            feed.known.discard(key)
            return
        feed.known.add(key)
        if feed is self.nodes:
            self._apply_node(obj)
        elif feed is self.pods:
            self._apply_pod(obj)
        elif feed is self.namespaces:
            labels = (obj.get("metadata") or {}).get("labels") or {}
            self.namespace_labels[key] = {str(k): str(v) for k, v in labels.items()}
        else:
            self._apply_quota(obj)

    def _forget(self, feed: _Feed, key: str) -> None:
        if feed is self.namespaces:
            self.namespace_labels.pop(key, None)
        elif feed is self.nodes:
            self.service.state.remove_node(key)
        elif feed is self.pods:
            self.service.ledger.release(key)
        elif self.quota_book is not None:
            ns, _, name = key.partition("/")
            self.quota_book.remove((ns, name))

    def _apply_quota(self, obj: dict[str, Any]) -> None:
        try:
            quota = ComputeQuota.from_dict(obj)
        except ValidationError as exc:
            log.warning("ignoring invalid %s", exc)
            return
        if self.quota_book is not None:
            self.quota_book.upsert(quota)

    def _apply_node(self, obj: dict[str, Any]) -> None:
        try:
            node = ComputeNode.from_dict(obj)
        except ValidationError as exc:
            log.warning("ignoring invalid %s", exc)
            return
        self.service.state.upsert_node(node)

    def _apply_pod(self, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            self.service.ledger.release(uid)
            return
        try:
            alloc = allocation_from_pod(pod, self.service.state, self.service.vendors)
        except HcsError as exc:
            log.warning(
                "pod %s/%s: cannot read its allocation: %s",
                meta.get("namespace"),
                meta.get("name"),
                exc,
            )
            return
        if alloc is None:
            alloc = unplaced_holding(pod, self.service.state, self.service.vendors)
        if alloc is None:
            return
        ledger = self.service.ledger
        existing = self.service.state.allocations.get(uid)
        if existing is not None:
            if existing.node == alloc.node and existing.device_ids == alloc.device_ids:
                if existing.state != "confirmed":
                    ledger.confirm(uid)
                return
            ledger.release(uid)  # the API server's record wins over ours
        ledger.restore(alloc, force=True)


def _key(feed: _Feed, obj: Mapping[str, Any]) -> str:
    """ComputeNodes by name (the Kubernetes Node they describe), Pods by UID, ComputeQuotas by
    namespace/name."""
    meta = obj.get("metadata") or {}
    if feed.name in ("computenodes", "namespaces"):
        return str(meta.get("name"))
    if feed.name == "pods":
        return str(meta.get("uid"))
    return f"{meta.get('namespace')}/{meta.get('name')}"


def load_api(
    kubeconfig: str | None = None,
    hint: str = "pass --inventory DIR for local mode",
    *,
    context: str | None = None,
    in_cluster_first: bool = True,
) -> client.ApiClient:
    """An API client from `kubeconfig`, else the in-cluster service account, else the default
    kubeconfig (~/.kube/config or $KUBECONFIG). A user's tool (`kubectl hcs`) passes
    `in_cluster_first=False`: the kubeconfig, as kubectl reads it, wins over a pod's account.
    The configuration becomes the client's default (leader election builds its own clients)."""

    in_cluster = kube_config.load_incluster_config
    shown = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"

    def from_kubeconfig() -> None:
        """The kubeconfig, with every failure one line naming the file."""
        path = kubeconfig or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0]
        if not Path(path or os.path.expanduser("~/.kube/config")).is_file():
            raise kube_config.ConfigException(f"kubeconfig {shown}: no such file")
        try:
            kube_config.load_kube_config(config_file=kubeconfig, context=context)
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise kube_config.ConfigException(
                f"kubeconfig {shown}: not a kubeconfig YAML file ({why})"
            ) from None
        except kube_config.ConfigException as exc:
            raise kube_config.ConfigException(f"kubeconfig {shown}: {exc}") from None

    if kubeconfig is not None or context is not None:  # asked for: nothing else will do
        loaders = [from_kubeconfig]
    else:
        loaders = (
            [in_cluster, from_kubeconfig] if in_cluster_first else [from_kubeconfig, in_cluster]
        )
    failure: Exception | None = None
    for load in loaders:
        try:
            load()
            return client.ApiClient()
        except (kube_config.ConfigException, OSError) as exc:
            failure = failure if load is in_cluster else exc  # the kubeconfig's reason is news
    if kubeconfig is not None or context is not None:
        raise HcsError(str(failure), code="InvalidConfig")
    raise HcsError(
        f"no cluster to talk to: not in a pod, and no usable kubeconfig ({failure}); {hint}",
        code="InvalidConfig",
    )


# --------------------------------------------------------------------------- quota (cluster)


class KubeQuotaBook:
    """ComputeQuota charges on the API server, as ResourceQuota admission does them: read the
    quota, check it, and write `status.used` with the `resourceVersion` that was read (a
    compare-and-swap); a 409 Conflict means another replica charged first: read again, retry.
    Several quotas are charged one after another; if a later one is exceeded the earlier charges
    are returned. Quotas are known from the watch; the figures checked are the ones read."""

    blocking = True

    def __init__(self, api: client.ApiClient, *, retries: int = 8) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.retries = retries
        self.quotas: dict[tuple[str, str], ComputeQuota] = {}
        self._charged: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()

    def upsert(self, quota: ComputeQuota) -> None:
        self.quotas[(quota.namespace, quota.name)] = quota

    def remove(self, key: tuple[str, str]) -> None:
        self.quotas.pop(key, None)

    def admit(self, demand: PodDemand, request_uid: str, *, dry_run: bool) -> list[str]:
        with self._lock:
            if request_uid in self._charged:  # the API server sent the same review again
                return self._charged[request_uid]
        amounts = demand_amounts(demand)
        matched = [
            key
            for key, q in sorted(self.quotas.items())
            if key[0] == demand.namespace and applies(q, demand)
        ]
        done: list[tuple[str, str]] = []
        try:
            for key in matched:
                self._update(key, amounts, check=True, write=not dry_run)
                done.append(key)
        except Exception as exc:  # a denial or a lost connection: return what was charged
            if not dry_run:
                negative = {r: -v for r, v in amounts.items()}
                for key in done:
                    try:
                        self._update(key, negative, check=False, write=True)
                    except Exception:  # the quota controller's recount repairs it
                        log.exception("could not return a charge on %s/%s", *key)
            if isinstance(exc, HcsError):
                raise
            raise HcsError(f"ComputeQuota charge failed: {exc}", code="QuotaExceeded") from None
        names = [f"{ns}/{name}" for ns, name in matched]
        if not dry_run:
            with self._lock:
                self._charged[request_uid] = names
                if len(self._charged) > 10_000:
                    self._charged.popitem(last=False)
        return names

    def _update(
        self, key: tuple[str, str], amounts: Mapping[str, int], *, check: bool, write: bool
    ) -> None:
        ns, name = key
        for _ in range(self.retries):
            try:
                obj: Any = self.custom.get_namespaced_custom_object(
                    API_GROUP, VERSION, ns, "computequotas", name
                )
                quota = ComputeQuota.from_dict(obj)
            except (ApiException, ValidationError) as exc:
                raise HcsError(
                    f"ComputeQuota {ns}/{name} cannot be read: {exc}", code="QuotaExceeded"
                ) from None
            used = {r: v or 0 for r, v in quota.used.as_dict().items()}
            hard = quota.hard.as_dict()
            if check:
                for resource, limit in hard.items():
                    if (
                        limit is not None
                        and amounts[resource] > 0
                        and (used[resource] + amounts[resource] > limit)
                    ):
                        raise QuotaExceededError(
                            f"{ns}/{name}: {resource} requested "
                            f"{render(resource, amounts[resource])}, used "
                            f"{render(resource, used[resource])}, hard {render(resource, limit)}"
                        )
            if not write:
                return
            status = dict(obj.get("status") or {})
            status["used"] = {r: render(r, max(used[r] + amounts[r], 0)) for r in used}
            status["hard"] = {r: render(r, v) for r, v in hard.items() if v is not None}
            body = {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "resourceVersion": obj["metadata"]["resourceVersion"],
                },
                "spec": obj.get("spec") or {},
                "status": status,
            }
            try:
                self.custom.replace_namespaced_custom_object_status(
                    API_GROUP, VERSION, ns, "computequotas", name, body
                )
                return
            except ApiException as exc:
                if exc.status == 409:
                    continue  # charged by someone else meanwhile: read again
                raise HcsError(
                    f"ComputeQuota {ns}/{name}: status update refused: "
                    f"{exc.status} {_status_message(exc)}",
                    code="QuotaExceeded",
                ) from None
        raise HcsError(
            f"ComputeQuota {ns}/{name}: still conflicting after {self.retries} attempts; try again",
            code="QuotaExceeded",
        )
