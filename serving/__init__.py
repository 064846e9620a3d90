"""What the extender and the webhook serve alike (aiohttp; the core `hcs` never imports it):
the operational endpoints, the lifetime of the cluster watches, and running several apps in one
process. The two servers stay independent of each other; both use this."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Callable

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from cluster.sync import ClusterSync
from hcs import __version__
from hcs.errors import ConfigError

log = logging.getLogger("hcs.serving")

Readiness = Callable[[], tuple[bool, str]]
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
REGISTRY = web.AppKey("registry", CollectorRegistry)
COMPONENT = web.AppKey("component", str)


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    ready, why = request.app[READINESS]()
    return web.Response(text=why, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[REGISTRY]),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def version(request: web.Request) -> web.Response:
    body = {"component": request.app[COMPONENT], "version": __version__}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_operations(
    app: web.Application, *, component: str, registry: CollectorRegistry, sync: ClusterSync | None
) -> None:
    """GET /healthz, /readyz, /metrics, /version; with `sync` (cluster mode) the watches run
    for the app's lifetime and /readyz follows them."""
    app[COMPONENT] = component
    app[REGISTRY] = registry
    app[READINESS] = sync.readiness if sync else (lambda: (True, "ready: local inventory"))
    if sync is not None:
        watches = sync

        async def run_watches(_: web.Application) -> AsyncIterator[None]:
            watches.start(asyncio.get_running_loop())
            yield
            watches.stop()

        app.cleanup_ctx.append(run_watches)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/version", version)


def metrics_app(source: web.Application) -> web.Application:
    """GET /metrics and /healthz of `source` over plain HTTP, on a port of their own: the
    extender's API stays on loopback and the webhook's behind TLS, while Prometheus scrapes the
    pod's IP."""
    app = web.Application()
    app[COMPONENT] = f"{source[COMPONENT]}-metrics"
    app[REGISTRY] = source[REGISTRY]
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


Site = tuple[web.Application, str, int, ssl.SSLContext | None]


def with_metrics(site: Site, metrics_host: str, metrics_port: int | None) -> list[Site]:
    """`site`, plus its metrics on `metrics_host:metrics_port` unless the port is None (0: any
    free port)."""
    if metrics_port is None:
        return [site]
    return [site, (metrics_app(site[0]), metrics_host, metrics_port, None)]


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    """The port the site really listens on (port 0 asks the OS for a free one)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked


def serve_apps(
    sites: list[Site],
    shutdown_timeout: float = 10.0,
) -> None:
    """Run several apps in one process until SIGINT / SIGTERM."""

    async def main() -> None:
        runners: list[web.AppRunner] = []
        for app, host, port, tls in sites:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
            await runner.setup()
            try:
                await web.TCPSite(runner, host, port, ssl_context=tls).start()
            except OSError as exc:
                for started in [*runners, runner]:
                    await started.cleanup()
                raise ConfigError(
                    f"cannot listen on {host}:{port} for {app[COMPONENT]}: {exc.strerror} "
                    "(another process has the port? choose another with --port, "
                    "--extender-port, --webhook-port or --metrics-port)"
                ) from None
            runners.append(runner)
            bound = _bound_port(runner, port)
            log.info(
                "serving %s on %s://%s:%d", app[COMPONENT], "https" if tls else "http", host, bound
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(main())
