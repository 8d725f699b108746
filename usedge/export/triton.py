"""A Triton Inference Server model repository for serving many scanners from one GPU box.

    <repo>/<name>/config.pbtxt        model configuration (protobuf text format, model_config.proto)
    <repo>/<name>/labels.txt          class names, one a line (Triton's classification extension)
    <repo>/<name>/<version>/model.onnx    (platform onnxruntime_onnx)   or
    <repo>/<name>/<version>/model.plan    (platform tensorrt_plan; GPU- and TensorRT-specific)

Batch dimension is implicit (max_batch_size > 0), so dims leave it out. Dynamic batching lets
Triton gather frames from several scanners into one batch, waiting at most
max_queue_delay_microseconds for a preferred batch size.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from usedge.errors import ConfigError, ModelError
from usedge.fileio import atomic_write, write_text_atomic
from usedge.export.onnx_export import read_model_info
from usedge.runtime.model_info import METADATA_KEY, ModelInfo

CONFIG_NAME = "config.pbtxt"


@dataclass
class TritonSettings:
    name: str = "usedge"
    version: int = 1
    max_batch_size: int = 8
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [4, 8])
    max_queue_delay_us: int = 2000       # microseconds a request may wait for a fuller batch
    instance_kind: str = "KIND_AUTO"     # KIND_GPU on a GPU box, KIND_CPU for int8 on CPU servers
    instance_count: int = 1


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; non-ASCII as octal UTF-8 bytes)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in "\"'\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _dims(shape: list[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def _onnx_io(path: Path) -> tuple[list[tuple[str, list[int]]], list[tuple[str, list[int]]], ModelInfo]:
    """(inputs, outputs) as (name, per-sample dims) and the ModelInfo of a usedge ONNX."""
    model = onnx.load(str(path), load_external_data=False)

    def dims(vi) -> list[int]:
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        return shape[1:]

    ins = [(i.name, dims(i)) for i in model.graph.input]
    outs = [(o.name, dims(o)) for o in model.graph.output]
    return ins, outs, read_model_info(model, path)


def config_text(settings: TritonSettings, platform: str, inputs, outputs, info: ModelInfo) -> str:
    """config.pbtxt contents for one model (all tensors FP32, batch dimension implicit)."""
    if settings.max_batch_size < 1:
        raise ConfigError("Triton max batch size must be at least 1", hint="pass --max-batch >= 1")
    preferred = sorted({b for b in settings.preferred_batch_sizes if 1 <= b <= settings.max_batch_size})
    lines = [f"name: {_quote(settings.name)}", f"platform: {_quote(platform)}",
             f"max_batch_size: {settings.max_batch_size}", "input ["]
    lines += [",\n".join(f"  {{\n    name: {_quote(n)}\n    data_type: TYPE_FP32\n    dims: {_dims(d)}\n  }}"
                         for n, d in inputs)]
    lines += ["]", "output ["]
    outs = []
    for n, d in outputs:
        label = '\n    label_filename: "labels.txt"' if n == "probs" else ""
        outs.append(f"  {{\n    name: {_quote(n)}\n    data_type: TYPE_FP32\n    dims: {_dims(d)}{label}\n  }}")
    lines += [",\n".join(outs), "]", "dynamic_batching {"]
    if preferred:
        lines.append(f"  preferred_batch_size: {_dims(preferred)}")
    lines += [f"  max_queue_delay_microseconds: {settings.max_queue_delay_us}", "}",
              "instance_group [", f"  {{\n    count: {settings.instance_count}\n    kind: {settings.instance_kind}\n  }}",
              "]", "version_policy: { latest: { num_versions: 1 } }",
              "parameters {", f"  key: {_quote(METADATA_KEY)}",
              f"  value: {{ string_value: {_quote(info.to_json())} }}", "}"]
    return "\n".join(lines) + "\n"


def write_model_repository(repo: str | Path, model_path: str | Path, settings: TritonSettings = TritonSettings(),
                           *, engine_max_batch: int | None = None, onnx_for_io: str | Path | None = None) -> Path:
    """Write `<repo>/<name>/` for a usedge ONNX (or a TensorRT plan with the ONNX it came from).

    model_path: a .onnx file, or a .engine/.plan (then onnx_for_io names the ONNX whose inputs and
    outputs it has, and engine_max_batch its profile's maximum batch). Returns the config.pbtxt path.
    """
    repo, model_path = Path(repo), Path(model_path)
    is_plan = model_path.suffix in (".engine", ".plan")
    io_source = Path(onnx_for_io) if is_plan else model_path
    if is_plan and onnx_for_io is None:
        raise ConfigError("a TensorRT plan needs the ONNX it was built from", hint="pass onnx_for_io")
    if is_plan and engine_max_batch is not None and settings.max_batch_size > engine_max_batch:
        raise ConfigError(f"Triton max batch {settings.max_batch_size} exceeds the engine's profile maximum "
                          f"{engine_max_batch}", hint="lower --max-batch (it sets both: rebuild the engine with it)")
    inputs, outputs, info = _onnx_io(io_source)
    platform = "tensorrt_plan" if is_plan else "onnxruntime_onnx"
    text = config_text(settings, platform, inputs, outputs, info)
    model_dir = repo / settings.name
    target = model_dir / str(settings.version) / ("model.plan" if is_plan else "model.onnx")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as dst, open(model_path, "rb") as src:
        shutil.copyfileobj(src, dst)
    write_text_atomic(model_dir / "labels.txt", "\n".join(info.class_names) + "\n")
    return write_text_atomic(model_dir / CONFIG_NAME, text)


def parse_config(path: str | Path):
    """Parse config.pbtxt with Triton's own model_config.proto (tritonclient); ModelConfig message.

    Raises MissingDependency without tritonclient, ModelError when the text does not parse.
    """
    from usedge.errors import MissingDependency

    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingDependency("tritonclient[grpc]", "checking a Triton config", extra="dev") from exc
    try:
        return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelError(f"config.pbtxt does not parse as Triton's ModelConfig: {exc}", path=path,
                         hint="re-export with usedge export --triton") from exc
