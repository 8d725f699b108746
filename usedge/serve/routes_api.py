"""/v1/info and /v1/predict: one uploaded image or DICOM through the upload pipeline -> JSON (or PNG)."""

from __future__ import annotations

import base64
import logging
import re
import time

import cv2
from fastapi import APIRouter, Query, Request
from starlette.requests import ClientDisconnect
from fastapi.responses import Response

from usedge.errors import InputError, ModelError, NoImage, UsedgeError
from usedge.runtime.overlay import draw_prediction
from usedge.serve.state import ServeState, state_of
from usedge.serve.uploads import UploadRejected, decode_upload

log = logging.getLogger("usedge.serve")
router = APIRouter()
MULTIPART_OVERHEAD = 64 * 1024        # form boundaries and part headers around the file, bytes
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_TOO_LARGE_HINT = "send a smaller file, or start the server with a larger --max-upload-mb"
_FORM_HINT = "send the file in form field 'file' (curl -F file=@frame.png)"


@router.get("/v1/info")   # model_card: the one-line provenance (runtime.model_info.model_card_line)
def info(request: Request):
    st = state_of(request)
    if not st.authorised(request):
        return st.unauthorised()
    clf = st.classifier
    return {"class_names": clf.class_names, "model_sha256": clf.model_sha256, "backend": clf.describe(),
            "precision": clf.info.precision, "input_size": int(clf.spec.size), "has_cam": clf.has_cam,
            "stream": st.feed is not None, "max_upload_bytes": st.max_upload_bytes, "max_pixels": st.max_pixels,
            "model_card": st.card(),
            "view": {"max_width": st.view.max_width, "quality": st.view.quality, "fps": st.view.fps,
                     "mbps": st.view.mbps}}


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The uploaded file's bytes (multipart field 'file' or the raw body), never past the limit."""
    limit = max_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadRejected(f"upload is {int(declared):,} bytes, over the limit of {max_bytes:,}", status=413,
                             hint=_TOO_LARGE_HINT)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadRejected(f"upload is over the limit of {max_bytes:,} bytes", status=413, hint=_TOO_LARGE_HINT)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return body
    request._body = body  # starlette parses the form from the body we already read and bounded
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=64 * 1024)
    except Exception as exc:
        words, inner, depth = str(exc), exc.__cause__ or exc.__context__, 0
        while inner is not None and depth < 4:                   # starlette's "Invalid multipart data" wraps the parser's
            if str(inner) and str(inner).rstrip(".") not in words:
                words += f": {inner}"
            inner, depth = inner.__cause__ or inner.__context__, depth + 1
        reason = " ".join(words.split()).rstrip(".")[:200]       # the form parser's own words
        hint = ("send one file per upload" if "Too many files" in reason else
                "the file came as a text field: send it as a file part (curl -F file=@frame.png, not file=<frame.png)"
                if "exceeded maximum size" in reason else
                "a part's header is over the parser's limit: send the file under a shorter file name"
                if "header size" in reason.lower() else _FORM_HINT)
        raise UploadRejected(f"malformed multipart form ({reason})" if reason else "malformed multipart form",
                             status=400, hint=hint) from exc
    try:
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise UploadRejected("no file in form field 'file'", status=400, hint=_FORM_HINT)
        return await part.read()
    finally:
        await form.close()


def classify(st: ServeState, data: bytes, frame_index: int | None, overlay: bool,
             cam: bool = True) -> tuple[dict, bytes | None]:
    """Worker thread: decode, run the upload pipeline (one at a time), optionally draw the overlay PNG."""
    decoded = decode_upload(data, max_bytes=st.max_upload_bytes, max_pixels=st.max_pixels, frame_index=frame_index)
    st.metrics.inflight.inc()
    try:
        with st.predict_lock:
            pred = st.uploads.process(decoded.frame, index=decoded.frame_index, source="upload",
                                      regions=decoded.regions)
    finally:
        st.metrics.inflight.dec()
    if pred.state == "no_image":   # the quality gate: no usable image, so no label and no probabilities
        raise NoImage(pred.reason, hint="the upload shows no ultrasound image (blank, uniform or probe in air)")
    if not pred.has_label:     # the model's output is not a probability distribution (NaN, Inf)
        raise ModelError(pred.reason)
    st.metrics.observe_stages("upload", pred.latency_ms)
    out = pred.to_record(source=False)
    out.update(st.verdict(pred))
    h, w = decoded.frame.shape[:2]
    out["input"] = {"kind": decoded.kind, "width": int(w), "height": int(h),
                    "frames_in_file": decoded.frames_in_file, "frame_index": decoded.frame_index}
    png = None
    if overlay:
        ok, buf = cv2.imencode(".png", draw_prediction(decoded.frame, pred, cam=cam))
        png = buf.tobytes() if ok else None
    return out, png


@router.post("/v1/predict")
async def predict(request: Request, overlay: bool = False, cam: bool = True, frame: int | None = Query(None, ge=0),
                  fmt: str = Query("json", alias="format", pattern="^(json|png)$")):
    st = state_of(request)
    if not st.authorised(request):
        return st.unauthorised()
    t0 = time.perf_counter()
    rid = request.headers.get("x-request-id", "")
    rid = rid if _REQUEST_ID.match(rid) else ""
    # Admitted = being read, waiting for a classifier slot, or being classified: bounded.
    if (busy := st.admit()) is not None:
        return busy
    try:
        data = await read_upload(request, st.max_upload_bytes)
        result, png = await st.in_worker(classify, st, data, frame, overlay or fmt == "png", cam)
    except UploadRejected as exc:
        kind = {408: "body_timeout", 413: "too_large", 415: "unsupported_type"}.get(exc.status, "bad_upload")
        return st.error(exc.status, exc.one_line(), kind)
    except ClientDisconnect:   # the client went away mid-upload (a cancelled browser upload): no one to answer
        return st.error(499, "the client closed the connection during the upload", "client_closed")
    except NoImage as exc:     # decoded, but no usable image: state no_image, no label, no probabilities
        return st.error(422, f"upload: {exc.message} — {exc.hint}", "no_image",
                        extra={"state": "no_image", "reason": exc.message, "label": None, "probs": None,
                               "model_sha256": st.classifier.model_sha256, "engine": st.classifier.backend.name})
    except InputError as exc:  # the frame decoded but cannot be classified (e.g. no image region)
        return st.error(422, f"upload: {exc.message}" + (f" — {exc.hint}" if exc.hint else ""), "bad_upload")
    except ModelError as exc:  # the model ran but gave no valid answer (NaN output), or failed to run
        log.error("predict failed: %s", exc.message)
        return st.error(500, f"upload: {exc.message}", "model_output")
    except UsedgeError as exc:
        log.error("predict failed: %s", exc.message)
        return st.error(500, "the model failed on this upload — see the server log", "internal")
    except Exception:
        log.exception("predict failed")  # code paths only: no frame data or header values in the text
        return st.error(500, "internal error — see the server log", "internal")
    finally:
        st.release()
    elapsed = time.perf_counter() - t0
    st.metrics.predict_latency.observe(elapsed)
    result["latency_ms"]["request"] = round(elapsed * 1e3, 3)
    if rid:
        result["request_id"] = rid
    if fmt == "png":
        if png is None:
            return st.error(500, "cannot encode the overlay PNG", "internal")
        return Response(png, media_type="image/png",
                        headers={"X-Usedge-Label": result["label"], "X-Usedge-Model-Sha256": st.classifier.model_sha256,
                                 "X-Usedge-Margin": "" if result["margin"] is None else f"{result['margin']:.6f}",
                                 "X-Usedge-Uncertain": {True: "true", False: "false"}.get(result["uncertain"], "")})
    if overlay and png is not None:
        result["overlay_png"] = base64.b64encode(png).decode("ascii")
    return result
