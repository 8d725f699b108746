"""The one protocol every inference engine follows (after Polygraphy's runners, with fewer layers).

    backend = SomeBackend(**options)        # cheap: nothing heavy imported yet
    backend.load(path)                      # imports the engine's package, builds the session
    outputs = backend.infer(batch)          # float32 N x 1 x H x W -> {"probs": N x C, ["cam": ...]}
    backend.close()

`available()` answers (ok, reason) without loading a model, so `usedge doctor` and `auto` can say
why an engine is not used. Heavy packages (onnxruntime, tensorrt, cuda-python) are imported inside
methods: an engine that is not installed costs nothing until it is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np


class Backend:
    """Base of every backend: a context manager around load / infer / close."""

    name: ClassVar[str] = "base"
    #: what this backend runs: "onnx" (an .onnx file) or "engine" (a TensorRT plan)
    artifact: ClassVar[str] = "onnx"

    def __init__(self) -> None:
        self.path: Path | None = None
        self.metadata: dict[str, str] = {}        # ONNX metadata_props / engine sidecar, as strings
        self.input_name: str = "input"
        self.output_names: list[str] = []
        self.providers: list[str] = []             # what actually runs (e.g. ORT's active providers)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, what runs) or (False, why not) on this machine, without loading a model."""
        raise NotImplementedError

    def load(self, path: str | Path) -> "Backend":
        raise NotImplementedError

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 N x 1 x H x W -> outputs by name (arrays owned by the caller)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release sessions and device memory; safe to call twice."""

    def describe(self) -> str:
        """One line: backend and what executes (providers, device)."""
        extra = f" ({', '.join(self.providers)})" if self.providers else ""
        return f"{self.name}{extra}"

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close() must not leak device memory
        try:
            self.close()
        except Exception:
            pass
