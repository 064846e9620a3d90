"""The scheduler-extender verbs as functions over the engine (no HTTP here).

`SchedulerService` answers filter, prioritize, bind and preempt exactly as PROTOCOLS §A says:
every name it returns comes from the request, failures of filter and bind travel in `Error`
(kube-scheduler throws away the body of a non-200 reply), capacity reasons go to `FailedNodes`
(preemption may help) and the others to `FailedAndUnresolvableNodes`.

State is touched only from the thread that runs the event loop; the only blocking work (reading a
Pod, creating a Binding through the API server) runs in the default executor, and the allocation
is assumed *before* that call so concurrent binds see it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from hcs.assignment import container_annotations
from hcs.demand import (
    A_ASSIGNED_DEVICES,
    A_ASSIGNED_NODE,
    A_ASSIGNED_VENDOR,
    A_SCHEDULING_SCORE,
    PodDemand,
    parse_pod,
)
from hcs.engine import (
    MAX_SCORE,
    UNRESOLVABLE,
    EngineConfig,
    FilterResult,
    Reason,
    Request,
    compile_request,
    evaluate,
    filter_nodes,
    normalize_scores,
    score_percent,
)
from hcs.errors import HcsError
from hcs.ledger import Ledger
from hcs.nodelock import NodeBusyError
from hcs.state import Allocation, Candidates, ClusterState
from hcs.vendors import VendorTable
from hcs.wire import (
    ExtenderBindingResult,
    ExtenderPreemptionResult,
    MetaPod,
    MetaVictims,
    WireError,
    encode_host_scores,
    encode_name_map,
    encode_names,
    filter_error,
    normalize_keys,
    split_node_names,
)

log = logging.getLogger("hcs.extender")
POD_CACHE_SIZE = 10_000
PASSED_KEPT = 16
"""Recent pods whose filter result prioritize may reuse: kube-scheduler's cycle is one pod,
its prioritize right after its filter. Each holds a few bytes per node that passed."""
BIND_WAIT_S = 10.0
"""How long a bind waits its turn for a node whose lock another pod holds (below the extender
`httpTimeout` kube-scheduler is given, 15 s in the manifests)."""
LOCK_POLL_S = (0.02, 0.1)
"""The head of a node's queue re-reads the lock every 20 ms, backing off to 100 ms."""
ASSUMED_MAX_AGE_S = 60.0
"""A bind whose outcome stayed unknown keeps its devices booked this long at most (well past
any Binding still in flight: every call on the bind path times out within 1.5 s)."""


class BindError(Exception):
    """The Binding failed; `status` is the API server's HTTP status, None when no answer came
    (timeout, reset). Only a 4xx is a refusal: after anything else it may have committed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def refused(self) -> bool:
        return self.status is not None and 400 <= self.status < 500


class Binder(Protocol):
    """Where bind writes: the API server in cluster mode. Methods block (run in an executor)."""

    def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str]
    ) -> None: ...

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def lock(self, node: str, namespace: str, name: str, uid: str) -> None:
        """Take the node's lock for the pod (hcs.nodelock); NodeBusyError while held."""

    def unlock(self, node: str, uid: str) -> None: ...


@dataclass
class _Seen:
    demand: PodDemand
    request: Request
    resource_version: str


@dataclass
class SchedulerService:
    state: ClusterState
    config: EngineConfig = field(default_factory=EngineConfig)
    vendors: VendorTable = field(default_factory=VendorTable)
    binder: Binder | None = None
    """None: local mode, allocations are only recorded in memory."""
    pod_cache_size: int = POD_CACHE_SIZE
    gate: Callable[[], str | None] | None = None
    """Cluster mode: why the books are incomplete now (None: complete). While it says so,
    filter passes no node and bind records nothing."""
    bind_wait_s: float = BIND_WAIT_S
    """A bind waits this long at most for its node's lock, in a FIFO queue per node."""
    on_lock_wait: Callable[[float], None] | None = None
    """Called with each bind's wait for its node's lock, in seconds (for metrics)."""

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.state, self.config)
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._names_cache: dict[tuple[int, bytes, bytes], tuple[bytes, list[str]]] = {}
        self._shapes: dict[bytes, _Seen] = {}
        self._passed: OrderedDict[str, Candidates] = OrderedDict()
        """The nodes each recent pod's filter passed, by pod UID (for its prioritize)."""
        self._passed_bytes: dict[str, tuple[int, bytes]] = {}

        """The same, as the JSON array the filter reply carried."""
        self.filter_reasons = np.zeros(len(Reason), np.int64)
        """Cumulative per-reason node counts, for metrics."""
        self.filter_errors: Counter[str] = Counter()
        """Filter calls answered with an Error, by its code, for metrics."""
        self._node_queues: dict[str, asyncio.Lock] = {}
        self.queue_depth: Counter[str] = Counter()
        """Binds waiting for (or polling) each node's lock now."""

    # ----------------------------------------------------------------- pods

    def _pod_request(self, pod: Any, where: str) -> _Seen:
        """Parse (or reuse) the pod's demand; cached by UID and resourceVersion, bounded."""
        if not isinstance(pod, dict):
            raise WireError(f"{where}: expected a Pod object")
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        version = str(meta.get("resourceVersion") or "")
        seen = self._seen.get(uid) if uid else None
        if seen is not None and seen.resource_version == version:
            self._seen.move_to_end(uid)
            return seen
        seen = self._by_shape(pod, meta, version)
        if uid:
            self._seen[uid] = seen
            if len(self._seen) > self.pod_cache_size:
                self._seen.popitem(last=False)
        return seen

    def _by_shape(self, pod: dict[str, Any], meta: dict[str, Any], version: str) -> _Seen:
        """A ReplicaSet's pods differ only in name and uid: reuse the parse and the compiled
        request of an identical request shape, with this pod's identity."""
        spec = pod.get("spec") or {}
        try:
            shape = orjson.dumps(
                [
                    [
                        [c.get("name"), c.get("resources")]
                        for c in spec.get("containers") or []
                        if isinstance(c, dict)
                    ],
                    [
                        c.get("resources")
                        for c in spec.get("initContainers") or []
                        if isinstance(c, dict)
                    ],
                    meta.get("annotations"),
                    meta.get("labels"),
                    spec.get("priorityClassName"),
                    spec.get("activeDeadlineSeconds"),
                ],
                option=orjson.OPT_SORT_KEYS,
            )
        except TypeError:  # not JSON-shaped: let the parser explain what is wrong
            shape = b""
        template = self._shapes.get(shape) if shape else None
        if template is None:
            demand = parse_pod(pod, self.vendors)
            template = _Seen(demand, compile_request(demand), "")
            if shape:
                self._shapes[shape] = template
                if len(self._shapes) > 1024:
                    del self._shapes[next(iter(self._shapes))]
        name = str(meta.get("name") or meta.get("generateName") or "")
        demand = replace(
            template.demand,
            uid=str(meta.get("uid") or ""),
            name=name,
            namespace=str(meta.get("namespace") or "default"),
        )
        return _Seen(demand, template.request, version)

    # ----------------------------------------------------------------- filter

    def decode_args(self, body: bytes) -> Any:
        """Decode an ExtenderArgs body, reusing the candidate list when its bytes repeat (see
        `split_node_names`): the same list object comes back, so name look-ups hit their cache.
        Raises orjson.JSONDecodeError for a body that is not JSON."""
        split = split_node_names(body)
        if split is not None:
            head, segment = split
            names = self._names_for(segment)
            if names is not None:
                try:
                    raw = orjson.loads(head)
                except orjson.JSONDecodeError:
                    raw = None
                if isinstance(raw, dict) and raw.get("NodeNames", 0) is None:
                    raw["NodeNames"] = names
                    return raw
        return orjson.loads(body)

    def filter_body(self, body: bytes) -> bytes:
        """Filter from the raw request body."""
        try:
            raw = self.decode_args(body)
        except orjson.JSONDecodeError as exc:
            log.info("filter refused: body is not JSON: %s", exc)
            self.filter_errors["InvalidRequest"] += 1
            return orjson.dumps(filter_error(f"InvalidRequest: body is not JSON: {exc}"))
        return self.filter(raw)

    def _names_for(self, segment: bytes) -> list[str] | None:
        """The decoded candidate list for these bytes, the same list object while they repeat."""
        key = (len(segment), segment[:256], segment[-256:])
        hit = self._names_cache.get(key)
        if hit is not None and hit[0] == segment:
            return hit[1]
        try:
            names = orjson.loads(segment)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(names, list):
            return None
        if len(self._names_cache) >= 16:
            del self._names_cache[next(iter(self._names_cache))]
        self._names_cache[key] = (segment, names)
        return names

    def filter(self, raw: Any) -> bytes:
        """The filter reply as JSON bytes; failures are in `Error` (always HTTP 200)."""
        if self.gate is not None and (why := self.gate()) is not None:
            self.filter_errors["NotReady"] += 1
            return orjson.dumps(filter_error(f"NotReady: HCS's books are incomplete ({why})"))
        try:
            args = normalize_keys(raw, "ExtenderArgs")
            names, items = _candidates(args)
            seen = self._pod_request(args.get("pod"), "ExtenderArgs.Pod")
            if not seen.demand.asks_for_compute:
                return _encode_filter(orjson.dumps(names), items, b"{}", b"{}")
            result = filter_nodes(self.state, seen.request, names, self.config)
            _check_unknown_names(result.names[result.codes == Reason.NodeNotFound])
        except (WireError, HcsError) as exc:
            log.info("filter refused: %s", _message(exc))
            self.filter_errors[error_code(_message(exc))] += 1
            return orjson.dumps(filter_error(_message(exc)))
        found = result.candidates
        assert found is not None
        reply = _filter_reply(result, found, items)
        self.filter_reasons += reply.counts
        if log.isEnabledFor(logging.INFO):
            d = seen.demand
            log.info(
                "filter pod=%s vendors=%s candidates=%d passed=%d failed=%s",
                d.key,
                ",".join(d.allowed_vendors),
                len(names),
                len(reply.passed.rows),
                {Reason(i).name: int(n) for i, n in enumerate(reply.counts) if i and n},
            )
        if items is None and seen.demand.uid:
            # Prioritize for this pod sends these names back (those kube-scheduler's own
            # filters kept too): when its list is byte for byte this one, the rows are known.
            self._passed[seen.demand.uid] = reply.passed
            self._passed_bytes[seen.demand.uid] = (self.state.generation, reply.passed_json)
            if len(self._passed) > PASSED_KEPT:
                oldest = next(iter(self._passed))
                del self._passed[oldest], self._passed_bytes[oldest]
        return reply.body

    # ----------------------------------------------------------------- prioritize

    def prioritize_body(self, body: bytes) -> bytes:
        """Prioritize from the raw request body. When its candidates are byte for byte the
        names this pod's filter passed (kube-scheduler's own filters removed none), their rows
        are the filter's: the names are neither decoded nor looked up again. Raises
        orjson.JSONDecodeError, WireError or HcsError on bad input."""
        split = split_node_names(body)
        if split is not None:
            head, segment = split
            try:
                raw = orjson.loads(head)
            except orjson.JSONDecodeError:
                raw = None
            if isinstance(raw, dict) and raw.get("NodeNames", 0) is None:
                pod = raw.get("Pod")
                meta = pod.get("metadata") if isinstance(pod, dict) else None
                uid = meta.get("uid") if isinstance(meta, dict) else None
                # The rows hold while the set of node names is the same (`generation`).
                if isinstance(uid, str) and self._passed_bytes.get(uid) == (
                    self.state.generation,
                    segment,
                ):
                    return self.prioritize(raw, self._passed[uid])
        return self.prioritize(self.decode_args(body))

    def prioritize(self, raw: Any, found: Candidates | None = None) -> bytes:
        """Scores 0..10 for the candidates (`found`: already known, `raw`'s NodeNames are
        then not read), as JSON bytes. Raises WireError or HcsError on bad input (the server
        answers 400; kube-scheduler ignores prioritize errors)."""
        args = normalize_keys(raw, "ExtenderArgs")
        names: list[str] = []
        if found is None:
            names, _ = _candidates(args)
        seen = self._pod_request(args.get("pod"), "ExtenderArgs.Pod")
        if not seen.demand.asks_for_compute:
            every = names if found is None else found.names.tolist()
            return orjson.dumps([{"Host": h, "Score": 0} for h in every])
        try:
            found = self.state.resolve(names) if found is None else found
        except TypeError:
            raise WireError("ExtenderArgs.NodeNames: expected a list of node names") from None
        _check_unknown_names(found.names[found.rows < 0])
        ev = evaluate(self.state, seen.request, found.rows, self.config)
        percent = score_percent(self.state, seen.request, ev, self.config)
        scores = normalize_scores(percent, ev.codes == 0)
        if self.queue_depth:
            # A node admitting other pods comes after an equal alternative elsewhere.
            busy = np.isin(found.names, list(self.queue_depth)) & (scores > 0)
            scores = np.where(busy, scores - 1, scores)
        fragments = found.fragments
        if fragments is None:  # a name needing escapes
            return orjson.dumps(
                [{"Host": h, "Score": s} for h, s in zip(found.names, scores.tolist(), strict=True)]
            )
        # Hosts in order of score (stable), each score's hosts one slice, joined in C.
        counts = np.bincount(scores, minlength=MAX_SCORE + 1)
        ends = np.cumsum(counts).tolist()
        # (Scores are 0..10: sorted as bytes, several times faster than as int64.)
        ordered = fragments[np.argsort(scores.astype(np.uint8), kind="stable")].tolist()
        return encode_host_scores(
            [
                (ordered[ends[s] - int(counts[s]) : ends[s]], s)
                for s in np.flatnonzero(counts).tolist()
            ]
        )

    # ----------------------------------------------------------------- bind

    async def bind(self, raw: Any) -> ExtenderBindingResult:
        if self.gate is not None and (why := self.gate()) is not None:
            return {"Error": f"NotReady: HCS's books are incomplete ({why}); nothing was bound"}
        try:
            args = normalize_keys(raw, "ExtenderBindingArgs")
            name, namespace, uid, node = (
                _string(args, key, "ExtenderBindingArgs")
                for key in ("podname", "podnamespace", "poduid", "node")
            )
        except WireError as exc:
            log.info("bind refused: %s", _message(exc))
            return {"Error": _message(exc)}
        try:
            demand = await self._demand_for_bind(namespace, name, uid)
            if demand is None:
                return {
                    "Error": f"InvalidRequest: pod {namespace}/{name} ({uid}) was not seen "
                    "by filter and cannot be read from the API server"
                }
            alloc = self.ledger.assume(demand, node) if demand.asks_for_compute else None
        except (HcsError, WireError) as exc:
            log.info("bind pod=%s/%s node=%s refused: %s", namespace, name, node, _message(exc))
            return {"Error": _message(exc)}
        if self.binder is not None:
            annotations = _binding_annotations(alloc, node)
            loop = asyncio.get_running_loop()
            locked = False
            try:
                if alloc is not None:
                    # One HCS pod at a time between bind and Allocate on a node, so the device
                    # plugin knows for certain which pod kubelet is admitting.
                    await self._take_node(node, namespace, name, uid)
                    locked = True
                await loop.run_in_executor(
                    None, self.binder.bind, namespace, name, uid, node, annotations
                )
            except BaseException as exc:
                kept = await self._after_failed_bind(
                    exc, alloc, locked, namespace=namespace, name=name, node=node
                )
                if kept is None:
                    raise  # cancelled (shutdown): released; the watch restores a landed bind
                if kept != "bound":
                    return {"Error": kept}
        if alloc is not None:
            alloc = self.ledger.confirm(uid)
            log.info(
                "bind pod=%s/%s vendor=%s node=%s devices=%s score=%s",
                namespace,
                name,
                alloc.vendor,
                node,
                alloc.devices_annotation(),
                alloc.score,
            )
        return {"Error": ""}

    async def _take_node(self, node: str, namespace: str, name: str, uid: str) -> None:
        """Take the node's lock, waiting in the node's FIFO queue while another pod holds it,
        for `bind_wait_s` at most (then NodeBusyError: kube-scheduler retries later). Only the
        head of the queue polls the lock; a waiting bind holds its devices booked, so later
        binds choose around them and nothing is booked twice."""
        assert self.binder is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.bind_wait_s
        queue = self._node_queues.setdefault(node, asyncio.Lock())
        ahead = self.queue_depth[node]
        self.queue_depth[node] += 1
        try:
            try:
                if queue.locked():
                    await asyncio.wait_for(queue.acquire(), max(deadline - loop.time(), 0.0))
                else:
                    await queue.acquire()  # free: taken at once, whatever the wait allowed
            except TimeoutError:
                raise NodeBusyError(
                    f"node {node} is admitting other pods ({ahead} binds were ahead of this "
                    f"one); waited {self.bind_wait_s:g} s (--bind-wait), the bind is retried"
                ) from None
            try:
                delay = LOCK_POLL_S[0]
                while True:
                    try:
                        # Never cancelled midway: a lock taken after giving up would leak.
                        await loop.run_in_executor(
                            None, self.binder.lock, node, namespace, name, uid
                        )
                        return
                    except NodeBusyError as exc:
                        left = deadline - loop.time()
                        if left <= 0:
                            raise NodeBusyError(
                                f"{exc.args[0]}; waited {self.bind_wait_s:g} s (--bind-wait)"
                            ) from None
                    await asyncio.sleep(min(delay, left))  # the last try at the deadline
                    delay = min(delay * 2, LOCK_POLL_S[1])
            finally:
                queue.release()
        finally:
            self.queue_depth[node] -= 1
            if not self.queue_depth[node]:
                del self.queue_depth[node]
                if not queue.locked():
                    self._node_queues.pop(node, None)
            if self.on_lock_wait is not None:
                self.on_lock_wait(loop.time() - start)

    async def _after_failed_bind(
        self,
        exc: BaseException,
        alloc: Allocation | None,
        locked: bool,
        *,
        namespace: str,
        name: str,
        node: str,
    ) -> str | None:
        """Settle the books after the lock or the Binding failed: "bound" when the pod turns
        out to be bound here after all, else the Error to answer (None: re-raise `exc`).

        Only a refusal (4xx, or nothing sent) returns the devices. After a timeout, a reset or
        a 5xx the Binding may have committed: the pod is read back; bound here -> confirmed,
        bound elsewhere or gone -> returned, otherwise kept booked (assumed) until the watch
        shows the pod or the allocation expires. Devices are returned only while the ledger's
        record is still this bind's (a retry may have confirmed it meanwhile)."""
        assert self.binder is not None
        uid = alloc.uid if alloc is not None else ""
        loop = asyncio.get_running_loop()

        async def give_back() -> None:
            # Only while the record is still this bind's: a retry may have confirmed it, and
            # then the node's lock is the retry's too.
            ours = self.ledger.release_assumed(alloc) if alloc is not None else True
            if locked and ours:
                await loop.run_in_executor(None, self.binder.unlock, node, uid)  # type: ignore[union-attr]

        if isinstance(exc, NodeBusyError):
            await give_back()
            log.info("bind pod=%s/%s node=%s waits: %s", namespace, name, node, exc)
            return _message(exc)
        if not isinstance(exc, Exception):
            await give_back()
            return None
        if not isinstance(exc, BindError):
            log.exception("bind pod=%s/%s node=%s: unexpected failure", namespace, name, node)
            await give_back()
            return f"BindFailed: {exc}"
        log.warning("bind pod=%s/%s node=%s failed: %s", namespace, name, node, exc)
        if exc.refused or alloc is None:
            await give_back()
            return f"BindFailed: {exc}"
        try:
            pod = await loop.run_in_executor(None, self.binder.get_pod, namespace, name)
        except Exception as read_exc:
            pod, unread = None, f"; reading the pod back failed: {read_exc}"
        else:
            unread = ""
            spec, meta = (pod or {}).get("spec") or {}, (pod or {}).get("metadata") or {}
            if pod is None or meta.get("uid") != uid:
                await give_back()
                return f"BindFailed: {exc}; the pod is gone"
            if spec.get("nodeName") == node:
                return "bound"
            if spec.get("nodeName"):
                await give_back()
                return f"BindFailed: {exc}; the pod is bound to {spec['nodeName']}"
        return (
            f"BindFailed: {exc}{unread}; the Binding may have committed, so its devices stay "
            f"booked until the pod is seen bound, or for {ASSUMED_MAX_AGE_S:g} s"
        )

    async def expire_assumed(self, max_age_s: float = ASSUMED_MAX_AGE_S) -> list[Allocation]:
        """Return the devices of binds whose outcome stayed unknown for `max_age_s`, and free
        their nodes' locks (the extender calls this periodically)."""
        expired = self.ledger.expire_assumed(max_age_s)
        loop = asyncio.get_running_loop()
        for a in expired:
            log.warning(
                "bind of pod %s/%s to %s never confirmed: devices returned",
                a.namespace,
                a.name,
                a.node,
            )
            if self.binder is not None:
                await loop.run_in_executor(None, self.binder.unlock, a.node, a.uid)
        return expired

    async def _demand_for_bind(self, namespace: str, name: str, uid: str) -> PodDemand | None:
        seen = self._seen.get(uid)
        if seen is not None:
            return seen.demand
        if self.binder is None:
            return None
        pod = await asyncio.get_running_loop().run_in_executor(
            None, self.binder.get_pod, namespace, name
        )
        if pod is None or str((pod.get("metadata") or {}).get("uid")) != uid:
            return None
        return self._pod_request(pod, "Pod").demand

    # ----------------------------------------------------------------- preempt

    def preempt(self, raw: Any) -> ExtenderPreemptionResult:
        """Keep the candidate nodes where evicting the listed victims frees enough devices.

        Victims' allocations are taken out of the state together (a pod's allocation lives on
        one node, so this is the same as one node at a time), every candidate is evaluated in
        one pass, and the allocations are put back.
        """
        args = normalize_keys(raw, "ExtenderPreemptionArgs")
        victims = _victims(args)
        seen = self._pod_request(args.get("pod"), "ExtenderPreemptionArgs.Pod")
        if not seen.demand.asks_for_compute:
            return {"NodeNameToMetaVictims": victims}
        names = list(victims)
        with self.ledger.lock:
            removed: list[Allocation] = []
            for node, entry in victims.items():
                for pod in entry["Pods"]:
                    alloc = self.state.allocations.get(pod["UID"])
                    if alloc is not None and alloc.node == node:
                        removed.append(alloc)
                        self.state.remove_allocation(alloc.uid)
            try:
                result = filter_nodes(self.state, seen.request, names, self.config)
            finally:
                for alloc in removed:
                    self.state.add_allocation(alloc)
        keep = set(result.passed_names())
        return {"NodeNameToMetaVictims": {n: v for n, v in victims.items() if n in keep}}


def error_code(error: str) -> str:
    """The machine code an Error string starts with (`NotReady: …` -> `NotReady`)."""
    code, sep, _ = error.partition(":")
    return code if sep and code.isidentifier() else "Other"


def _message(exc: Exception) -> str:
    if isinstance(exc, HcsError):
        return str(exc)
    return f"InvalidRequest: {exc}"


def _string(args: Mapping[str, Any], key: str, what: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise WireError(f"{what}: {key} must be a non-empty string")
    return value


def _candidates(args: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]] | None]:
    """Node names from `NodeNames` (nodeCacheCapable) or `Nodes.items` (full Node objects)."""
    names = args.get("nodenames")
    if names is not None:
        if not isinstance(names, list):
            raise WireError("ExtenderArgs.NodeNames: expected a list of node names")
        return names, None
    nodes = args.get("nodes")
    if nodes is None:
        raise WireError("ExtenderArgs: NodeNames and Nodes are both null; no candidate nodes")
    if not isinstance(nodes, dict) or not isinstance(nodes.get("items"), list):
        raise WireError("ExtenderArgs.Nodes: expected a NodeList with items")
    items: list[dict[str, Any]] = nodes["items"]
    try:
        return [item["metadata"]["name"] for item in items], items
    except (KeyError, TypeError):
        raise WireError("ExtenderArgs.Nodes.items: every Node needs metadata.name") from None


@dataclass(frozen=True)
class _FilterReply:
    """A filter reply and what it was made from."""

    counts: npt.NDArray[np.int64]
    """Nodes per Reason."""
    body: bytes
    passed: Candidates
    passed_json: bytes


def _filter_reply(
    result: FilterResult, found: Candidates, items: list[dict[str, Any]] | None
) -> _FilterReply:
    """The ExtenderFilterResult for `result` (with the Node objects that passed when the call
    sent `items`): every failing node named with its reason's message.

    The candidates are put in order of their code once (a stable sort keeps request order
    within a code), and each code's names are one slice of that order, joined in C.
    """
    codes = result.codes
    counts = np.bincount(codes, minlength=len(Reason))
    order = np.argsort(codes, kind="stable")
    ends = np.cumsum(counts).tolist()
    fragments = found.fragments
    passed = found.take(order[: ends[0]])
    # Name fragments in code order; plain names when some name needs escapes (never for DNS
    # names), encoded as dicts then.
    ordered = (fragments if fragments is not None else found.names)[order].tolist()
    failed: list[tuple[list[Any], str]] = []
    unresolvable: list[tuple[list[Any], str]] = []
    for code in (np.flatnonzero(counts[1:]) + 1).tolist():
        target = unresolvable if Reason(code) in UNRESOLVABLE else failed
        # One message per reason, shared by every node: kube-scheduler groups them.
        target.append((ordered[ends[code - 1] : ends[code]], result.message(code)))
    if fragments is not None:
        failed_json, unresolvable_json = encode_name_map(failed), encode_name_map(unresolvable)
        passed_json = encode_names(ordered[: ends[0]])
    else:
        failed_json = orjson.dumps({n: m for names, m in failed for n in names})
        unresolvable_json = orjson.dumps({n: m for names, m in unresolvable for n in names})
        passed_json = orjson.dumps(ordered[: ends[0]])
    kept = None
    if items is not None:
        kept = np.asarray(items, dtype=object)[order[: ends[0]]].tolist()
    body = _encode_filter(passed_json, kept, failed_json, unresolvable_json)
    return _FilterReply(counts, body, passed, passed_json)


def _encode_filter(
    passed: bytes, items: list[dict[str, Any]] | None, failed: bytes, unresolvable: bytes
) -> bytes:
    """The ExtenderFilterResult, assembled from encoded parts (`passed`: the JSON array of the
    names that passed; see `encode_name_map`)."""
    if items is not None:
        head = [b'{"NodeNames":null,"Nodes":', orjson.dumps({"metadata": {}, "items": items})]
    else:
        head = [b'{"NodeNames":', passed, b',"Nodes":null']
    tail = [b',"FailedNodes":', failed, b',"FailedAndUnresolvableNodes":', unresolvable]
    return b"".join([*head, *tail, b',"Error":""}'])  # one copy of the large parts


def _check_unknown_names(unknown: Any) -> None:
    """Names the inventory does not know must still be strings (known ones are)."""
    if any(not isinstance(n, str) for n in unknown.tolist()):
        raise WireError("ExtenderArgs.NodeNames: expected a list of node names")


def _victims(args: Mapping[str, Any]) -> dict[str, MetaVictims]:
    """NodeNameToMetaVictims, or NodeNameToVictims with full Pods reduced to their UIDs."""
    meta = args.get("nodenametometavictims")
    full = args.get("nodenametovictims")
    out: dict[str, MetaVictims] = {}
    source = meta if meta is not None else full
    if source is None:
        return out
    if not isinstance(source, dict):
        raise WireError(
            "ExtenderPreemptionArgs: NodeNameToMetaVictims must map node names to victims"
        )
    for node, raw in source.items():
        entry = normalize_keys(raw, f"victims of {node}")
        pods = entry.get("pods") or []
        if not isinstance(pods, list):
            raise WireError(f"victims of {node}: Pods must be a list")
        uids: list[MetaPod] = []
        for pod in pods:
            if meta is not None:
                uid = normalize_keys(pod, f"victims of {node}").get("uid")
            else:
                uid = ((pod or {}).get("metadata") or {}).get("uid")
            if not isinstance(uid, str):
                raise WireError(f"victims of {node}: every victim needs a UID")
            uids.append({"UID": uid})
        violations = entry.get("numpdbviolations") or 0
        out[str(node)] = {"Pods": uids, "NumPDBViolations": int(violations)}
    return out


def _binding_annotations(alloc: Allocation | None, node: str) -> dict[str, str]:
    if alloc is None:
        return {}
    # assigned-vendor too: a pod that skipped the webhook (legacy, or created while it was down)
    # has none, and when it has one it is this vendor (filter allowed no other).
    return {
        A_ASSIGNED_VENDOR: alloc.vendor,
        A_ASSIGNED_DEVICES: alloc.devices_annotation(),
        A_ASSIGNED_NODE: node,
        A_SCHEDULING_SCORE: str(alloc.score if alloc.score is not None else 0),
        **container_annotations(alloc.per_container()),
    }
