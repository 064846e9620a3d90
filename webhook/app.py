"""HTTP face of the admission webhook: `POST /mutate` around `hcs.admission.review`.

A body that is not an AdmissionReview answers 400; a review that was understood always answers
200 with `allowed` true or false and the request's uid echoed, in the exact
`admission.k8s.io/v1` envelope (kube-apiserver decodes case-sensitively and checks the uid).
The route ignores the `?timeout=` query the API server appends.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from certs import CertFiles
from cluster.buildinfo import register_build_info
from cluster.sync import ClusterSync
from hcs.admission import (
    AdmissionContext,
    Plan,
    ReviewError,
    charge,
    envelope,
    finish,
    parse_review,
    prepare,
)
from serving import add_operations

log = logging.getLogger("hcs.webhook")

CONTEXT = web.AppKey("context", AdmissionContext)
LATENCY = web.AppKey("latency", Histogram)
DECISIONS = web.AppKey("decisions", Counter)
JSON = "application/json"


async def mutate(request: web.Request) -> web.Response:
    start = time.perf_counter()
    try:
        admission = parse_review(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, ReviewError) as exc:
        log.info("malformed review: %s", exc)
        return web.Response(status=400, text=f"not an AdmissionReview: {exc}")
    context = request.app[CONTEXT]
    try:
        plan = prepare(admission, context)
        if isinstance(plan, Plan):
            if context.quotas.blocking:  # cluster mode: the charge is API calls
                charged = await asyncio.get_running_loop().run_in_executor(
                    None, charge, plan, context
                )
            else:
                charged = charge(plan, context)
            response = finish(plan, context, charged)
        else:
            response = plan
    except Exception:  # a bug must not leave the API server without an answer
        log.exception("review %s failed", admission["uid"])
        response = {
            "uid": admission["uid"],
            "allowed": False,
            "status": {"code": 500, "message": "Internal: HCS webhook failed; see its log"},
        }
    code = "allowed" if response["allowed"] else response["status"]["message"].split(":")[0]
    request.app[DECISIONS].labels(result=code).inc()
    request.app[LATENCY].observe(time.perf_counter() - start)
    return web.Response(body=orjson.dumps(envelope(response)), content_type=JSON)


def create_app(context: AdmissionContext, *, sync: ClusterSync | None = None) -> web.Application:
    """The webhook app; with `sync` (cluster mode) the watches run for the app's lifetime and
    /readyz follows them."""
    app = web.Application(client_max_size=16 * 2**20)
    app[CONTEXT] = context
    registry = CollectorRegistry()
    register_build_info(registry, "webhook")
    add_operations(app, component="hcs-webhook", registry=registry, sync=sync)
    app[LATENCY] = Histogram(
        "hcs_webhook_review_seconds",
        "Time to answer one AdmissionReview",
        registry=registry,
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0),
    )
    app[DECISIONS] = Counter(
        "hcs_webhook_reviews",
        "AdmissionReviews by outcome (allowed, or the denial code)",
        ["result"],
        registry=registry,
    )
    app.router.add_post("/mutate", mutate)
    return app


def ssl_context(certs: CertFiles) -> ssl.SSLContext:
    """TLS >= 1.2 with the folder's tls.crt / tls.key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certs.tls_cert, certs.tls_key)
    return ctx


def _stamp(certs: CertFiles) -> tuple[float, float]:
    return (certs.tls_cert.stat().st_mtime_ns, certs.tls_key.stat().st_mtime_ns)


def cert_reloader(
    ctx: ssl.SSLContext, certs: CertFiles, interval: float = 2.0
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that reloads the certificate into `ctx` when the files change
    (a mounted Secret is updated in place): new connections get the new certificate."""

    async def watch(_: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            seen = _stamp(certs)
            while True:
                await asyncio.sleep(interval)
                try:
                    now = _stamp(certs)
                    if now != seen:
                        ctx.load_cert_chain(certs.tls_cert, certs.tls_key)
                        seen = now
                        log.info("reloaded the serving certificate from %s", certs.folder)
                except (OSError, ssl.SSLError) as exc:  # half-rotated: try again next round
                    log.warning("cannot reload the certificate yet: %s", exc)

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    return watch
