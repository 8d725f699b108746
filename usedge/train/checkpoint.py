"""usedge checkpoints: weights + everything needed to rebuild, export and trust the model.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, saved with torch.save
and loaded with `weights_only=True` (no pickled code runs). Written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

import usedge
from usedge.errors import ModelError
from usedge.fileio import sha256_file, write_bytes_atomic
from usedge.runtime.preprocess import RESIZE_METHODS, PreprocessSpec
from usedge.train.model import build_model

FORMAT = "usedge-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    class_names: list[str],
    preprocess: PreprocessSpec,
    config: dict | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write model weights (of the model without its DDP wrapper) and their description atomically."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "usedge_version": usedge.__version__,
        "arch": model.arch,
        "arch_kwargs": {"num_classes": model.num_classes, "gate_norm": getattr(model, "gate_norm", None)},
        "class_names": list(class_names),
        "preprocess": preprocess.to_dict(),
        "config": config or {},
        "metrics": metrics or {},
        "extra": extra or {},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(path, buf.getvalue())


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate a usedge checkpoint dict (weights_only: no code from the file runs)."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in ("model.pt", "fold0/best.pt") if (path / p).is_file()]
        raise ModelError("is a folder, not a checkpoint", path=path,
                         hint=f"pass {path / found[0]}" if found else "pass the .pt written by usedge train")
    if not path.is_file():
        raise ModelError("checkpoint not found", path=path, hint="pass the .pt written by usedge train")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"not a loadable checkpoint ({type(exc).__name__})", path=path,
                         hint="the file is truncated, corrupt, or not a usedge checkpoint; re-run usedge train") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError("not a usedge checkpoint", path=path,
                         hint="pass a checkpoint written by usedge train (best.pt / fold*/best.pt)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"checkpoint format {payload['format_version']} is newer than this usedge reads",
                         path=path, hint="upgrade usedge")
    resize = (payload.get("preprocess") or {}).get("resize", "area")    # no field: trained before it existed
    if resize not in RESIZE_METHODS:
        raise ModelError(f"checkpoint's preprocessing uses resize method {resize!r}, which this usedge does not know "
                         f"({', '.join(RESIZE_METHODS)})", path=path, hint="upgrade usedge")
    return payload


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint. Returns (model in eval mode, checkpoint dict without weights)."""
    payload = read_checkpoint(path)
    kwargs = payload.get("arch_kwargs", {})
    gate = {"gate_norm": kwargs["gate_norm"]} if kwargs.get("gate_norm") else {}
    model = build_model(payload["arch"], num_classes=kwargs.get("num_classes", 3), **gate)
    if kwargs.get("num_classes", 3) != len(payload["class_names"]):
        raise ModelError("checkpoint class count does not match its class names", path=path,
                         hint="re-run usedge train")
    try:
        model.load_state_dict(payload.pop("state_dict"))
    except RuntimeError as exc:
        raise ModelError(f"weights do not fit architecture {payload['arch']}", path=path,
                         hint="the checkpoint was edited or is from another usedge; re-run usedge train") from exc
    payload["sha256"] = sha256_file(path)
    payload["path"] = str(path)
    return model.to(device).eval(), payload
