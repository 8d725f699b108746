"""`usedge bench`: every backend and precision side by side on this machine, against the hardware limit.

    from usedge.bench import BenchOptions, run_bench
    result = run_bench("models/NAME", BenchOptions(quick=True), out_dir="bench_out")

Lean at import time: numpy only. torch (the eager row), openvino and matplotlib (the plots) are
imported inside the functions that need them, and their rows or plots are skipped with the reason
when they are not installed.
"""

from usedge.bench.run import BenchOptions, run_bench  # noqa: E402

__all__ = ["BenchOptions", "run_bench"]
