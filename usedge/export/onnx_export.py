"""torch model -> model.onnx (FP32, dynamic batch, one file, self-describing metadata).

Exporter: torch.onnx.export(dynamo=True) at opset 18. Why 18: it is what the dynamo exporter emits
(asking it for 17 silently yields 18; the TorchScript exporter that could do 17 is deprecated), and
TensorRT 10/11's ONNX parser and onnxruntime >= 1.14 both run opset 18. Higher opsets are converted
by the exporter on request; lower ones are refused rather than silently ignored.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from usedge.errors import ConfigError, ModelError
from usedge.export.wrapper import INPUT_NAME, ExportModel
from usedge.fileio import write_bytes_atomic
from usedge.runtime.model_info import ModelInfo, model_info_from_metadata, weights_digest

DEFAULT_OPSET = 18
MAX_OPSET = 21


def set_metadata(model: onnx.ModelProto, info: ModelInfo) -> onnx.ModelProto:
    """Replace the model-level metadata_props with ModelInfo's keys, with `info.weights_sha256` set to
    this model's graph digest (in place; returns the model). Call it after the graph's last change."""
    del model.metadata_props[:]
    info.weights_sha256 = weights_digest(model.SerializeToString())
    for key, value in info.metadata_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def read_model_info(model: onnx.ModelProto | str | Path, path: str | Path | None = None) -> ModelInfo:
    """The ModelInfo of a usedge ONNX (a loaded proto or a file): the one metadata read of the export
    side, through the runtime's reader (model_info.model_info_from_metadata). ModelError when absent."""
    if not isinstance(model, onnx.ModelProto):
        path = path or model
        model = onnx.load(str(model), load_external_data=False)
    return model_info_from_metadata({p.key: p.value for p in model.metadata_props}, path)


def check_model(model: onnx.ModelProto, path: str | Path | None = None) -> None:
    """onnx.checker full check (graph, types, shape inference); ModelError on failure."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnx.checker rejected the model: {first}", path=path,
                         hint="rerun with --debug and report it; try another --opset") from exc


def export_onnx(
    model: nn.Module,
    path: str | Path,
    info: ModelInfo,
    *,
    with_cam: bool = False,
    opset: int = DEFAULT_OPSET,
    cam_weighting: str = "exact",
) -> Path:
    """Export `model` (eval mode, on CPU) to `path` atomically; returns the path.

    Input `image` N x 1 x S x S float32 (S = info.input_size, N dynamic); outputs `probs` N x C
    (softmax) and, with_cam, `cam` N x C x S/8 x S/8 (cam_weighting: exact | paper). Metadata from `info`;
    full onnx.checker check.
    """
    if not DEFAULT_OPSET <= opset <= MAX_OPSET:
        why = ("the dynamo exporter cannot go below 18" if opset < DEFAULT_OPSET
               else f"opsets above {MAX_OPSET} are not tested with this torch and onnxruntime")
        raise ConfigError(f"opset {opset} is not supported", hint=f"use {DEFAULT_OPSET}..{MAX_OPSET}: {why}")
    wrapped = ExportModel(model, with_cam=with_cam, cam_weighting=cam_weighting).eval().cpu()
    size = int(info.input_size)
    example = torch.zeros(2, 1, size, size)   # batch 2: a batch of 1 would be specialised away
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapped, (example,), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=wrapped.output_names,
                dynamic_shapes={"image": {0: batch}}, verbose=False, optimize=True,
            )
    except Exception as exc:
        raise ModelError(f"torch.onnx.export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                         hint="rerun with --debug; check the checkpoint's architecture") from exc
    proto = program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ModelError(f"the exporter produced opset {got}, not the requested {opset}",
                         hint=f"use --opset {got}")
    proto.producer_name = "usedge"
    proto.doc_string = f"usedge {info.arch} classifier: image N x 1 x {size} x {size} -> {', '.join(wrapped.output_names)}"
    set_metadata(proto, info)
    check_model(proto, path)
    return write_bytes_atomic(path, proto.SerializeToString())
