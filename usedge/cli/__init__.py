"""usedge command line. Thin: parse options, call library functions, print.

Each command group lives in its own module and imports heavy packages (torch) lazily inside the
command, so `usedge infer` runs on the lean base install.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

# OpenCV's and its FFmpeg's own log lines ("[mov,mp4 @ 0x..] moov atom not found", "[ WARN:0] ...
# can't be used to capture by name") would land between usedge's one-line errors, which say the same
# in words. Read when cv2 loads and when its FFmpeg starts, so set before any import of cv2; a
# variable the user set wins (OPENCV_FFMPEG_LOGLEVEL=16 OPENCV_LOG_LEVEL=INFO to see them again).
os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")      # its ERROR lines too: usedge says why
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")       # AV_LOG_QUIET

from usedge.cli.app import app, state
from usedge.cli.terminal import say
from usedge.errors import UsedgeError

# Importing a command module registers its commands on `app`.
from usedge.cli import (  # noqa: E402,F401
    augment_cmd,
    bench_cmd,
    crop_cmd,
    demo_cmd,
    doctor_cmd,
    explain_cmd,
    export_cmd,
    infer_cmd,
    serve_cmd,
    synth_cmd,
    train_cmd,
)


#: optional packages -> the extra that installs them (pyproject.toml); a command that needs one and
#: finds it missing ends with one line naming the extra, not a ModuleNotFoundError traceback
EXTRA_OF = {"torch": "train", "torchvision": "train", "sklearn": "train", "scipy": "train", "optuna": "train",
            "matplotlib": "train", "onnx": "export", "onnxscript": "export", "onnxconverter_common": "export",
            "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
            "prometheus_client": "serve", "openvino": "openvino"}
PACKAGE_NAME = {"sklearn": "scikit-learn", "onnxconverter_common": "onnxconverter-common",
                "multipart": "python-multipart", "python_multipart": "python-multipart",
                "prometheus_client": "prometheus-client"}


def missing_extra(exc: ModuleNotFoundError, argv: list[str]) -> UsedgeError | None:
    """A ModuleNotFoundError for an optional package -> MissingDependency naming the extra, else None."""
    from usedge.errors import MissingDependency

    top = (exc.name or "").split(".")[0]
    if top not in EXTRA_OF:
        return None
    words = [a for a in argv if not a.startswith("-")]
    groups = {g.name for g in app.registered_groups}          # `usedge augment search`: a command of a group
    words = words[:2] if words and words[0] in groups else words[:1]
    command = " ".join(["usedge", *words])
    extra = "export" if words[:1] == ["export"] else EXTRA_OF[top]     # export's torch comes with its own extra
    return MissingDependency(PACKAGE_NAME.get(top, top), command, extra=extra)


def main() -> None:
    try:
        try:
            app()
        except ModuleNotFoundError as exc:
            missing = missing_extra(exc, sys.argv[1:])
            if missing is None:
                raise
            raise missing from exc
    except UsedgeError as exc:
        if state["debug"]:
            traceback.print_exc()
        say(f"usedge: {exc.one_line()}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        say("usedge: interrupted")
        sys.exit(130)
    except OSError as exc:
        # a write that no command turned into its own line (a full disk, a read-only or vanished folder):
        # one line, never a traceback (--debug shows it)
        if exc.errno not in WRITE_ERRNOS:
            raise
        if state["debug"]:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        say(f"usedge: {where}cannot write ({exc.strerror or exc}) — free disk space or choose another output "
            "(files written before this are kept)")
        sys.exit(1)


#: errors of writing output (disk full, quota, read-only file system, file too large, I/O error)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


__all__ = ["app", "main"]
