"""The HTTP face of one Classifier: `create_app(classifier, runner=None, token=None, ...)` -> FastAPI app.

Routes live in routes_page.py (page, static, /healthz, /metrics), routes_api.py (/v1/info,
/v1/predict) and routes_live.py (/v1/latest, /v1/live); what they share is `state.ServeState`.

    GET  /            the page: live view, smoothed class probabilities, latency, fps, upload form
    POST /v1/predict  an image or DICOM (multipart field 'file', or the raw body) -> JSON prediction
    GET  /v1/latest   the newest live prediction (needs a stream runner)
    GET  /v1/live     MJPEG of the overlay frames (needs a stream runner)
    GET  /v1/frame    the page's live view: one result's frame (JPEG) + that result (X-Usedge-Result)
    GET  /v1/info     model, classes, limits, whether a stream runs
    GET  /healthz     liveness, no token needed
    /v2/...           the Open Inference Protocol (KServe v2 / Triton HTTP), routes_v2.py
    GET  /metrics     Prometheus text format

Safe by default: an optional bearer token guards everything but /healthz (header `Authorization:
Bearer T`, or a cookie set by opening `/?token=T` once, so the browser's <img> can send it); upload
size, pixel count and type limits; a bounded queue (503 when full, never an unbounded backlog); every
bad upload is a 4xx with a one-line message. Nothing from a DICOM header, and no upload file name,
ever reaches a response or a log line.
"""

from __future__ import annotations

import contextlib
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from usedge.runtime.classifier import Classifier
from usedge.runtime.pipeline import FramePipeline
from usedge.runtime.stream import StreamRunner
from usedge.serve import routes_api, routes_live, routes_page, routes_v2
from usedge.serve.limits import ClientLimits, ServeLimits
from usedge.serve.live import LiveFeed, ViewSettings
from usedge.serve.origin import SameOriginGuard
from usedge.serve.metrics import ServeMetrics
from usedge.serve.state import ServeState
from usedge.serve.uploads import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES

log = logging.getLogger("usedge.serve")

ROUTES = {"/", "/v1/predict", "/v1/latest", "/v1/live", "/v1/frame", "/v1/info", "/healthz", "/metrics",
          "/static/page.js", "/static/page.css"}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]


class _Guard:
    """Pure ASGI middleware: security headers, no-store caching, request counts by route and status."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/v2" if path.startswith("/v2") else "other")
        status_box = {"status": 500}
        t0 = time.perf_counter()

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if not route.startswith("/static"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            self.metrics.requests.labels(route=route, status=str(status_box["status"])).inc()
            # The access line names the route, never the query string (it may hold a token).
            log.info("%s %s %d %.1f ms", scope.get("method", ""), route, status_box["status"],
                     (time.perf_counter() - t0) * 1e3)


def create_app(classifier: Classifier, runner: StreamRunner | None = None, token: str | None = None, *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_concurrent: int = 1, max_queue: int = 32, allowed_hosts: list[str] | None = None,
               view: ViewSettings = ViewSettings(), limits: ServeLimits = ServeLimits(),
               quality_gate: bool = True) -> FastAPI:
    """Build the app around a loaded `usedge.runtime.classifier.Classifier`.

    runner: a started `usedge.runtime.stream.StreamRunner` (the ONE latest-frame loop) for /v1/live and
        /v1/latest; None serves uploads only. Its classifier may be `classifier` only when that is
        thread-safe (`Classifier.for_another_thread` gives the right one).
    token: require `Authorization: Bearer <token>` (or the cookie) on every route but /healthz.
    max_upload_bytes / max_pixels: per-upload limits (413 beyond them).
    max_concurrent: uploads classified at once (1: onnxruntime already uses every core for one).
    max_queue: uploads allowed to wait for a slot; one more gets 503 + Retry-After.
    allowed_hosts: Host header values accepted (None: any); loopback servers pass their own names,
        which stops DNS-rebinding pages from reading the API through the browser. Cross-origin
        state-changing requests are refused always (`usedge.serve.origin`).
    view: the live view's cap (width, JPEG quality, fps, Mbit/s per viewer) for /v1/frame and /v1/live.
    quality_gate: uploads without a usable image answer 422 with state no_image (False: classified anyway).
    limits: body deadline and per-client request cap (`usedge.serve.limits`; the header deadline and the
        per-client connection cap belong to the server: `limits.uvicorn_config`).
    """
    metrics = ServeMetrics(stream_stats=runner.stats if runner is not None else None)
    feed = None
    if runner is not None:
        def observe(pred) -> None:
            if pred.state == "live":  # frozen repeats, no-image frames, failed outputs: no model latency
                metrics.observe_stages("live", pred.latency_ms)

        feed = LiveFeed(runner, view=view, observe=observe)
    metrics.model.labels(sha256=classifier.model_sha256, backend=classifier.backend.name).set(1)
    st = ServeState(classifier=classifier, uploads=FramePipeline(classifier, quality_gate=quality_gate), metrics=metrics, feed=feed,
                    token=token.encode() if token else None, max_upload_bytes=max_upload_bytes,
                    max_pixels=max_pixels, max_concurrent=max_concurrent, max_queue=max_queue,
                    view=view)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if feed is not None:  # lets open MJPEG responses end so uvicorn can stop
            feed.close()

    app = FastAPI(title="usedge serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(SameOriginGuard, allowed_hosts=allowed_hosts,
                       on_refused=lambda kind: metrics.errors.labels(kind=kind).inc())
    app.add_middleware(ClientLimits, limits=limits, on_refused=lambda kind: metrics.errors.labels(kind=kind).inc())
    app.add_middleware(_Guard, metrics=metrics)
    app.state.usedge = st

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return st.error(422, f"bad parameter {where}: {first.get('msg', 'invalid')}", "bad_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return st.error(exc.status_code, str(exc.detail), "bad_request" if exc.status_code != 404 else "not_found",
                        headers=getattr(exc, "headers", None))

    for module in (routes_page, routes_api, routes_live, routes_v2):
        app.include_router(module.router)
    return app
