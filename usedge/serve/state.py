"""What every route of `usedge serve` shares: the model, the upload pipeline, the live feed, limits,
the token check and the one error shape (`{"error": message, "status": code}`)."""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from usedge.runtime.classifier import Classifier
from usedge.runtime.pipeline import FramePipeline
from usedge.serve.live import LiveFeed, ViewSettings
from usedge.serve.metrics import ServeMetrics

TOKEN_COOKIE = "usedge_token"


@dataclass
class ServeState:
    classifier: Classifier
    uploads: FramePipeline                      # the chain for uploads: no freeze, no smoothing, no sinks
    metrics: ServeMetrics
    feed: LiveFeed | None
    token: bytes | None
    max_upload_bytes: int
    max_pixels: int
    max_concurrent: int
    max_queue: int
    view: ViewSettings                          # the live view's cap (width, quality, fps, Mbit/s)
    predict_lock: threading.Lock = field(default_factory=threading.Lock)  # uploads take turns
    pending: int = 0
    limiter: Any = None                         # anyio.CapacityLimiter, created in the event loop
    page: dict[str, bytes] = field(default_factory=lambda: {
        n: resources.files("usedge.serve").joinpath("static", n).read_bytes() for n in ("index.html", "page.js", "page.css")})

    def verdict(self, pred) -> dict:
        """margin (top probability minus the second) and uncertain (margin below the model card's
        `uncertain_margin`; null when the card states none), as the Prediction carries them, and that
        threshold: how the page and the API qualify a label."""
        return {"margin": pred.margin, "uncertain": pred.uncertain, "uncertain_margin": self.classifier.uncertain_margin}

    def card(self) -> dict:
        """What the page shows about the model's provenance (`usedge export`'s model card): the one line,
        whether it was trained on synthetic data, the uncertainty margin and the measured localisation
        of its class activation map (null: not measured)."""
        from usedge.runtime.model_info import model_card_line

        info = self.classifier.info
        card = info.model_card or {}
        loc = card.get("localisation")
        if isinstance(loc, dict):
            loc = loc.get("summary") or ", ".join(f"{k} {v}" for k, v in loc.items() if isinstance(v, (int, float, str)))
        return {"line": model_card_line(info), "present": bool(card),
                "synthetic": (card.get("training_data") or {}).get("synthetic") if card else None,
                "uncertain_margin": card.get("uncertain_margin"),
                "localisation": loc if isinstance(loc, str) and loc else None}

    def error(self, status: int, message: str, kind: str, headers: dict | None = None,
              extra: dict | None = None) -> JSONResponse:
        self.metrics.errors.labels(kind=kind).inc()
        return JSONResponse({"error": message, "status": status, **(extra or {})}, status_code=status, headers=headers)

    def authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), self.token):
            return True
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.token)

    def admit(self) -> JSONResponse | None:
        """Take a place among the admitted uploads (being read, waiting or classified; bounded): None, or
        the 503 to answer at once. Every admitted request calls `release()` when done."""
        if self.pending >= self.max_queue + self.max_concurrent:
            return self.error(503, f"busy: {self.pending} uploads already pending — retry shortly", "busy",
                              headers={"Retry-After": "1"})
        self.pending += 1
        self.metrics.pending.inc()
        return None

    def release(self) -> None:
        self.pending -= 1
        self.metrics.pending.dec()

    async def in_worker(self, fn, *args):
        """Run `fn(*args)` in a worker thread, at most `max_concurrent` at once (classification slots)."""
        import anyio
        import anyio.to_thread

        if self.limiter is None:  # created inside the event loop that uses it
            self.limiter = anyio.CapacityLimiter(self.max_concurrent)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def unauthorised(self) -> JSONResponse:
        return self.error(401, "missing or wrong token — send 'Authorization: Bearer <token>' or open "
                          "/?token=<token> once", "unauthorized", headers={"WWW-Authenticate": "Bearer"})


def state_of(request: Request) -> ServeState:
    return request.app.state.usedge
