"""The one protocol every inference engine follows (after Polygraphy's runners, with fewer layers).

    backend = SomeBackend(**options)        # cheap: nothing heavy imported yet
    backend.load(path)                      # imports the engine's package, builds the session,
                                            # fills `inputs` / `outputs` (names, dtypes, shapes)
    outputs = backend.infer(batch)          # float32 N x 1 x H x W -> {"probs": N x C, ["cam": ...]}
    backend.close()                         # a backend never closed warns (ResourceWarning)

`available()` answers (ok, reason) without loading a model, so `usedge doctor` and `auto` can say
why an engine is not used. `thread_safe` says whether two threads may call `infer` at once. Heavy
packages (onnxruntime, tensorrt, cuda-python) are imported inside methods: an engine that is not
installed costs nothing until it is asked for.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the engine declares it."""

    name: str
    dtype: str                       # numpy dtype name, e.g. "float32"
    shape: tuple                     # ints; None or a symbolic name (str) for a dynamic dimension


class Backend:
    """Base of every backend: a context manager around load / infer / close."""

    name: str = "base"
    #: what this backend runs: "onnx" (an .onnx file) or "engine" (a TensorRT plan)
    artifact: ClassVar[str] = "onnx"
    #: whether two threads may call `infer` on one loaded backend at once
    thread_safe: bool = False

    def __init__(self) -> None:
        self.path: Path | None = None
        self.metadata: dict[str, str] = {}        # ONNX metadata_props / engine sidecar, as strings
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.providers: list[str] = []             # what actually runs (e.g. ORT's active providers)
        self._closed = False

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, what runs) or (False, why not) on this machine, without loading a model."""
        raise NotImplementedError

    def load(self, path: str | Path) -> "Backend":
        raise NotImplementedError

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 N x 1 x H x W -> outputs by name (arrays owned by the caller)."""
        raise NotImplementedError

    def release(self) -> None:
        """Free sessions and device memory (called once, by close)."""

    @property
    def closed(self) -> bool:
        """close() was called: the engine is gone."""
        return self._closed

    def close(self) -> None:
        """Release sessions and device memory; safe to call twice."""
        if not self._closed:
            self._closed = True
            self.release()

    def describe(self) -> str:
        """One line: backend and what executes (providers, device)."""
        extra = f" ({', '.join(self.providers)})" if self.providers else ""
        return f"{self.name}{extra}"

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or getattr(self, "path", None) is None:
            return
        warnings.warn(f"usedge: {self.name} backend for {self.path.name} was never closed; call close() "
                      "or use it as a context manager", ResourceWarning, stacklevel=2)
        try:
            self.close()
        except Exception:
            pass
