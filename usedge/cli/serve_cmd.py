"""usedge serve: a local web page and HTTP API around one model, optionally with a live stream."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from usedge.cli.app import app, state
from usedge.cli.options import backend_option, quality_gate_option, quiet_option, spinning_option, threads_option
from usedge.cli.terminal import rich_console

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: list[str]) -> list[str] | None:
    """Host header names a server bound to `host` accepts: on a loopback bind (IPv4 or IPv6) its loopback
    names, the bound address and `extra` (DNS-rebinding protection); None (any) on other binds."""
    if not _is_loopback(host):
        return None
    return LOOPBACK_NAMES + [host.strip("[]")] + list(extra)


def _check_port_free(host: str, port: int) -> None:
    """Fail fast, before loading a model, when another program already listens on host:port."""
    import socket

    from usedge.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror})",
                              hint="pick another --port, or stop the program using it") from exc


def _serve_packages():
    """Import the serve extra, or say which package is missing."""
    from usedge.errors import MissingDependency

    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart"),
                            ("prometheus_client", "prometheus-client")):
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingDependency(package, "usedge serve", extra="serve") from exc
    import uvicorn

    return uvicorn


def _server_class(uvicorn):
    class Server(uvicorn.Server):
        """uvicorn's server, ending the open MJPEG responses (/v1/live) as soon as Ctrl-C or SIGTERM comes:
        uvicorn waits for open responses before the app's shutdown, so a viewer kept it past its graceful
        timeout, and it then printed a CancelledError traceback."""

        def handle_exit(self, sig, frame) -> None:
            st = getattr(self.config.app.state, "usedge", None) if hasattr(self.config.app, "state") else None
            if st is not None and st.feed is not None:
                st.feed.close()
            super().handle_exit(sig, frame)

    return Server


@app.command()
def serve(
    model: Path = typer.Argument(..., help="model.onnx / model.int8.onnx / model.fp16.onnx or a TensorRT .engine"),
    stream: Optional[str] = typer.Option(None, "--stream", help="Live source for /v1/live and /v1/latest: camera "
                                         "index, /dev/videoN, rtsp:// URL, GStreamer pipeline, video file, DICOM cine."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Loopback by default; 0.0.0.0 exposes "
                             "the server to the network (use --token)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    token: Optional[str] = typer.Option(None, "--token", envvar="USEDGE_TOKEN", show_envvar=True,
                                        help="Require 'Authorization: Bearer TOKEN' (browser: open /?token=TOKEN "
                                             "once). Prefer the environment variable: a flag shows up in `ps`."),
    backend: str = backend_option(),
    threads: Optional[int] = threads_option(),
    spinning: Optional[bool] = spinning_option(),
    replay: bool = typer.Option(True, "--replay/--no-replay", help="Replay a file --stream forever, like a scanner."),
    smooth_window: int = typer.Option(5, "--smooth-window", min=1, help="Live probabilities: moving average over "
                                      "this many frames (1: off)."),
    max_upload_mb: float = typer.Option(32.0, "--max-upload-mb", min=0.001, help="Largest accepted upload, MiB."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=1, help="Largest accepted image, pixels per frame."),
    max_queue: int = typer.Option(32, "--max-queue", min=0, help="Uploads that may wait; more get 503 Retry-After."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Extra Host header names accepted on a "
                                         "loopback bind (e.g. a reverse proxy's name)."),
    view_max_width: int = typer.Option(640, "--view-max-width", min=64, help="Live view: frames wider than this "
                                       "are scaled down (pixels)."),
    view_quality: int = typer.Option(70, "--view-quality", min=10, max=100, help="Live view: JPEG quality to start "
                                     "from (lowered per frame when the bitrate cap needs it)."),
    view_fps: float = typer.Option(10.0, "--view-fps", min=0.5, max=60.0, help="Live view: frames per second at most."),
    view_mbps: float = typer.Option(5.0, "--view-mbps", min=0.1, help="Live view: megabits per second per viewer "
                                    "at most (images only)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1, help="Seconds a connection may take to "
                                         "send its request headers; then 408 and closed (slow clients)."),
    body_timeout: float = typer.Option(60.0, "--body-timeout", min=0.1, help="Seconds a request body (an upload) may "
                                       "take to arrive completely; then 408."),
    max_client_connections: int = typer.Option(16, "--max-client-connections", min=1, help="Open connections per "
                                               "client IP; more are answered 429 and closed."),
    max_client_requests: int = typer.Option(8, "--max-client-requests", min=1, help="Requests in progress per "
                                            "client IP; more get 429 Retry-After."),
    quality_gate: bool = quality_gate_option(),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level: critical|error|warning|info|debug"),
    quiet: bool = quiet_option(),
) -> None:
    """Serve MODEL over HTTP: a web page (live view, probabilities, upload), /v1/predict, /metrics."""
    from rich.markup import escape

    from usedge.cli.terminal import terminal_safe
    from usedge.runtime.model_info import model_card_line

    uvicorn = _serve_packages()
    from usedge.errors import ConfigError
    from usedge.runtime.classifier import Classifier
    from usedge.serve.app import create_app
    from usedge.serve.limits import ServeLimits, uvicorn_config
    from usedge.serve.live import ViewSettings, start_stream

    console = rich_console(stderr=True)
    logging.basicConfig(level=log_level.upper() if log_level.upper() in logging._nameToLevel else "WARNING",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the form parser's own warning on a malformed upload repeats the 400 answer that usedge logs and counts
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    # pydicom's notes on a non-conformant upload (a VR mismatch): the upload is read or refused in usedge's own
    # line; `usedge --debug serve` shows them
    if not state["debug"]:
        logging.getLogger("pydicom").setLevel(logging.ERROR)
    _check_port_free(host, port)
    loopback = _is_loopback(host)
    if not loopback and not token:
        console.print(f"[yellow]warning:[/] binding {host} without a token: anyone on the network can use "
                      "this server — set USEDGE_TOKEN")
    classifier = Classifier.load(model, backend=backend, threads=threads, spinning=spinning)
    runner = None
    live_classifier = classifier
    try:
        if stream is not None:
            live_classifier = classifier.for_another_thread()
            runner = start_stream(live_classifier, stream, replay=replay, smooth_window=smooth_window,
                                  quality_gate=quality_gate)
        allowed = allowed_hosts(host, allow_host)
        limits = ServeLimits(header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                             max_client_connections=max_client_connections, max_client_requests=max_client_requests)
        web = create_app(classifier, runner, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         max_pixels=max_pixels, max_queue=max_queue, allowed_hosts=allowed, limits=limits,
                         quality_gate=quality_gate,
                         view=ViewSettings(max_width=view_max_width, quality=view_quality, fps=view_fps,
                                           mbps=view_mbps))
        config = uvicorn_config(web, host, port, limits, log_level=log_level, access_log=False,
                                timeout_graceful_shutdown=3, server_header=False, lifespan="on")
        server = _server_class(uvicorn)(config)
        shown = f"[{host}]" if ":" in host else host
        if not quiet:
            console.print(f"usedge serve: http://{shown}:{port}/  — {classifier.describe()}"
                          + (f"; live: {escape(terminal_safe(runner.reader.name))}" if runner else "; uploads only (no --stream)"))
        if not quiet:
            console.print(f"  model card: {escape(terminal_safe(model_card_line(classifier.info)))}", highlight=False,
                          soft_wrap=True)
        if token and not quiet:
            console.print("  token required: API clients send 'Authorization: Bearer …'; in a browser open /?token=… once")
        try:
            server.run()
        except SystemExit as exc:  # uvicorn exits when it cannot bind (a port taken since the check above)
            raise ConfigError(f"cannot listen on {host}:{port}", hint="pick another --port, or stop the program "
                              "using it") from exc
        if not server.started:
            raise ConfigError(f"cannot listen on {host}:{port}", hint="pick another --port, or stop the program using it")
    finally:
        if runner is not None:
            runner.stop()
        if live_classifier is not classifier:
            live_classifier.close()
        classifier.close()
    sys.stderr.flush()
