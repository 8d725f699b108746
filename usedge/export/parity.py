"""Numerical checks of an exported model: torch vs onnxruntime, onnxruntime vs onnx's reference
evaluator (an independent implementation), and a lower precision file vs its FP32 source.

Figures per comparison: max |probability difference| over all images and classes, top-1
agreement (fraction of images with the same arg-max), and accuracy of each side where labels are
known. Probabilities are the `probs` output (softmax, in [0, 1]).

A near tie is an image whose reference top-2 margin is at most `tie_margin`: when every probability
moves by at most t, the arg-max can change only on images with a margin of at most 2t, so a
top-1 check with a max |dp| tolerance t counts its agreement on the other images (`decisive`):
one near-tied image of 64 would otherwise fail a 99.5 % aim on rounding noise alone, and which
one flips depends on the CPU's kernels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from usedge.export.wrapper import INPUT_NAME


@dataclass
class Agreement:
    n: int                        # images compared
    max_abs_diff: float           # max |p_a - p_b| over images and classes
    top1_agreement: float         # fraction in [0, 1]
    accuracy_a: float | None = None
    accuracy_b: float | None = None
    near_ties: int = 0            # images whose reference top-2 margin <= tie_margin
    decisive_top1_agreement: float = 1.0   # top-1 agreement on the other images

    def to_dict(self) -> dict:
        return asdict(self)


def compare(a: np.ndarray, b: np.ndarray, labels: np.ndarray | None = None, tie_margin: float = 0.0) -> Agreement:
    """Compare two N x C probability arrays, `a` the reference."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    acc = (lambda p: float((p.argmax(1) == labels).mean())) if labels is not None and len(labels) else None
    same = a.argmax(1) == b.argmax(1) if a.size else np.ones(0, bool)
    if a.ndim == 2 and a.shape[1] > 1:
        top2 = np.sort(a, axis=1)[:, -2:]
        decisive = top2[:, 1] - top2[:, 0] > tie_margin
    else:
        decisive = np.ones(len(a), bool)         # one class: nothing to tie with
    return Agreement(
        n=int(a.shape[0]),
        max_abs_diff=float(np.abs(a - b).max()) if a.size else 0.0,
        top1_agreement=float(same.mean()) if same.size else 1.0,
        accuracy_a=acc(a) if acc else None,
        accuracy_b=acc(b) if acc else None,
        near_ties=int((~decisive).sum()),
        decisive_top1_agreement=float(same[decisive].mean()) if decisive.any() else 1.0,
    )


def torch_outputs(model, x: np.ndarray, with_cam: bool = False, batch: int = 16,
                  cam_weighting: str = "exact") -> dict[str, np.ndarray]:
    """The PyTorch reference: ExportModel(model) on x (N x 1 x H x W float32) in eval mode."""
    import torch

    from usedge.export.wrapper import ExportModel

    wrapped = ExportModel(model, with_cam=with_cam, cam_weighting=cam_weighting).eval()
    outs: dict[str, list] = {name: [] for name in wrapped.output_names}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            y = wrapped(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
            y = y if isinstance(y, tuple) else (y,)
            for name, t in zip(wrapped.output_names, y):
                outs[name].append(t.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def ort_session(path: str | Path, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_outputs(path_or_session, x: np.ndarray, batch: int = 16, threads: int = 2) -> dict[str, np.ndarray]:
    """onnxruntime (CPU) outputs of an ONNX file for x, by name."""
    session = ort_session(path_or_session, threads) if isinstance(path_or_session, (str, Path)) else path_or_session
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(names, {INPUT_NAME: np.ascontiguousarray(x[i:i + batch])}) for i in range(0, len(x), batch)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}


def openvino_outputs(path: str | Path, x: np.ndarray, batch: int = 16, threads: int = 2) -> dict[str, np.ndarray]:
    """OpenVINO (CPU plugin, as `--backend openvino` runs it) outputs of an ONNX file for x, by name."""
    from usedge.runtime.backends.openvino import OpenVINOBackend

    with OpenVINOBackend(threads=threads).load(path) as backend:
        parts = [backend.infer(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def reference_outputs(path: str | Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnx.reference.ReferenceEvaluator outputs (pure numpy; slow: pass a few images)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    evaluator = ReferenceEvaluator(model)
    names = [o.name for o in model.graph.output]
    outs = [evaluator.run(None, {INPUT_NAME: x[i:i + 1]}) for i in range(len(x))]
    return {name: np.concatenate([np.asarray(o[k], dtype=np.float32) for o in outs]) for k, name in enumerate(names)}
