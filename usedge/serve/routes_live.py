"""The live stream: /v1/latest (newest prediction as JSON) and /v1/live (MJPEG of the overlay frames)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from usedge.serve.state import ServeState, state_of

router = APIRouter()
BOUNDARY = "usedgeframe"


def _no_stream(st: ServeState):
    return st.error(404, "no live stream — start the server with `usedge serve MODEL --stream SOURCE`", "no_stream")


@router.get("/v1/latest")
def latest(request: Request):
    st = state_of(request)
    if not st.authorised(request):
        return st.unauthorised()
    if st.feed is None:
        return _no_stream(st)
    return st.feed.latest_json()


@router.get("/v1/live")
async def live(request: Request):
    st = state_of(request)
    if not st.authorised(request):
        return st.unauthorised()
    if st.feed is None:
        return _no_stream(st)
    feed = st.feed

    async def parts():
        st.metrics.live_clients.inc()
        seq, min_gap = -1, 1.0 / max(st.live_max_fps, 0.1)
        try:
            while not feed.closed:
                got = await feed.next_jpeg(seq, timeout=1.0)
                if got is None:
                    if await request.is_disconnected():
                        break
                    continue
                seq, jpeg = got
                yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                       f"X-Frame-Seq: {seq}\r\n\r\n").encode() + jpeg + b"\r\n"
                await asyncio.sleep(min_gap)
        finally:
            st.metrics.live_clients.dec()

    return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")
