"""Latency statistics as trtexec reports them, and a timer that records wall and CPU time per call."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

STAT_KEYS = ("min", "mean", "median", "p90", "p95", "p99", "max")


def latency_stats(samples_ms) -> dict[str, float]:
    """min, mean, median, p90, p95, p99, max (ms) and n of a list of per-call times in ms."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        return {k: float("nan") for k in STAT_KEYS} | {"n": 0}
    q = np.percentile(a, [50, 90, 95, 99])
    out = {"min": a.min(), "mean": a.mean(), "median": q[0], "p90": q[1], "p95": q[2], "p99": q[3], "max": a.max()}
    return {k: round(float(v), 4) for k, v in out.items()} | {"n": int(a.size)}


def time_calls(fn: Callable[[], object], iters: int) -> tuple[list[float], list[float]]:
    """Call fn() `iters` times; return (wall ms per call, CPU ms per call).

    CPU time is time.process_time (every thread of this process): waiting for a CPU that other
    programs hold is not counted, so it is the steadier figure on a shared machine.
    """
    wall, cpu = [], []
    for _ in range(iters):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.process_time()
        wall.append((t1 - t0) * 1e3)
        cpu.append((c1 - c0) * 1e3)
    return wall, cpu


def cpu_counters() -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs since boot, from /proc/stat's first line (Linux; None
    elsewhere). Steal is the time a virtual machine's CPUs were runnable but the host ran something else."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(v) for v in fields[1:9]]      # user nice system idle iowait irq softirq steal (guest is in user)
    return ticks[7], sum(ticks)


def steal_since(start: tuple[int, int] | None) -> float | None:
    """The fraction of all CPU time since `start` (cpu_counters()) that the host took from this VM
    (0 on a machine of its own), None where it cannot be read. A benchmark states it: on a shared host
    a slow run is told apart from slow code by it."""
    now = cpu_counters()
    if start is None or now is None or now[1] <= start[1]:
        return None
    return round((now[0] - start[0]) / (now[1] - start[1]), 4)


def load_average() -> list[float] | None:
    """The 1/5/15-minute load average (None where the OS has none)."""
    try:
        import os
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None
