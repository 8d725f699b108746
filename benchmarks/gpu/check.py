"""The GPU check, driven by check.sh: everything usedge does on an NVIDIA GPU, in one short run.

    python benchmarks/gpu/check.py OUT [--dry-run] [--budget-s 500]

Steps, most valuable first (each recorded as ok / failed / skipped with a one-line reason; a failure
never stops the rest; a step that would overrun the time budget is skipped):
  env        python, torch + CUDA, GPU name and compute capability, onnxruntime providers, packages
  parity     one training step from the same weights on the same batch: CUDA (AMP fp16, channels-last)
             against CPU fp32 — loss, gradients and eval probabilities, with tolerances from fp16 rounding
  train      `usedge train --device cuda` and `--device cpu`, same seed and config: loss curves and
             test predictions side by side
  export     `usedge export` of the CUDA-trained checkpoint (ONNX fp32 + fp16, parity report)
  latency    batch 1/8/32 at 224 px: torch eager fp32/fp16, CUDA-graph replay fp16, torch.compile fp16,
             onnxruntime CPU (reference), ORT-CUDA, TensorRT for RTX, native TensorRT where present,
             else the reason
  augment    `usedge augment search --device cuda`, tiny
  ddp        `torchrun --nproc-per-node 2 -m usedge train --device cuda` (NCCL) where 2 GPUs exist
  pytest     the `gpu`-marked tests (collection only in --dry-run); last, as most of them skip on a GPU
             without TensorRT (each says why)
Writes OUT/<gpu>.json and OUT/<gpu>.md (for benchmarks/results/gpu/) and OUT/log.txt, OUT/pytest.txt.
--dry-run: the same code on the CPU at tiny sizes (make test runs it so this cannot rot).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

# AMP tolerances from fp16 rounding: unit roundoff u = 2^-11; autocast keeps accumulation, BatchNorm and
# softmax in fp32, so each of the ~20 weighted layers of a ResNet18 adds at most one fp16 rounding of its
# inputs/weights to the forward pass (worst case, linear: 20u ~ 1e-2) and three to the backward pass
# (activations, weights, incoming gradient: 60u ~ 3e-2).
FP16_U = 2.0 ** -11
LAYERS = 20
FORWARD_TOL = LAYERS * FP16_U
GRADIENT_TOL = 3 * LAYERS * FP16_U
# A short run cannot be held to per-step parity: float32 summation order alone, amplified by nine Adam
# steps, moved probabilities by 0.03 and losses by 12 % (tests/test_train_ddp.py). What AMP must give
# is the same training: a loose band on the curves and the same decisions on most test images.
RUN_LOSS_BAND = 0.25
RUN_TOP1_AGREEMENT = 0.9

SIZES = {  # real run / dry run
    False: dict(train_size=224, epochs=3, patients=(8, 8, 8), images=48, lat_size=224, batches=(1, 8, 32),
                warmup=10, iters=50, search_trials=4, child_size=64),
    True: dict(train_size=32, epochs=2, patients=(4, 4, 4), images=24, lat_size=32, batches=(1, 2),
               warmup=1, iters=3, search_trials=2, child_size=32),
}


def one_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


class Check:
    def __init__(self, out: Path, dry: bool, budget_s: float):
        self.out, self.dry, self.budget = out, dry, budget_s
        self.t0 = time.monotonic()
        self.sizes = SIZES[dry]
        self.work = Path(tempfile.mkdtemp(prefix="usedge-gpu-check-"))
        self.log = open(out / "log.txt", "a", buffering=1)
        self.result: dict = {"dry_run": dry, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": {}}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def say(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def step(self, name: str, fn, need_s: float) -> None:
        """Run one step if `need_s` seconds are left; record ok/failed/skipped, its seconds and figures."""
        if self.left() < need_s:
            self.result["steps"][name] = {"status": "skipped", "reason": f"time budget: {self.left():.0f} s left, "
                                                                         f"needs about {need_s:.0f} s"}
            self.say(f"{name}: skipped (time budget)")
            return
        self.say(f"{name} ...")
        t = time.monotonic()
        try:
            figures = fn() or {}
            rec = {"status": "ok", **figures}
        except Exception as exc:  # a step's failure is a result; the rest still runs
            rec = {"status": "failed", "error": one_line(exc)}
            self.log.write(traceback.format_exc())
        rec["seconds"] = round(time.monotonic() - t, 1)
        self.result["steps"][name] = rec
        self.say(f"{name}: {rec['status']} ({rec['seconds']} s){' — ' + rec['error'] if 'error' in rec else ''}")

    def run(self, args: list[str], timeout: float, log_to=None) -> subprocess.CompletedProcess:
        """A usedge/pytest subprocess with this checkout first on the path; output to the log."""
        cmd = [sys.executable, *map(str, args)]
        self.say("$ " + " ".join(cmd[1:]))
        # the dry run measures nothing, so a busy CPU may take as long as the budget allows
        limit = self.left() if self.dry else min(timeout, self.left())
        proc = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=max(10.0, limit))
        (log_to or self.log).write(proc.stdout[-20000:] + proc.stderr[-20000:])
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
            raise RuntimeError(f"exit {proc.returncode}: {tail[0][:250]}")
        return proc

    # ------------------------------------------------------------------ steps
    def environment(self) -> dict:
        import torch

        cuda = torch.cuda.is_available() and not self.dry
        self.device = "cuda" if cuda else "cpu"
        info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "device": self.device, "gpus": torch.cuda.device_count() if cuda else 0, "cpu_cores": os.cpu_count()}
        if cuda:
            p = torch.cuda.get_device_properties(0)
            info |= {"gpu": p.name, "compute_capability": f"{p.major}.{p.minor}",
                     "gpu_memory_gib": round(p.total_memory / 2**30, 1)}
        try:
            import onnxruntime as ort

            info |= {"onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers()}
        except ImportError:
            info["onnxruntime"] = None
        from importlib import metadata

        pkgs = {}
        for name in ("onnx", "onnxscript", "onnxconverter-common", "optuna", "pydicom", "opencv-python-headless",
                     "scikit-learn", "tensorrt", "onnxruntime-gpu", "onnxruntime-ep-nv-tensorrt-rtx-cu13", "pytest"):
            try:
                pkgs[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pkgs[name] = None
        info["packages"] = pkgs
        self.result["env"] = info
        name = info.get("gpu") or ("dry-run-cpu" if self.dry else "cpu-only")
        self.slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        return {}

    def gpu_tests(self) -> dict:
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                       if "pytest.mark.gpu" in p.read_text())
        args = ["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
        if self.dry:
            args.insert(4, "--collect-only")
        with open(self.out / "pytest.txt", "w") as log:
            try:
                proc = self.run(args, timeout=240, log_to=log)
                text = proc.stdout
            except RuntimeError as exc:
                raise RuntimeError(f"gpu tests failed ({exc}); see pytest.txt") from exc
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|tests? collected)", text)}
        return {"files": files, "summary": text.strip().splitlines()[-1] if text.strip() else "", **counts}

    def data(self) -> None:
        from usedge.synth.cohort import make_cohort

        s = self.sizes
        self.data_dir = self.work / "cohort"
        make_cohort(self.data_dir, seed=0, patients=s["patients"], images=s["images"], progress=False)
        self.config = self.work / "check.toml"
        self.config.write_text(
            f"[data]\nimage_size = {s['train_size']}\n[optim]\nepochs = {s['epochs']}\nbatch_size = 8\nlr = 1e-4\n"
            "[cv]\nfolds = 3\nmax_folds = 1\nfinal_model = false\n[run]\nseed = 0\namp = true\nchannels_last = true\n")

    def step_parity(self) -> dict:
        import torch

        from usedge.train.loss import build_loss
        from usedge.train.model import build_model

        dev = torch.device(self.device)
        amp = dev.type == "cuda"
        torch.manual_seed(0)
        cpu_model = build_model("ag_resnet18", 3, "sigmoid")
        gpu_model = copy.deepcopy(cpu_model).to(dev, memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(8, 1, self.sizes["train_size"], self.sizes["train_size"], generator=g)
        y = torch.arange(8) % 3
        loss_fn = build_loss("focal", 3, 3.0, [0.75, 0.75, 0.25])

        cpu_loss = loss_fn(cpu_model(x), y)
        cpu_loss.backward()
        opt = torch.optim.SGD(gpu_model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler(dev.type, enabled=amp)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            gpu_loss = loss_fn.to(dev)(gpu_model(x.to(dev).contiguous(memory_format=torch.channels_last)), y.to(dev))
        scaler.scale(gpu_loss).backward()
        scaler.unscale_(opt)
        ga = torch.cat([p.grad.flatten() for p in cpu_model.parameters()])
        gb = torch.cat([p.grad.float().flatten().cpu() for p in gpu_model.parameters()])
        grad_rel = float((ga - gb).norm() / ga.norm())
        cpu_model.eval(), gpu_model.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            pa = torch.softmax(cpu_model(x), 1)
            pb = torch.softmax(gpu_model(x.to(dev).contiguous(memory_format=torch.channels_last)).float(), 1).cpu()
        loss_rel = abs(float(gpu_loss.detach()) - float(cpu_loss.detach())) / abs(float(cpu_loss.detach()))
        prob_diff = float((pa - pb).abs().max())
        ok = loss_rel <= FORWARD_TOL and prob_diff <= FORWARD_TOL and grad_rel <= GRADIENT_TOL
        return {"amp": amp, "loss_rel_diff": loss_rel, "grad_rel_l2": grad_rel, "prob_max_diff": prob_diff,
                "forward_tol": FORWARD_TOL, "gradient_tol": GRADIENT_TOL, "within_tolerance": ok}

    def train(self) -> dict:
        a, b = self.work / "run-device", self.work / "run-cpu"
        for out, dev in ((a, self.device), (b, "cpu")):
            self.run(["-m", "usedge", "train", self.data_dir, "--out", out, "--config", self.config,
                      "--device", dev, "-q"], timeout=240)
        self.checkpoint = a / "fold0" / "best.pt"
        ra, rb = (json.loads((r / "fold0" / "result.json").read_text()) for r in (a, b))
        la, lb = np.array([h["train_loss"] for h in ra["history"]]), np.array([h["train_loss"] for h in rb["history"]])
        pa, pb = np.array(ra["probs"]), np.array(rb["probs"])
        band = float(np.max(np.abs(la - lb) / np.abs(lb)))
        agree = float((pa.argmax(1) == pb.argmax(1)).mean())
        return {"devices": [self.device, "cpu"], "train_loss_device": la.round(5).tolist(),
                "train_loss_cpu": lb.round(5).tolist(), "loss_max_rel_diff": band,
                "prob_max_diff": float(np.abs(pa - pb).max()), "top1_agreement": agree,
                "images_per_second_device": [round(h["images_per_second"], 1) for h in ra["history"]],
                "within_band": band <= RUN_LOSS_BAND and agree >= RUN_TOP1_AGREEMENT,
                "band": {"loss_rel": RUN_LOSS_BAND, "top1_agreement": RUN_TOP1_AGREEMENT}}

    def augment(self) -> dict:
        policy = self.work / "policy.json"
        s = self.sizes
        self.run(["-m", "usedge", "augment", "search", self.data_dir, "--out", policy, "--device", self.device,
                  "--trials", s["search_trials"], "--inner-splits", 2, "--top", 1, "--child-size", s["child_size"],
                  "--child-epochs", 1, "--folds", 3, "--max-folds", 1, "--cache-dir", self.work / "search-cache",
                  "-q"], timeout=180)
        doc = json.loads(policy.read_text())
        return {"policy_keys": sorted(doc)[:8]}

    def ddp(self) -> dict:
        """Two processes, NCCL, one GPU each (NCCL refuses two ranks on one GPU)."""
        out = self.work / "run-ddp"
        self.run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", 2, "-m", "usedge", "train",
                  self.data_dir, "--out", out, "--config", self.config, "--device", "cuda", "-q"], timeout=240)
        res = json.loads((out / "fold0" / "result.json").read_text())
        run = json.loads((out / "run.json").read_text())
        return {"world_size": run.get("world_size"), "train_loss": [round(h["train_loss"], 5) for h in res["history"]]}

    def export(self) -> dict:
        self.models = self.work / "models"
        self.run(["-m", "usedge", "export", self.checkpoint, "--out", self.models, "--no-int8", "--data",
                  self.data_dir, "--parity-count", 8, "--reference-count", 0, "-q"], timeout=240)
        report = json.loads((self.models / "export_report.json").read_text()) \
            if (self.models / "export_report.json").is_file() else {}
        return {"artifacts": sorted(p.name for p in self.models.glob("*.onnx")),
                "checks": {c["name"]: c.get("passed") for c in report.get("checks", [])}}

    def latency(self) -> dict:
        from gpu_latency import latency_rows

        rows = latency_rows(self.device, self.sizes, getattr(self, "models", None), dry=self.dry,
                            log=self.say, deadline=time.monotonic() + self.left() - 5)
        self.result["latency"] = rows
        return {"rows": len(rows), "measured": sum("median_ms" in r for r in rows)}

    def write(self) -> list[Path]:
        from gpu_report import markdown

        self.result["seconds"] = round(time.monotonic() - self.t0, 1)
        slug = getattr(self, "slug", "unknown")
        paths = [self.out / f"{slug}.json", self.out / f"{slug}.md"]
        paths[0].write_text(json.dumps(self.result, indent=1, default=str) + "\n")
        paths[1].write_text(markdown(self.result))
        return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the code, measures nothing")
    ap.add_argument("--budget-s", type=float, default=500.0, help="seconds for all steps (check.sh: 10 min - install)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).parent))
    c = Check(args.out, args.dry_run, args.budget_s)
    c.step("env", c.environment, 0)
    c.step("data", c.data, 5)
    c.step("parity", c.step_parity, 10)
    if c.result["steps"]["data"]["status"] == "ok":
        c.step("train", c.train, 60)
    if getattr(c, "checkpoint", None) is not None and c.checkpoint.is_file():
        c.step("export", c.export, 40)
    c.step("latency", c.latency, 30)
    if c.result["steps"]["data"]["status"] == "ok":
        c.step("augment", c.augment, 40)
    if c.result.get("env", {}).get("gpus", 0) >= 2:
        c.step("ddp", c.ddp, 60)
    else:
        c.result["steps"]["ddp"] = {"status": "skipped", "reason": "needs 2 CUDA GPUs (NCCL refuses two ranks on one "
                                    "GPU); DDP on the CPU (gloo) is tests/test_train_ddp.py"}
    c.step("pytest", c.gpu_tests, 60)
    for p in c.write():
        c.say(f"wrote {p}")
    shutil.rmtree(c.work, ignore_errors=True)
    failed = [k for k, v in c.result["steps"].items() if v["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
