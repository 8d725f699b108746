"""model.onnx -> model.int8.onnx: onnxruntime static quantisation (QDQ) for CPU edge boxes.

Recipe (measured on AVX2 without VNNI, see docs/export.md): `quant_pre_process` (shape inference +
graph optimisation) first, then QDQ with per-channel signed weights in the REDUCED 7-bit range
[-64, 64] and UNSIGNED 8-bit activations [0, 255]. Signed activations are selectable
(`activations="int8"`) for the benchmark; on CPUs without VNNI they are not faster than FP32.
Calibration: images preprocessed like the runtime's, fed one at a time; method minmax | entropy |
percentile (onnxruntime's calibrators).

Why 7-bit weights (saturation-free by construction): on x86-64 CPUs with AVX2 but without VNNI,
onnxruntime's u8 x s8 kernels use VPMADDUBSW, which adds two adjacent u8 x s8 products into a
SATURATING int16 before widening (signed activations are shifted to u8 first, so they take the same
path). With 8-bit weights a pair reaches 2 x 255 x 127 = 64,770 > 32,767 and saturates, silently
changing results on exactly the CPUs users have (AVX-512 VNNI and AVX-VNNI machines use VPDPBUSD,
which widens to int32 first, so they never show it). With |w| <= 64 a pair is at most
2 x 255 x 64 = 32,640 <= 32,767: no saturation on any x86-64 CPU. `weights_saturation_free` checks
this bound on a written file; `reduce_range=False` (the old recipe) exists only so the benchmark can
measure what the reduced range costs.
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

from usedge.errors import ConfigError
from usedge.export.onnx_export import check_model, read_model_info, set_metadata
from usedge.fileio import write_bytes_atomic
from usedge.export.wrapper import INPUT_NAME

CALIB_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
INT16_MAX = 32767
U8_MAX = 255
#: the largest |quantised weight| for which a VPMADDUBSW pair (2 x 255 x |w|) fits in int16
SATURATION_FREE_WEIGHT = INT16_MAX // (2 * U8_MAX)   # 64
# Left in float: the output softmax (8-bit probabilities would step by 1/255 and not sum to 1) and the
# attention gates' softmax/sigmoid (values ~1/784 at 224 px); they cost little time.
FLOAT_OPS = ("Softmax", "Sigmoid")


def check_options(method: str, activations: str) -> None:
    """ConfigError unless `method` and `activations` are known (checked before any slow work)."""
    if method not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method '{method}'", hint=f"use one of {', '.join(CALIB_METHODS)}")
    if activations not in ACTIVATION_TYPES:
        raise ConfigError(f"unknown INT8 activation type '{activations}'",
                          hint=f"use one of {', '.join(ACTIVATION_TYPES)}")


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    calibration: np.ndarray,
    *,
    method: str = "minmax",
    activations: str = "uint8",
    per_channel: bool = True,
    reduce_range: bool = True,
    percentile: float = 99.999,
    float_ops: tuple[str, ...] = FLOAT_OPS,
) -> Path:
    """Quantise the FP32 ONNX `src` into `dst` (atomic) using `calibration` (N x 1 x H x W float32)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_options(method, activations)
    if calibration.ndim != 4 or calibration.shape[0] == 0:
        raise ConfigError("INT8 calibration needs at least one image", hint="pass --data and --calib-count >= 1")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{INPUT_NAME: calibration[i:i + 1]} for i in range(calibration.shape[0])])

        def get_next(self):
            return next(self._items, None)

    info = read_model_info(src)
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
                    reduce_range=reduce_range,
                    calibrate_method=calib_method, extra_options=extra,
                    calibration_providers=["CPUExecutionProvider"])
            finally:
                root.setLevel(level)
        model = onnx.load(str(out))
    info.precision = "int8"
    info.export = {**info.export, "int8": {"format": "QDQ", "activations": activations, "weights": "int8, 7-bit range [-64, 64]" if reduce_range else "int8",
                                           "per_channel": per_channel, "calibration_method": method,
                                           "calibration_images": int(calibration.shape[0]),
                                           "float_ops": sorted(float_ops)}}
    set_metadata(model, info)
    check_model(model, dst)
    return write_bytes_atomic(dst, model.SerializeToString())



def max_abs_weight(model: onnx.ModelProto) -> int:
    """The largest |value| among the INT8 weight tensors (initializers with >= 2 dims) of a QDQ model."""
    from onnx import numpy_helper

    values = [np.abs(numpy_helper.to_array(t).astype(np.int32)).max() for t in model.graph.initializer
              if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    return int(max(values, default=0))


def weights_saturation_free(model: onnx.ModelProto) -> bool:
    """True when every INT8 weight satisfies the VPMADDUBSW bound |w| <= 64 (see the module docstring)."""
    return max_abs_weight(model) <= SATURATION_FREE_WEIGHT
