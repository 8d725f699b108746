"""Prometheus metrics of one served model: requests, errors, latency histograms, stream frames/drops.

Every app gets its own `CollectorRegistry` (tests build several apps in one process). Stream
counters (frames, drops) are read from the one latest-frame loop at scrape time, so /metrics shows
exactly what `usedge infer --stream` would count, never a second tally that could drift.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds. Fine below 100 ms, where an edge classifier should live; coarse up to 5 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
                   0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _StreamCollector:
    """Reads frames/drops/fps from the stream loop's stats (a dict) at each scrape."""

    def __init__(self, stats: Callable[[], dict]):
        self._stats = stats

    def collect(self):
        s = self._stats() or {}
        frames = CounterMetricFamily("usedge_stream_frames", "Frames classified by the live loop.")
        frames.add_metric([], float(s.get("frames", 0)))
        yield frames
        drops = CounterMetricFamily("usedge_stream_dropped_frames",
                                    "Stale frames dropped by the latest-frame slot (never classified).")
        drops.add_metric([], float(s.get("dropped", 0)))
        yield drops
        fps = GaugeMetricFamily("usedge_stream_fps", "Frames classified per second, recent average.")
        fps.add_metric([], float(s.get("fps", 0.0) or 0.0))
        yield fps
        frozen = CounterMetricFamily("usedge_stream_frozen_frames",
                                     "Frames seen frozen (scanner freeze): last result repeated, no inference.")
        frozen.add_metric([], float(s.get("frozen", 0)))
        yield frozen
        blank = CounterMetricFamily("usedge_stream_no_image_frames",
                                    "Frames without a usable image (blank screen, probe in air): no label.")
        blank.add_metric([], float(s.get("no_image", 0)))
        yield blank
        errs = CounterMetricFamily("usedge_stream_errors", "Frames the live loop failed to classify.")
        errs.add_metric([], float(s.get("errors", 0)))
        yield errs

    def describe(self):  # no samples at registration time: the loop may not have started
        return []


class ServeMetrics:
    """All metrics of one app; `render()` gives the Prometheus text exposition."""

    def __init__(self, stream_stats: Callable[[], dict] | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("usedge_http_requests", "HTTP requests by route and status code.",
                                ["route", "status"], registry=r)
        self.errors = Counter("usedge_errors", "Errors by kind (bad_upload, too_large, unsupported_type, "
                              "unauthorized, busy, internal).", ["kind"], registry=r)
        self.predict_latency = Histogram("usedge_predict_latency_seconds",
                                         "POST /v1/predict wall time from body read to response, seconds.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("usedge_stage_latency_seconds",
                                       "Classifier stage latency (crop, preprocess, infer, post, total), seconds.",
                                       ["source", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("usedge_predict_inflight", "Uploads being classified now.", registry=r)
        self.pending = Gauge("usedge_predict_pending", "Uploads admitted and not yet answered (reading, "
                             "waiting for a slot, or classifying).", registry=r)
        self.live_clients = Gauge("usedge_live_clients", "Open MJPEG /v1/live connections.", registry=r)
        self.model = Gauge("usedge_model_info", "The served model (value 1).", ["sha256", "backend"], registry=r)
        if stream_stats is not None:
            r.register(_StreamCollector(stream_stats))

    def observe_stages(self, source: str, latency_ms: dict | None) -> None:
        """Record a Prediction's per-stage latencies (milliseconds in, seconds stored)."""
        for stage, ms in (latency_ms or {}).items():
            try:
                self.stage_latency.labels(source=source, stage=str(stage)).observe(float(ms) / 1000.0)
            except (TypeError, ValueError):
                continue

    def connection_refused(self, kind: str, status: int) -> None:
        """A connection refused before any route saw it (too many open connections from one client, no
        headers in time): counted under route "(connection)" and as an error of that kind."""
        self.requests.labels(route="(connection)", status=str(status)).inc()
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
