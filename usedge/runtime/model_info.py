"""What a model artifact says about itself (ONNX metadata_props), so the runtime needs nothing beside it.

One reader: `model_info_from_metadata(metadata, path)` turns an ONNX file's metadata_props (or an
engine sidecar's fields) into a validated ModelInfo, or one ModelError line naming the field.

Schema version "MAJOR.MINOR" (`SCHEMA_VERSION`): a newer MAJOR is refused with both versions named;
every field is type- and range-checked; a field this usedge does not know (e.g. a preprocessing
option from a newer version) is refused, because ignoring it would feed the model other pixels.

Weights digest: `weights_sha256` is the sha256 of the serialized ONNX graph (field 7 of ModelProto:
every node and every initializer, i.e. all weights; the metadata lives outside it). It is read from
the protobuf wire format here, so the runtime needs no onnx package. `verify_weights` compares it
(or, for a TensorRT engine, the engine's sha256 recorded in its sidecar) with the file's bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from usedge.errors import ModelError
from usedge.runtime.preprocess import RESIZE_METHODS, PreprocessSpec

METADATA_KEY = "usedge.model_info"   # JSON of ModelInfo in ONNX metadata_props
SCHEMA_VERSION = "1.0"               # MAJOR.MINOR of the ModelInfo JSON this usedge writes and reads
PRECISIONS = ("fp32", "fp16", "int8")
OUTPUTS = ("probs", "cam")
SIZE_RANGE = (16, 2048)              # model input side, pixels
MAX_CLASSES = 1000
REEXPORT = "re-export it with `usedge export` (do not edit exported models)"


@dataclass
class ModelInfo:
    class_names: list[str]
    input_size: int
    preprocess: PreprocessSpec
    arch: str = "ag_resnet18"
    checkpoint_sha256: str = ""       # the checkpoint the artifact was exported from
    usedge_version: str = ""
    precision: str = "fp32"           # fp32 | fp16 | int8
    outputs: list[str] = field(default_factory=lambda: ["probs"])  # + "cam" when exported with CAM
    training: dict = field(default_factory=dict)  # summary: data, folds, metrics
    export: dict = field(default_factory=dict)    # how the file was made: opset, exporter, source sha256, calibration
    weights_sha256: str = ""          # sha256 of the ONNX graph (nodes + initializers), see module docstring
    model_card: dict = field(default_factory=dict)  # provenance, metrics, intended use, limits (usedge export)
    schema_version: str = SCHEMA_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        """Parse and validate; ValueError with a one-line reason on any problem."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg})") from exc
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        validate(d)
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["preprocess"] = PreprocessSpec.from_dict(d.get("preprocess", {}))
        return cls(**known)

    def metadata_props(self) -> dict[str, str]:
        """Flat, human-readable keys plus the full JSON under METADATA_KEY."""
        return {
            METADATA_KEY: self.to_json(),
            "class_names": ",".join(self.class_names),
            "input_size": str(self.input_size),
            "normalisation": f"(x/255 - {self.preprocess.mean}) / {self.preprocess.std}",
            "crop": self.preprocess.crop,
            "resize": self.preprocess.resize,
            "checkpoint_sha256": self.checkpoint_sha256,
            "usedge_version": self.usedge_version,
            "precision": self.precision,
            "weights_sha256": self.weights_sha256,
        }


# --------------------------------------------------------------------------- validation

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_size(name: str, v) -> None:
    if not _is_int(v):
        raise ValueError(f"{name} must be an integer, got {type(v).__name__} {json.dumps(v)[:40]}")
    if not SIZE_RANGE[0] <= v <= SIZE_RANGE[1]:
        raise ValueError(f"{name} {v} is outside {SIZE_RANGE[0]}..{SIZE_RANGE[1]} pixels")


def _check_preprocess(p) -> None:
    if not isinstance(p, dict):
        raise ValueError(f"preprocess must be an object, got {type(p).__name__}")
    unknown = sorted(set(p) - {f.name for f in fields(PreprocessSpec)})
    if unknown:
        raise ValueError(f"unknown preprocessing field(s) {', '.join(unknown)} (from a newer usedge?): "
                         "this usedge would prepare the pixels differently")
    if "size" in p:
        _check_size("preprocess.size", p["size"])
    for key, lo, hi in (("mean", 0.0, 1.0), ("std", 1e-6, 10.0), ("skin_margin", 0.0, 0.5)):
        if key in p and not (_is_number(p[key]) and lo <= p[key] <= hi):
            raise ValueError(f"preprocess.{key} must be a number in {lo:g}..{hi:g}, got {json.dumps(p[key])[:40]}")
    if "crop" in p and not (isinstance(p["crop"], str) and p["crop"]):
        raise ValueError(f"preprocess.crop must be a non-empty string, got {json.dumps(p['crop'])[:40]}")
    if "crop" in p and not p["crop"].strip().lower().startswith("preset:"):   # a preset may be the user's (--presets)
        from usedge.errors import ConfigError
        from usedge.runtime.crop import parse_crop

        try:
            parse_crop(p["crop"])
        except ConfigError as exc:
            raise ValueError(f"preprocess.crop {json.dumps(p['crop'])[:40]}: {exc.message}") from exc
    if "resize" in p and p["resize"] not in RESIZE_METHODS:
        raise ValueError(f"unknown preprocess.resize {json.dumps(p['resize'])[:40]} (from a newer usedge?; this usedge "
                         f"knows {', '.join(RESIZE_METHODS)}): it would prepare the pixels differently")
    if "remove_doppler" in p and not isinstance(p["remove_doppler"], bool):
        raise ValueError(f"preprocess.remove_doppler must be true or false, got {json.dumps(p['remove_doppler'])[:40]}")


def _check_version(v) -> None:
    if not isinstance(v, str) or len(v.split(".")) != 2 or not all(x.isdigit() for x in v.split(".")):
        raise ValueError(f"schema_version must be 'MAJOR.MINOR', got {json.dumps(v)[:40]}")
    if int(v.split(".")[0]) > int(SCHEMA_VERSION.split(".")[0]):
        raise ValueError(f"metadata schema {v} is newer than this usedge reads ({SCHEMA_VERSION})")


def validate(d) -> None:
    """ValueError (one line, naming the field) unless `d` is a well-formed ModelInfo dict."""
    if not isinstance(d, dict):
        raise ValueError(f"model info must be a JSON object, got {type(d).__name__}")
    _check_version(d.get("schema_version", SCHEMA_VERSION))   # before anything a newer schema may change
    unknown = sorted(set(d) - set(ModelInfo.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (schema {d.get('schema_version', SCHEMA_VERSION)}, "
                         f"this usedge reads {SCHEMA_VERSION})")
    for key in ("class_names", "input_size"):
        if key not in d:
            raise ValueError(f"missing {key}")
    names = d["class_names"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names)):
        raise ValueError(f"class_names must be a non-empty list of names, got {json.dumps(names)[:60]}")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{len(names)} class names (at most {MAX_CLASSES})")
    if any(not n.isprintable() for n in names):   # a newline would split a CSV header or a log line
        raise ValueError(f"class name {json.dumps(next(n for n in names if not n.isprintable()))[:40]} has a control "
                         "character (newline, tab ...)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate class name(s) {', '.join(dup)}: their probabilities would collapse")
    _check_size("input_size", d["input_size"])
    _check_preprocess(d.get("preprocess", {}))
    if d.get("preprocess", {}).get("size", d["input_size"]) != d["input_size"]:
        raise ValueError(f"preprocess.size {d['preprocess']['size']} differs from input_size {d['input_size']}")
    for key in ("arch", "checkpoint_sha256", "usedge_version", "weights_sha256"):
        if key in d and not isinstance(d[key], str):
            raise ValueError(f"{key} must be a string, got {type(d[key]).__name__}")
    if d.get("precision", "fp32") not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {json.dumps(d['precision'])[:40]}")
    outputs = d.get("outputs", ["probs"])
    if not (isinstance(outputs, list) and "probs" in outputs and all(o in OUTPUTS for o in outputs)
            and len(set(outputs)) == len(outputs)):
        raise ValueError(f"outputs must list 'probs' (and optionally 'cam'), got {json.dumps(outputs)[:60]}")
    for key in ("training", "export", "model_card"):
        if key in d and not isinstance(d[key], dict):
            raise ValueError(f"{key} must be an object, got {type(d[key]).__name__}")
    _check_model_card(d.get("model_card", {}))


def _check_model_card(card: dict) -> None:
    """The model card fields the runtime reads (provenance line, uncertainty margin): of the right type."""
    def kind(key, types, what):
        if key in card and card[key] is not None and not isinstance(card[key], types):
            raise ValueError(f"model_card.{key} must be {what}, got {json.dumps(card[key])[:40]}")

    kind("training_data", dict, "an object")
    kind("cross_validation", dict, "an object")
    kind("checks", list, "a list")
    kind("localisation", (dict, str), "an object or a string")
    if not all(isinstance(c, dict) for c in card.get("checks") or []):
        raise ValueError("model_card.checks must be a list of objects")
    rows = (card.get("cross_validation") or {}).get("rows")
    if rows is not None and not (isinstance(rows, dict) and all(isinstance(r, dict) for r in rows.values())):
        raise ValueError("model_card.cross_validation.rows must be an object of objects")
    margin = card.get("uncertain_margin")
    if margin is not None and not (_is_number(margin) and 0.0 <= margin < 1.0):
        raise ValueError(f"model_card.uncertain_margin must be a number in 0..1, got {json.dumps(margin)[:40]}")


def model_info_from_metadata(metadata: dict[str, str], path: str | Path | None, *, verify: bool = False) -> ModelInfo:
    """ModelInfo from ONNX metadata_props or an engine sidecar (key METADATA_KEY or "model_info").

    verify: also check the weights digest against the file's bytes (`verify_weights`).
    """
    raw = metadata.get(METADATA_KEY) or metadata.get("model_info")
    if raw is None:
        raise ModelError("model carries no usedge metadata (class names, input size, preprocessing)", path=path,
                         hint="export it with `usedge export`, which writes them into the ONNX file")
    try:
        info = ModelInfo.from_json(raw if isinstance(raw, str) else json.dumps(raw))
    except (ValueError, TypeError) as exc:
        newer = "newer than this usedge" in str(exc) or "unknown" in str(exc)
        raise ModelError(f"usedge metadata: {exc}", path=path,
                         hint="upgrade usedge (pip install -U usedge)" if newer else REEXPORT) from exc
    if verify:
        verify_weights(path, metadata, info)
    return info


# --------------------------------------------------------------------------- weights digest

def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


def graph_bytes(data: bytes | memoryview) -> memoryview:
    """The serialized GraphProto inside a serialized ONNX ModelProto (field 7), by walking the
    top-level protobuf fields only (a dozen; the big graph is skipped by its length)."""
    buf = memoryview(data)
    i, graph = 0, None
    while i < len(buf):
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            if number == 7:
                graph = buf[i:i + n]
            i += n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if graph is None:
        raise ValueError("no graph")
    return graph


def weights_digest(data: bytes | memoryview) -> str:
    """sha256 of the ONNX graph (nodes + initializers) of a serialized model."""
    return hashlib.sha256(graph_bytes(data)).hexdigest()


def verify_weights(path: str | Path, metadata: dict, info: ModelInfo) -> None:
    """ModelError (one line) unless the file's bytes match the digest recorded when it was made:
    for ONNX the graph digest in its metadata; for a TensorRT engine the engine sha256 in its sidecar."""
    path = Path(path)
    hint = "re-export it, or pass --no-verify (verify=False) to load it anyway"
    data = path.read_bytes()
    if metadata.get("engine_sha256"):
        got, want, what = hashlib.sha256(data).hexdigest(), str(metadata["engine_sha256"]), "engine sha256"
    elif info.weights_sha256:
        try:
            got, want, what = weights_digest(data), info.weights_sha256, "weights digest"
        except ValueError as exc:
            raise ModelError(f"model file is damaged: not a readable ONNX ({exc})", path=path, hint=hint) from exc
    else:
        raise ModelError("model carries no weights digest (exported by an older usedge): cannot verify it",
                         path=path, hint=hint)
    if got != want:
        raise ModelError(f"model file is damaged or altered: {what} {got[:12]}… does not match the recorded "
                         f"{want[:12]}…", path=path, hint=hint)


def mean_sd(cell) -> str:
    """[mean, sd] -> '0.912 ± 0.031'; n/a for a value the training report left undefined (an SD from one fold)
    or that is not a number (a hand-edited card)."""
    if not isinstance(cell, (list, tuple)) or not cell:
        return ""
    return " ± ".join(f"{v:.3f}" if _is_number(v) else "n/a" for v in cell[:2])


def model_card_line(info: ModelInfo) -> str:
    """One line of provenance for infer / serve / doctor, from the model card `usedge export` wrote."""
    card = info.model_card
    if not card:
        return "no model card (exported by an older usedge): provenance unknown"
    data = card.get("training_data") or {}
    if data.get("sha256"):
        kind = "SYNTHETIC data" if data.get("synthetic") else "data"
        part = f" of {data['fold']}'s training patients" if data.get("fold") else ""
        trained = f"trained on {kind} ({data.get('images', '?')} images{part}; data set sha256 {str(data['sha256'])[:12]})"
    else:
        trained = "training data unknown"
    cv = card.get("cross_validation") or {}
    rows = cv.get("rows") or {}
    acc = (rows.get("overall accuracy") or {}).get("accuracy")
    bal = (rows.get("balanced accuracy") or {}).get("accuracy")
    if bal:      # class-balanced first: overall accuracy flatters a model that favours the largest class
        few = ((cv.get("coverage") or {}).get("balanced accuracy") or {}).get("accuracy")   # over fewer classes
        scored = (f"CV balanced accuracy {mean_sd(bal)}" + (f" ({few})" if isinstance(few, str) else "")
                  + (f" (accuracy {mean_sd(acc)})" if acc else ""))
    else:
        scored = f"CV accuracy {mean_sd(acc)}" if acc else ""
    scored = f"{scored} over {cv.get('folds')} fold(s)" if scored else "no CV metrics"
    missed = [str(c.get("check", "?")) for c in card.get("checks") or [] if not c.get("passed", True)]
    checks = f"{len(missed)} export check(s) MISSED ({missed[0]})" if missed else "export checks ok"
    # the weights digest, not the file's sha256 that results carry as model_sha256 (an int8 and an fp32 file of
    # one model differ in both; the card belongs to the weights)
    return (f"{info.precision} model {info.weights_sha256[:12] or '?'} (weights digest): {trained}; {scored}; {checks}; "
            f"uncertain below margin {card.get('uncertain_margin', '?')}")
