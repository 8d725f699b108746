"""usedge command line. Thin: parse options, call library functions, print.

Each command group lives in its own module and imports heavy packages (torch) lazily inside the
command, so `usedge infer` runs on the lean base install.
"""

from __future__ import annotations

import sys
import traceback

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
