"""usedge serve's HTTP API through the real app (FastAPI TestClient), a real onnxruntime model, real files."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
import zlib

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="usedge serve needs the 'serve' extra (fastapi, uvicorn, ...)")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

with warnings.catch_warnings():  # starlette's notice that httpx2 will replace httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from usedge.fileio import sha256_file  # noqa: E402
from usedge.serve.app import create_app  # noqa: E402

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def client(serve_classifier):
    with TestClient(create_app(serve_classifier, token=TOKEN, max_upload_bytes=4 * 1024 * 1024,
                               max_pixels=4_000_000)) as c:
        yield c


@pytest.fixture(scope="module")
def image_bytes(serve_images) -> bytes:
    return serve_images[0].read_bytes()


def test_predict_png_matches_the_classifier(client, serve_classifier, serve_images, serve_model):
    for path in serve_images[:3]:
        r = client.post("/v1/predict", files={"file": ("anything.png", path.read_bytes(), "image/png")},
                        headers={**AUTH, "X-Request-ID": "req-1"})
        assert r.status_code == 200, r.text
        d = r.json()
        direct = serve_classifier.predict(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
        assert d["label"] == direct.label
        assert list(d["probs"]) == serve_classifier.class_names
        np.testing.assert_allclose([d["probs"][n] for n in serve_classifier.class_names],
                                   [direct.probs[n] for n in serve_classifier.class_names], atol=1e-5)
        assert abs(sum(d["probs"].values()) - 1) < 1e-4
        assert d["crop_box"] == list(direct.crop_box)
        assert d["model_sha256"] == sha256_file(serve_model)
        assert d["request_id"] == "req-1"
        assert d["latency_ms"]["total"] > 0 and d["latency_ms"]["request"] >= d["latency_ms"]["total"]
        assert d["input"]["kind"] == "png"
        assert "anything.png" not in r.text  # the upload's name never comes back


def test_raw_body_jpeg_and_overlay(client, serve_images):
    image = cv2.imread(str(serve_images[1]), cv2.IMREAD_UNCHANGED)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    r = client.post("/v1/predict?overlay=true", content=jpeg, headers={**AUTH, "Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["input"]["kind"] == "jpeg"
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(d["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == image.shape[:2]
    r = client.post("/v1/predict?format=png", content=jpeg, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-usedge-label"] == d["label"]
    assert r.headers["x-usedge-margin"] == f"{d['margin']:.6f}"                # the verdict travels with the PNG
    assert r.headers["x-usedge-uncertain"] == str(d["uncertain"]).lower() and d["uncertain"] is not None
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape[:2] == image.shape[:2]


def _dicom(name: str):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not in this pydicom wheel")
    return path


def _strings(obj) -> list[str]:
    """Every key and string value in a JSON answer."""
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (str(k), *_strings(v))]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_dicom_upload_without_patient_data(client):
    import pydicom

    path = _dicom("examples_ybr_color.dcm")  # SonoSite, 30 frames, YBR_FULL_422
    data = open(path, "rb").read()
    r = client.post("/v1/predict?frame=29", files={"file": ("Doe^John.dcm", data, "application/dicom")}, headers=AUTH)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["input"]["kind"] == "dicom" and d["input"]["frames_in_file"] == 30 and d["input"]["frame_index"] == 29
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    # a leak is the identifier as a whole token of a string in the answer (keys or values); its digits
    # inside a number or a hex digest are not ("204" in 12.04 or in a sha256)
    strings = " | ".join(_strings(d))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "InstitutionName",
                    "StudyInstanceUID", "SOPInstanceUID"):
        value = str(ds.get(keyword, "") or "")
        if len(value) >= 3:
            assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", strings), keyword
    assert "Doe" not in r.text
    r = client.post("/v1/predict?frame=30", content=data, headers=AUTH)
    assert r.status_code == 422 and "30 frame" in r.json()["error"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression-bomb shape), with a tiny body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


@pytest.mark.parametrize("body, status, words", [
    (b"", 400, "empty upload"),
    (b"just some text, not an image", 415, "not a supported image type"),
    (_png(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))[:120], 400, "truncated PNG"),
    (_png_header_only(100_000, 100_000), 413, "over the limit"),
    (b"\x00" * 128 + b"DICM" + b"\x00" * 64, 422, "DICOM"),
])
def test_bad_uploads_get_a_clear_4xx(client, body, status, words):
    r = client.post("/v1/predict", content=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert r.json()["error"].startswith("upload: ")
    assert "\n" not in r.json()["error"]


def test_too_large_upload_is_413_before_decoding(client, image_bytes):
    big = image_bytes + b"\x00" * (4 * 1024 * 1024 + 1)
    r = client.post("/v1/predict", files={"file": ("x.png", big, "image/png")}, headers=AUTH)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_blank_frame_and_form_without_file_are_4xx(client):
    r = client.post("/v1/predict", content=_png(np.full((200, 300), 30, np.uint8)), headers=AUTH)
    assert r.status_code == 422 and "blank" in r.json()["error"]
    r = client.post("/v1/predict", data={"other": "x"}, files={"nofile": ("a.png", b"123", "image/png")}, headers=AUTH)
    assert r.status_code == 400 and "'file'" in r.json()["error"]


def test_malformed_forms_say_what_is_wrong(client, image_bytes):
    """Two files in one form, or the file sent as a text field (curl -F "file=<a.png"), were both only
    'malformed multipart form'."""
    r = client.post("/v1/predict", files=[("file", ("a.png", image_bytes, "image/png")),
                                          ("file", ("b.png", image_bytes, "image/png"))], headers=AUTH)
    assert r.status_code == 400 and "Too many files" in r.json()["error"] and "one file per upload" in r.json()["error"]
    r = client.post("/v1/predict", files={"file": (None, "x" * 70_000)}, headers=AUTH)      # a part without a filename
    assert r.status_code == 400 and "text field" in r.json()["error"] and "file=@frame.png" in r.json()["error"]
    r = client.post("/v1/predict", files={"file": ("a" * 5000 + ".png", image_bytes, "image/png")}, headers=AUTH)
    assert r.status_code == 400 and "Maximum header size exceeded" in r.json()["error"]   # not just "Invalid multipart data"
    assert "shorter file name" in r.json()["error"]


def test_server_survives_bad_uploads(client, image_bytes):
    for body in (b"x", b"\xff\xd8\xff" + b"\x00" * 50, b"BM" + b"\xff" * 40):
        assert client.post("/v1/predict", content=body, headers=AUTH).status_code in (400, 413, 415, 422)
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.head("/healthz").status_code == 200 and client.head("/").status_code in (200, 401)   # HEAD checks
    assert client.post("/v1/predict", content=image_bytes, headers=AUTH).status_code == 200


def test_token_guards_everything_but_healthz(client, image_bytes):
    assert client.get("/healthz").status_code == 200
    for method, url in (("get", "/"), ("get", "/v1/info"), ("get", "/metrics"), ("post", "/v1/predict")):
        assert getattr(client, method)(url).status_code == 401, url
    r = client.post("/v1/predict", content=image_bytes, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 401


def test_token_cookie_for_the_browser(serve_classifier):
    with TestClient(create_app(serve_classifier, token=TOKEN)) as c:
        r = c.get(f"/?token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/").status_code == 200          # the cookie now rides along
        assert c.get("/v1/info").json()["class_names"] == serve_classifier.class_names


def test_page_assets_and_security_headers(client):
    r = client.get("/", headers=AUTH)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/static/page.js" in r.text and "upload-form" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "http" not in r.text.split("<body>")[1].replace("usedge serve", "")  # no CDN, nothing remote
    assert client.get("/static/page.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


def test_no_stream_answers_404_with_the_fix(client):
    for url in ("/v1/latest", "/v1/live"):
        r = client.get(url, headers=AUTH)
        assert r.status_code == 404 and "--stream" in r.json()["error"]
    assert client.get("/v1/info", headers=AUTH).json()["stream"] is False


def test_metrics_prometheus_text(client, image_bytes):
    from prometheus_client.parser import text_string_to_metric_families

    client.post("/v1/predict", content=image_bytes, headers=AUTH)
    client.post("/v1/predict", content=b"nope", headers=AUTH)
    r = client.get("/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {"usedge_http_requests", "usedge_errors", "usedge_predict_latency_seconds",
            "usedge_stage_latency_seconds", "usedge_model_info"} <= set(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("usedge_errors_total", (("kind", "unsupported_type"),))] >= 1
    assert samples[("usedge_predict_latency_seconds_count", ())] >= 1
    assert any(n == "usedge_stage_latency_seconds_count" and dict(lab) == {"source": "upload", "stage": "model"}
               for n, lab in samples)


def test_dns_rebinding_host_is_refused(serve_classifier, image_bytes):
    with TestClient(create_app(serve_classifier, allowed_hosts=["127.0.0.1", "localhost"]),
                    base_url="http://127.0.0.1") as c:
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/predict", content=image_bytes, headers={"Host": "evil.example"}).status_code == 400


def test_serve_modules_never_import_torch():
    code = ("import sys; import usedge.serve.app, usedge.serve.live, usedge.serve.uploads, usedge.serve.replay, "
            "usedge.cli.serve_cmd; bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', "
            "'usedge.train', 'usedge.export'))]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_module_imports_no_web_packages():
    code = ("import sys; import usedge.cli; bad = [m for m in ('fastapi', 'uvicorn', 'starlette', "
            "'prometheus_client', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


class _HeldClassifier:
    """The real classifier, but predict waits until released: makes 'the server is busy' certain."""

    def __init__(self, inner):
        self._inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def predict(self, *args, **kwargs):
        self.entered.set()
        self.release.wait(30)
        return self._inner.predict(*args, **kwargs)


def test_full_queue_answers_503_and_recovers(serve_classifier, image_bytes):
    import httpx

    from tests.fixtures.serve import run_uvicorn

    held = _HeldClassifier(serve_classifier)
    with run_uvicorn(create_app(held, max_concurrent=1, max_queue=0)) as base:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{base}/v1/predict", content=image_bytes, timeout=30)
            assert held.entered.wait(20)
            busy = httpx.post(f"{base}/v1/predict", content=image_bytes, timeout=30)
            held.release.set()
            assert first.result().status_code == 200
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "busy" in busy.json()["error"]
        assert httpx.post(f"{base}/v1/predict", content=image_bytes, timeout=30).status_code == 200


def test_dicom_upload_keeps_its_ultrasound_regions():
    """The upload path hands the file's region boxes to the crop, as `usedge infer` does for the file."""
    from usedge.runtime.dicom import open_dicom
    from usedge.serve.uploads import decode_upload

    path = _dicom("examples_ybr_color.dcm")
    decoded = decode_upload(open(path, "rb").read(), frame_index=3)
    assert decoded.regions == open_dicom(path).raw_regions and decoded.regions
    assert decoded.frame.shape == (240, 320, 3) and decoded.frame_index == 3


def test_every_error_has_the_same_shape(client, image_bytes):
    for r in (client.post("/v1/predict?frame=-1", content=image_bytes, headers=AUTH),
              client.post("/v1/predict?format=gif", content=image_bytes, headers=AUTH),
              client.get("/nowhere", headers=AUTH),
              client.get("/v1/predict", headers=AUTH)):
        assert r.status_code in (404, 405, 422), r.text
        d = r.json()
        assert set(d) == {"error", "status"} and d["status"] == r.status_code and "\n" not in d["error"]
    assert "frame" in client.post("/v1/predict?frame=-1", content=image_bytes, headers=AUTH).json()["error"]
