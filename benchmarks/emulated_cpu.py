"""onnxruntime's outputs on another x86-64 CPU: emulated (QEMU user mode) or this CPU with features hidden.

onnxruntime picks its kernels from CPUID. Two ways to make it pick an AVX2-only CPU's kernels
(VPMADDUBSW with int16 pair sums for int8, which a VNNI machine never runs):

  qemu-x86_64 -cpu Haswell-v4   emulates AVX2 and FMA, no AVX-512, no VNNI: numbers only (emulated time
                                says nothing about speed); needs QEMU user mode
  avx2-mask                     runs natively on this CPU with AVX-512, VNNI and AMX hidden from CPUID
                                (benchmarks/cpuid_mask.c, an LD_PRELOAD shim using Linux CPUID faulting):
                                the AVX2 kernels at full speed, so timing means something too; needs the
                                CPU flag cpuid_fault (Intel; some VMs pass it on) and a C compiler

    emulated_probs(cpu, {"fp32": path, ...}, x, work_dir) -> ({name: probs}, features seen)
    cpuid_mask_env(work_dir) -> environment (LD_PRELOAD) that hides them from a child process

Run as a script, it is the worker that QEMU (or the masked child) starts (numpy and onnxruntime only,
one thread):
    python benchmarks/emulated_cpu.py X.npy OUT.npz MODEL.onnx [MODEL.onnx ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512VNNI", "AVX512_SPR")   # numpy's names for CPUID features
MASK = "avx2-mask"          # the --emulate-cpu value that hides AVX-512/VNNI/AMX natively (cpuid_mask.c)
MASK_SOURCE = Path(__file__).resolve().parent / "cpuid_mask.c"


def cpuid_mask_unavailable() -> str | None:
    """Why this machine cannot hide CPU features by CPUID faulting, or None when it can."""
    from usedge.runtime.cpu import cpu_flags

    if "cpuid_fault" not in cpu_flags():
        return "this CPU (or its VM) offers no CPUID faulting (no cpuid_fault flag in /proc/cpuinfo)"
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler (cc) to build benchmarks/cpuid_mask.c"
    return None


def cpuid_mask_env(work: Path) -> dict[str, str]:
    """os.environ plus LD_PRELOAD of benchmarks/cpuid_mask.c built into `work`: a child process started
    with it sees this CPU without AVX-512, VNNI and AMX. SystemExit with the reason when this machine
    cannot (see cpuid_mask_unavailable)."""
    why = cpuid_mask_unavailable()
    if why:
        raise SystemExit(f"{MASK} needs CPUID faulting: {why}; use a QEMU CPU model instead (e.g. Haswell-v4)")
    source = MASK_SOURCE.read_bytes()
    lib = Path(work) / f"cpuid_mask-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if not lib.is_file():
        cc = shutil.which("cc") or shutil.which("gcc")
        res = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(MASK_SOURCE), "-ldl"],
                             capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
        if res.returncode != 0:
            raise SystemExit(f"building {MASK_SOURCE.name} failed: {res.stderr.strip()[-300:]}")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(lib), env.get("LD_PRELOAD", "")]))
    env["CPUID_MASK_QUIET"] = "1"
    return env


def emulated_probs(cpu: str, paths: dict[str, Path], x: np.ndarray, work: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The `probs` output of each ONNX file for x, with onnxruntime (CPU, 1 thread) under qemu-x86_64 -cpu `cpu`
    (or, for cpu == MASK, natively with AVX-512/VNNI/AMX hidden), and the CPU features the program saw
    (numpy's CPUID probe)."""
    names = list(paths)
    np.save(work / "emulated_x.npy", np.ascontiguousarray(x, np.float32))
    worker = [sys.executable, __file__, str(work / "emulated_x.npy"), str(work / "emulated.npz"),
              *(str(paths[k]) for k in names)]
    if cpu == MASK:
        cmd, env = worker, cpuid_mask_env(work)
    else:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("--emulate-cpu needs qemu-x86_64 (QEMU user mode: apt-get install qemu-user)")
        cmd, env = [qemu, "-cpu", cpu, *worker], None
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
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
