"""`usedge bench MODEL_DIR`: measure every row, compute ratios, efficiency and the targets, write results.

Order of work (one process, one run, so every ratio compares figures taken under the same load):
GEMM limit -> load every row -> batch-1 latency in interleaved rounds (row A, B, C, A, B, C, ...: a
burst of other work on the machine hits every row alike) -> throughput at each batch -> GEMM limit
again (the best of both counts) -> the 1080p stage breakdown and the stream figure.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from usedge.bench.engines import engine_specs, make_runner, read_model_info
from usedge.bench.stats import cpu_counters, latency_stats, load_average, steal_since, time_calls
from usedge.errors import ConfigError, ModelError
from usedge.runtime.threads import ThreadBudget

TARGETS = {  # the aims, as ratios measured in one run
    "ort_fp32_vs_torch": 0.6,          # onnxruntime fp32 batch-1 median <= 0.6 x torch eager
    "int8_vs_ort_fp32": 0.6,           # int8 <= 0.6 x onnxruntime fp32
    "int8_accuracy_drop_points": 1.0,  # at most 1 point lower accuracy (from the export report)
    "fp32_gemm_efficiency": 0.85,      # fp32 inference >= 85 % of the measured GEMM limit
    "outside_model_share": 0.15,       # pipeline outside the model <= 15 % of the frame latency
    "loop_outside_model_share": 0.10,  # issue 18 item 2: the loop's own stages outside the model <= 10 % (wall)
    "model_in_pipeline_vs_alone": 1.10,  # the model inside the stream within 10 % of its standalone median
    "paced_missed_frames": 0,          # paced stream (int8 at 30 fps, fp32 at 15 fps): no frame dropped or skipped
    "paced_p99_ms": 40.0,              # and capture-to-result p99 <= 40 ms
}


MAX_BATCH = 512          # a throughput batch larger allocates tens of GiB of activations at 224 px
MAX_PACED_S = 3600.0     # an hour of paced stream


@dataclass
class BenchOptions:
    """What to measure. `quick` shrinks every count for a smoke run (tens of seconds)."""

    quick: bool = False
    batches: tuple[int, ...] = (1, 8, 32)
    threads: int | None = None            # intra-op threads for every CPU row; None: all cores
    warmup: int = 10                      # batch-1 calls before timing, per row
    iters: int = 100                      # batch-1 timed calls per row (spread over `rounds`)
    rounds: int = 5                       # interleaving rounds
    throughput_iters: int = 8             # timed calls per row and batch size
    max_cell_s: float = 20.0              # stop timing one row/batch after this many seconds (>= 1 call)
    rows: tuple[str, ...] = ()            # keep only rows whose key starts with one of these ("ort-cpu", "openvino/int8")
    stages: bool = True
    stage_frames: int = 40
    paced_seconds: float = 10.0           # the paced stream targets' video (issue 18: 60 s in stream_realtime.py)
    gemm_sizes: tuple[int, ...] = (1024, 2048)
    gemm_reps: int = 5
    plots: bool = True
    work_dir: Path | None = None          # where the 1080p video is made (default: a temporary folder)
    explicit: tuple[str, ...] = ()        # fields the user set (the CLI's own options): `quick` leaves them

    QUICK = {"warmup": 2, "iters": 10, "rounds": 2, "throughput_iters": 2, "max_cell_s": 5.0, "stage_frames": 6,
             "paced_seconds": 1.0}

    def __post_init__(self) -> None:
        if self.quick:
            for name, cap in self.QUICK.items():
                if name not in self.explicit:
                    setattr(self, name, min(getattr(self, name), cap))
            self.gemm_sizes, self.gemm_reps = (512,), 3
        if any(not 1 <= b <= MAX_BATCH for b in self.batches) or not self.batches:
            raise ConfigError(f"batch sizes must be 1..{MAX_BATCH}, got {self.batches}", hint="e.g. --batch 1,8,32")
        if not 0 < self.max_cell_s < float("inf"):
            raise ConfigError(f"max_cell_s must be > 0 seconds, got {self.max_cell_s}", hint="e.g. --max-cell-s 20")
        if not 0 <= self.paced_seconds <= MAX_PACED_S:
            raise ConfigError(f"paced_seconds must be 0..{MAX_PACED_S:.0f} s (0 skips the paced streams), got "
                              f"{self.paced_seconds}", hint="e.g. --paced-seconds 10")
        if self.iters < 1 or self.rounds < 1 or self.warmup < 0:
            raise ConfigError("iters and rounds must be >= 1, warmup >= 0", hint="e.g. --iters 100 --rounds 5")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}", hint="e.g. --threads 2")


def find_models(model_dir: Path) -> tuple[Path, Path]:
    """(folder, the ONNX whose metadata describes the model). A file is taken as its folder."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        model_dir = model_dir.parent
    if not model_dir.is_dir():
        raise ModelError("model folder not found", path=model_dir, hint="pass the --out folder of `usedge export`")
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx"):
        if (model_dir / name).is_file():
            return model_dir, model_dir / name
    raise ModelError("no model.onnx / model.int8.onnx in this folder", path=model_dir,
                     hint="pass the --out folder of `usedge export`")


def _measure_latency(runners: dict, x: np.ndarray, opt: BenchOptions, progress) -> dict:
    wall = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    for key, runner in runners.items():
        deadline = time.perf_counter() + opt.max_cell_s / 2
        for i in range(opt.warmup):   # a very slow row warms up for at most max_cell_s / 2 (>= 1 call)
            runner.infer(x)
            if time.perf_counter() > deadline:
                break
    per_round = max(1, -(-opt.iters // opt.rounds))
    task = progress.add_task("batch-1 latency", total=opt.rounds * len(runners)) if progress else None
    for _ in range(opt.rounds):
        for key, runner in runners.items():
            deadline = time.perf_counter() + opt.max_cell_s / opt.rounds
            for _ in range(per_round):
                w, c = time_calls(lambda: runner.infer(x), 1)
                wall[key] += w
                cpu[key] += c
                if time.perf_counter() > deadline:
                    break
            if progress:
                progress.advance(task)
    return {k: {"wall_ms": latency_stats(wall[k]), "cpu_ms": latency_stats(cpu[k]), "samples_ms": wall[k]}
            for k in runners}


def _measure_throughput(runners: dict, size: int, opt: BenchOptions, progress) -> dict:
    rng = np.random.default_rng(1)
    out = {k: {} for k in runners}
    task = progress.add_task("throughput", total=len(opt.batches) * len(runners)) if progress else None
    for b in opt.batches:
        x = rng.standard_normal((b, 1, size, size), dtype=np.float32)
        for key, runner in runners.items():
            try:
                runner.infer(x)   # warm-up at this shape
                n, t_wall, t_cpu = 0, 0.0, 0.0
                deadline = time.perf_counter() + opt.max_cell_s
                while n < opt.throughput_iters and (n == 0 or time.perf_counter() < deadline):
                    w, c = time_calls(lambda: runner.infer(x), 1)
                    n, t_wall, t_cpu = n + 1, t_wall + w[0], t_cpu + c[0]
                out[key][str(b)] = {"images_per_s": round(b * n / (t_wall / 1e3), 3),
                                    "images_per_cpu_s": round(b * n / (t_cpu / 1e3), 3) if t_cpu > 0 else None,
                                    "calls": n, "ms_per_call": round(t_wall / n, 3)}
            except Exception as exc:  # e.g. an engine whose profile stops below this batch
                out[key][str(b)] = {"error": str(exc).strip().splitlines()[0][:200] if str(exc).strip() else
                                    type(exc).__name__}
            if progress:
                progress.advance(task)
    return out


def _ratio(a, b):
    return round(a / b, 4) if a and b and np.isfinite(a) and np.isfinite(b) else None


def _fixed(v) -> str:
    """An accuracy as 0.377 (3 decimals), or what it is when not a number."""
    return f"{v:.3f}" if isinstance(v, (int, float)) and np.isfinite(v) else str(v)


def _export_accuracy(model_dir: Path) -> dict | None:
    """fp32 vs int8 accuracy on held-out images from the export report beside the models, if any."""
    import json

    path = model_dir / "export_report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for check in report.get("checks", []):
        if "int8" in str(check.get("name", "")) and "accuracy" in str(check.get("name", "")):
            f = check.get("figures", {})
            drop = f.get("accuracy_drop")
            return {"source": str(path), "n": f.get("n"), "accuracy_fp32": f.get("accuracy_a"),
                    "accuracy_int8": f.get("accuracy_b"), "top1_agreement": f.get("top1_agreement"),
                    "drop_points": round(100 * drop, 3) if drop is not None else None,
                    "labelled": report.get("data", {}).get("source") is not None,
                    "trained_on": bool(report.get("data", {}).get("trained_on_checks"))}
    return {"source": str(path), "drop_points": None}


def run_bench(model_dir: str | Path, options: BenchOptions | None = None, out_dir: str | Path | None = None,
              *, progress: bool = True, log=print) -> dict:
    """Measure everything; write bench.json / bench.md / PNGs into out_dir (when given); return the result."""
    from usedge.bench.flops import count_flops
    from usedge.bench.gemm import gemm_limit
    from usedge.bench.machine import machine_info

    opt = options or BenchOptions()
    model_dir, info_path = find_models(Path(model_dir))
    info = read_model_info(info_path)
    threads = opt.threads or os.cpu_count() or 1
    size = int(info.input_size or info.preprocess.size)
    result: dict = {"model_dir": str(model_dir), "model": {"arch": info.arch, "input_size": size,
                                                          "classes": list(info.class_names),
                                                          "outputs": list(info.outputs)},
                    "options": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                                for k, v in asdict(opt).items()} | {"threads_used": threads},
                    "machine": machine_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    counters = cpu_counters()

    flops_src = model_dir / "model.onnx" if (model_dir / "model.onnx").is_file() else info_path
    try:
        flops = count_flops(flops_src, batch=1).to_dict()
        flops["source"] = flops_src.name
    except (ModelError, ImportError) as exc:   # onnx is not in the lean install
        flops = {"error": exc.one_line() if isinstance(exc, ModelError) else str(exc)}
    result["flops"] = flops

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), disable=not progress, transient=True)
    specs = list(engine_specs(model_dir, info, threads))
    if opt.rows and not any(spec.key.startswith(r) for spec, _ in specs for r in opt.rows):
        raise ConfigError(f"--rows {','.join(opt.rows)} names no row of this model folder",
                          hint=f"the rows here: {', '.join(spec.key for spec, _ in specs)}")
    with bar:
        gemm_before = gemm_limit(threads, opt.gemm_sizes, opt.gemm_reps)

        rows, runners = [], {}
        for spec, why in specs:
            if opt.rows and not any(spec.key.startswith(r) for r in opt.rows):
                continue
            row = {"key": spec.key, "backend": spec.backend, "precision": spec.precision, "device": spec.device,
                   "file": spec.path.name if spec.path else None}
            if why is None:
                runner, why = make_runner(spec)
                if runner is not None:
                    runners[spec.key] = runner
                    row["engine"] = runner.note
            row["skipped"] = why
            rows.append(row)

        x = np.random.default_rng(0).standard_normal((1, 1, size, size), dtype=np.float32)
        latency = _measure_latency(runners, x, opt, bar)
        throughput = _measure_throughput(runners, size, opt, bar)
        for runner in runners.values():
            runner.close()
        gemm_after = gemm_limit(threads, opt.gemm_sizes, opt.gemm_reps)

    gemm = {"before": gemm_before, "after": gemm_after,
            "limit_gflops": max(gemm_before["limit_gflops"], gemm_after["limit_gflops"]),
            "limit_gflops_per_cpu_s": max(gemm_before["limit_gflops_per_cpu_s"],
                                          gemm_after["limit_gflops_per_cpu_s"])}
    result["gemm"] = gemm

    gflop = flops.get("gemm_flops", 0) / 1e9 if "error" not in flops else None
    base_torch = latency.get("torch-eager/fp32", {}).get("wall_ms", {}).get("median")
    base_ort = latency.get("ort-cpu/fp32", {}).get("wall_ms", {}).get("median")
    cpu_torch = latency.get("torch-eager/fp32", {}).get("cpu_ms", {}).get("median")
    cpu_ort = latency.get("ort-cpu/fp32", {}).get("cpu_ms", {}).get("median")
    for row in rows:
        lat = latency.get(row["key"])
        if lat is None:
            continue
        w, c = lat["wall_ms"], lat["cpu_ms"]
        row["latency_ms"] = w
        row["cpu_ms"] = c
        row["samples_ms"] = [round(v, 4) for v in lat["samples_ms"]]
        row["throughput"] = throughput.get(row["key"], {})
        row["vs_torch_eager"] = _ratio(w["median"], base_torch)
        row["vs_ort_fp32"] = _ratio(w["median"], base_ort)
        row["cpu_vs_torch_eager"] = _ratio(c["median"], cpu_torch)
        row["cpu_vs_ort_fp32"] = _ratio(c["median"], cpu_ort)
        if gflop and row["device"] == "cpu":
            # achieved GFLOP/s of the model's exact GEMM work, against the GEMM limit measured in this run
            row["gflops_median"] = round(gflop / (w["median"] / 1e3), 2)
            row["gflops_best"] = round(gflop / (w["min"] / 1e3), 2)
            row["gemm_efficiency_median"] = _ratio(row["gflops_median"], gemm["limit_gflops"])
            row["gemm_efficiency_best"] = _ratio(row["gflops_best"], gemm["limit_gflops"])
            if c["median"] > 0:
                row["gflops_per_cpu_s"] = round(gflop / (c["median"] / 1e3), 2)
                row["gemm_efficiency_cpu"] = _ratio(row["gflops_per_cpu_s"], gemm["limit_gflops_per_cpu_s"])
    result["rows"] = rows

    if opt.stages and (model_dir / "model.onnx").is_file():
        from usedge.bench.stages import PACED_FPS, paced_stream, scanner_video, stage_breakdown, stream_figure
        with tempfile.TemporaryDirectory(prefix="usedge-bench-") as tmp:   # the video is removed unless work_dir
            work = Path(opt.work_dir) if opt.work_dir else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            video = scanner_video(work, opt.stage_frames)
            stages = {"video": {"frames": opt.stage_frames, "size": [1920, 1080], "fps": 30}, "models": {}}
            paced_video = scanner_video(work, max(1, round(opt.paced_seconds * 30))) if opt.paced_seconds > 0 else None
            for name in ("model.onnx", "model.int8.onnx"):
                if (model_dir / name).is_file():
                    stages["models"][name] = {"per_stage": stage_breakdown(model_dir / name, video, threads=threads),
                                              "stream": stream_figure(model_dir / name, video, threads=threads)}
                    if paced_video is not None:
                        stages["models"][name]["paced"] = paced_stream(model_dir / name, paced_video, threads=threads,
                                                                       fps=PACED_FPS[name])
        result["stages"] = stages
    result["accuracy"] = _export_accuracy(model_dir)
    result["targets"] = evaluate_targets(result)
    result["machine"]["load_average_end"] = load_average()
    result["machine"]["cpu_steal"] = steal_since(counters)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if out_dir is not None:
        from usedge.bench.report import write_results
        result["files"] = [str(p) for p in write_results(result, Path(out_dir), plots=opt.plots)]
    return result


def _row(result: dict, key: str) -> dict:
    return next((r for r in result["rows"] if r["key"] == key and "latency_ms" in r), {})


def evaluate_targets(result: dict) -> list[dict]:
    """Each of the issue's targets with the measured value, the aim and passed (None: not measured)."""
    out = []

    def add(name, value, aim, better, note=""):
        passed = None if value is None else (value <= aim if better == "lower" else value >= aim)
        note = "" if value is None else note        # "CPU-time ratio None" beside a row that was not measured
        out.append({"target": name, "value": value, "aim": aim, "better": better, "passed": passed, "note": note})

    ort = _row(result, "ort-cpu/fp32")
    int8, ov32, ov8 = _row(result, "ort-cpu/int8"), _row(result, "openvino/fp32"), _row(result, "openvino/int8")
    add("onnxruntime fp32 / torch eager (batch-1 median)", ort.get("vs_torch_eager"), TARGETS["ort_fp32_vs_torch"],
        "lower", f"CPU-time ratio {ort.get('cpu_vs_torch_eager')}")
    add("onnxruntime int8 / onnxruntime fp32 (batch-1 median)", int8.get("vs_ort_fp32"),
        TARGETS["int8_vs_ort_fp32"], "lower", f"CPU-time ratio {int8.get('cpu_vs_ort_fp32')}")
    for mine, other, prec in ((ort, ov32, "fp32"), (int8, ov8, "int8")):
        r = _ratio(mine.get("latency_ms", {}).get("median"), other.get("latency_ms", {}).get("median"))
        c = _ratio(mine.get("cpu_ms", {}).get("median"), other.get("cpu_ms", {}).get("median"))
        add(f"onnxruntime {prec} / OpenVINO {prec} (batch-1 median)", r, 1.0, "lower", f"CPU-time ratio {c}")
    add("onnxruntime fp32 GEMM efficiency (median latency)", ort.get("gemm_efficiency_median"),
        TARGETS["fp32_gemm_efficiency"], "higher",
        f"best-case {ort.get('gemm_efficiency_best')}, CPU-time {ort.get('gemm_efficiency_cpu')}")
    acc = result.get("accuracy") or {}
    drop = acc.get("drop_points")
    add("int8 accuracy drop (points, export report)", drop, TARGETS["int8_accuracy_drop_points"], "lower",
        (f"fp32 {_fixed(acc.get('accuracy_fp32'))} -> int8 {_fixed(acc.get('accuracy_int8'))} on {acc.get('n')} "
         + ("images the model trained on (training accuracy; read it as agreement)" if acc.get("trained_on")
            else "held-out images")) if drop is not None else "no export report with an int8 accuracy check beside the models")
    alone = {"model.onnx": ort, "model.int8.onnx": int8}
    for name, m in (result.get("stages") or {}).get("models", {}).items():
        share = m["stream"]["outside_model_share"]
        add(f"outside-model share of capture-to-result, {name} (stream p50)", share,
            TARGETS["outside_model_share"], "lower",
            f"per-stage CPU-time share {m['per_stage']['cpu_ms']['outside_model_share']}")
        # wall: the loop's latency (the model's pool holds both cores; CPU time would count them twice)
        loop = m["per_stage"]
        add(f"outside-model share of the loop's own stages, {name} (per-stage wall medians)",
            loop["wall_ms"]["loop_outside_model_share"], TARGETS["loop_outside_model_share"], "lower",
            "freeze + crop (with the quality gate) + normalise + post against the model; CPU-time share "
            f"{loop['cpu_ms']['loop_outside_model_share']}")
        alone_ms = alone[name].get("latency_ms", {}).get("median")
        threads = ThreadBudget(**m["stream"]["threads"]).line() if m["stream"].get("threads") else ""
        add(f"model in the unpaced stream / model alone, {name} (p50 / batch-1 median)",
            _ratio(m["stream"]["model_p50_ms"], alone_ms), TARGETS["model_in_pipeline_vs_alone"], "lower",
            f"{threads}; the next frame decodes beside the model (a file read as fast as the loop takes it)")
        paced = m.get("paced")
        if paced:
            where = f"{paced['fps']:g} fps paced, {paced['seconds']:g} s, {paced['frames_read']} frames"
            add(f"model in the stream at {paced['fps']:g} fps paced / model alone, {name} (p50 / batch-1 median)",
                _ratio(paced.get("model_ms", {}).get("p50"), alone_ms), TARGETS["model_in_pipeline_vs_alone"],
                "lower", f"{where}; frames decoded at their due time, as a scanner delivers them")
            add(f"stream {name} at {paced['fps']:g} fps: frames dropped or skipped", paced["missed"],
                TARGETS["paced_missed_frames"], "lower", where)
            add(f"stream {name} at {paced['fps']:g} fps: capture-to-result p99 ms",
                paced["capture_to_result_ms"].get("p99"), TARGETS["paced_p99_ms"], "lower", where)
    return out
