"""Issue 16 item 12: DNS-rebinding protection on the IPv6 loopback too, and cross-origin
state-changing requests refused with or without a token (real app, real model; a real uvicorn on ::1)."""

from __future__ import annotations

import socket
import warnings

import pytest

pytest.importorskip("fastapi", reason="usedge serve needs the 'serve' extra (fastapi, uvicorn, ...)")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
httpx = pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from usedge.cli.serve_cmd import allowed_hosts  # noqa: E402
from usedge.serve.app import create_app  # noqa: E402
from usedge.serve.origin import host_name  # noqa: E402


@pytest.fixture(scope="module")
def png(serve_images) -> bytes:
    return serve_images[0].read_bytes()


def test_host_names_parse_ipv6_and_ports():
    assert host_name("[::1]:8000") == "::1" and host_name("[::1]") == "::1" and host_name("::1") == "::1"
    assert host_name("LOCALHOST:80") == "localhost" and host_name("127.0.0.1") == "127.0.0.1"


def test_every_loopback_bind_checks_the_host_header():
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.5"):
        names = allowed_hosts(host, [])
        assert names is not None and "evil.example" not in names, host
    assert "::1" in allowed_hosts("::1", []) and "proxy.lan" in allowed_hosts("::1", ["proxy.lan"])
    assert allowed_hosts("0.0.0.0", []) is None and allowed_hosts("::", []) is None


def test_ipv6_loopback_host_check(serve_classifier, png):
    with TestClient(create_app(serve_classifier, allowed_hosts=allowed_hosts("::1", [])),
                    base_url="http://[::1]:8000") as c:
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/predict", content=png).status_code == 200
        for evil in ("evil.example", "evil.example:8000", "[::2]:8000", "rebind.example.com"):
            r = c.post("/v1/predict", content=png, headers={"Host": evil})
            assert r.status_code == 400, evil
            assert c.get("/v1/info", headers={"Host": evil}).status_code == 400


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_real_server_on_ipv6_loopback_refuses_rebinding(serve_classifier):
    import threading
    import time

    import uvicorn

    from usedge.serve.limits import ServeLimits, uvicorn_config

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    app = create_app(serve_classifier, allowed_hosts=allowed_hosts("::1", []))
    server = uvicorn.Server(uvicorn_config(app, "::1", port, ServeLimits(), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 15
        while not server.started and time.monotonic() < end:
            time.sleep(0.02)
        base = f"http://[::1]:{port}"
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{base}/healthz", headers={"Host": "rebind.example"}, timeout=5).status_code == 400
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:9999"},                    # another port is another origin
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1:8000"},
])
def test_cross_origin_post_is_refused_without_a_token(serve_classifier, png, headers):
    with TestClient(create_app(serve_classifier), base_url="http://127.0.0.1:8000") as c:
        r = c.post("/v1/predict", content=png, headers=headers)
        assert r.status_code == 403
        assert "cross-origin" in r.json()["error"]


def test_same_origin_and_non_browser_posts_are_served(serve_classifier, png):
    with TestClient(create_app(serve_classifier), base_url="http://127.0.0.1:8000") as c:
        assert c.post("/v1/predict", content=png).status_code == 200                      # curl, scripts
        assert c.post("/v1/predict", content=png, headers={"Origin": "http://127.0.0.1:8000",
                                                           "Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert c.post("/v1/predict", content=png, headers={"Sec-Fetch-Site": "none"}).status_code == 200
        # reading is not state-changing: a GET with a foreign Origin is left to CORS (no CORS headers sent)
        assert c.get("/v1/info", headers={"Origin": "http://evil.example"}).status_code == 200
