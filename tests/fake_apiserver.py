"""A small in-test kube-apiserver: list and watch of ComputeNodes and Pods, read Pod, create
Binding. It speaks the real wire protocol (lists with a resourceVersion, watch streams of
newline-delimited events, 410 Gone for a compacted version), so the official client and HCS's
watch code run unmodified against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

NODES = "computenodes"
PODS = "pods"
QUOTAS = "computequotas"
LEASES = "leases"
NAMESPACES = "namespaces"
SLICES = "resourceslices"
CLAIMS = "resourceclaims"
TEMPLATES = "resourceclaimtemplates"


class FakeApiServer:
    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[str, dict[str, Any]]] = {
            NODES: {},
            PODS: {},
            QUOTAS: {},
            LEASES: {},
            NAMESPACES: {},
            SLICES: {},
            CLAIMS: {},
            TEMPLATES: {},
        }
        self.events: dict[str, list[Event]] = {
            NODES: [],
            PODS: [],
            QUOTAS: [],
            LEASES: [],
            NAMESPACES: [],
            SLICES: [],
            CLAIMS: [],
            TEMPLATES: [],
        }
        self.status_conflicts = 0
        """The next N status updates answer 409 Conflict: another replica wrote the same
        charge first (its write lands, then this one is refused)."""
        self.status_updates = 0
        self.node_conflicts = 0
        """The next N ComputeNode writes answer 409 Conflict."""
        self.node_writes: list[tuple[str, dict[str, Any]]] = []
        self.events_posted: list[dict[str, Any]] = []
        self.compacted = 0
        """Watches from a resourceVersion below this get 410 Gone (and continue tokens of lists
        taken below it)."""
        self.expire_continues = 0
        """The next N continue requests answer 410 Expired (the list's version was compacted
        while it was being read, as kube-apiserver answers then)."""
        self._continues: dict[str, tuple[list[dict[str, Any]], int, int]] = {}
        """Paginated lists: token -> (the rest of the list's snapshot, its resourceVersion, the
        compaction point when it began)."""
        self.fail_lists = 0
        """The next N list calls answer 500."""
        self.list_calls = {NODES: 0, PODS: 0, QUOTAS: 0, LEASES: 0, NAMESPACES: 0}
        self.bindings: list[dict[str, Any]] = []
        self.closing = False
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        """Every request as (method, path, query), for RBAC checks."""
        self._queues: dict[str, set[asyncio.Queue[Event | None]]] = {
            NODES: set(),
            PODS: set(),
            QUOTAS: set(),
            LEASES: set(),
            NAMESPACES: set(),
            SLICES: set(),
            CLAIMS: set(),
            TEMPLATES: set(),
        }
        self.hanging: dict[str, asyncio.Event] = {}
        self.stalled: dict[str, asyncio.Event] = {}
        """Kinds whose list requests get no answer until the event is set (`hang`)."""
        self.bind_failures: list[tuple[int, bool, float | asyncio.Event]] = []
        """(status, committed first, delay or an event to wait for) per coming Binding."""
        """The next Bindings answer these (status, after committing?, after how many seconds)
        instead of 201."""
        self.delay_s = 0.0
        """Every answer waits this long first (a slow or distant API server)."""

    # ------------------------------------------------------------- test controls

    def _key(self, kind: str, obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        if kind in (NODES, NAMESPACES, SLICES):
            return str(meta["name"])
        return f"{meta['namespace']}/{meta['name']}"

    def lease_holder(self, node: str, namespace: str = "hcs-node-locks") -> str:
        lease = self.objects[LEASES].get(f"{namespace}/hcs-node-{node}") or {}
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    def put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        key = self._key(kind, obj)
        prev = self.objects[kind].get(key)
        event = "MODIFIED" if prev is not None else "ADDED"
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if kind in (PODS, CLAIMS, SLICES):
            obj["metadata"].setdefault("uid", f"uid-{key.replace('/', '-')}")
        self.objects[kind][key] = obj
        self._emit(kind, event, obj, prev)
        return obj

    def delete(self, kind: str, key: str) -> None:
        obj = self.objects[kind].pop(key)
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(kind, "DELETED", obj, obj)

    def stall(self, kind: str) -> None:
        """Watches of `kind` opened from now on stay open and silent (a half-open connection
        behind a broken network path) until `unstall(kind)`."""
        self.stalled[kind] = asyncio.Event()

    def unstall(self, kind: str) -> None:
        self.stalled.pop(kind).set()

    def hang(self, kind: str) -> None:
        """List requests of `kind` get no answer until `answer(kind)`."""
        self.hanging[kind] = asyncio.Event()

    def answer(self, kind: str) -> None:
        self.hanging.pop(kind).set()

    def drop_watches(self) -> None:
        """End every open watch stream, as an API server restart or a load balancer would."""
        for queues in self._queues.values():
            for q in queues:
                q.put_nowait(None)

    def open_watches(self) -> int:
        return sum(len(queues) for queues in self._queues.values())

    def compact(self) -> None:
        """Forget history: watches from any earlier version get 410 Gone."""
        self.compacted = self.rv + 1

    def _emit(
        self, kind: str, event: str, obj: dict[str, Any], prev: dict[str, Any] | None
    ) -> None:
        """Record a change with the object's previous state, so each watch can tell whether
        the object entered or left its field selector (as kube-apiserver does)."""
        entry = (self.rv, event, obj, prev)
        self.events[kind].append(entry)
        for q in self._queues[kind]:
            q.put_nowait(entry)

    # ------------------------------------------------------------- HTTP

    def app(self) -> web.Application:
        calls = self.calls

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            calls.append((request.method, request.path, dict(request.query)))
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            result: web.StreamResponse = await handler(request)
            return result

        app = web.Application(middlewares=[record])

        async def end_watches(_: web.Application) -> None:
            # A stopping server ends its watch streams at once (as kube-apiserver does), so a
            # test's teardown does not wait out each watch's timeoutSeconds.
            self.closing = True
            self.drop_watches()

        app.on_shutdown.append(end_watches)
        app.router.add_get("/apis/hcs.io/v1alpha1/computenodes", self._list_or_watch(NODES))
        app.router.add_get("/api/v1/pods", self._list_or_watch(PODS))
        app.router.add_get("/api/v1/namespaces", self._list_or_watch(NAMESPACES))
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._read_pod)
        app.router.add_patch("/api/v1/namespaces/{ns}/pods/{name}", self._patch_pod)
        lease = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        app.router.add_get(lease + "/{name}", self._read_lease)
        app.router.add_post(lease, self._create_lease)
        app.router.add_put(lease + "/{name}", self._replace_lease)
        app.router.add_post("/api/v1/namespaces/{ns}/pods/{name}/binding", self._bind)
        app.router.add_get("/apis/hcs.io/v1alpha1/computequotas", self._list_or_watch(QUOTAS))
        app.router.add_get(
            "/apis/hcs.io/v1alpha1/namespaces/{ns}/computequotas", self._list_or_watch(QUOTAS)
        )
        app.router.add_post("/apis/hcs.io/v1alpha1/computenodes", self._create_node)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        node = "/apis/hcs.io/v1alpha1/computenodes/{name}"
        app.router.add_get(node, self._read_node)
        app.router.add_put(node, self._write_node(status=False))
        app.router.add_put(node + "/status", self._write_node(status=True))
        slices = "/apis/resource.k8s.io/v1/resourceslices"
        app.router.add_get(slices, self._list_slices)
        app.router.add_post(slices, self._create_slice)
        app.router.add_put(slices + "/{name}", self._replace_slice)
        app.router.add_delete(slices + "/{name}", self._delete_slice)
        app.router.add_get(
            "/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{name}", self._read_claim
        )
        templates = "/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates"
        app.router.add_get(templates + "/{name}", self._read_template)
        app.router.add_post(templates, self._create_template)
        base = "/apis/hcs.io/v1alpha1/namespaces/{ns}/computequotas/{name}"
        app.router.add_get(base, self._read_quota)
        app.router.add_put(base + "/status", self._put_quota_status)
        return app

    async def _create_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.events_posted.append(body)
        return web.json_response(body, status=201)

    async def _create_node(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["metadata"]["name"]
        if name in self.objects[NODES]:
            return _status(409, "AlreadyExists", f"computenodes {name} already exists")
        self.node_writes.append(("create", body))
        return web.json_response(self.put(NODES, body), status=201)

    async def _read_node(self, request: web.Request) -> web.Response:
        node = self.objects[NODES].get(request.match_info["name"])
        if node is None:
            return _status(404, "NotFound", f"computenodes {request.match_info['name']} not found")
        return web.json_response(node)

    def _write_node(self, *, status: bool) -> Any:
        async def handler(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            body = await request.json()
            current = self.objects[NODES].get(name)
            if current is None:
                return _status(404, "NotFound", f"computenodes {name} not found")
            if self.node_conflicts:
                self.node_conflicts -= 1
                self.put(NODES, current)  # another writer moved the version on
                return _status(409, "Conflict", "the object has been modified")
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return _status(409, "Conflict", "the object has been modified")
            updated = copy.deepcopy(current)
            if status:  # the status subresource ignores everything but status
                updated["status"] = body.get("status") or {}
            else:  # the main resource ignores status
                updated["spec"] = body.get("spec")
                updated["metadata"]["labels"] = body["metadata"].get("labels") or {}
            self.node_writes.append(("status" if status else "spec", body))
            return web.json_response(self.put(NODES, updated))

        return handler

    async def _read_quota(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        quota = self.objects[QUOTAS].get(key)
        if quota is None:
            return _status(404, "NotFound", f"computequotas {key} not found")
        return web.json_response(quota)

    async def _put_quota_status(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        body = await request.json()
        current = self.objects[QUOTAS].get(key)
        if current is None:
            return _status(404, "NotFound", f"computequotas {key} not found")
        if self.status_conflicts:
            self.status_conflicts -= 1
            # Another webhook replica, admitting the same kind of pod from the same figures,
            # wrote its charge first: the stored `used` moves on by that charge, and this
            # writer must read it again (a real concurrent write, not a re-store).
            other = copy.deepcopy(current)
            other["status"] = copy.deepcopy(body.get("status") or {})
            self.put(QUOTAS, other)
            return _status(
                409,
                "Conflict",
                "the object has been modified; please apply your "
                "changes to the latest version and try again",
            )
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified")
        updated = copy.deepcopy(current)
        updated["status"] = body.get("status") or {}
        self.status_updates += 1
        return web.json_response(self.put(QUOTAS, updated))

    def _list_or_watch(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            if request.query.get("watch") in ("true", "1", "True"):
                return await self._watch(kind, request)
            self.list_calls[kind] += 1
            if kind in self.hanging:
                await self.hanging[kind].wait()
            if self.fail_lists:
                self.fail_lists -= 1
                return _status(500, "InternalError", "injected failure")
            limit = int(request.query.get("limit") or 0)
            token = request.query.get("continue")
            if token:  # the next page of the list's snapshot, at the list's version
                if self.expire_continues:
                    self.expire_continues -= 1
                    self._continues.pop(token, None)
                    return _status(410, "Expired", "the provided continue parameter is too old")
                if token not in self._continues:
                    return _status(410, "Expired", "the provided continue parameter is too old")
                items, version, compacted = self._continues.pop(token)
                if compacted != self.compacted:  # history compacted since the list began
                    return _status(410, "Expired", "the provided continue parameter is too old")
            else:
                items = list(self.objects[kind].values())
                if "ns" in request.match_info:  # a namespaced list
                    ns = request.match_info["ns"]
                    items = [o for o in items if (o.get("metadata") or {}).get("namespace") == ns]
                selector = _field_selector(request.query.get("fieldSelector", ""))
                items = [o for o in items if selector(o)]
                if limit:  # etcd's order: by key
                    items.sort(key=lambda o: self._key(kind, o))
                version = self.rv
            meta: dict[str, Any] = {"resourceVersion": str(version)}
            if limit and len(items) > limit:
                items, rest = items[:limit], items[limit:]
                token = f"c{len(self._continues)}-{version}-{id(rest)}"
                # The list's snapshot, taken once at its first page (later writes do not show).
                self._continues[token] = (
                    rest if request.query.get("continue") else copy.deepcopy(rest),
                    version,
                    self.compacted,
                )
                meta["continue"] = token
                meta["remainingItemCount"] = len(rest)
            body = {
                "apiVersion": "v1" if kind in (PODS, NAMESPACES) else "hcs.io/v1alpha1",
                "kind": {PODS: "PodList", NAMESPACES: "NamespaceList"}.get(kind, "ComputeNodeList"),
                "metadata": meta,
                "items": items,
            }
            return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())

        return handler

    async def _watch(self, kind: str, request: web.Request) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 30)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if kind in self.stalled:
            await self.stalled[kind].wait()
        if since < self.compacted:
            gone = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "code": 410,
                "reason": "Expired",
                "message": f"too old resource version: {since}",
            }
            await resp.write(orjson.dumps({"type": "ERROR", "object": gone}) + b"\n")
            await resp.write_eof()
            return resp
        selector = _field_selector(request.query.get("fieldSelector", ""))
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self.closing:
            queue.put_nowait(None)
        for entry in self.events[kind]:
            if entry[0] > since:
                queue.put_nowait(entry)
        self._queues[kind].add(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    got: Event | None = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if got is None:
                    break
                _, event, obj, prev = got
                # As kube-apiserver: an object entering the selector is ADDED, one leaving it
                # DELETED, one outside it before and after never sent.
                before = prev is not None and selector(prev)
                after = event != "DELETED" and selector(obj)
                if not before and not after:
                    continue
                event = "MODIFIED" if before and after else ("ADDED" if after else "DELETED")
                await resp.write(orjson.dumps({"type": event, "object": obj}) + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._queues[kind].discard(queue)
        with contextlib.suppress(ConnectionResetError):  # the client went away first
            await resp.write_eof()
        return resp

    async def _read_pod(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        pod = self.objects[PODS].get(key)
        if pod is None:
            return _status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        return web.json_response(pod)

    async def _patch_pod(self, request: web.Request) -> web.Response:
        """A JSON merge patch of metadata.annotations (what HCS writes on pods)."""
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        pod = self.objects[PODS].get(key)
        if pod is None:
            return _status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        if "merge-patch" not in request.content_type:
            return _status(415, "UnsupportedMediaType", f"{request.content_type} not supported")
        body = await request.json()
        meta = body.get("metadata") or {}
        if set(body) - {"metadata"} or set(meta) - {"annotations", "resourceVersion"}:
            return _status(422, "Invalid", "only metadata.annotations may be patched here")
        if meta.get("resourceVersion") not in (None, pod["metadata"]["resourceVersion"]):
            return _status(409, "Conflict", "the object has been modified")
        pod = copy.deepcopy(pod)
        annotations = pod["metadata"].setdefault("annotations", {})
        for k, v in (meta.get("annotations") or {}).items():
            if v is None:
                annotations.pop(k, None)
            else:
                annotations[k] = v
        return web.json_response(self.put(PODS, pod))

    # ResourceSlices (cluster-scoped) and ResourceClaims, by the API server's rules: create of
    # an existing name is 409, a replace must carry the current resourceVersion.

    async def _list_slices(self, request: web.Request) -> web.Response:
        selector = request.query.get("labelSelector", "")
        wanted = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
        fields = request.query.get("fieldSelector", "")
        # kube-apiserver's field selectors for ResourceSlices: spec.nodeName, spec.driver.
        if any(
            f.split("=")[0] not in ("spec.nodeName", "spec.driver") for f in fields.split(",") if f
        ):
            return _status(400, "BadRequest", f"field label not supported: {fields}")
        by_field = _field_selector(fields)
        items = [
            s
            for s in self.objects[SLICES].values()
            if all((s["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
            and by_field(s)
        ]
        return web.json_response(
            {
                "kind": "ResourceSliceList",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    async def _create_slice(self, request: web.Request) -> web.Response:
        body = await request.json()
        invalid = _invalid_metadata(body)
        if invalid:
            return _status(422, "Invalid", invalid)
        if body["metadata"]["name"] in self.objects[SLICES]:
            return _status(409, "AlreadyExists", f"resourceslices {body['metadata']['name']}")
        return web.json_response(self.put(SLICES, body), status=201)

    async def _replace_slice(self, request: web.Request) -> web.Response:
        current = self.objects[SLICES].get(request.match_info["name"])
        if current is None:
            return _status(404, "NotFound", f"resourceslices {request.match_info['name']}")
        body = await request.json()
        invalid = _invalid_metadata(body)
        if invalid:
            return _status(422, "Invalid", invalid)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified")
        return web.json_response(self.put(SLICES, body))

    async def _delete_slice(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.objects[SLICES]:
            return _status(404, "NotFound", f"resourceslices {name}")
        self.delete(SLICES, name)
        return web.json_response({"kind": "Status", "status": "Success"})

    async def _read_claim(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        claim = self.objects[CLAIMS].get(key)
        if claim is None:
            return _status(404, "NotFound", f'resourceclaims "{request.match_info["name"]}"')
        return web.json_response(claim)

    async def _read_template(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        found = self.objects[TEMPLATES].get(key)
        if found is None:
            return _status(
                404, "NotFound", f'resourceclaimtemplates "{request.match_info["name"]}"'
            )
        return web.json_response(found)

    async def _create_template(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["metadata"]["namespace"] = request.match_info["ns"]
        key = f"{request.match_info['ns']}/{body['metadata']['name']}"
        if key in self.objects[TEMPLATES]:
            return _status(409, "AlreadyExists", f"resourceclaimtemplates {key} already exists")
        return web.json_response(self.put(TEMPLATES, body), status=201)

    def _lease_key(self, request: web.Request, name: str | None = None) -> str:
        return f"{request.match_info['ns']}/{name or request.match_info['name']}"

    async def _read_lease(self, request: web.Request) -> web.Response:
        lease = self.objects[LEASES].get(self._lease_key(request))
        if lease is None:
            return _status(404, "NotFound", f'leases "{request.match_info["name"]}" not found')
        return web.json_response(lease)

    async def _create_lease(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = self._lease_key(request, body["metadata"]["name"])
        if key in self.objects[LEASES]:
            return _status(409, "AlreadyExists", f"leases {key} already exists")
        body["metadata"]["namespace"] = request.match_info["ns"]
        return web.json_response(self.put(LEASES, body), status=201)

    async def _replace_lease(self, request: web.Request) -> web.Response:
        key = self._lease_key(request)
        current = self.objects[LEASES].get(key)
        if current is None:
            return _status(404, "NotFound", f"leases {key} not found")
        body = await request.json()
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified")
        body["metadata"]["namespace"] = request.match_info["ns"]
        return web.json_response(self.put(LEASES, body))

    async def _bind(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        body = await request.json()
        self.bindings.append(body)
        pod = self.objects[PODS].get(key)
        if pod is None:
            return _status(404, "NotFound", f"pods {key} not found")
        uid = (body.get("metadata") or {}).get("uid")
        if uid and uid != pod["metadata"]["uid"]:
            return _status(409, "Conflict", "Precondition failed: UID mismatch")
        if pod["spec"].get("nodeName"):
            return _status(
                409,
                "Conflict",
                f"pod {key} is already assigned to node {pod['spec']['nodeName']!r}",
            )
        failure = self.bind_failures.pop(0) if self.bind_failures else None
        if failure is not None and not failure[1]:
            await _wait(failure[2])
            return _status(failure[0], "InternalError", "injected failure before the Binding")
        pod = copy.deepcopy(pod)
        pod["spec"]["nodeName"] = body["target"]["name"]
        annotations = pod["metadata"].setdefault("annotations", {})
        annotations.update((body.get("metadata") or {}).get("annotations") or {})
        self.put(PODS, pod)
        if failure is not None:  # committed, but the caller hears of a failure
            await _wait(failure[2])
            return _status(failure[0], "InternalError", "injected failure after the Binding")
        return web.json_response(
            {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}, status=201
        )


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
        },
        status=code,
    )


def write_kubeconfig(path: Path, server: str, namespace: str | None = None) -> Path:
    """A kubeconfig whose current context reaches `server` without credentials."""
    context: dict[str, str] = {"cluster": "t", "user": "t"}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "t", "cluster": {"server": server}}],
        "users": [{"name": "t", "user": {}}],
        "contexts": [{"name": "t", "context": context}],
        "current-context": "t",
    }
    path.write_text(orjson.dumps(doc).decode())  # JSON is YAML
    return path


Event = tuple[int, str, dict[str, Any], dict[str, Any] | None]
"""(resourceVersion, type, object, the object before this change or None)."""


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _invalid_metadata(obj: dict[str, Any]) -> str | None:
    """kube-apiserver's object metadata validation: the name a DNS subdomain (<= 253), every
    label value at most 63 characters of the label alphabet."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        return f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain"
    for key, value in (meta.get("labels") or {}).items():
        if len(str(value)) > 63 or not _LABEL_VALUE.match(str(value)):
            return f"metadata.labels[{key}]: Invalid value: {value!r}: at most 63 characters"
    return None


def _field_selector(text: str) -> Callable[[dict[str, Any]], bool]:
    """kube-apiserver's field selectors as HCS uses them: `spec.nodeName=n`,
    `metadata.name=n`, `status.phase!=Succeeded` (`=`, `==`, `!=`; comma-separated terms all
    hold)."""
    terms: list[tuple[str, bool, str]] = []
    for term in filter(None, text.split(",")):
        if "!=" in term:
            field, wanted = term.split("!=", 1)
            terms.append((field, False, wanted))
        else:
            field, _, wanted = term.replace("==", "=").partition("=")
            terms.append((field, True, wanted))

    def value(obj: dict[str, Any], path: str) -> str:
        node: Any = obj
        for part in path.split("."):
            node = (node or {}).get(part) if isinstance(node, dict) else None
        return str(node or "")

    def match(obj: dict[str, Any]) -> bool:
        return all((value(obj, f) == wanted) is equal for f, equal, wanted in terms)

    return match


async def _wait(delay: float | asyncio.Event) -> None:
    """A fixed delay, or until the test says so (no timing window to lose under load)."""
    if isinstance(delay, asyncio.Event):
        await delay.wait()
    else:
        await asyncio.sleep(delay)
