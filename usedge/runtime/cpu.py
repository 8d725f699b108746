"""The CPU this process runs on: model name, the SIMD flags inference kernels depend on, usable cores.

One definition, used by the thread budget (`threads.py`), the backend trial's cache key
(`backends/trial.py`), the export report and every benchmark's results file.
"""

from __future__ import annotations

import os
import platform

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def cpu_flags() -> set[str]:
    """Every flag /proc/cpuinfo lists for this CPU (empty where it cannot be read)."""
    return _cpuinfo()[1]


def cpu_model() -> tuple[str, list[str]]:
    """(CPU model name, the SIMD flags that matter to inference kernels) from /proc/cpuinfo."""
    name, have = _cpuinfo()
    return name, [f for f in CPU_FLAGS if f in have]


def int8_kernels(flags) -> str:
    """Which onnxruntime u8 x s8 kernels these CPU flags get: 'vnni' (pairs widen to int32: exact),
    'avx2' (VPMADDUBSW: pairs add in saturating int16) or 'sse'."""
    if {"avx512_vnni", "avx_vnni"} & set(flags):
        return "vnni"
    return "avx2" if "avx2" in flags else "sse"


def _cpuinfo() -> tuple[str, set[str]]:
    name, have = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and ":" in line:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    have = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return name, have


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def machine_key() -> str:
    """CPU model, SIMD flags and usable cores in one string: what a cached speed measurement depends on."""
    name, flags = cpu_model()
    return f"{name} [{' '.join(flags) or 'no avx2'}] {usable_cores()} cores"
