"""The page, its static files, /healthz and /metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from usedge.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from usedge.serve.state import TOKEN_COOKIE, state_of

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def index(request: Request, token_param: str | None = Query(None, alias="token")):
    st = state_of(request)
    if st.token is not None and token_param is not None:
        if not hmac.compare_digest(token_param.encode(), st.token):
            return st.unauthorised()
        # Trade the URL token for a cookie and drop it from the address bar and history.
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(TOKEN_COOKIE, token_param, httponly=True, samesite="strict", path="/")
        return resp
    if not st.authorised(request):
        return st.unauthorised()
    return Response(st.page["index.html"], media_type="text/html; charset=utf-8")


@router.get("/static/{name}", include_in_schema=False)
def static(request: Request, name: str):
    st = state_of(request)
    if name not in ("page.js", "page.css"):
        return st.error(404, "not found", "not_found")
    media = "text/javascript" if name.endswith(".js") else "text/css"
    return Response(st.page[name], media_type=f"{media}; charset=utf-8")


@router.api_route("/healthz", methods=["GET", "HEAD"])   # HEAD: load balancers' checks
def healthz(request: Request):
    st = state_of(request)
    body = {"status": "ok", "model_sha256": st.classifier.model_sha256,
            "stream": st.feed.state() if st.feed else "none"}
    failed = st.feed is not None and body["stream"] == "failed"
    if failed:
        body["status"] = "degraded"
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get("/metrics")
def metrics(request: Request):
    st = state_of(request)
    if not st.authorised(request):
        return st.unauthorised()
    return Response(st.metrics.render(), media_type=METRICS_CONTENT_TYPE)
