"""usedge command line. Thin: parse options, call library functions, print.

Each command group lives in its own module and imports heavy packages (torch) lazily inside the
command, so `usedge infer` runs on the lean base install.
"""

from __future__ import annotations

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


def main() -> None:
    try:
        app()
    except UsedgeError as exc:
        if state["debug"]:
            traceback.print_exc()
        say(f"usedge: {exc.one_line()}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("usedge: interrupted", file=sys.stderr)
        sys.exit(130)


__all__ = ["app", "main"]
