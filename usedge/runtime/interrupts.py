"""Ctrl-C and SIGTERM end a run between frames, never half-way through one frame's sinks.

Python raises KeyboardInterrupt wherever the main thread happens to be. Raised between two sinks'
writes, one frame would reach the JSONL but not the recording. `interrupt_between_frames` turns the
given signals into KeyboardInterrupt while a run lasts; inside `whole_frame` (the pipeline's sinks
stage) a signal only marks the interrupt pending, and it is raised when that frame has reached every
sink. Signals are delivered to the main thread only, so frames written by other threads (usedge
serve's runner) are not guarded and never receive the deferred interrupt. After a run, `finishing`
holds the signals off while the outputs close: a second Ctrl-C cannot cut a recording's finalisation.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_depth = 0                  # nesting of `whole_frame` in the main thread
_pending = False            # a signal came while a frame was being written
_raised = False             # the run was interrupted once: later signals are ignored while it ends


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _on_signal(signum, frame) -> None:
    global _pending, _raised
    if _raised:             # a second Ctrl-C while the run winds down must not cut its outputs short
        return
    if _depth:
        _pending = True
        return
    _raised = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_between_frames(*signals: int) -> Iterator[None]:
    """While the block runs, each of `signals` (default SIGINT) raises KeyboardInterrupt in the main
    thread, deferred to the end of a `whole_frame`; once raised, further signals are ignored until the block
    ends (the run is winding down); the old handlers come back afterwards. Outside the main thread (where
    handlers cannot be set) the block runs unchanged."""
    global _pending, _raised
    if not _in_main_thread():
        yield
        return
    _raised = False
    old = {sig: signal.signal(sig, _on_signal) for sig in (signals or (signal.SIGINT,))}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _pending = _raised = False


@contextlib.contextmanager
def whole_frame() -> Iterator[None]:
    """The block (one frame's writes to every sink) is not cut by an interrupt from
    `interrupt_between_frames`: one that arrives meanwhile is raised when the block ends normally."""
    global _depth, _pending, _raised
    if not _in_main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _pending:
        _pending, _raised = False, True
        raise KeyboardInterrupt


class finishing:
    """`with finishing(SIGINT, SIGTERM) as f:` ... `f.hold()`: from `hold()` to the end of the block the
    signals are ignored (the run is ending anyway: its outputs close, the summary is written), then the
    handlers that were there before the block come back. Outside the main thread it does nothing."""

    def __init__(self, *signals: int) -> None:
        self.signals = signals or (signal.SIGINT,)
        self.old: dict = {}

    def __enter__(self) -> "finishing":
        if _in_main_thread():
            self.old = {sig: signal.getsignal(sig) for sig in self.signals}
        return self

    def hold(self) -> None:
        for sig in self.old:
            signal.signal(sig, signal.SIG_IGN)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
