"""The thread budget: how many threads the model engine, OpenCV and the video decoder may use.

On a small machine (2 cores) the stream runs three kinds of threads at once: the capture thread
(FFmpeg decoding a 1080p frame), the loop thread's OpenCV calls (crop, resize) and the model
engine's intra-op pool. Left to their defaults each sizes itself to every core: FFmpeg starts one
decoder thread per core, OpenCV's `parallel_for` pool one worker per core, onnxruntime one
intra-op thread per physical core (pinned to cores when the count is left at 0). A parallel
operator of the model then waits for its slowest worker, and a worker that shares a core with a
decoder or OpenCV worker is the slowest: the model ran 1.5-1.8x slower in the pipeline than alone
(issue 18). The budget gives the model every core it can use and keeps everything else on one
thread each, so the other work is small and never a pool that competes with the model's:

    model_threads   the engine's intra-op threads: cores - capture threads when that leaves at least 2,
                    else every core (2 cores: both, the decoder's ~2 ms per frame interleaves)
    opencv_threads  1: crop and resize of one region of interest run inline, no pool to wake
    decode_threads  1 per capture thread (FFmpeg frame threading off: no extra threads, no frame delay)
    spinning        on: onnxruntime's workers busy-wait for the next op, for at most SPIN_US, then sleep.
                    Workers asleep between ops cost a paced stream dearly on a virtual machine (each op
                    wakes a worker whose idle vCPU the host has parked: the int8 model ran well above its
                    back-to-back time at 30 fps on the 2-core VM); onnxruntime's own spin duration kept
                    a core busy through the idle frame period, which the decoder needs. The bound keeps
                    the workers awake through a run and lets them sleep a few ms after it
                    (benchmarks/spin_paced.py measures the three settings)
    decode_nice     the capture threads' nice increment (Linux, per thread) when they share a core with
                    the model: the decoder then takes what the model leaves idle (the loop's crop, the gaps
                    between operators) instead of a model worker's time slice

`thread_budget()` computes it; `ThreadBudget.apply()` sets OpenCV's count for the process;
`Classifier.load(threads=budget.model_threads)` and a reader's `decode_threads` take the rest.
The stream summary reports the budget it ran with.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import asdict, dataclass

from usedge.runtime.cpu import usable_cores

DECODE_NICE = 10     # nice increment of a capture thread that shares a core with the model (weight 110 vs 1024)
SPIN_US = 5000       # how long onnxruntime's idle workers busy-wait for the next op before they sleep (µs)


@dataclass(frozen=True)
class ThreadBudget:
    """Threads per consumer for one process (see the module docstring)."""

    cores: int
    capture_threads: int
    model_threads: int
    opencv_threads: int
    decode_threads: int
    spinning: bool
    decode_nice: int = 0

    def apply(self) -> int:
        """Set OpenCV's thread count for this process (`cv2.setNumThreads` is process-wide); returns the
        count it replaced, for the caller to restore (`cv2.setNumThreads(previous)`) when it is done."""
        import cv2

        previous = cv2.getNumThreads()
        cv2.setNumThreads(self.opencv_threads)
        return previous

    def line(self) -> str:
        spin = f", spinning <= {SPIN_US / 1000:g} ms" if self.spinning else ""
        nice = f" at nice +{self.decode_nice}" if self.decode_nice and self.capture_threads else ""
        return (f"threads: model {self.model_threads}, opencv {self.opencv_threads}, decode {self.decode_threads} "
                f"x {self.capture_threads} capture{nice}{spin} on {self.cores} cores")

    def to_dict(self) -> dict:
        return asdict(self)


#: the most threads --threads accepts: a few per core at most (100000 started 32000 threads and took the
#: machine's process limit; outside audit)
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))


def check_threads(threads, what: str = "threads") -> None:
    """ConfigError unless `threads` is None or a whole number from 1 to MAX_THREADS."""
    from usedge.errors import ConfigError

    import numbers

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                or not 1 <= threads <= MAX_THREADS):
        raise ConfigError(f"{what} must be a whole number from 1 to {MAX_THREADS}, got {threads!r}",
                          hint="None lets usedge choose (every usable core)")


def thread_budget(cores: int | None = None, capture_threads: int = 0, *, model_threads: int | None = None,
                  spinning: bool | None = None) -> ThreadBudget:
    """The budget for `cores` (default: this process's usable cores) with `capture_threads` decoding beside
    the model. model_threads: an explicit choice (--threads) instead of the rule; spinning: an explicit
    choice (--spinning/--no-spinning), else on (bounded by SPIN_US, see the module's docstring)."""
    cores = max(1, int(cores or usable_cores()))
    capture_threads = max(0, int(capture_threads))
    if model_threads is None:
        model_threads = cores - capture_threads if cores - capture_threads >= 2 else cores
    model_threads = max(1, int(model_threads))
    spare = cores - model_threads - capture_threads
    return ThreadBudget(cores=cores, capture_threads=capture_threads, model_threads=model_threads, opencv_threads=1,
                        decode_threads=1, spinning=True if spinning is None else bool(spinning),
                        decode_nice=DECODE_NICE if capture_threads and spare < 0 else 0)


def lower_this_thread(increment: int) -> bool:
    """Raise the calling thread's nice value by `increment` (Linux: a thread's own priority; lowering a
    priority needs no privilege). False where it did not apply: another OS, increment 0, refused."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(increment)))
    except OSError:
        return False
    return True
