"""onnxruntime's outputs on another x86-64 CPU, emulated: `qemu-x86_64 -cpu MODEL` (QEMU user mode).

onnxruntime picks its kernels from CPUID, so under QEMU with `-cpu Haswell-v4` (AVX2 and FMA, no
AVX-512, no VNNI) it runs the AVX2 int8 kernels (VPMADDUBSW, int16 pair sums) that a VNNI machine
never runs: the numbers are those of an AVX2-only CPU. Only the numbers: emulated time says nothing
about speed.

    emulated_probs("Haswell-v4", {"fp32": path, ...}, x, work_dir) -> ({name: probs}, features seen)

Run as a script, it is the worker that QEMU starts (numpy and onnxruntime only, one thread):
    python benchmarks/emulated_cpu.py X.npy OUT.npz MODEL.onnx [MODEL.onnx ...]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512VNNI", "AVX512_SPR")   # numpy's names for CPUID features


def emulated_probs(cpu: str, paths: dict[str, Path], x: np.ndarray, work: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The `probs` output of each ONNX file for x, with onnxruntime (CPU, 1 thread) under qemu-x86_64 -cpu `cpu`,
    and the CPU features the emulated program saw (numpy's CPUID probe)."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("--emulate-cpu needs qemu-x86_64 (QEMU user mode: apt-get install qemu-user)")
    names = list(paths)
    np.save(work / "emulated_x.npy", np.ascontiguousarray(x, np.float32))
    cmd = [qemu, "-cpu", cpu, sys.executable, __file__, str(work / "emulated_x.npy"), str(work / "emulated.npz"),
           *(str(paths[k]) for k in names)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = [ln for ln in res.stderr.splitlines() if "TCG doesn't support" not in ln][-1:]
        raise SystemExit(f"the emulated run ({' '.join(cmd[:3])}) failed: {last[0] if last else res.returncode}")
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    out = np.load(work / "emulated.npz")
    return {k: out[f"m{i}"] for i, k in enumerate(names)}, seen


def _worker(argv: list[str]) -> None:
    import onnxruntime as ort
    from numpy._core._multiarray_umath import __cpu_features__

    x_path, out_path, *models = argv
    x = np.load(x_path)
    outs = {}
    for i, path in enumerate(models):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outs[f"m{i}"] = np.concatenate([session.run(["probs"], {name: x[j:j + 16]})[0] for j in range(0, len(x), 16)])
    np.savez(out_path, **outs)
    print(json.dumps({k: bool(__cpu_features__.get(k, False)) for k in FEATURES}))


if __name__ == "__main__":
    _worker(sys.argv[1:])
