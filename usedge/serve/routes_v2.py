"""The Open Inference Protocol (KServe v2 / Triton HTTP) beside /v1, so Triton and KServe clients
(`tritonclient.http`, KServe's v2 clients) work against `usedge serve`.

    GET  /v2                              server metadata (name, version, extensions)
    GET  /v2/health/live, /v2/health/ready  200 (no token needed, like /healthz)
    GET  /v2/models/{name}                model metadata: input N x 1 x S x S FP32, output probs N x C FP32
    GET  /v2/models/{name}/ready          200 when {name} is this server's model
    POST /v2/models/{name}/infer          the model on an already-normalised input tensor

The model's name is `MODEL_NAME` ("usedge", as in the Triton repository `usedge export --triton`
writes); a `/versions/{v}` segment is accepted. Input: the model's input tensor (the output of
`usedge.runtime.preprocess.normalise`, i.e. crop and normalisation done by the client, as a Triton
server would expect) as JSON `data` or with the binary tensor extension (`binary_data_size`,
`Inference-Header-Content-Length`); output `probs` (N x classes, FP32, as the model gives them), as JSON or binary as requested. A row
that is not a probability distribution (NaN, Inf, logits) answers 500 with the reason, never numbers. Errors: `{"error": message}`.
"""

from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

import usedge
from usedge.errors import ModelError, UsedgeError
from usedge.runtime.classifier import output_problem
from usedge.serve.routes_api import read_upload
from usedge.serve.state import ServeState, state_of
from usedge.serve.uploads import UploadRejected

router = APIRouter()
MODEL_NAME = "usedge"
MAX_BATCH = 64
HEADER_LENGTH = "inference-header-content-length"


class BadInferRequest(ValueError):
    pass


def _model_error(st: ServeState, name: str):
    return st.error(404, f"unknown model '{name[:64]}': this server serves '{MODEL_NAME}'", "not_found")


def _metadata(st: ServeState) -> dict:
    clf, s = st.classifier, int(st.classifier.spec.size)
    return {"name": MODEL_NAME, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": clf.backend.input_name, "datatype": "FP32", "shape": [-1, 1, s, s]}],
            "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, len(clf.class_names)]}],
            "parameters": {"class_names": ",".join(clf.class_names), "model_sha256": clf.model_sha256,
                           "precision": clf.info.precision}}


@router.get("/v2")
def server_metadata(request: Request):
    st = state_of(request)
    if not st.authorised(request):
        return st.unauthorised()
    return {"name": "usedge", "version": usedge.__version__, "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live")
def live():
    return Response(status_code=200)


@router.get("/v2/health/ready")
def ready():
    return Response(status_code=200)   # the model is loaded before the server starts listening


def _refusal(request: Request, st: ServeState, name: str, version: str) -> Response | None:
    """The answer for an unauthorised client or a model/version this server does not have; None: go on."""
    if not st.authorised(request):
        return st.unauthorised()
    if name != MODEL_NAME or version != "1":
        return _model_error(st, name)
    return None


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
def model_metadata(request: Request, name: str, version: str = "1"):
    st = state_of(request)
    return _refusal(request, st, name, version) or _metadata(st)


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
def model_ready(request: Request, name: str, version: str = "1"):
    return _refusal(request, state_of(request), name, version) or Response(status_code=200)


def _parse(body: bytes, header_length: str | None, input_name: str, size: int) -> tuple[dict, np.ndarray]:
    """(request JSON, N x 1 x size x size float32 input) from a JSON or binary-extension request body."""
    n_json = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadInferRequest("Inference-Header-Content-Length is not a length within the body")
        n_json = int(header_length)
    try:
        req = json.loads(body[:n_json])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInferRequest(f"request is not JSON ({exc})") from exc
    inputs = req.get("inputs") if isinstance(req, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadInferRequest(f"expected exactly one input, '{input_name}'")
    inp = inputs[0]
    if inp.get("name") != input_name:
        raise BadInferRequest(f"unknown input '{str(inp.get('name'))[:64]}': the model's input is '{input_name}'")
    if inp.get("datatype") != "FP32":
        raise BadInferRequest(f"input datatype must be FP32, got {str(inp.get('datatype'))[:16]}")
    shape = inp.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) for d in shape)
            and 1 <= shape[0] <= MAX_BATCH and shape[1:] == [1, size, size]):
        raise BadInferRequest(f"input shape must be [N, 1, {size}, {size}] with 1 <= N <= {MAX_BATCH}, got {shape}")
    count = int(np.prod(shape))
    binary = (inp.get("parameters") or {}).get("binary_data_size")
    if binary is not None:
        raw = body[n_json:]
        if binary != count * 4 or len(raw) != binary:
            raise BadInferRequest(f"binary input is {len(raw)} bytes; shape {shape} FP32 needs {count * 4}")
        x = np.frombuffer(raw, dtype="<f4")
    else:
        try:
            data = np.asarray(inp.get("data"))
        except (TypeError, ValueError) as exc:
            raise BadInferRequest("input data must be numbers") from exc
        if data.dtype.kind not in "iuf":       # strings ("0") or booleans are not FP32 data, though numpy casts them
            raise BadInferRequest("input data must be numbers")
        x = data.astype(np.float32).reshape(-1)
        if x.size != count:
            raise BadInferRequest(f"input has {x.size} values; shape {shape} needs {count}")
    return req, np.ascontiguousarray(x.reshape(shape), dtype=np.float32)


def _check_values(x: np.ndarray, mean: float, std: float) -> None:
    """The input must be normalised pixels, (x/255 - mean)/std: NaN/Inf or values far outside that range
    (more than one unit beyond it) would get a confident-looking answer from an int8 model."""
    lo, hi = sorted(((0.0 - mean) / std, (1.0 - mean) / std))
    if not np.all(np.isfinite(x)):
        raise BadInferRequest("input contains NaN or Inf")
    if float(x.min()) < lo - 1.0 or float(x.max()) > hi + 1.0:
        raise BadInferRequest(f"input values span [{float(x.min()):.4g}, {float(x.max()):.4g}], outside the model's "
                              f"normalised pixel range [{lo:.3f}, {hi:.3f}] ((pixel/255 - {mean}) / {std})")


def _run(st: ServeState, x: np.ndarray) -> np.ndarray:
    """Worker thread: the model stage (one call at a time with uploads), then each row checked as probabilities."""
    with st.predict_lock:
        outputs = st.classifier.run_model(x)
    probs = np.asarray(outputs["probs"], dtype=np.float32).reshape(x.shape[0], -1)
    for i, row in enumerate(probs):
        if problem := output_problem(row):
            raise ModelError(f"row {i}: {problem}")
    return probs


def _wants_binary(req: dict) -> bool:
    outs = req.get("outputs")
    if isinstance(outs, list) and outs:
        return any(isinstance(o, dict) and o.get("name") == "probs" and (o.get("parameters") or {}).get("binary_data")
                   for o in outs)
    return bool((req.get("parameters") or {}).get("binary_data_output"))


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str = "1"):
    st = state_of(request)
    if (refused := _refusal(request, st, name, version)) is not None:
        return refused
    if (busy := st.admit()) is not None:
        return busy
    try:
        body = await read_upload(request, st.max_upload_bytes)
        req, x = _parse(body, request.headers.get(HEADER_LENGTH), st.classifier.backend.input_name,
                        int(st.classifier.spec.size))
        _check_values(x, float(st.classifier.spec.mean), float(st.classifier.spec.std))
        outs = req.get("outputs")
        if isinstance(outs, list) and any(not isinstance(o, dict) or o.get("name") != "probs" for o in outs):
            raise BadInferRequest("the only output is 'probs'")
        probs = await st.in_worker(_run, st, x)
    except BadInferRequest as exc:
        return st.error(400, str(exc), "bad_request")
    except UploadRejected as exc:
        return st.error(exc.status, exc.one_line(), "bad_upload" if exc.status != 408 else "body_timeout")
    except ModelError as exc:
        return st.error(500, f"model output is not a probability distribution: {exc.message}", "model_output")
    except UsedgeError:
        return st.error(500, "the model failed on this input — see the server log", "internal")
    finally:
        st.release()
    out = {"name": "probs", "datatype": "FP32", "shape": list(probs.shape)}
    head = {"model_name": MODEL_NAME, "model_version": "1", "outputs": [out]}
    if isinstance(req.get("id"), str):
        head["id"] = req["id"][:128]
    if not _wants_binary(req):
        out["data"] = [float(v) for v in probs.reshape(-1)]
        return JSONResponse(head)
    raw = probs.astype("<f4").tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    text = json.dumps(head).encode()
    return Response(text + raw, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text))})
