"""Errors a user can cause. Each prints as one line: what went wrong, where, and what to do."""

from __future__ import annotations

from pathlib import Path


class UsedgeError(Exception):
    """Base of every user-facing usedge failure; the CLI prints it as one line without a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" — {self.hint}"
        return " ".join(text.split())  # never more than one line


class InputError(UsedgeError):
    """An input image, DICOM, video or frame that cannot be read or used."""


class InputTooLarge(InputError):
    """An input whose header claims more pixels (or bytes) than the limit: refused before decoding."""


class Undecodable(InputError):
    """An input whose bytes are damaged: empty, truncated, a corrupt header or undecodable data."""


class UnsupportedInput(InputError):
    """An input of a kind usedge does not take: unknown file type, missing decoder, not ultrasound."""


class NoImage(InputError):
    """A frame that shows no usable ultrasound image (blank screen, probe in air): see runtime/quality.py."""


class NoSuchFrame(InputError):
    """A frame index that the file does not hold."""


class ModelError(UsedgeError):
    """A model artifact (checkpoint, ONNX, engine) that is missing, corrupt or of the wrong kind."""


class BackendUnavailable(UsedgeError):
    """An inference backend that cannot run on this machine (missing package, no GPU)."""


class EngineMismatch(ModelError):
    """A TensorRT engine built for another GPU or TensorRT version."""


class ConfigError(UsedgeError):
    """A bad configuration value, TOML file or command-line option."""


class DataError(UsedgeError):
    """A data set (folder, manifest) that cannot be used for training or evaluation."""


class StreamError(UsedgeError):
    """A live source that cannot be opened or has failed for good."""


class OutputError(UsedgeError):
    """An output location that cannot be written."""


class MissingDependency(UsedgeError):
    """A feature that needs an optional package (an extra) that is not installed."""

    def __init__(self, package: str, feature: str, extra: str | None = None):
        hint = f"pip install 'usedge[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the package '{package}', which is not installed", hint=hint)
