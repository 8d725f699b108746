"""Atomic writes and hashes: an artifact is either the old valid file, the new valid file, or absent."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator

from usedge.errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)


def in_place(path: str | Path) -> bool:
    """Whether `path` is a named pipe or a device (`/dev/null`, a pipe a consumer reads): an output written
    directly, never locked, kept aside or renamed over (a rename replaced the device itself when run as root)."""
    path = Path(path)
    return path.exists() and not path.is_file() and not path.is_dir()


def not_a_file(out: str | Path, option: str = "--out", what: str = "its outputs") -> Path:
    """OutputError (one line naming `option`) when the output folder `out` is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} is a file, not a folder", path=out, hint=f"pass {option} a folder for {what}")
    return out


def writable_folder(out: str | Path, option: str = "--out", what: str = "its outputs") -> Path:
    """Create the output folder `out` and prove a file can be written there, before a long run writes into it;
    OutputError (one line naming `option`) when it is a file or cannot be written."""
    out = not_a_file(out, option, what)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".usedge-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"output folder is not writable ({exc.strerror})", path=out,
                          hint=f"pass {option} a folder you can write") from exc
    return out


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`.

    On any exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    if in_place(path):      # `--summary /dev/null`, a named pipe: written directly
        try:
            fh = open(path, mode)
        except OSError as exc:
            raise OutputError(f"cannot write here ({exc.strerror})", path=path, hint="choose a writable file") from exc
        with fh:
            yield fh
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write here ({exc.strerror})", path=path,
                          hint="choose a writable output directory") from exc
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are shared (Triton, services)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, obj, indent: int = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_head(path: str | Path, size: int) -> bytes:
    """The first `size` bytes of a file (b"" when it cannot be read): enough to tell what it is."""
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refuse_overwriting_inputs(out: str | Path, inputs: Iterable[str | Path], option: str, *,
                              folder: bool = True) -> None:
    """OutputError (one line) when writing to `out` could replace an input: `out` is one of the input
    files, or, for an output folder (`folder`), it directly holds one of them (outputs are named after
    their inputs there, so `scan.png` would be replaced by its annotated copy)."""
    target = Path(out).resolve()
    for path in inputs:
        path = Path(path).resolve()
        if path == target or (folder and path.parent == target):
            why = "" if path == target else " (outputs are named after inputs)"
            raise OutputError(f"{option} would overwrite the input {path.name}{why}",
                              path=out, hint=f"give {option} a location that holds no inputs")


def check_writable_folder(folder: str | Path, option: str) -> None:
    """One-line OutputError now when a file cannot be written into `folder` (created if missing) later,
    e.g. a summary written when a long stream ends. Tried with a temporary file, removed at once."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".usedge-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write into the folder of {option} ({exc.strerror or exc})", path=folder,
                          hint=f"give {option} a path in a writable folder") from exc
