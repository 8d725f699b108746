"""Slow and greedy clients cannot lock others out (issue 16 item 11).

Two layers, each with one job:

- `guarded_h11(limits)`: uvicorn's h11 protocol with a **header deadline** (a connection that has not
  sent a complete request line + headers within `header_timeout_s` of connecting, or of its previous
  response, gets `408` and is closed: half-open "slowloris" connections do not pile up) and a
  **per-client connection cap** (`max_client_connections` open connections per client IP; one more is
  answered `429` and closed at once).
- `ClientLimits`: ASGI middleware with a **body deadline** (a request body must arrive completely
  within `body_timeout_s` of the request's start, however it trickles: one byte every few seconds
  keeps no upload slot) and a **per-client request cap** (`max_client_requests` requests in progress
  per client IP, `/healthz` exempt; one more gets `429` + `Retry-After`).

The body deadline raises `BodyTimeout` (an `UploadRejected` with status 408) from `receive`, so a
route that reads a body answers it like any refused upload; the middleware answers it for the rest.
Every 408/429 carries `Connection: close`, so the client's connection is not kept for another try.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass

import anyio

from usedge.serve.uploads import UploadRejected


@dataclass(frozen=True)
class ServeLimits:
    header_timeout_s: float = 10.0      # request line + headers, from connect (or the previous response)
    body_timeout_s: float = 60.0        # the whole body, from the request's start (32 MiB at ~5 Mbit/s)
    max_client_connections: int = 16   # open connections per client IP (a browser opens up to 6)
    max_client_requests: int = 8        # requests in progress per client IP (the page: live view, poll, upload)
    keep_alive_s: float = 5.0           # an idle keep-alive connection is closed after this


class BodyTimeout(UploadRejected):
    def __init__(self, seconds: float):
        super().__init__(f"request body not received within {seconds:g} s", status=408,
                         hint="send the whole upload at once; a slow link may need a larger --body-timeout")


def _refusal(status: int, message: str) -> bytes:
    body = json.dumps({"error": message, "status": status}).encode()
    reason = {408: "Request Timeout", 429: "Too Many Requests"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


def guarded_h11(limits: ServeLimits, on_refused=None):
    """A uvicorn `http=` protocol class (h11) with the header deadline and the per-client connection cap;
    one class per server (its connection counts are shared by that server's connections only).
    on_refused(kind, status): called for each refusal here ("client_connections" 429, "header_timeout"
    408), which never reach the app: /metrics counts them."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_per_client: Counter[str] = Counter()

    class GuardedH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _counted: str | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            ip = self.client[0] if self.client else "?"
            if open_per_client[ip] >= limits.max_client_connections:
                transport.write(_refusal(429, f"more than {limits.max_client_connections} open connections "
                                              "from this client"))
                transport.close()
                if on_refused is not None:
                    on_refused("client_connections", 429)
                return
            open_per_client[ip] += 1
            self._counted = ip
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.write(_refusal(408, f"request headers not received within "
                                                   f"{limits.header_timeout_s:g} s"))
                self.transport.close()
                if on_refused is not None:
                    on_refused("header_timeout", 408)

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers() and self._header_timer is None:
                self._arm_header_timer()       # a new request on a kept-alive connection: its own deadline
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm_header_timer()    # headers complete: the body deadline (ClientLimits) takes over

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            if self._counted is not None:
                open_per_client[self._counted] -= 1
                if open_per_client[self._counted] <= 0:
                    del open_per_client[self._counted]
                self._counted = None
            super().connection_lost(exc)

    return GuardedH11


def uvicorn_config(app, host: str, port: int, limits: ServeLimits, **kwargs):
    """The uvicorn.Config of `usedge serve` (and of the tests' servers): guarded h11 protocol, keep-alive."""
    import uvicorn

    st = getattr(getattr(app, "state", None), "usedge", None)       # the app's metrics count connection refusals
    on_refused = st.metrics.connection_refused if st is not None else None
    return uvicorn.Config(app, host=host, port=port, http=guarded_h11(limits, on_refused),
                          timeout_keep_alive=limits.keep_alive_s, **kwargs)


class ClientLimits:
    """Pure ASGI middleware: the body deadline and the per-client request cap."""

    def __init__(self, app, limits: ServeLimits, on_refused=None):
        self.app = app
        self.limits = limits
        self.on_refused = on_refused          # called with "client_limit" / "body_timeout" (metrics)
        self.in_progress: Counter[str] = Counter()

    async def _refuse(self, send, status: int, message: str, kind: str, retry_after: bool = False) -> None:
        if self.on_refused is not None:
            self.on_refused(kind)
        body = json.dumps({"error": message, "status": status}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")] + ([(b"retry-after", b"1")] if retry_after else [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ip = (scope.get("client") or ("?", 0))[0]
        counted = scope.get("path") != "/healthz"
        if counted and self.in_progress[ip] >= self.limits.max_client_requests:
            return await self._refuse(send, 429, f"more than {self.limits.max_client_requests} requests in "
                                      "progress from this client — retry shortly", "client_limit", retry_after=True)
        if counted:
            self.in_progress[ip] += 1
        deadline = anyio.current_time() + self.limits.body_timeout_s
        body_done = scope.get("method") in ("GET", "HEAD", "OPTIONS")
        started = False

        async def receive_in_time():
            nonlocal body_done
            if body_done:
                return await receive()
            with anyio.move_on_after(max(deadline - anyio.current_time(), 0.0)) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise BodyTimeout(self.limits.body_timeout_s)
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_marked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 408:   # a body that did not arrive: do not keep its connection
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive_in_time, send_marked)
        except BodyTimeout as exc:
            if started:
                raise
            await self._refuse(send, 408, exc.one_line(), "body_timeout")
        finally:
            if counted:
                self.in_progress[ip] -= 1
                if self.in_progress[ip] <= 0:
                    del self.in_progress[ip]
