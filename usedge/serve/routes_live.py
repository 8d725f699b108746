"""The live stream: /v1/latest (newest prediction as JSON), /v1/live (MJPEG of the overlay frames) and
/v1/frame (the page's live view: ONE result's frame and that result, as one response)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

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
        seq, min_gap = -1, 1.0 / st.view.fps
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


@router.get("/v1/frame")
async def frame(request: Request, after: int = Query(-1, ge=-1), cam: bool = False):
    """The page's live view as one unit: the body is the JPEG of one result's own frame (no label drawn
    on it; the CAM blended in only with ?cam=true), and the header X-Usedge-Result (ASCII JSON) is that
    same result: seq, state, image, stats, prediction, margin, uncertain. The page shows both together
    or neither. Waits up to 1 s for a result newer than `after` (then 204 with the state and stats only);
    paced at the view's fps, each JPEG within its byte budget (`ViewSettings`)."""
    st = state_of(request)
    if not st.authorised(request):
        return st.unauthorised()
    if st.feed is None:
        return _no_stream(st)
    got = await st.feed.next_view(after, cam, timeout=1.0)
    head = {"state": st.feed.state(), "age_s": st.feed.age_s(), "stats": st.feed.stats_json()}
    if got is None:
        return Response(status_code=204, headers={"X-Usedge-Result": json.dumps(head)})
    seq, pred, jpeg = got
    record = pred.to_record(source=False)
    result = {**head, "seq": seq, "image": pred.state, "prediction": record, "cam": bool(cam),
              **st.verdict(pred)}
    return Response(jpeg, media_type="image/jpeg", headers={"X-Usedge-Result": json.dumps(result)})
