"""HTTP face of the scheduler extender: a few lines per verb around `SchedulerService`.

Filter and bind always answer 200 and carry failures in `Error`, because kube-scheduler discards
the body of any other status; prioritize and preempt answer 400 on a malformed request (the
scheduler logs the status and carries on). Bodies are decoded and encoded with orjson; the body
limit is explicit because a 5,000-node call with full Node objects (`nodeCacheCapable: false`)
is tens of MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster.buildinfo import register_build_info
from cluster.sync import ClusterSync
from hcs.engine import Reason
from hcs.errors import HcsError
from hcs.quantity import MIB
from hcs.scheduling import SchedulerService, error_code
from hcs.state import ClusterState
from hcs.vendors import VENDOR_NAMES
from hcs.wire import WireError
from serving import add_operations

log = logging.getLogger("hcs.extender")

VERBS = ("filter", "prioritize", "bind", "preempt")
DEFAULT_MAX_BODY = 256 * 2**20
EXPIRY_PERIOD_S = 5.0

SERVICE = web.AppKey("service", SchedulerService)
LATENCY = web.AppKey("latency", Histogram)
BINDS = web.AppKey("binds", Counter)

JSON = "application/json"


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON)


async def _decode(request: web.Request) -> Any:
    return orjson.loads(await request.read())


async def filter_handler(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=request.app[SERVICE].filter_body(body), content_type=JSON)


async def _or_400(
    request: web.Request, answer: Callable[[SchedulerService, bytes], bytes]
) -> web.Response:
    """Prioritize and preempt: a malformed request is HTTP 400 with the reason."""
    try:
        body = answer(request.app[SERVICE], await request.read())
    except orjson.JSONDecodeError as exc:
        log.info("malformed %s call: body is not JSON: %s", request.path, exc)
        return _json({"Error": f"InvalidRequest: body is not JSON: {exc}"}, 400)
    except (WireError, HcsError) as exc:
        message = str(exc) if isinstance(exc, HcsError) else f"InvalidRequest: {exc}"
        log.info("malformed %s call: %s", request.path, message)
        return _json({"Error": message}, 400)
    return web.Response(body=body, content_type=JSON)


async def prioritize_handler(request: web.Request) -> web.Response:
    return await _or_400(request, lambda svc, body: svc.prioritize_body(body))


async def bind_handler(request: web.Request) -> web.Response:
    try:
        raw = await _decode(request)
    except orjson.JSONDecodeError as exc:
        return _json({"Error": f"InvalidRequest: body is not JSON: {exc}"})
    result = await request.app[SERVICE].bind(raw)
    request.app[BINDS].labels(result=error_code(result["Error"]) if result["Error"] else "ok").inc()
    return _json(result)


async def preempt_handler(request: web.Request) -> web.Response:
    return await _or_400(request, lambda svc, body: orjson.dumps(svc.preempt(orjson.loads(body))))


async def unknown_verb(request: web.Request) -> web.Response:
    verb = request.match_info.get("verb", "")
    return _json(
        {
            "Error": f"InvalidRequest: unknown verb {verb!r}; this extender serves "
            f"{', '.join('/' + v for v in VERBS)}"
        },
        404,
    )


@web.middleware
async def timing(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    verb = request.path.strip("/")
    if verb not in VERBS:
        return await handler(request)
    start = time.perf_counter()
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:  # a bug must not take the server down or lose the Error contract
        log.exception("%s failed", verb)
        body = {"Error": f"Internal: {verb} failed; see the extender log"}
        return _json(body, 200 if verb in ("filter", "bind") else 500)
    finally:
        request.app[LATENCY].labels(verb=verb).observe(time.perf_counter() - start)


class _StateCollector(Collector):
    """Inventory size, allocations per vendor and filter outcomes, read at scrape time."""

    def __init__(self, service: SchedulerService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        state = self.service.state
        nodes = GaugeMetricFamily("hcs_inventory_nodes", "ComputeNodes in the inventory")
        nodes.add_metric([], state.n_nodes)
        devices = GaugeMetricFamily("hcs_inventory_devices", "Devices in the inventory")
        devices.add_metric([], state.n_devices)
        allocs = GaugeMetricFamily(
            "hcs_allocations", "Pods holding HCS devices, per vendor", labels=["vendor"]
        )
        per_vendor: dict[str, int] = {}
        for alloc in list(state.allocations.values()):
            per_vendor[alloc.vendor] = per_vendor.get(alloc.vendor, 0) + 1
        for vendor, n in sorted(per_vendor.items()):
            allocs.add_metric([vendor], n)
        outcomes = CounterMetricFamily(
            "hcs_extender_filter_nodes", "Nodes judged by filter, per outcome", labels=["reason"]
        )
        for reason in Reason:
            outcomes.add_metric([reason.name], float(self.service.filter_reasons[reason]))
        errors = CounterMetricFamily(
            "hcs_extender_filter_errors",
            "Filter calls answered with an Error (no node passes), by its code",
            labels=["code"],
        )
        for code, n in sorted(self.service.filter_errors.items()):
            errors.add_metric([code], float(n))
        queue = GaugeMetricFamily(
            "hcs_extender_node_lock_queue",
            "Binds waiting for a node's lock (another pod is being admitted there), per node",
            labels=["node"],
        )
        for node, n in sorted(self.service.queue_depth.items()):
            queue.add_metric([node], n)
        yield from (nodes, devices, allocs, outcomes, errors, queue)
        yield from _node_metrics(state, self.service.config.min_health)


def _node_metrics(state: ClusterState, min_health: int) -> Iterator[Metric]:
    """Per node and vendor: VRAM, TFLOPS and devices by state (what dashboards chart)."""
    rows, figures = state.node_figures(min_health)
    labels = ["node", "vendor", "state"]
    vram = GaugeMetricFamily(
        "hcs_node_vram_bytes",
        "VRAM per node, by state (other: in use outside HCS; allocatable = allocated + free + "
        "other where not overbooked)",
        labels=labels,
    )
    tflops = GaugeMetricFamily(
        "hcs_node_tflops",
        "TFLOPS per node, by precision and state",
        labels=[*labels[:2], "precision", "state"],
    )
    devices = GaugeMetricFamily("hcs_node_devices", "Devices per node, by state", labels=labels)
    names = [state.node_names[r] or "" for r in rows.tolist()]
    vendors = [VENDOR_NAMES[v] for v in state.node_vendor[rows].tolist()]
    columns = {key: value.tolist() for key, value in figures.items()}
    for i, (node, vendor) in enumerate(zip(names, vendors, strict=True)):
        for kind in ("allocatable", "allocated", "free", "other"):
            vram.add_metric([node, vendor, kind], columns[f"vram_{kind}"][i] * MIB)
        for kind in ("allocatable", "allocated", "free"):
            for precision in ("fp16", "fp32"):
                tflops.add_metric(
                    [node, vendor, precision, kind], columns[f"{precision}_{kind}"][i] / 1000
                )
        devices.add_metric([node, vendor, "total"], columns["devices"][i])
        devices.add_metric([node, vendor, "idle"], columns["devices_idle"][i])
        devices.add_metric([node, vendor, "unhealthy"], columns["devices_unhealthy"][i])
    yield from (vram, tflops, devices)


async def _expire_unknown_binds(app: web.Application) -> AsyncIterator[None]:
    """Every few seconds: binds whose outcome stayed unknown past the bound give back their
    devices (`SchedulerService.expire_assumed`)."""
    service = app[SERVICE]

    async def loop() -> None:
        while True:
            await asyncio.sleep(EXPIRY_PERIOD_S)
            try:
                await service.expire_assumed()
            except Exception:
                log.exception("expiring unconfirmed binds failed")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    service: SchedulerService,
    *,
    sync: ClusterSync | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> web.Application:
    """The extender app; with `sync` (cluster mode) the watches run for the app's lifetime and
    /readyz follows them."""
    app = web.Application(client_max_size=max_body, middlewares=[timing])
    app[SERVICE] = service
    registry = CollectorRegistry()
    register_build_info(registry, "extender")
    add_operations(app, component="hcs-extender", registry=registry, sync=sync)
    app[LATENCY] = Histogram(
        "hcs_extender_request_seconds",
        "Time to answer one extender call",
        ["verb"],
        registry=registry,
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    )
    app[BINDS] = Counter(
        "hcs_extender_binds",
        "Bind calls by result: ok, or the Error's code",
        ["result"],
        registry=registry,
    )
    waits = Histogram(
        "hcs_extender_node_lock_wait_seconds",
        "Time a bind waited for its node's lock (kubelet admitting the pods ahead of it)",
        registry=registry,
        buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0),
    )
    service.on_lock_wait = waits.observe
    registry.register(_StateCollector(service))
    app.cleanup_ctx.append(_expire_unknown_binds)
    app.router.add_post("/filter", filter_handler)
    app.router.add_post("/prioritize", prioritize_handler)
    app.router.add_post("/bind", bind_handler)
    app.router.add_post("/preempt", preempt_handler)
    app.router.add_post("/{verb}", unknown_verb)
    return app
