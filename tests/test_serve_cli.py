"""`usedge serve` as a user runs it: help, bad model, a real server process, token, port in use, Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="usedge serve needs the 'serve' extra (fastapi, uvicorn, ...)")
httpx = pytest.importorskip("httpx")

from tests.fixtures.serve import cli_server  # noqa: E402
from usedge.runtime.classifier import Classifier  # noqa: E402
from usedge.runtime.model_info import model_card_line  # noqa: E402


def _usedge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usedge", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_help_lists_the_options():
    out = _usedge("serve", "--help")
    assert out.returncode == 0
    for option in ("--stream", "--host", "--port", "--token", "USEDGE_TOKEN", "--max-upload-mb", "--no-spinning"):
        assert option in out.stdout


def test_missing_model_is_one_line(tmp_path):
    out = _usedge("serve", str(tmp_path / "nope.onnx"), "--port", "0")
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("usedge: ") and "not found" in lines[0]


def test_server_process_with_token(serve_model, serve_images):
    token = "cli-secret-42"
    with cli_server(serve_model, token=token) as (base, proc):
        body = serve_images[0].read_bytes()
        assert httpx.post(f"{base}/v1/predict", content=body, timeout=30).status_code == 401
        r = httpx.post(f"{base}/v1/predict", content=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200 and r.json()["label"]
        info = httpx.get(f"{base}/v1/info", headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
        with Classifier.load(serve_model, "ort-cpu") as clf:
            assert info["model_card"]["line"] == model_card_line(clf.info)
        assert httpx.get(f"{base}/healthz").json()["stream"] == "none"
        assert httpx.get(f"{base}/healthz", headers={"Host": "rebind.example"}).status_code == 400

        port = base.rsplit(":", 1)[1]
        busy = _usedge("serve", str(serve_model), "--port", port)
        assert busy.returncode != 0 and "cannot listen" in busy.stderr and "--port" in busy.stderr
    assert proc.returncode in (0, 130)          # Ctrl-C ends it cleanly
    logs = proc.stderr.read() + proc.stdout.read()
    assert token not in logs                    # the token is never printed
    assert "http://127.0.0.1:" in logs
    assert f"model card: {info['model_card']['line']}" in " ".join(logs.split())   # the startup line


def test_a_client_that_leaves_mid_upload_is_no_server_error(serve_model):
    """A cancelled browser upload (the connection closed before the body is complete) is not logged as an
    internal error nor counted as a 500, which would set off alerts."""
    import socket
    import time

    with cli_server(serve_model) as (base, proc):
        host, port = base.rsplit("/", 1)[1].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
                      + b"\r\nContent-Length: 100000\r\n\r\n\x89PNG" + b"x" * 1000)
            time.sleep(1.0)
        deadline = time.time() + 10
        while 'kind="client_closed"' not in (metrics := httpx.get(f"{base}/metrics", timeout=30).text):
            assert time.time() < deadline, metrics[-2000:]
            time.sleep(0.2)
        assert 'status="500"' not in metrics and 'kind="internal"' not in metrics
    logs = proc.stderr.read() + proc.stdout.read()
    assert "predict failed" not in logs and "Traceback" not in logs


def test_ctrl_c_with_a_live_viewer_ends_cleanly(serve_model, serve_video):
    """Ctrl-C while a browser holds the MJPEG view (/v1/live): the server ends at once, without the
    CancelledError traceback uvicorn printed after its graceful timeout, and says nothing about the stream
    having ended by itself."""
    import threading
    import time

    got = []

    def view(base):
        try:
            with httpx.stream("GET", f"{base}/v1/live", timeout=30) as r:
                for chunk in r.iter_bytes():
                    got.append(len(chunk))
        except httpx.HTTPError:
            pass

    with cli_server(serve_model, "--stream", str(serve_video)) as (base, proc):
        viewer = threading.Thread(target=view, args=(base,), daemon=True)
        viewer.start()
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            time.sleep(0.1)
        assert got                                  # the view is flowing
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3.0 and proc.returncode in (0, 130)
    logs = proc.stderr.read() + proc.stdout.read()
    assert "Traceback" not in logs and "CancelledError" not in logs and "stream ended" not in logs, logs[-2000:]
