"""The JSON sidecar beside a TensorRT engine, and the check that refuses an engine built elsewhere.

A serialized TensorRT plan only runs on the GPU architecture (compute capability) and the TensorRT
version it was built with. `usedge export --engine` writes

    model.<gpu-slug>.sm<cc>.trt<version>.engine         the plan
    model.<gpu-slug>.sm<cc>.trt<version>.engine.json    this sidecar

and the runtime calls `check_engine_compatible` before deserialising, so a mismatch is one clear
line naming both sides and the rebuild command instead of a TensorRT stack trace.

No torch, no TensorRT needed here (TensorRT and cuda-python are imported lazily, only to ask the
local machine what it is).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from usedge.errors import EngineMismatch, ModelError

SIDECAR_FORMAT = "usedge-trt-engine"
SIDECAR_VERSION = 1
REBUILD_HINT = "rebuild it on this machine: usedge export CHECKPOINT --out DIR --engine"


@dataclass
class EngineSidecar:
    """What a TensorRT engine was built for and from. Shapes are N x C x H x W lists, batch first."""

    gpu_name: str                      # e.g. "NVIDIA GeForce RTX 2080 Ti"
    compute_capability: str            # "7.5"
    trt_version: str                   # "10.13.3"
    precision: str = "fp16"            # what the strongly typed network computes in
    input_name: str = "image"
    input_shapes: dict = field(default_factory=dict)   # {"min": [1,1,224,224], "opt": [...], "max": [...]}
    outputs: list[str] = field(default_factory=lambda: ["probs"])
    source_onnx: str = ""              # file name of the ONNX it was built from
    source_onnx_sha256: str = ""
    engine_sha256: str = ""
    builder: dict = field(default_factory=dict)        # optimisation level, workspace MiB, timing cache
    model_info: str = ""               # the ONNX's usedge.model_info JSON (class names, preprocessing)
    created_utc: str = ""
    format: str = SIDECAR_FORMAT
    format_version: int = SIDECAR_VERSION

    @property
    def max_batch(self) -> int:
        return int(self.input_shapes.get("max", [1])[0])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, path: str | Path | None = None) -> "EngineSidecar":
        missing = [k for k in ("gpu_name", "compute_capability", "trt_version") if not d.get(k)]
        if d.get("format", SIDECAR_FORMAT) != SIDECAR_FORMAT or missing:
            raise ModelError(f"not a usedge engine sidecar (missing {', '.join(missing) or 'format'})", path=path,
                             hint=REBUILD_HINT)
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["compute_capability"] = normalise_compute_capability(known["compute_capability"])
        return cls(**known)


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA GeForce RTX 2080 Ti' -> 'rtx-2080-ti'; 'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'."""
    name = re.sub(r"\b(nvidia|geforce|tesla|quadro)\b", " ", gpu_name.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return slug or "gpu"


def normalise_compute_capability(cc) -> str:
    """(8, 6) / '86' / 'sm_86' / '8.6' / 8.6 -> '8.6'."""
    if isinstance(cc, (tuple, list)):
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).lower().replace("sm_", "").replace("sm", "").strip()
    if "." in text:
        major, minor = text.split(".", 1)
        return f"{int(major)}.{int(minor)}"
    if text.isdigit() and len(text) >= 2:
        return f"{int(text[:-1])}.{int(text[-1])}"
    raise ModelError(f"cannot read compute capability {cc!r}", hint="write it as major.minor, e.g. 8.6")


def sm_tag(compute_capability) -> str:
    """'8.6' -> 'sm86'."""
    return "sm" + normalise_compute_capability(compute_capability).replace(".", "")


def trt_major_minor(version: str) -> str:
    """'10.13.3.9' -> '10.13' (plans are compatible within a TensorRT major.minor at most)."""
    parts = str(version).split(".")
    return ".".join(parts[:2])


def engine_filename(gpu_name: str, compute_capability, trt_version: str, stem: str = "model") -> str:
    """model.<gpu-slug>.sm<cc>.trt<major.minor>.engine, as HoloInfer names its engines."""
    return f"{stem}.{gpu_slug(gpu_name)}.{sm_tag(compute_capability)}.trt{trt_major_minor(trt_version)}.engine"


def sidecar_path(engine_path: str | Path) -> Path:
    """`X.engine` -> `X.engine.json`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path: str | Path, sidecar: EngineSidecar) -> Path:
    """Write the sidecar atomically beside the engine; returns its path."""
    from usedge.fileio import write_json_atomic

    return write_json_atomic(sidecar_path(engine_path), sidecar.to_dict())


def read_sidecar(engine_path: str | Path) -> EngineSidecar:
    """Read `<engine>.json` (or `<engine stem>.json`) beside an engine."""
    engine_path = Path(engine_path)
    candidates = [sidecar_path(engine_path), engine_path.with_suffix(".json")]
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ModelError("engine sidecar is not valid JSON", path=candidate, hint=REBUILD_HINT) from exc
            if not isinstance(data, dict):
                raise ModelError("engine sidecar is not a JSON object", path=candidate, hint=REBUILD_HINT)
            return EngineSidecar.from_dict(data, path=candidate)
    raise ModelError("TensorRT engine has no sidecar JSON beside it", path=engine_path,
                     hint=f"keep {candidates[0].name} next to the engine, or {REBUILD_HINT}")


def local_target(device_id: int = 0) -> tuple[str, str, str]:
    """(gpu name, compute capability 'M.m', TensorRT version) of this machine.

    Raises BackendUnavailable when TensorRT or cuda-python / a CUDA device is missing.
    """
    from usedge.errors import BackendUnavailable

    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed",
                                 hint="pip install tensorrt, or use NVIDIA's container/JetPack build") from exc
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendUnavailable("cuda-python is not installed", hint="pip install 'usedge[gpu]'") from exc
    err, prop = cudart.cudaGetDeviceProperties(device_id)
    if getattr(err, "value", err) != 0:
        raise BackendUnavailable(f"no CUDA device {device_id} visible", hint="check nvidia-smi")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}", str(trt.__version__)


def check_engine_compatible(
    sidecar,
    gpu_name: str | None = None,
    compute_capability=None,
    trt_version: str | None = None,
    *,
    engine_path: str | Path | None = None,
) -> EngineSidecar:
    """Raise EngineMismatch unless the engine's sidecar matches this GPU and TensorRT.

    sidecar: an EngineSidecar, its dict, or the engine path (its sidecar is read). Also accepted:
    `check_engine_compatible(engine_path, sidecar_dict)`. Target values left None are asked of the
    local machine (`local_target`). Compute capability must be equal; TensorRT must agree on
    major.minor (TensorRT's own rule without version-compatible builds). GPU names may differ on
    the same architecture (a warning-level fact, not a refusal). Returns the parsed sidecar.
    """
    if isinstance(sidecar, (str, Path)) and isinstance(gpu_name, (dict, EngineSidecar)):
        engine_path, sidecar, gpu_name = sidecar, gpu_name, None   # (path, sidecar) call order
    if isinstance(sidecar, (str, Path)):
        engine_path = engine_path or sidecar
        sidecar = read_sidecar(sidecar)
    elif isinstance(sidecar, dict):
        sidecar = EngineSidecar.from_dict(sidecar, path=engine_path)
    if compute_capability is None or trt_version is None:
        local = local_target()
        gpu_name = gpu_name if gpu_name is not None else local[0]
        compute_capability = compute_capability if compute_capability is not None else local[1]
        trt_version = trt_version if trt_version is not None else local[2]
    gpu_name = gpu_name or "this GPU"
    here_cc = normalise_compute_capability(compute_capability)
    problems = []
    if sidecar.compute_capability != here_cc:
        problems.append(f"sm_{sidecar.compute_capability.replace('.', '')} vs this GPU's "
                        f"sm_{here_cc.replace('.', '')} ({gpu_name})")
    if trt_major_minor(sidecar.trt_version) != trt_major_minor(trt_version):
        problems.append(f"TensorRT {sidecar.trt_version} vs installed {trt_version}")
    if problems:
        raise EngineMismatch(
            f"engine built for {sidecar.gpu_name} (sm_{sidecar.compute_capability.replace('.', '')}, "
            f"TensorRT {sidecar.trt_version}); mismatch: {'; '.join(problems)}",
            path=engine_path, hint=REBUILD_HINT)
    return sidecar
