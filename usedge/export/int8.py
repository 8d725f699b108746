"""model.onnx -> model.int8.onnx: onnxruntime static quantisation (QDQ) for CPU edge boxes.

Recipe (measured on AVX2 without VNNI, see docs/export.md): `quant_pre_process` (shape inference +
graph optimisation) first, then QDQ with per-channel signed INT8 weights and UNSIGNED INT8
activations. Signed activations are selectable (`activations="int8"`) for the benchmark; on CPUs
without VNNI they are not faster than FP32. Calibration: images preprocessed like the runtime's,
fed one at a time; method minmax | entropy | percentile (onnxruntime's calibrators).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from usedge.errors import ConfigError, ModelError
from usedge.export.onnx_export import check_model, set_metadata
from usedge.fileio import write_bytes_atomic
from usedge.runtime.model_info import METADATA_KEY, ModelInfo
from usedge.export.wrapper import INPUT_NAME

CALIB_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
# Left in float: the output softmax (8-bit probabilities would step by 1/255 and not sum to 1) and the
# attention gates' softmax/sigmoid (values ~1/784 at 224 px); they cost little time.
FLOAT_OPS = ("Softmax", "Sigmoid")


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    calibration: np.ndarray,
    *,
    method: str = "minmax",
    activations: str = "uint8",
    per_channel: bool = True,
    percentile: float = 99.999,
    float_ops: tuple[str, ...] = FLOAT_OPS,
) -> Path:
    """Quantise the FP32 ONNX `src` into `dst` (atomic) using `calibration` (N x 1 x H x W float32)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method '{method}'", hint=f"use one of {', '.join(CALIB_METHODS)}")
    if activations not in ACTIVATION_TYPES:
        raise ConfigError(f"unknown activation type '{activations}'", hint=f"use one of {', '.join(ACTIVATION_TYPES)}")
    if calibration.ndim != 4 or calibration.shape[0] == 0:
        raise ConfigError("INT8 calibration needs at least one image", hint="pass --data and --calib-count >= 1")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{INPUT_NAME: calibration[i:i + 1]} for i in range(calibration.shape[0])])

        def get_next(self):
            return next(self._items, None)

    source = onnx.load(str(src))
    meta = {p.key: p.value for p in source.metadata_props}
    if METADATA_KEY not in meta:
        raise ModelError("source ONNX has no usedge metadata", path=src, hint="export it with usedge export")
    calib_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}[method]
    extra = {"CalibPercentile": percentile} if method == "percentile" else {}
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="usedge-int8-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            root.setLevel(max(level, logging.ERROR))   # the quantiser logs per-tensor chatter
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
                op_types = sorted({n.op_type for n in onnx.load(str(pre)).graph.node} - set(float_ops))
                quantize_static(
                    str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                    activation_type=qtype[activations], weight_type=QuantType.QInt8, per_channel=per_channel,
                    calibrate_method=calib_method, extra_options=extra,
                    calibration_providers=["CPUExecutionProvider"])
            finally:
                root.setLevel(level)
        model = onnx.load(str(out))
    info = ModelInfo.from_json(meta[METADATA_KEY])
    info.precision = "int8"
    info.export = {**info.export, "int8": {"format": "QDQ", "activations": activations, "weights": "int8",
                                           "per_channel": per_channel, "calibration_method": method,
                                           "calibration_images": int(calibration.shape[0]),
                                           "float_ops": sorted(float_ops)}}
    set_metadata(model, info)
    check_model(model, dst)
    return write_bytes_atomic(dst, model.SerializeToString())

