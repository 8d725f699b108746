"""What a model artifact says about itself (ONNX metadata_props), so the runtime needs nothing beside it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from usedge.runtime.preprocess import PreprocessSpec

METADATA_KEY = "usedge.model_info"   # JSON of ModelInfo in ONNX metadata_props


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

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        d = json.loads(text)
        d["preprocess"] = PreprocessSpec.from_dict(d.get("preprocess", {}))
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def metadata_props(self) -> dict[str, str]:
        """Flat, human-readable keys plus the full JSON under METADATA_KEY."""
        return {
            METADATA_KEY: self.to_json(),
            "class_names": ",".join(self.class_names),
            "input_size": str(self.input_size),
            "normalisation": f"(x/255 - {self.preprocess.mean}) / {self.preprocess.std}",
            "crop": self.preprocess.crop,
            "checkpoint_sha256": self.checkpoint_sha256,
            "usedge_version": self.usedge_version,
            "precision": self.precision,
        }
