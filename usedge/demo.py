"""`usedge demo`: the whole chain on synthetic data, on a 2-core CPU, in a few minutes.

    cohort (synthetic phantom) -> 5-fold training by patient (reduced budget) + all-data model
    -> explanations on fold 0's test patients -> export fp32 + int8 ONNX (+ TensorRT engine on a GPU box)
    -> 1080p scanner video -> `infer --stream --realtime` with fp32 and int8 -> report folder

Every step writes into OUT and is skipped on a second run when its output is already there
(`force=True` redoes everything). Heavy packages are imported inside the steps.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from usedge.fileio import write_json_atomic, write_text_atomic

# The paper's reported figures (Sensors 2023, 23(17):7374), per class: accuracy / sensitivity / specificity, %.
PAPER_PER_CLASS = {
    "epidermal_cyst": (94.9, 92.4, 97.9),
    "lipoma": (98.2, 96.5, 98.9),
    "pilomatricoma": (94.5, 75.9, 97.4),
}
PAPER_MEAN = (95.87, 90.10, 96.23)


@dataclass
class DemoConfig:
    """The demo's reduced budget. Defaults fit a 2-core CPU; the paper's own budget is 224 px x 30 epochs."""

    out: Path = Path("demo")
    seed: int = 0
    patients: tuple[int, int, int] = (149, 74, 32)   # the paper's cohort shape
    images: int = 698
    image_size: int = 96                             # paper: 224
    epochs: int = 6                                  # paper: 30
    step_size: int = 4                               # StepLR step, epochs (paper: 7 of 30)
    lr: float = 3e-4                                 # paper: 1e-4 (for 30 epochs)
    folds: int = 5
    video_seconds: float = 10.0
    threads: int = 0                                 # torch / onnxruntime threads (0 = all cores)
    force: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


@dataclass
class StepResult:
    name: str
    seconds: float
    reused: bool
    outputs: dict[str, str] = field(default_factory=dict)


class Demo:
    def __init__(self, cfg: DemoConfig, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.log = log
        self.out = Path(cfg.out)
        self.data = self.out / "data"
        self.run_dir = self.out / "run"
        self.explain_dir = self.out / "explain"
        self.model_dir = self.out / "model"
        self.video = self.out / "scanner_1080p.mp4"
        self.report = self.out / "report"
        self.steps: list[StepResult] = []

    # ------------------------------------------------------------------ plumbing
    def _step(self, name: str, done: Path, fn: Callable[[], dict]) -> dict:
        """Run fn unless `done` exists (and not force); record time and outputs."""
        start = time.perf_counter()
        reused = done.exists() and not self.cfg.force
        if reused:
            self.log(f"demo: {name}: reusing {done}")
            outputs = {"done": str(done)}
        else:
            self.log(f"demo: {name} ...")
            outputs = fn() or {}
        self.steps.append(StepResult(name, time.perf_counter() - start, reused, {k: str(v) for k, v in outputs.items()}))
        return outputs

    # ------------------------------------------------------------------ steps
    def make_data(self) -> dict:
        from usedge.synth.cohort import make_cohort

        manifest = make_cohort(self.data, seed=self.cfg.seed, patients=self.cfg.patients, images=self.cfg.images,
                               progress=self.cfg.progress, overwrite=True)
        return {"manifest": manifest}

    def train(self) -> dict:
        from usedge.dataset import load_dataset
        from usedge.train.config import load_config
        from usedge.train.trainer import cross_validate

        cfg = load_config(None, {
            "data.image_size": self.cfg.image_size, "optim.epochs": self.cfg.epochs,
            "optim.step_size": self.cfg.step_size, "optim.lr": self.cfg.lr, "cv.folds": self.cfg.folds,
            "cv.final_model": True, "run.seed": self.cfg.seed, "run.threads": self.cfg.threads,
        })
        if self.run_dir.exists() and self.cfg.force:
            shutil.rmtree(self.run_dir)
        cross_validate(load_dataset(self.data), cfg, self.run_dir, progress=self.cfg.progress, log=self.log)
        return {"metrics": self.run_dir / "metrics.json", "report": self.run_dir / "report.md",
                "model": self.run_dir / "model.pt"}

    def _fold0_test_manifest(self) -> Path:
        """A manifest of fold 0's test patients: explanations are measured on images the model did not see."""
        with open(self.run_dir / "folds.csv", newline="") as fh:
            test = {r["path"] for r in csv.DictReader(fh) if r.get("fold0") == "test"}
        with open(self.data / "manifest.csv", newline="") as fh:
            reader = csv.DictReader(fh)
            rows = [r for r in reader if r["path"] in test]
        from usedge.dataset import write_manifest

        return write_manifest(self.data / "fold0_test.csv", rows)

    def explain(self) -> dict:
        from usedge.train.explain import ExplainConfig, run_explain

        manifest = self._fold0_test_manifest()
        run_explain(self.run_dir / "fold0" / "best.pt", manifest, self.explain_dir,
                    ExplainConfig(overlays="sheets", sheet_rows=8, threads=self.cfg.threads,
                                  progress=self.cfg.progress))
        return {"explain": self.explain_dir / "explain.md", "sheets": self.explain_dir / "sheets"}

    def export(self) -> dict:
        from usedge.export.pipeline import ExportOptions, run_export
        from usedge.export.tensorrt import tensorrt_available

        engine, why = tensorrt_available()
        if not engine:
            self.log(f"demo: no TensorRT engine: {why}")
        report = run_export(self.run_dir / "model.pt", self.model_dir,
                            ExportOptions(fp16=True, int8=True, engine=engine, cam=True, data=self.data,
                                          seed=self.cfg.seed),
                            progress=self.log)
        return {"onnx": self.model_dir / "model.onnx", "int8": self.model_dir / "model.int8.onnx",
                "report": self.model_dir / "export_report.md", "checks_failed": len(report.failed)}

    def make_video(self) -> dict:
        from usedge.synth.video import write_scanner_video

        truth = write_scanner_video(self.video, seconds=self.cfg.video_seconds, fps=30.0, size=(1920, 1080),
                                    seed=self.cfg.seed, progress=self.cfg.progress)
        return {"video": self.video, "truth": truth}

    def stream(self, model_name: str, tag: str, record: bool) -> dict:
        """`usedge infer MODEL --stream VIDEO --realtime --cam [--record]` through the library."""
        from usedge.runtime.classifier import Classifier
        from usedge.runtime.pipeline import FramePipeline
        from usedge.runtime.sinks import JsonlSink, VideoRecorderSink
        from usedge.runtime.sources import open_source
        from usedge.runtime.stream import StreamRunner

        self.report.mkdir(parents=True, exist_ok=True)
        jsonl = self.report / f"stream_{tag}.jsonl"
        overlay = self.report / "overlay.mp4"
        with Classifier.load(self.model_dir / model_name, "auto", threads=self.cfg.threads or None) as clf:
            reader = open_source(str(self.video))
            sinks = [JsonlSink(jsonl)]
            if record:
                sinks.append(VideoRecorderSink(overlay, fps=reader.fps or 30.0))
            try:
                pipeline = FramePipeline(clf, sinks, stream=True, regions=reader.regions, freeze=True, smooth=5,
                                         cam=clf.has_cam)
                runner = StreamRunner(pipeline, reader, realtime=True)
                summary = runner.run()
            finally:
                for s in sinks:
                    s.close()
        for line in summary.lines():
            self.log(f"demo: {line}")
        out = {"jsonl": jsonl, "summary": self.report / f"stream_{tag}.json"}
        write_json_atomic(out["summary"], summary.to_dict())
        if record:
            out["overlay"] = overlay
        return out

    def overlay_frame(self) -> dict:
        """One annotated 1080p frame with the CAM (the README's picture)."""
        import cv2
        import numpy as np

        from usedge.runtime.classifier import Classifier
        from usedge.runtime.overlay import draw_prediction

        truth_path = self.video.with_suffix(".json")
        frames = json.loads(truth_path.read_text()).get("frames_truth", []) if truth_path.exists() else []
        # the frame where most of the lesion is in view
        index = int(max(frames, key=lambda f: f.get("lesion_visible") or 0)["frame"]) if frames else 0
        cap = cv2.VideoCapture(str(self.video))
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        cap.release()
        if not ok:
            return {}
        with Classifier.load(self.model_dir / "model.onnx", "auto") as clf:
            pred = clf.predict(frame, frame_index=index)
            image = draw_prediction(frame, pred, cam=True)
        path = self.report / "overlay_frame.png"
        self.report.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
        from usedge.fileio import write_bytes_atomic

        write_bytes_atomic(path, buf.tobytes())
        return {"overlay_frame": path}

    # ------------------------------------------------------------------ report
    def write_report(self, total_s: float) -> Path:
        self.report.mkdir(parents=True, exist_ok=True)
        for name in ("roc.png", "confusion.png", "curves.png"):
            if (self.run_dir / name).exists():
                shutil.copyfile(self.run_dir / name, self.report / name)
        sheets = sorted((self.explain_dir / "sheets").glob("*.png"))
        for s in sheets:
            shutil.copyfile(s, self.report / f"cam_sheet_{s.name}")
        metrics = json.loads((self.run_dir / "metrics.json").read_text())
        lines = ["# usedge demo report", "",
                 "**Synthetic data.** Everything here was measured on usedge's synthetic ultrasound phantom, not on "
                 "patients. The paper's figures come from 698 real images of 255 patients; they are shown beside "
                 "ours for the layout only — the numbers are not comparable. This is not a medical device.", "",
                 f"Budget: {self.cfg.images} images of {sum(self.cfg.patients)} synthetic patients, "
                 f"{self.cfg.folds}-fold cross-validation by patient, {self.cfg.image_size} px input, "
                 f"{self.cfg.epochs} epochs (Adam {self.cfg.lr:g}, StepLR {self.cfg.step_size}/0.1), "
                 "checkpoint chosen on an inner validation split (never the test fold). "
                 "The paper: 224 px, 30 epochs, Adam 1e-4.", "",
                 "## Classification (one-vs-rest per class, %, mean ± sd over folds)", "",
                 self._metrics_table(metrics), "",
                 f"Full report: [{self.run_dir / 'report.md'}](../run/report.md). "
                 "ROC curves per class per fold: `roc.png`; pooled confusion matrix: `confusion.png`.", "",
                 "![ROC](roc.png)", "", "![confusion](confusion.png)", ""]
        if sheets:
            lines += ["## Class activation maps (fold 0 test patients)", "",
                      "Each row: image | CAM | Grad-CAM | attention gate 1 | attention gate 2; the lesion outline "
                      f"in green. Measured localisation: [{self.explain_dir / 'explain.md'}](../explain/explain.md).",
                      ""]
            lines += [f"![{s.stem}](cam_sheet_{s.name})" for s in sheets] + [""]
        lines += ["## Stream beside the scanner (1080p synthetic scanner video, 30 fps, `--realtime`)", "",
                  self._latency_table(), "",
                  "Overlay video: `overlay.mp4` (int8 model, CAM). One frame: `overlay_frame.png`.", "",
                  "![overlay](overlay_frame.png)", "",
                  "## Steps", "", "| step | seconds | reused |", "|---|---:|---|"]
        lines += [f"| {s.name} | {s.seconds:.1f} | {'yes' if s.reused else 'no'} |" for s in self.steps]
        lines += [f"| **total** | **{total_s:.1f}** | |", "", "Config: `demo.json`.", ""]
        write_json_atomic(self.report / "demo.json", {"config": self.cfg.to_dict(),
                                                       "steps": [asdict(s) for s in self.steps],
                                                       "total_seconds": total_s})
        return write_text_atomic(self.report / "README.md", "\n".join(lines))

    @staticmethod
    def _metrics_table(metrics: dict) -> str:
        agg = metrics.get("aggregate", {})
        per_class = agg.get("per_class", {})

        def ms(d: dict | None) -> str:
            if not d or d.get("mean") is None:
                return "—"
            return f"{100 * d['mean']:.1f} ± {100 * (d.get('sd') or 0):.1f}"

        rows = ["| class | accuracy (ours) | sensitivity (ours) | specificity (ours) | "
                "paper acc / sens / spec (real data) |", "|---|---|---|---|---|"]
        for name, paper in PAPER_PER_CLASS.items():
            c = per_class.get(name, {})
            rows.append(f"| {name} | {ms(c.get('accuracy'))} | {ms(c.get('sensitivity'))} | "
                        f"{ms(c.get('specificity'))} | {paper[0]} / {paper[1]} / {paper[2]} |")
        macro = agg.get("macro", {})
        rows.append(f"| macro mean | {ms(macro.get('accuracy'))} | {ms(macro.get('sensitivity'))} | "
                    f"{ms(macro.get('specificity'))} | {PAPER_MEAN[0]} / {PAPER_MEAN[1]} / {PAPER_MEAN[2]} |")
        overall = agg.get("overall_accuracy")
        if overall:
            rows += ["", f"Overall (3-class) accuracy: {ms(overall)} %."]
        return "\n".join(rows)

    def _latency_table(self) -> str:
        rows = ["| model | frames read | processed | dropped | frozen-skipped | fps | capture→result p50 / p99 ms "
                "| model p50 ms |", "|---|---:|---:|---:|---:|---:|---|---:|"]
        for tag in ("fp32", "int8"):
            path = self.report / f"stream_{tag}.json"
            if not path.exists():
                continue
            s = json.loads(path.read_text())
            lat = s.get("latency_ms", {})
            total = lat.get("capture_to_result", {})
            model = lat.get("model", {})
            rows.append(f"| {tag} | {s['frames_read']} | {s['processed']} | {s['dropped']} | {s['frozen_skipped']} "
                        f"| {s['fps']:.1f} | {total.get('p50', float('nan')):.1f} / {total.get('p99', float('nan')):.1f} "
                        f"| {model.get('p50', float('nan')):.1f} |")
        return "\n".join(rows)

    # ------------------------------------------------------------------ all
    def run(self) -> Path:
        start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self._step("synthetic cohort", self.data / "manifest.csv", self.make_data)
        self._step("train (5-fold CV + all-data model)", self.run_dir / "model.pt", self.train)
        self._step("explain (fold 0 test patients)", self.explain_dir / "explain.json", self.explain)
        self._step("export (fp32, fp16, int8 ONNX)", self.model_dir / "model.int8.onnx", self.export)
        self._step("scanner video (1080p, 30 fps)", self.video, self.make_video)
        self._step("stream fp32 --realtime", self.report / "stream_fp32.json",
                   lambda: self.stream("model.onnx", "fp32", record=False))
        self._step("stream int8 --realtime --record", self.report / "stream_int8.json",
                   lambda: self.stream("model.int8.onnx", "int8", record=True))
        self._step("overlay frame", self.report / "overlay_frame.png", self.overlay_frame)
        return self.write_report(time.perf_counter() - start)
