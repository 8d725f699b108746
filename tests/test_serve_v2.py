"""Issue 20 item 10: the Open Inference Protocol (KServe v2 / Triton HTTP) beside /v1, driven by
Triton's own client (`tritonclient.http`) against a real uvicorn server on 127.0.0.1 and a real model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="usedge serve needs the 'serve' extra (fastapi, uvicorn, ...)")
httpx = pytest.importorskip("httpx")
try:   # without its 'http' extra, tritonclient.http raises RuntimeError, not ImportError
    import tritonclient.http as tritonhttp
except (ImportError, RuntimeError):
    pytest.skip("tritonclient[http] is not installed (dev extra)", allow_module_level=True)

from tests.fixtures.serve import run_uvicorn  # noqa: E402

NAME = "usedge"
TOKEN = "v2-token"


@pytest.fixture(scope="module")
def v2_server(serve_classifier):
    from usedge.serve.app import create_app

    with run_uvicorn(create_app(serve_classifier)) as base:
        yield base


@pytest.fixture(scope="module")
def inputs(serve_classifier, serve_images):
    """The model inputs of three images (crop + normalise done here, as a Triton client does) and the
    runtime's own probabilities for each."""
    frames = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in serve_images[:3]]
    crops = [serve_classifier.prepare(f)[0] for f in frames]
    x = np.concatenate([serve_classifier.normalise(c).copy() for c in crops])
    want = np.array([[serve_classifier.predict(f).probs[n] for n in serve_classifier.class_names] for f in frames])
    return x, want


def _client(base: str):
    return tritonhttp.InferenceServerClient(url=base.removeprefix("http://"), connection_timeout=30,
                                            network_timeout=60)


def test_health_and_metadata_through_tritonclient(v2_server, serve_classifier):
    c = _client(v2_server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(NAME)
    assert not c.is_model_ready("other")
    server = c.get_server_metadata()
    assert server["name"] == "usedge" and "binary_tensor_data" in server["extensions"]
    meta = c.get_model_metadata(NAME)
    s = int(serve_classifier.spec.size)
    assert meta["inputs"] == [{"name": serve_classifier.backend.input_name, "datatype": "FP32",
                               "shape": [-1, 1, s, s]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, len(serve_classifier.class_names)]}]


@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_infer_through_tritonclient_matches_the_runtime(v2_server, serve_classifier, inputs, binary_in, binary_out):
    x, want = inputs
    c = _client(v2_server)
    for i in range(len(x)):   # one image per request: the same batch size as the runtime's predict
        inp = tritonhttp.InferInput(serve_classifier.backend.input_name, list(x[i:i + 1].shape), "FP32")
        inp.set_data_from_numpy(x[i:i + 1], binary_data=binary_in)
        out = tritonhttp.InferRequestedOutput("probs", binary_data=binary_out)
        result = c.infer(NAME, [inp], outputs=[out], request_id=f"r{i}")
        probs = result.as_numpy("probs")
        assert probs.shape == (1, len(serve_classifier.class_names)) and probs.dtype == np.float32
        # the same model on the same input tensor: equal up to float32 rounding of the probabilities
        np.testing.assert_allclose(probs[0], want[i], atol=1e-6)
        assert result.get_response()["id"] == f"r{i}"


def test_batched_infer_without_requested_outputs(v2_server, serve_classifier, inputs):
    x, want = inputs
    inp = tritonhttp.InferInput(serve_classifier.backend.input_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    probs = _client(v2_server).infer(NAME, [inp]).as_numpy("probs")
    assert probs.shape == (len(x), len(serve_classifier.class_names))
    assert np.array_equal(probs.argmax(1), want.argmax(1))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_bad_requests_are_one_line_errors(v2_server, serve_classifier):
    s = int(serve_classifier.spec.size)
    name = serve_classifier.backend.input_name
    c = _client(v2_server)
    bad = tritonhttp.InferInput(name, [1, 1, s, s + 1], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, s, s + 1), np.float32))
    with pytest.raises(Exception, match=r"input shape must be \[N, 1"):
        c.infer(NAME, [bad])
    with pytest.raises(Exception, match="unknown model"):
        ok = tritonhttp.InferInput(name, [1, 1, s, s], "FP32")
        ok.set_data_from_numpy(np.zeros((1, 1, s, s), np.float32))
        c.infer("resnet50", [ok])
    url = f"{v2_server}/v2/models/{NAME}/infer"
    assert httpx.post(url, content=b"not json").status_code == 400
    r = httpx.post(url, json={"inputs": [{"name": name, "datatype": "FP32", "shape": [1, 1, s, s], "data": [0.0]}]})
    assert r.status_code == 400 and "needs" in r.json()["error"]
    r = httpx.post(url, json={"inputs": [{"name": name, "datatype": "INT8", "shape": [1, 1, s, s], "data": []}]})
    assert r.status_code == 400
    for data in (["0"] * (s * s), [True] * (s * s)):         # numpy would cast these; they are not FP32 data
        r = httpx.post(url, json={"inputs": [{"name": name, "datatype": "FP32", "shape": [1, 1, s, s], "data": data}]})
        assert r.status_code == 400 and "must be numbers" in r.json()["error"]
    for value, why in ((float("nan"), "NaN or Inf"), (1e30, "outside the model's normalised pixel range")):
        x = np.full((1, 1, s, s), value, np.float32)      # binary: JSON has no NaN
        inp = tritonhttp.InferInput(name, [1, 1, s, s], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        with pytest.raises(Exception, match=why):
            c.infer(NAME, [inp])
    assert httpx.get(f"{v2_server}/healthz").status_code == 200   # the server keeps answering


def test_v2_needs_the_token_but_health_does_not(serve_classifier):
    from usedge.serve.app import create_app

    with run_uvicorn(create_app(serve_classifier, token=TOKEN)) as base:
        assert httpx.get(f"{base}/v2/health/live").status_code == 200
        assert httpx.get(f"{base}/v2/models/{NAME}").status_code == 401
        c = _client(base)
        assert c.is_server_live()
        meta = c.get_model_metadata(NAME, headers={"Authorization": f"Bearer {TOKEN}"})
        assert meta["name"] == NAME
