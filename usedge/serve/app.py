"""The HTTP face of one Classifier: `create_app(classifier, runner=None, token=None, ...)` -> FastAPI app.

    GET  /            the page: live view, smoothed class probabilities, latency, fps, upload form
    POST /v1/predict  an image or DICOM (multipart field 'file', or the raw body) -> JSON prediction
    GET  /v1/latest   the newest live prediction (needs a stream runner)
    GET  /v1/live     MJPEG of the overlay frames (needs a stream runner)
    GET  /v1/info     model, classes, limits, whether a stream runs
    GET  /healthz     liveness, no token needed
    GET  /metrics     Prometheus text format

Safe by default: an optional bearer token guards everything but /healthz (header `Authorization:
Bearer T`, or a cookie set by opening `/?token=T` once, so the browser's <img> can send it); upload
size, pixel count and type limits; a bounded queue (503 when full, never an unbounded backlog); every
bad upload is a 4xx with a one-line message. Nothing from a DICOM header, and no upload file name,
ever reaches a response or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import re
import threading
import time
from importlib import resources
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from usedge.errors import ConfigError, InputError, UsedgeError
from usedge.serve.live import LiveFeed
from usedge.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, ServeMetrics
from usedge.serve.uploads import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, UploadRejected, decode_upload

log = logging.getLogger("usedge.serve")

TOKEN_COOKIE = "usedge_token"
MULTIPART_OVERHEAD = 64 * 1024        # form boundaries and part headers around the file, bytes
ROUTES = {"/", "/v1/predict", "/v1/latest", "/v1/live", "/v1/info", "/healthz", "/metrics",
          "/static/page.js", "/static/page.css"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
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
        route = path if path in ROUTES else "other"
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


def _static(name: str) -> bytes:
    return resources.files("usedge.serve").joinpath("static", name).read_bytes()


def _error(status: int, message: str, metrics: ServeMetrics, kind: str, headers: dict | None = None) -> JSONResponse:
    metrics.errors.labels(kind=kind).inc()
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def prediction_json(pred, class_names: list[str]) -> dict[str, Any]:
    """JSON of a runtime Prediction: label, probabilities (in class order), boxes, latency, model sha256."""
    rec = pred.to_record()
    rec["probabilities"] = {n: round(float(pred.probs.get(n, 0.0)), 6) for n in class_names}
    rec.pop("probs", None)
    rec["class_index"] = int(pred.class_index)
    rec.pop("source", None)  # a source may be a file path or URL; the page does not need it
    return rec


def create_app(classifier, runner=None, token: str | None = None, *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_concurrent: int = 1, max_queue: int = 32, allowed_hosts: list[str] | None = None,
               jpeg_quality: int = 80, live_max_fps: float = 30.0) -> FastAPI:
    """Build the app around a loaded `usedge.runtime.classifier.Classifier`.

    runner: a started `usedge.runtime.stream` runner (the ONE latest-frame loop) for /v1/live and
        /v1/latest; None serves uploads only.
    token: require `Authorization: Bearer <token>` (or the cookie) on every route but /healthz.
    max_upload_bytes / max_pixels: per-upload limits (413 beyond them).
    max_concurrent: uploads classified at once (1: onnxruntime already uses every core for one).
    max_queue: uploads allowed to wait for a slot; one more gets 503 + Retry-After.
    allowed_hosts: Host header values accepted (None: any); loopback servers pass their own names,
        which stops DNS-rebinding pages from reading the API through the browser.
    """
    class_names = list(classifier.class_names)
    backend_name = getattr(getattr(classifier, "backend", None), "name", "unknown")
    if runner is not None and getattr(runner, "classifier", None) is classifier and backend_name != "ort-cpu":
        # onnxruntime's CPU session is thread-safe; GPU sessions/contexts are not shared across threads
        raise ConfigError(f"the {backend_name} backend cannot serve uploads and the live loop from one Classifier",
                          hint="load a second Classifier for uploads (usedge serve does)")
    metrics = ServeMetrics(stream_stats=runner.stats if runner is not None else None)
    feed = None
    if runner is not None:
        def observe(pred) -> None:
            if not pred.frozen:  # a frozen screen repeats the last answer: no model latency to record
                metrics.observe_stages("live", pred.latency_ms)

        feed = LiveFeed(runner, jpeg_quality=jpeg_quality, observe=observe)
    metrics.model.labels(sha256=classifier.model_sha256, backend=backend_name).set(1)
    token_bytes = token.encode() if token else None
    predict_lock = threading.Lock()  # the Classifier is not thread-safe; uploads take turns
    state = {"limiter": None, "pending": 0}
    page = {name: _static(name) for name in ("index.html", "page.js", "page.css")}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if feed is not None:  # lets open MJPEG responses end so uvicorn can stop
            feed.close()

    app = FastAPI(title="usedge serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(_Guard, metrics=metrics)
    app.state.metrics = metrics

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return _error(422, f"bad parameter {where}: {first.get('msg', 'invalid')}", metrics, "bad_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), metrics, "bad_request" if exc.status_code != 404 else "not_found",
                      headers=getattr(exc, "headers", None))
    app.state.feed = feed
    app.state.classifier = classifier

    def authorised(request: Request) -> bool:
        if token_bytes is None:
            return True
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), token_bytes):
            return True
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), token_bytes)

    def unauthorised() -> JSONResponse:
        return _error(401, "missing or wrong token — send 'Authorization: Bearer <token>' or open /?token=<token> once",
                      metrics, "unauthorized", headers={"WWW-Authenticate": "Bearer"})

    # -- page -----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index(request: Request, token_param: str | None = Query(None, alias="token")):
        if token_bytes is not None and token_param is not None:
            if not hmac.compare_digest(token_param.encode(), token_bytes):
                return unauthorised()
            # Trade the URL token for a cookie and drop it from the address bar and history.
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(TOKEN_COOKIE, token_param, httponly=True, samesite="strict", path="/")
            return resp
        if not authorised(request):
            return unauthorised()
        return Response(page["index.html"], media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        if name not in ("page.js", "page.css"):
            return _error(404, "not found", metrics, "not_found")
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(page[name], media_type=f"{media}; charset=utf-8")

    # -- health and metrics ---------------------------------------------------------------------
    @app.get("/healthz")
    def healthz():
        body = {"status": "ok", "model_sha256": classifier.model_sha256,
                "stream": feed.state() if feed else "none"}
        failed = feed is not None and body["stream"] == "failed"
        if failed:
            body["status"] = "degraded"
        return JSONResponse(body, status_code=503 if failed else 200)

    @app.get("/metrics")
    def metrics_endpoint(request: Request):
        if not authorised(request):
            return unauthorised()
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/v1/info")
    def info(request: Request):
        if not authorised(request):
            return unauthorised()
        return {
            "class_names": class_names,
            "model_sha256": classifier.model_sha256,
            "backend": classifier.describe() if hasattr(classifier, "describe") else backend_name,
            "precision": getattr(getattr(classifier, "info", None), "precision", ""),
            "input_size": int(getattr(getattr(classifier, "spec", None), "size", 0) or 0),
            "has_cam": bool(getattr(classifier, "has_cam", False)),
            "stream": feed is not None,
            "max_upload_bytes": max_upload_bytes,
            "max_pixels": max_pixels,
        }

    # -- uploads --------------------------------------------------------------------------------
    async def read_upload(request: Request) -> bytes:
        """The uploaded file's bytes (multipart field 'file' or the raw body), never past the limit."""
        limit = max_upload_bytes + MULTIPART_OVERHEAD
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise UploadRejected(f"upload is {int(declared):,} bytes, over the limit of {max_upload_bytes:,}",
                                 status=413, hint="send a smaller file, or start the server with a larger --max-upload-mb")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise UploadRejected(f"upload is over the limit of {max_upload_bytes:,} bytes", status=413,
                                     hint="send a smaller file, or start the server with a larger --max-upload-mb")
            chunks.append(chunk)
        body = b"".join(chunks)
        ctype = request.headers.get("content-type", "").lower()
        if not ctype.startswith("multipart/form-data"):
            return body
        request._body = body  # starlette parses the form from the body we already read and bounded
        try:
            form = await request.form(max_files=1, max_fields=4, max_part_size=64 * 1024)
        except Exception as exc:
            raise UploadRejected("malformed multipart form", status=400,
                                 hint="send the file in form field 'file' (curl -F file=@frame.png)") from exc
        try:
            part = form.get("file")
            if part is None or isinstance(part, str):
                raise UploadRejected("no file in form field 'file'", status=400,
                                     hint="send the file in form field 'file' (curl -F file=@frame.png)")
            return await part.read()
        finally:
            await form.close()

    def classify(data: bytes, frame_index: int | None, overlay: bool) -> tuple[dict, bytes | None]:
        """Worker thread: decode, classify (one at a time), optionally draw the overlay PNG."""
        decoded = decode_upload(data, max_bytes=max_upload_bytes, max_pixels=max_pixels, frame_index=frame_index)
        metrics.inflight.inc()
        try:
            with predict_lock:
                # predict_batch allocates its own input buffer: safe beside the live loop's predict()
                pred = classifier.predict_batch([decoded.frame], first_index=decoded.frame_index, source="upload",
                                               regions=decoded.regions)[0]
        finally:
            metrics.inflight.dec()
        metrics.observe_stages("upload", pred.latency_ms)
        out = prediction_json(pred, class_names)
        h, w = decoded.frame.shape[:2]
        out["input"] = {"kind": decoded.kind, "width": int(w), "height": int(h),
                        "frames_in_file": decoded.frames_in_file, "frame_index": decoded.frame_index}
        png = None
        if overlay:
            import cv2

            from usedge.serve.live import draw_overlay

            ok, buf = cv2.imencode(".png", draw_overlay(decoded.frame, pred))
            png = buf.tobytes() if ok else None
        return out, png

    @app.post("/v1/predict")
    async def predict(request: Request, overlay: bool = False, frame: int | None = Query(None, ge=0),
                      fmt: str = Query("json", alias="format", pattern="^(json|png)$")):
        if not authorised(request):
            return unauthorised()
        t0 = time.perf_counter()
        rid = request.headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.match(rid) else ""
        # Admitted = being read, waiting for a classifier slot, or being classified: bounded.
        if state["pending"] >= max_queue + max_concurrent:
            return _error(503, f"busy: {state['pending']} uploads already pending — retry shortly", metrics, "busy",
                          headers={"Retry-After": "1"})
        state["pending"] += 1
        metrics.pending.inc()
        try:
            data = await read_upload(request)
            if state["limiter"] is None:  # created inside the event loop that uses it
                state["limiter"] = anyio.CapacityLimiter(max_concurrent)
            result, png = await anyio.to_thread.run_sync(classify, data, frame, overlay or fmt == "png",
                                                         limiter=state["limiter"])
        except UploadRejected as exc:
            kind = {413: "too_large", 415: "unsupported_type"}.get(exc.status, "bad_upload")
            return _error(exc.status, exc.one_line(), metrics, kind)
        except InputError as exc:  # the frame decoded but cannot be classified (e.g. no image region)
            return _error(422, f"upload: {exc.message}" + (f" — {exc.hint}" if exc.hint else ""), metrics, "bad_upload")
        except UsedgeError as exc:
            log.error("predict failed: %s", exc.message)
            return _error(500, "the model failed on this upload — see the server log", metrics, "internal")
        except Exception:
            log.exception("predict failed")  # code paths only: no frame data or header values in the text
            return _error(500, "internal error — see the server log", metrics, "internal")
        finally:
            state["pending"] -= 1
            metrics.pending.dec()
        elapsed = time.perf_counter() - t0
        metrics.predict_latency.observe(elapsed)
        result["latency_ms"]["request"] = round(elapsed * 1e3, 3)
        if rid:
            result["request_id"] = rid
        if fmt == "png":
            if png is None:
                return _error(500, "cannot encode the overlay PNG", metrics, "internal")
            return Response(png, media_type="image/png",
                            headers={"X-Usedge-Label": result["label"], "X-Usedge-Model-Sha256": classifier.model_sha256})
        if overlay and png is not None:
            result["overlay_png"] = base64.b64encode(png).decode("ascii")
        return result

    # -- live -----------------------------------------------------------------------------------
    def no_stream() -> JSONResponse:
        return _error(404, "no live stream — start the server with `usedge serve MODEL --stream SOURCE`",
                      metrics, "no_stream")

    @app.get("/v1/latest")
    def latest(request: Request):
        if not authorised(request):
            return unauthorised()
        if feed is None:
            return no_stream()
        return feed.latest_json(class_names)

    @app.get("/v1/live")
    async def live(request: Request):
        if not authorised(request):
            return unauthorised()
        if feed is None:
            return no_stream()
        boundary = "usedgeframe"

        async def parts():
            metrics.live_clients.inc()
            seq, min_gap = -1, 1.0 / max(live_max_fps, 0.1)
            try:
                while not feed.closed:
                    got = await feed.next_jpeg(seq, timeout=1.0)
                    if got is None:
                        if await request.is_disconnected():
                            break
                        continue
                    seq, jpeg = got
                    yield (f"--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                           f"X-Frame-Seq: {seq}\r\n\r\n").encode() + jpeg + b"\r\n"
                    await asyncio.sleep(min_gap)
            finally:
                metrics.live_clients.dec()

        return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={boundary}")

    return app
