"""Issue 16 item 11: slow clients cannot lock others out of a real uvicorn server on 127.0.0.1.

Raw sockets trickle an upload body one byte at a time or stop half-way through their headers; a
normal client (httpx) still gets its `/v1/predict` answered. The normal client connects from
127.0.0.2 (Linux routes all of 127/8 to loopback), a different client address than the tricklers'
127.0.0.1, as a second machine on the network would. Bounded: a dozen sockets, a 20 s ceiling.
"""

from __future__ import annotations

import select
import socket
import time

import pytest

pytest.importorskip("fastapi", reason="usedge serve needs the 'serve' extra (fastapi, uvicorn, ...)")
httpx = pytest.importorskip("httpx")

from tests.fixtures.serve import run_uvicorn  # noqa: E402

LIMITS = dict(header_timeout_s=1.5, body_timeout_s=2.0, max_client_connections=6, max_client_requests=3)
CEILING_S = 20.0


@pytest.fixture(scope="module")
def guarded_server(serve_classifier):
    from usedge.serve.app import create_app
    from usedge.serve.limits import ServeLimits

    limits = ServeLimits(**LIMITS)
    # a small queue: 5 uploads admitted at once, so 6 trickling uploads would fill it without the per-client
    # cap (3); with it, one client holds at most 3 and the body deadline frees them
    app = create_app(serve_classifier, max_queue=4, limits=limits)
    with run_uvicorn(app, limits=limits) as base:
        yield base


def _other_client():
    return httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _read_answer(s: socket.socket) -> bytes:
    """The whole answer: headers and body may come in separate segments; the server closes after it."""
    data = b""
    s.settimeout(2.0)
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:   # timeout or reset: what arrived is the answer
        pass
    return data


def _trickle(socks: list[socket.socket], payload: bytes) -> dict[socket.socket, bytes]:
    """Send one byte of `payload` to every still-open socket every 0.3 s until each has an answer."""
    answers: dict[socket.socket, bytes] = {}
    end = time.monotonic() + CEILING_S
    while len(answers) < len(socks) and time.monotonic() < end:
        readable, _, _ = select.select([s for s in socks if s not in answers], [], [], 0.3)
        for s in readable:
            answers[s] = _read_answer(s)
        for s in socks:
            if s not in answers:
                try:
                    s.send(payload)
                except OSError:          # the server answered and closed in between: its answer is still queued
                    answers[s] = _read_answer(s)
    return answers


def _status(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def test_trickling_uploads_do_not_lock_out_others(guarded_server, serve_images):
    base = guarded_server
    png = serve_images[0].read_bytes()
    socks = []
    for _ in range(6):
        s = _connect(base)
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: 100000\r\n\r\n\x89")
        socks.append(s)
    try:
        time.sleep(0.3)
        with _other_client() as client:             # while they trickle: another client is served
            r = client.post(f"{base}/v1/predict", content=png)
            assert r.status_code == 200, r.text
            assert r.json()["label"]
        answers = _trickle(socks, b"\0")
    finally:
        for s in socks:
            s.close()
    statuses = [_status(a) for a in answers.values()]
    assert len(statuses) == 6 and set(statuses) <= {408, 429}, statuses
    assert statuses.count(408) <= LIMITS["max_client_requests"]      # at most the cap were ever admitted
    assert any(b'"status": 408' in a or b'"status":408' in a for a in answers.values())
    # and the tricklers' own address is served again once they are gone
    r = httpx.post(f"{base}/v1/predict", content=png, timeout=30)
    assert r.status_code == 200, r.text


def _refusals(base: str) -> dict[str, float]:
    """/metrics: connections refused before any route (status -> count)."""
    out = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith('usedge_http_requests_total{route="(connection)"'):
            out[line.split('status="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


def test_half_open_headers_are_closed_and_capped(guarded_server, serve_images):
    base = guarded_server
    before = _refusals(base)
    socks = []
    for _ in range(10):                        # more than max_client_connections (6)
        s = _connect(base)
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")   # ... and never the rest
        socks.append(s)
    try:
        with _other_client() as client:
            assert client.get(f"{base}/healthz").status_code == 200
            r = client.post(f"{base}/v1/predict", content=serve_images[1].read_bytes())
            assert r.status_code == 200, r.text
        answers = _trickle(socks, b"X")           # a header byte now and then does not extend the deadline
    finally:
        for s in socks:
            s.close()
    statuses = [_status(a) for a in answers.values()]
    assert len(statuses) == 10 and set(statuses) <= {408, 429}, statuses
    assert statuses.count(429) >= 10 - LIMITS["max_client_connections"]
    assert statuses.count(408) >= 1
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    after = _refusals(base)            # /metrics counts what was refused before any route saw it
    for status in ("429", "408"):
        assert after.get(status, 0) - before.get(status, 0) == statuses.count(int(status)), (before, after)


def test_keep_alive_connection_gets_a_new_header_deadline(guarded_server):
    s = _connect(guarded_server)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = s.recv(65536)
        while not first.endswith(b"}"):                      # headers and body may come in two reads
            first += s.recv(65536)
        assert _status(first) == 200
        s.sendall(b"GET /healthz HTTP/1.1\r\n")             # a second request that never finishes
        answers = _trickle([s], b"X")
        assert _status(answers[s]) == 408
    finally:
        s.close()
