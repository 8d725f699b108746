"""Browser-borne attacks on a server bound to loopback: DNS rebinding and cross-site requests.

`SameOriginGuard` (pure ASGI middleware):

- **Host check** (DNS rebinding): with `allowed_hosts` set (a loopback bind: `127.0.0.1`, `localhost`,
  `::1`, plus `--allow-host` names), a request whose `Host` header names anything else gets `400`.
  IPv6 literals are compared without their brackets and port (`Host: [::1]:8000` is `::1`).
- **Same origin for state-changing requests** (cross-site request forgery, token or not): a POST/PUT/
  PATCH/DELETE that a browser marks as coming from another site (`Sec-Fetch-Site` other than
  `same-origin` or `none`, or an `Origin` that is not this server's own `scheme://host[:port]`, `null`
  included) gets `403`. Non-browser clients (curl, tritonclient) send neither header and are not affected.
"""

from __future__ import annotations

import json

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def host_name(host_header: str) -> str:
    """'[::1]:8000' -> '::1'; 'localhost:8000' -> 'localhost'; lower case."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class SameOriginGuard:
    def __init__(self, app, allowed_hosts: list[str] | None = None, on_refused=None):
        self.app = app
        self.allowed = {host_name(h) for h in allowed_hosts} if allowed_hosts else None
        self.on_refused = on_refused       # called with "bad_host" / "cross_origin" (metrics)

    async def _refuse(self, send, status: int, message: str, kind: str) -> None:
        if self.on_refused is not None:
            self.on_refused(kind)
        body = json.dumps({"error": message, "status": status}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.allowed is not None and host_name(host) not in self.allowed:
            return await self._refuse(send, 400, "invalid host header (this server answers only to its own "
                                      "loopback names; a proxy's name goes in --allow-host)", "bad_host")
        if scope.get("method", "GET") not in SAFE_METHODS:
            site = headers.get("sec-fetch-site")
            origin = headers.get("origin")
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            if (site is not None and site not in ("same-origin", "none")) or \
                    (origin is not None and origin.lower() != own):
                return await self._refuse(send, 403, "cross-origin request refused: state-changing requests must "
                                          "come from this server's own page or a non-browser client", "cross_origin")
        return await self.app(scope, receive, send)
