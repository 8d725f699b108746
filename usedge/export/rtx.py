"""EP-context model for TensorRT for RTX: the compiled engine stored inside an ONNX file.

    write_ep_context(Path("models/x/model.fp16.onnx"))   # -> models/x/model.fp16_ctx.onnx

Creating a session with ONNX Runtime's EP-context options (`ep.context_enable`, `ep.context_file_path`,
`ep.context_embed_mode`) makes the TensorRT for RTX plugin compile the model and write an ONNX whose
nodes are EPContext nodes holding the engine; loading that file with `--backend ort-trt-rtx` skips the
build. The engine is tied to the GPU class it was compiled for, so this runs on the target machine and
needs a supported GPU (usedge.runtime.backends.rtx says why not otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path

from usedge.errors import BackendUnavailable, ModelError
from usedge.runtime.backends.rtx import availability, session_options_for


def ep_context_path(model: Path) -> Path:
    """model.fp16.onnx -> model.fp16_ctx.onnx (ONNX Runtime's own naming)."""
    return model.with_name(f"{model.stem}_ctx.onnx")


def write_ep_context(model: str | Path, out: str | Path | None = None, *, device_id: int = 0) -> Path:
    """Compile `model` with TensorRT for RTX and write its EP-context model (engine embedded), atomically."""
    model = Path(model)
    if not model.is_file():
        raise ModelError("ONNX model not found", path=model, hint="export it first with `usedge export`")
    ok, why = availability()
    if not ok:
        raise BackendUnavailable(f"cannot write a TensorRT for RTX EP-context model here: {why}", path=model)
    import onnxruntime as ort

    out = Path(out) if out is not None else ep_context_path(model)
    tmp = out.with_name(f".{out.stem}.partial.onnx")
    tmp.unlink(missing_ok=True)
    so = ort.SessionOptions()
    so.add_session_config_entry("ep.context_enable", "1")
    so.add_session_config_entry("ep.context_file_path", str(tmp))
    so.add_session_config_entry("ep.context_embed_mode", "1")
    session_options_for(model, device_id, base=so)
    try:
        ort.InferenceSession(str(model), sess_options=so)   # compiling writes the EP-context model
    except Exception as exc:  # onnxruntime's own error types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"TensorRT for RTX could not compile this model ({first})", path=model,
                         hint="check it runs with --backend ort-cpu; see `usedge doctor`") from exc
    if not tmp.is_file():
        raise ModelError("TensorRT for RTX wrote no EP-context model", path=out,
                         hint="update the plugin: pip install -U onnxruntime-ep-nv-tensorrt-rtx-cu13")
    os.replace(tmp, out)
    return out
