"""model.onnx -> model.fp16.onnx: FP16 weights and compute, FP32 input/output.

Converter: onnxconverter-common's float16.convert_float_to_float16 with keep_io_types=True, then two
repairs: (1) when a graph output is produced by an op kept in FP32 (the final Softmax) the converter
still casts it to FP16 and types the output FP16; the Cast is removed so `probs` stays FP32 without
a lossy round trip; (2) model-level metadata is rewritten with precision="fp16".

Kept in FP32 (inserted Casts around them): Softmax (the attention gate's spatial softmax over H*W,
whose values are ~1/784 at 224 px, and the output softmax), Resize (the converter's default), and
ReduceMean (global average pooling of up to 512 x 28 x 28 activations). This is the input of a
strongly typed TensorRT build, which honours exactly these types.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnx import TensorProto

from usedge.errors import MissingDependency
from usedge.export.onnx_export import check_model, read_model_info, set_metadata
from usedge.fileio import write_bytes_atomic

FP32_OPS = ("Softmax", "Resize", "ReduceMean")


def _keep_outputs_fp32(model: onnx.ModelProto) -> None:
    """Graph outputs typed FP16 by the converter -> FP32 again, dropping the Cast that made them FP16."""
    producers = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        ttype = output.type.tensor_type
        if ttype.elem_type != TensorProto.FLOAT16:
            continue
        node = producers.get(output.name)
        to = next((a.i for a in node.attribute if a.name == "to"), None) if node is not None else None
        if node is not None and node.op_type == "Cast" and to == TensorProto.FLOAT16:
            for a in node.attribute:        # Cast(fp32 -> fp16) at the end: make it a no-op FP32 cast
                if a.name == "to":
                    a.i = TensorProto.FLOAT
        else:                               # FP16 compute up to here: add a Cast to FP32
            inner = output.name + "_fp16"
            for n in model.graph.node:
                n.output[:] = [inner if o == output.name else o for o in n.output]
                n.input[:] = [inner if i == output.name else i for i in n.input]
            model.graph.node.append(onnx.helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT,
                                                          name=f"{output.name}_to_fp32"))
        ttype.elem_type = TensorProto.FLOAT


def convert_fp16(src: str | Path, dst: str | Path, *, fp32_ops: tuple[str, ...] = FP32_OPS) -> Path:
    """Write an FP16 copy of the FP32 ONNX `src` to `dst` atomically; returns dst."""
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise MissingDependency("onnxconverter-common", "FP16 export", extra="export") from exc
    model = onnx.load(str(src))
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "number truncated to 1e-07": tiny weights, expected
        half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    _keep_outputs_fp32(half)
    info = read_model_info(model, src)
    info.precision = "fp16"
    info.export = {**info.export, "fp16": {"io": "fp32", "fp32_ops": sorted(fp32_ops),
                                           "converter": "onnxconverter-common float16"}}
    set_metadata(half, info)
    check_model(half, dst)
    return write_bytes_atomic(dst, half.SerializeToString())
