"""Count a model's floating-point operations from its ONNX graph (onnx shape inference, batch fixed).

Convention: one multiply-add is 2 FLOPs. `gemm` is what a GEMM-bound engine executes as matrix
products (Conv, ConvTranspose, Gemm, MatMul and their integer/QLinear forms) and is exact from the
shapes; `other` is a per-element estimate of the rest (bias, activations, pooling, softmax, resize),
kept apart so the hardware-limit comparison uses only the exact part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from usedge.errors import ModelError

GEMM_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger",
            "QLinearMatMul", "FusedConv", "FusedGemm", "FusedMatMul"}
# ops that are a handful of operations per output element (activations, arithmetic)
ELEMENTWISE = {"Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Relu": 1, "LeakyRelu": 2, "Sigmoid": 4, "Tanh": 4,
               "Clip": 1, "Exp": 1, "Sqrt": 1, "BatchNormalization": 2, "Softmax": 5, "LogSoftmax": 5,
               "Resize": 4, "Sum": 1, "Max": 1, "Min": 1, "Pow": 1, "Erf": 4, "Neg": 1, "Abs": 1}


@dataclass
class FlopCount:
    """FLOPs of one forward pass at `batch` (1 multiply-add = 2 FLOPs)."""

    batch: int
    gemm: int = 0                                        # exact: Conv/Gemm/MatMul multiply-adds x 2
    other: int = 0                                       # estimate: element-wise work
    by_op: dict[str, int] = field(default_factory=dict)  # op type -> FLOPs (gemm ops exact)
    unresolved: list[str] = field(default_factory=list)  # nodes whose shapes inference could not give
    by_node: dict[str, int] = field(default_factory=dict)  # node name -> gemm FLOPs (Conv/Gemm/MatMul nodes)
    conv_gemm: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # Conv node -> im2col GEMM (M, N, K)

    @property
    def total(self) -> int:
        return self.gemm + self.other

    def to_dict(self) -> dict:
        return {"batch": self.batch, "gemm_flops": self.gemm, "other_flops": self.other, "total_flops": self.total,
                "gemm_gflops": round(self.gemm / 1e9, 4), "by_op": dict(sorted(self.by_op.items())),
                "unresolved": self.unresolved}


def _dims(vi) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return dims


def _fix_batch(model, batch: int):
    for inp in model.graph.input:
        shape = inp.type.tensor_type.shape
        if len(shape.dim) and not shape.dim[0].HasField("dim_value"):
            shape.dim[0].dim_value = batch
    return model


def _attr(node, name, default=None):
    import onnx
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_flops(node, shape) -> tuple[int, int] | None:
    """(gemm FLOPs, other FLOPs) of one node, or None when a needed shape is unknown."""
    op = node.op_type
    ins = list(node.input)
    out = shape(node.output[0]) if node.output else None
    if op in ("Conv", "ConvInteger", "FusedConv", "QLinearConv", "ConvTranspose"):
        w_idx = 3 if op == "QLinearConv" else 1
        w, x = shape(ins[w_idx]), shape(ins[0])
        if w is None or out is None or x is None:
            return None
        if op == "ConvTranspose":   # every input pixel scatters a Cout/g x k kernel
            macs = prod(x) * (w[1]) * prod(w[2:])
        else:                       # every output pixel gathers Cin/g x k
            macs = prod(out) * w[1] * prod(w[2:])
        bias_idx = 8 if op == "QLinearConv" else 2
        bias = prod(out) if len(ins) > bias_idx and ins[bias_idx] else 0
        return 2 * macs, bias
    if op in ("Gemm", "FusedGemm"):
        a, b = shape(ins[0]), shape(ins[1])
        if a is None or b is None:
            return None
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return 2 * m * n * k, (m * n if len(ins) > 2 and ins[2] else 0)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
        a_idx, b_idx = (0, 3) if op == "QLinearMatMul" else (0, 1)
        a, b = shape(ins[a_idx]), shape(ins[b_idx])
        if a is None or b is None or out is None:
            return None
        k = a[-1]
        return 2 * prod(out) * k, 0
    if out is None:
        return (0, 0) if op not in ELEMENTWISE and op not in ("MaxPool", "AveragePool", "GlobalAveragePool",
                                                              "ReduceMean", "ReduceSum") else None
    if op in ELEMENTWISE:
        return 0, ELEMENTWISE[op] * prod(out)
    if op in ("MaxPool", "AveragePool"):
        return 0, prod(out) * prod(_attr(node, "kernel_shape", [1]))
    if op in ("GlobalAveragePool", "ReduceMean", "ReduceSum", "ReduceMax"):
        x = shape(ins[0])
        return (0, prod(x)) if x is not None else None
    return 0, 0   # data movement (Reshape, Concat, Transpose, Q/DQ, Cast, Shape, ...)


def count_flops(model, batch: int = 1) -> FlopCount:
    """FLOPs of `model` (path or onnx.ModelProto) for one forward pass at `batch`."""
    import onnx

    path = None
    if isinstance(model, (str, Path)):
        path = Path(model)
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise ModelError(f"cannot read ONNX ({exc})", path=path, hint="pass a model.onnx from `usedge export`") from exc
    model = onnx.ModelProto.FromString(model.SerializeToString())
    _fix_batch(model, batch)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelError(f"onnx shape inference failed ({str(exc).splitlines()[0][:160]})", path=path,
                         hint="re-export the model with `usedge export`") from exc
    shapes: dict[str, list[int] | None] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shapes[vi.name] = _dims(vi)
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    result = FlopCount(batch=batch)
    for node in inferred.graph.node:
        got = _node_flops(node, shapes.get)
        if got is None:
            result.unresolved.append(f"{node.op_type}:{node.name or node.output[0]}")
            continue
        g, o = got
        if g:
            result.by_node[node.name or node.output[0]] = g
            if node.op_type == "Conv" and shapes.get(node.output[0]) and shapes.get(node.input[1]):
                out, w = shapes[node.output[0]], shapes[node.input[1]]
                # the GEMM a Conv is equivalent to: (N*Ho*Wo) x (Cin/g*kh*kw) @ (Cin/g*kh*kw) x (Cout/g), per group
                group = int(_attr(node, "group", 1))
                result.conv_gemm[node.name or node.output[0]] = (prod(out[:1]) * prod(out[2:]), w[0] // group,
                                                                  w[1] * prod(w[2:]))
        result.gemm += g
        result.other += o
        if g or o:
            result.by_op[node.op_type] = result.by_op.get(node.op_type, 0) + g + o
    return result
