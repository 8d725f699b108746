"""The CLI's shared vocabulary: one spelling per idea, and old spellings kept for one release.

Every command spells its output `--out/-o`, its "replace what is there" switch `--overwrite`, its
silence switch `--quiet/-q` and its model input side `--image-size`. A renamed flag stays as a
hidden option for one release; `deprecated()` picks the value and prints one line to stderr.
"""

from __future__ import annotations

import sys
from typing import TypeVar

import typer

T = TypeVar("T")

_warned: set[str] = set()


def deprecated(new_value: T, old_value: T | None, *, old: str, new: str, default: T | None = None) -> T:
    """The value of NEW, or of OLD when only the old spelling was given (with one deprecation line).

    `old_value` is None (or equal to `default`) when the old flag was not used.
    """
    if old_value is None or old_value == default:
        return new_value
    if new_value is not None and new_value != default and new_value != old_value:
        from usedge.errors import ConfigError

        raise ConfigError(f"{old} {old_value} and {new} {new_value} disagree", hint=f"give {new} only ({old} is its old spelling)")
    if old not in _warned:
        _warned.add(old)
        print(f"usedge: {old} is deprecated; use {new}", file=sys.stderr)
    return old_value if new_value == default or new_value is None else new_value


def quiet_option(help: str = "Print only errors and the final line.") -> bool:
    return typer.Option(False, "--quiet", "-q", help=help)


def quality_gate_option() -> bool:
    """infer and serve: the frame-quality gate (usedge.runtime.quality) on streams, files and uploads."""
    return typer.Option(True, "--quality-gate/--no-quality-gate", help="Frames and uploads without a usable image "
                        "(uniform, no echoes: probe in air, menus) get state no_image and no label; "
                        "--no-quality-gate classifies them anyway (a blank frame is still refused).")


def overwrite_option(help: str = "Replace outputs that already exist.") -> bool:
    return typer.Option(False, "--overwrite", help=help)


def force_alias() -> bool | None:
    """The hidden, deprecated spelling of --overwrite."""
    return typer.Option(None, "--force", hidden=True, help="Deprecated: use --overwrite.")


#: (command, old switch) -> hidden flag that carries the old meaning, for switches that became options
#: with a value (`crop --overlay` was a switch, is now `--overlay DIR`). typer's parser has no
#: optional option values, so `rewrite_old_switches` turns a bare old switch (last, or before another
#: option) into the hidden flag before parsing.
OLD_SWITCHES = {("crop", "--overlay"): "--overlay-beside-crops"}


def rewrite_old_switches(argv: list[str]) -> list[str]:
    command = next((a for a in argv if not a.startswith("-")), None)
    out = list(argv)
    for i, arg in enumerate(out):
        hidden = OLD_SWITCHES.get((command, arg))
        if hidden and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out[i] = hidden
    return out


def backend_option() -> str:
    """infer and serve: the engine (usedge.runtime.backends.BACKEND_NAMES)."""
    return typer.Option("auto", "--backend", help="auto | ort-cpu | openvino | ort-cuda | ort-trt | "
                        "ort-trt-rtx (TensorRT for RTX, pip extra rtx) | tensorrt")


def spinning_option():
    """infer and serve: onnxruntime's bounded spinning (usedge.runtime.threads)."""
    from usedge.runtime.threads import SPIN_US

    return typer.Option(None, "--spinning/--no-spinning",
                        help=f"onnxruntime's workers busy-wait between ops, at most {SPIN_US / 1000:g} ms after a run "
                             "(default: on; --no-spinning on a machine shared with other work)")


def threads_option():
    """infer and serve: the model engine's intra-op threads."""
    from usedge.runtime.threads import MAX_THREADS

    return typer.Option(None, "--threads", min=1, max=MAX_THREADS,
                        help="model engine intra-op threads (default: the thread budget, see docs/runtime.md)")
