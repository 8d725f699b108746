"""`usedge demo`: the whole chain on synthetic data, on a 2-core CPU, in a few minutes.

    cohort (synthetic phantom) -> 5-fold training by patient (reduced budget) + all-data model
    -> explanations on fold 0's test patients -> export fp32 + int8 ONNX (+ TensorRT engine on a GPU box)
    -> 1080p scanner video -> `infer --stream --realtime` with fp32 and int8, scored against the video's
    truth -> report folder

Each step writes a record (OUT/steps/<step>.json: its parameters, the usedge version, the run ids of
the steps it used, its time). A second run reuses a step only when its record matches what it would
do now and nothing upstream ran again; otherwise it clears the step's outputs and runs it, and every
step downstream runs too. A step interrupted half-way has a record marked "started", never "done",
so a rerun redoes it (training resumes its finished folds). `overwrite=True` redoes everything.

A model that failed its export check is not used silently: the overlay video and frame come from a
model that passed, the report opens with the failed checks, and `failed_checks` lists them.
Heavy packages are imported inside the steps.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import resource
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from usedge import __version__
from usedge.errors import OutputError
from usedge.fileio import write_json_atomic, write_text_atomic

# The paper's reported figures (Sensors 2023, 23(17):7374), per class: accuracy / sensitivity / specificity, %.
PAPER_PER_CLASS = {
    "epidermal_cyst": (94.9, 92.4, 97.9),
    "lipoma": (98.2, 96.5, 98.9),
    "pilomatricoma": (94.5, 75.9, 97.4),
}
PAPER_MEAN = (95.87, 90.10, 96.23)
MODELS = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
VIDEO_FPS = 30.0
VIDEO_SIZE = (1920, 1080)


@dataclass
class DemoConfig:
    """The demo's reduced budget. Defaults fit a 2-core CPU; the paper's own budget is 224 px x 30 epochs."""

    out: Path = Path("demo")
    seed: int = 0
    images: int = 698
    patients: tuple[int, int, int] | None = None     # None: the paper's 149/74/32 shape scaled to `images`
    image_size: int = 96                             # paper: 224
    epochs: int = 6                                  # paper: 30
    lr: float = 1e-3                                 # paper: 1e-4 (for 30 epochs); benchmarks/results/demo_lr.md
    folds: int = 5
    video_seconds: float = 10.0
    threads: int = 0                                 # torch / onnxruntime threads (0 = all cores)
    overwrite: bool = False                          # redo every step, whatever the records say
    progress: bool = True

    def __post_init__(self) -> None:
        if self.patients is None:
            scale = min(1.0, self.images / 698)
            self.patients = tuple(max(2, round(n * scale)) for n in (149, 74, 32))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["patients"] = list(self.patients)
        return d


@dataclass
class Step:
    """One step of the demo: what it depends on, what it writes, how to run it."""

    key: str                                # file name of its record
    title: str
    needs: tuple[str, ...]                  # upstream steps whose outputs it reads
    params: Callable[[], dict]              # everything its outputs depend on (evaluated when it is its turn)
    outputs: Callable[[dict], list[Path]]   # files/folders it writes, cleared before it runs
    run: Callable[[dict, bool], dict]       # (params, resume) -> result (JSON-safe)
    cost: Callable[[dict], float]           # rough expected seconds (weights for the time left; rescaled as it runs)
    resumable: bool = False                 # run(params, resume=True) continues an interrupted attempt


@dataclass
class StepResult:
    """What happened to a step in this run; `seconds` and `cpu_seconds` are those of the run that made
    its outputs (an earlier run's when reused)."""

    key: str
    name: str
    reused: bool
    seconds: float
    cpu_seconds: float
    finished_utc: str
    params: dict
    result: dict = field(default_factory=dict)
    why: str = ""                            # why it ran (or "" when reused)


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and its finished children, seconds."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _minutes(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Demo:
    def __init__(self, cfg: DemoConfig, log: Callable[[str], None] = print, console=None):
        self.cfg = cfg
        self.log = log
        self.console = console          # a rich Console for the overall progress line (None: no line)
        self.out = Path(cfg.out)
        self.data = self.out / "data"
        self.run_dir = self.out / "run"
        self.explain_dir = self.out / "explain"
        self.model_dir = self.out / "model"
        self.video_dir = self.out / "video"
        self.video = self.video_dir / "scanner_1080p.mp4"
        self.report = self.out / "report"
        self.records = self.out / "steps"
        self.steps: list[StepResult] = []
        self._run_ids: dict[str, str] = {}       # step -> run id of the outputs in use this run
        self._ran: set[str] = set()              # steps that ran (not reused) this run

    # ------------------------------------------------------------------ the steps and their records
    def plan(self) -> list[Step]:
        # Step costs, seconds: the README's quiet measurement of the default demo (cohort 18.5, training
        # 355.5, explanations 6.6, export 11.6, video 3.7, two 10 s streams) split into a fixed part (imports,
        # model loading: a 24-image run) and a part that grows with the budget. Only the time left uses them.
        c = self.cfg
        scale = (c.image_size / 96) ** 2
        return [
            Step("cohort", "synthetic cohort", (),
                 lambda: {"seed": c.seed, "patients": list(c.patients), "images": c.images},
                 lambda p: [self.data], self.make_data, lambda p: 1 + 18 * p["images"] / 698),
            Step("train", f"train ({c.folds}-fold CV + all-data model)", ("cohort",),
                 lambda: {"image_size": c.image_size, "epochs": c.epochs, "recipe": "usedge defaults", "lr": c.lr,
                          "folds": c.folds, "seed": c.seed},
                 lambda p: [self.run_dir], self.train,
                 lambda p: 5 + 350 * scale * p["epochs"] / 6 * p["folds"] / 5 * c.images / 698, resumable=True),
            Step("explain", "explain (fold 0 test patients)", ("cohort", "train"),
                 lambda: {"overlays": "sheets", "sheet_rows": 8},
                 lambda p: [self.explain_dir], self.explain, lambda p: 4 + 3 * scale * c.images / 698),
            Step("export", "export (fp32, fp16, int8 ONNX)", ("cohort", "train"), self._export_params,
                 lambda p: [self.model_dir], self.export, lambda p: 10 + 2 * scale),
            Step("video", "scanner video (1080p, 30 fps)", (),
                 lambda: {"seconds": c.video_seconds, "fps": VIDEO_FPS, "size": list(VIDEO_SIZE), "seed": c.seed},
                 lambda p: [self.video_dir], self.make_video, lambda p: 1 + 0.3 * p["seconds"]),
            *[Step(f"stream_{tag}", f"stream {tag} --realtime", ("export", "video"),
                   lambda tag=tag: {"model": MODELS[tag], "realtime": True, "smooth": True},
                   lambda p, tag=tag: self._stream_outputs(tag),
                   lambda p, resume, tag=tag: self.stream(tag),
                   lambda p: 1 + c.video_seconds) for tag in MODELS],
            Step("overlay_video", "overlay video (every frame)", ("export", "video"),
                 lambda: {"model": MODELS[self.overlay_model()], "smooth": True},
                 lambda p: [self.report / "overlay.mp4"], self.overlay_video, lambda p: 1 + 1.5 * c.video_seconds),
            Step("overlay_frame", "overlay frame", ("export", "video"),
                 lambda: {"model": MODELS[self.overlay_model()]},
                 lambda p: [self.report / "overlay_frame.png"], self.overlay_frame, lambda p: 1),
        ]

    def _record_path(self, key: str) -> Path:
        return self.records / f"{key}.json"

    def _read_record(self, key: str) -> dict | None:
        try:
            return json.loads(self._record_path(key).read_text())
        except (OSError, ValueError):
            return None

    def _why_run(self, step: Step, params: dict, record: dict | None, upstream_ran: set[str]) -> str:
        """'' when the step's outputs can be reused, else the reason it must run."""
        if self.cfg.overwrite:
            return "--overwrite"
        if record is None:
            return "not run before"
        if record.get("status") != "done":
            return "interrupted"
        if record.get("usedge_version") != __version__:
            return f"made by usedge {record.get('usedge_version')}"
        if record.get("params") != params:
            changed = sorted(k for k in {*params, *record.get("params", {})}
                             if params.get(k) != record.get("params", {}).get(k))
            return "changed: " + ", ".join(changed)
        ran = [n for n in step.needs if n in upstream_ran]
        if ran:
            return "upstream ran: " + ", ".join(ran)
        if record.get("inputs") != {n: self._run_ids.get(n) for n in step.needs}:
            return "upstream outputs changed"
        missing = [p for p in step.outputs(params) if not p.exists()]
        if missing:
            return f"missing {missing[0]}"
        return ""

    def _run_step(self, step: Step, progress: "_Overall") -> StepResult:
        params = step.params()
        record = self._read_record(step.key)
        why = self._why_run(step, params, record, self._ran)
        if not why:
            self._run_ids[step.key] = record["run_id"]
            self.log(f"demo: {step.title}: reused (made {record.get('finished_utc', '?')}, "
                     f"{record.get('seconds', 0.0):.1f} s)")
            return StepResult(step.key, step.title, True, record.get("seconds", 0.0), record.get("cpu_seconds", 0.0),
                              record.get("finished_utc", ""), params, record.get("result", {}))
        inputs = {n: self._run_ids.get(n) for n in step.needs}
        # resume only what an interrupted attempt with the very same parameters and inputs left behind
        resume = (step.resumable and why == "interrupted" and record.get("params") == params
                  and record.get("inputs") == inputs and record.get("usedge_version") == __version__)
        if not resume:
            for path in step.outputs(params):
                _remove(path)
        self.log(f"demo: {step.title} ({why}; about {_minutes(progress.left())} left in all) ...")
        started = {"step": step.key, "title": step.title, "status": "started", "params": params,
                   "usedge_version": __version__, "inputs": inputs}
        write_json_atomic(self._record_path(step.key), started)
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        result = step.run(params, resume) or {}
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        run_id = uuid.uuid4().hex[:12]
        write_json_atomic(self._record_path(step.key), {
            **started, "status": "done", "run_id": run_id, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2), "finished_utc": finished, "result": result})
        self._run_ids[step.key] = run_id
        self._ran.add(step.key)
        return StepResult(step.key, step.title, False, round(seconds, 2), round(cpu, 2), finished, params, result,
                          why)

    def _will_run(self, steps: list[Step]) -> set[str]:
        """Which steps this run will run, as far as can be told before running any."""
        will: set[str] = set()
        for step in steps:
            record = self._read_record(step.key)
            if record and record.get("status") == "done":
                self._run_ids.setdefault(step.key, record.get("run_id"))
            try:
                params = step.params()
            except (OSError, ValueError):
                params = {}
            if self._why_run(step, params, record, will):
                will.add(step.key)
        self._run_ids.clear()
        return will

    # ------------------------------------------------------------------ checks
    def export_checks(self) -> list[dict]:
        """The export report's checks (name, artifact, passed, aim, figures); [] before the export."""
        try:
            return json.loads((self.model_dir / "export_report.json").read_text()).get("checks", [])
        except (OSError, ValueError):
            return []

    @property
    def failed_checks(self) -> list[dict]:
        return [c for c in self.export_checks() if not c.get("passed")]

    def model_passed(self, tag: str) -> bool:
        return not any(c.get("artifact") == MODELS[tag] for c in self.failed_checks)

    def overlay_model(self) -> str:
        """The model the overlay video and frame use: int8 (what a CPU box runs) if it passed its checks,
        else fp32. fp32 is used even when it failed too (the report's first lines say so)."""
        return "int8" if self.model_passed("int8") else "fp32"

    def _export_params(self) -> dict:
        from usedge.export.tensorrt import tensorrt_available

        return {"fp16": True, "int8": True, "cam": True, "engine": tensorrt_available()[0], "seed": self.cfg.seed}

    # ------------------------------------------------------------------ steps
    def make_data(self, params: dict, resume: bool) -> dict:
        from usedge.synth.cohort import make_cohort

        make_cohort(self.data, seed=params["seed"], patients=tuple(params["patients"]), images=params["images"],
                    progress=self.cfg.progress)
        return {}

    def train(self, params: dict, resume: bool) -> dict:
        from usedge.dataset import load_dataset
        from usedge.train.config import load_config
        from usedge.train.trainer import cross_validate

        cfg = load_config(None, {
            "data.image_size": params["image_size"], "optim.epochs": params["epochs"],
            "optim.lr": params["lr"], "cv.folds": params["folds"],
            "cv.final_model": True, "run.seed": params["seed"], "run.threads": self.cfg.threads,
        })
        cross_validate(load_dataset(self.data), cfg, self.run_dir, resume=resume, progress=self.cfg.progress,
                       log=self.log)
        return {"resumed": resume}

    def _fold0_test_manifest(self) -> Path:
        """A manifest of fold 0's test patients: explanations are measured on images the model did not see."""
        with open(self.run_dir / "folds.csv", newline="") as fh:
            test = {r["path"] for r in csv.DictReader(fh) if r.get("fold0") == "test"}
        with open(self.data / "manifest.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["path"] in test]
        from usedge.dataset import write_manifest

        return write_manifest(self.data / "fold0_test.csv", rows)

    def explain(self, params: dict, resume: bool) -> dict:
        from usedge.train.explain import ExplainConfig, run_explain

        run_explain(self.run_dir / "fold0" / "best.pt", self._fold0_test_manifest(), self.explain_dir,
                    ExplainConfig(overlays=params["overlays"], sheet_rows=params["sheet_rows"],
                                  threads=self.cfg.threads, progress=self.cfg.progress))
        return {}

    def export(self, params: dict, resume: bool) -> dict:
        from usedge.export.pipeline import ExportOptions, run_export

        if not params["engine"]:
            self.log("demo: no TensorRT engine (no GPU with TensorRT here)")
        report = run_export(self.run_dir / "model.pt", self.model_dir,
                            ExportOptions(fp16=params["fp16"], int8=params["int8"], engine=params["engine"],
                                          cam=params["cam"], data=self.data, seed=params["seed"]),
                            progress=self.log)
        return {"checks_failed": [f"{c.name} ({c.artifact})" for c in report.failed]}

    def make_video(self, params: dict, resume: bool) -> dict:
        from usedge.synth.video import write_scanner_video

        write_scanner_video(self.video, seconds=params["seconds"], fps=params["fps"], size=tuple(params["size"]),
                            seed=params["seed"], progress=self.cfg.progress)
        return {}

    def _stream_outputs(self, tag: str) -> list[Path]:
        return [self.report / f"stream_{tag}.jsonl", self.report / f"stream_{tag}.json"]

    def _run_stream(self, model: str, sinks: list, realtime: bool):
        """`usedge infer MODEL --stream VIDEO [--realtime] --cam` through the library into `sinks` (closed after)."""
        from usedge.runtime.classifier import Classifier
        from usedge.runtime.pipeline import FramePipeline
        from usedge.runtime.sources import open_source
        from usedge.runtime.stream import StreamRunner

        with Classifier.load(self.model_dir / model, "auto", threads=self.cfg.threads or None) as clf:
            reader = open_source(str(self.video))
            try:
                pipeline = FramePipeline(clf, sinks, stream=True, regions=reader.regions, freeze=True, smooth=5,
                                         cam=clf.has_cam)
                return StreamRunner(pipeline, reader, realtime=realtime).run()
            finally:
                for s in sinks:
                    s.close()

    def stream(self, tag: str) -> dict:
        """`usedge infer MODEL --stream VIDEO --realtime --cam`, then scored against the video's per-frame
        truth. Nothing is recorded here: encoding the overlay video in the timed loop would cost the
        model its frames on a 2-core CPU, and the two models' rows would not compare."""
        from usedge.runtime.sinks import JsonlSink

        self.report.mkdir(parents=True, exist_ok=True)
        jsonl, summary_path = self._stream_outputs(tag)
        summary = self._run_stream(MODELS[tag], [JsonlSink(jsonl)], realtime=True)
        for line in summary.lines():
            self.log(f"demo: {line}")
        score = score_stream(jsonl, self.video.with_suffix(".json"))
        self.log(f"demo: {tag}: {_pct(score['accuracy'])} of {score['frames_scored']} results right, "
                 f"{score['changes_per_minute']:.0f} label changes per minute")
        write_json_atomic(summary_path, {**summary.to_dict(), "score": score})
        return {"score": score}

    def overlay_video(self, params: dict, resume: bool) -> dict:
        """overlay.mp4: every frame of the video annotated (label, CAM), `infer --stream --record` without
        --realtime, after the timed runs."""
        from usedge.runtime.sinks import VideoRecorderSink

        self.report.mkdir(parents=True, exist_ok=True)
        summary = self._run_stream(params["model"], [VideoRecorderSink(self.report / "overlay.mp4", fps=VIDEO_FPS)],
                                   realtime=False)
        return {"frames": summary.processed + summary.frozen_skipped}

    def overlay_frame(self, params: dict, resume: bool) -> dict:
        """One annotated 1080p frame with the CAM (the README's picture)."""
        import cv2
        import numpy as np

        from usedge.fileio import write_bytes_atomic
        from usedge.runtime.classifier import Classifier
        from usedge.runtime.overlay import draw_prediction

        frames = json.loads(self.video.with_suffix(".json").read_text()).get("frames_truth", [])
        # the frame where most of the lesion is in view
        index = int(max(frames, key=lambda f: f.get("lesion_visible") or 0)["frame"]) if frames else 0
        cap = cv2.VideoCapture(str(self.video))
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        cap.release()
        if not ok:
            return {}
        with Classifier.load(self.model_dir / params["model"], "auto") as clf:
            image = draw_prediction(frame, clf.predict(frame, frame_index=index), cam=True)
        self.report.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
        write_bytes_atomic(self.report / "overlay_frame.png", buf.tobytes())
        return {"frame": index}

    # ------------------------------------------------------------------ report
    def scores(self) -> dict[str, dict]:
        out = {}
        for tag in MODELS:
            try:
                out[tag] = json.loads((self.report / f"stream_{tag}.json").read_text())
            except (OSError, ValueError):
                continue
        return out

    def cv_summary(self) -> dict:
        """Balanced accuracy, overall accuracy and macro AUC (mean over folds), fractions; None when absent."""
        try:
            agg = json.loads((self.run_dir / "metrics.json").read_text()).get("aggregate", {})
        except (OSError, ValueError):
            return {}
        return {"balanced_accuracy": (agg.get("balanced_accuracy") or {}).get("mean"),
                "overall_accuracy": (agg.get("overall_accuracy") or {}).get("mean"),
                "macro_roc_auc": ((agg.get("macro") or {}).get("roc_auc") or {}).get("mean")}

    def failed_lines(self) -> list[str]:
        lines = []
        for c in self.failed_checks:
            figures = ", ".join(f"{k} {_fmt(v)}" for k, v in (c.get("figures") or {}).items()
                                if isinstance(v, (int, float)))
            lines.append(f"{c['name']} ({c['artifact']}) MISSED its aim {c.get('aim', '')}: {figures}")
        return lines

    def overlay_note(self) -> str:
        """Which model made the overlay video and frame, when a failed check decided it ('' otherwise)."""
        if not self.failed_checks:
            return ""
        use = self.overlay_model()
        return (f"the overlay video and frame use the {use} model ({MODELS[use]})"
                + ("" if self.model_passed(use) else ", which failed its check too"))

    def write_report(self, total_s: float) -> Path:
        self.report.mkdir(parents=True, exist_ok=True)
        for name in ("roc.png", "confusion.png", "curves.png"):
            if (self.run_dir / name).exists():
                shutil.copyfile(self.run_dir / name, self.report / name)
        sheets = sorted((self.explain_dir / "sheets").glob("*.png"))
        for old in self.report.glob("cam_sheet_*.png"):   # an earlier explain run's
            old.unlink()
        for s in sheets:
            shutil.copyfile(s, self.report / f"cam_sheet_{s.name}")
        metrics = json.loads((self.run_dir / "metrics.json").read_text())
        by_key = {s.key: s for s in self.steps}
        cohort, trained, video = by_key["cohort"].params, by_key["train"].params, by_key["video"].params
        failed = self.failed_lines()
        overlay = self.overlay_model()
        lines = ["# usedge demo report", ""]
        if failed:
            lines += ["> **A check failed.** " + "  \n> ".join([*failed, self.overlay_note()]), ""]
        lines += ["**Synthetic data.** Everything here was measured on usedge's synthetic ultrasound phantom, not on "
                  "patients. The paper's figures come from 698 real images of 255 patients; they are shown beside "
                  "ours for the layout only — the numbers are not comparable. This is not a medical device.", "",
                  f"What ran (from the steps' records): {cohort['images']} images of {sum(cohort['patients'])} "
                  f"synthetic patients, {trained['folds']}-fold cross-validation by patient, "
                  f"{trained['image_size']} px input, {trained['epochs']} epochs (Adam {trained['lr']:g}, otherwise the usedge defaults: "
                  "warm-up + cosine, light augmentation, class-balanced focal loss), checkpoint chosen on an inner validation split (never the test "
                  "fold). The paper: 224 px, 30 epochs, Adam 1e-4.", "",
                  "## Classification (one-vs-rest per class, %, mean ± sd over folds)", "",
                  self._metrics_table(metrics), "",
                  "Full report: [run/report.md](../run/report.md). "
                  "ROC curves per class per fold: `roc.png`; pooled confusion matrix: `confusion.png`.", "",
                  "![ROC](roc.png)", "", "![confusion](confusion.png)", ""]
        if sheets:
            lines += ["## Class activation maps (fold 0 test patients)", "",
                      "Each row: image | CAM | Grad-CAM | attention gate 1 | attention gate 2; the lesion outline "
                      "in green. Measured localisation: [explain/explain.md](../explain/explain.md).", ""]
            lines += [f"![{s.stem}](cam_sheet_{s.name})" for s in sheets] + [""]
        lines += [f"## Stream beside the scanner ({video['seconds']:g} s synthetic 1080p scanner video, "
                  f"{video['fps']:g} fps, `--realtime`, smoothed)", "",
                  "Scored against the video's per-frame truth (the whole video shows one lesion). "
                  "Accuracy: share of results whose label is the true class; in view: frames where part of the "
                  "lesion is on screen.", "",
                  self._stream_table(), "",
                  f"Overlay video: `overlay.mp4` ({overlay} model, CAM; every frame, made after the timed runs). "
                  "One frame: `overlay_frame.png`."
                  + ("" if overlay == "int8" else " The int8 model failed its check, so the fp32 model made them."),
                  "", "![overlay](overlay_frame.png)", "",
                  "## Steps", "",
                  "Seconds and CPU seconds are those of the run that made each step's outputs (a reused step keeps "
                  "its earlier time; CPU seconds count every thread).", "",
                  "| step | this run | seconds | CPU seconds | made (UTC) |", "|---|---|---:|---:|---|"]
        lines += [f"| {s.name} | {'reused' if s.reused else 'ran: ' + s.why} | {s.seconds:.1f} | {s.cpu_seconds:.1f} "
                  f"| {s.finished_utc} |" for s in self.steps]
        lines += [f"| **this run** | | **{total_s:.1f}** | | |", "", "Config and figures: `demo.json`.", ""]
        write_json_atomic(self.report / "demo.json", {
            "config": self.cfg.to_dict(), "usedge_version": __version__,
            "checks_failed": len(self.failed_checks), "failed_checks": self.failed_checks,
            "overlay_model": overlay, "cv": self.cv_summary(),
            "stream": {tag: s.get("score", {}) for tag, s in self.scores().items()},
            "steps": [asdict(s) for s in self.steps], "total_seconds": round(total_s, 2)})
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
        extra = [f"{name} {ms(d)} %" for name, d in (("overall (3-class) accuracy", agg.get("overall_accuracy")),
                                                     ("balanced accuracy", agg.get("balanced_accuracy")),
                                                     ("macro AUC", macro.get("roc_auc"))) if d]
        if extra:
            rows += ["", "; ".join(extra) + "."]
        return "\n".join(rows)

    def _stream_table(self) -> str:
        rows = ["| model | check | accuracy | accuracy, lesion in view | label changes / min | frames read | "
                "results | dropped | fps | capture→result p50 / p99 ms | model p50 ms |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for tag, s in self.scores().items():
            score = s.get("score", {})
            lat = s.get("latency_ms", {})
            total = lat.get("capture_to_result", {})
            model = lat.get("model", {})
            rows.append(f"| {tag} | {'passed' if self.model_passed(tag) else '**FAILED**'} "
                        f"| {_pct(score.get('accuracy'))} ({score.get('frames_scored', 0)}) "
                        f"| {_pct(score.get('accuracy_in_view'))} ({score.get('frames_in_view', 0)}) "
                        f"| {score.get('changes_per_minute', float('nan')):.1f} "
                        f"| {s['frames_read']} | {s['processed'] + s['frozen_skipped']} | {s['dropped']} "
                        f"| {s['fps']:.1f} | {total.get('p50', float('nan')):.1f} / {total.get('p99', float('nan')):.1f} "
                        f"| {model.get('p50', float('nan')):.1f} |")
        return "\n".join(rows)

    # ------------------------------------------------------------------ all
    def run(self) -> Path:
        start = time.perf_counter()
        if self.out.exists() and not self.out.is_dir():
            raise OutputError("exists and is not a folder", path=self.out, hint="give the demo a folder: --out DIR")
        self.out.mkdir(parents=True, exist_ok=True)
        steps = self.plan()
        will = self._will_run(steps)
        costs = {}
        for s in steps:
            try:
                costs[s.key] = s.cost(s.params()) if s.key in will else 0.0
            except (OSError, ValueError, KeyError):
                costs[s.key] = 0.0
        with _Overall(self.console if self.cfg.progress else None, steps, costs) as progress:
            for step in steps:
                progress.begin(step)
                result = self._run_step(step, progress)
                progress.end(step, result)
                self.steps.append(result)
        return self.write_report(time.perf_counter() - start)


class _Overall:
    """The one overall progress line: step k/n, elapsed, and the time left.

    Time left = the expected seconds of the steps still to run, scaled by how the steps run so far in
    this run compared with their expectation (so a busy or fast machine corrects it as it goes).
    """

    def __init__(self, console, steps: list[Step], costs: dict[str, float]):
        self.console = console
        self.steps = steps
        self.costs = costs
        self.index = 0
        self.t0 = time.perf_counter()
        self.step_t0 = self.t0
        self.spent_expected = 0.0     # expected seconds of the steps that ran this run
        self.spent_actual = 0.0       # their actual seconds
        self.progress = None

    def __enter__(self) -> "_Overall":
        if self.console is not None:
            from rich.progress import Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]demo[/] {task.description}"), TimeElapsedColumn(),
                                     TextColumn("{task.fields[left]}"), console=self.console, transient=False)
            self.progress.__enter__()
            self.task = self.progress.add_task("", total=len(self.steps), left="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=f"{len(self.steps)}/{len(self.steps)} done", left="")
            self.progress.__exit__(*exc)

    def left(self) -> float:
        """Seconds left, expected."""
        rate = self.spent_actual / self.spent_expected if self.spent_expected > 0 else 1.0
        current = self.steps[self.index].key if self.index < len(self.steps) else None
        in_step = time.perf_counter() - self.step_t0
        rest = sum(self.costs[s.key] for s in self.steps[self.index + 1:])
        now = max(0.0, self.costs.get(current, 0.0) * rate - in_step) if current else 0.0
        return now + rest * rate

    def begin(self, step: Step) -> None:
        self.index = self.steps.index(step)
        self.step_t0 = time.perf_counter()
        if self.progress is not None:
            self.progress.update(self.task, completed=self.index,
                                 description=f"{self.index + 1}/{len(self.steps)} {step.title}",
                                 left=f"about {_minutes(self.left())} left")
            self._tick()

    def _tick(self) -> None:
        # refreshes the time left while a long step runs (rich redraws; the field is recomputed here)
        import threading

        def loop(index=self.index):
            while self.index == index and self.progress is not None and self.progress.live.is_started:
                self.progress.update(self.task, left=f"about {_minutes(self.left())} left")
                time.sleep(1.0)

        threading.Thread(target=loop, daemon=True).start()

    def end(self, step: Step, result: StepResult) -> None:
        if not result.reused:
            self.spent_expected += self.costs.get(step.key, 0.0)
            self.spent_actual += time.perf_counter() - self.step_t0
        self.index += 1
        if self.progress is not None:
            self.progress.update(self.task, completed=self.index)


def score_stream(jsonl: Path, truth_json: Path) -> dict:
    """Per-frame accuracy of a stream's results against the video's truth, and label changes per minute.

    Every result line (processed or frozen-repeated) is scored; frames dropped under --realtime have no
    result and are not scored. Changes per minute: label switches between consecutive results over the
    video's length.
    """
    truth = json.loads(Path(truth_json).read_text())
    by_frame = {int(f["frame"]): f for f in truth.get("frames_truth", [])}
    results = []
    for line in Path(jsonl).read_text().splitlines():
        rec = json.loads(line)
        if "label" in rec and int(rec.get("frame", -1)) in by_frame:
            results.append(rec)
    results.sort(key=lambda r: int(r["frame"]))
    right = [r["label"] == by_frame[int(r["frame"])]["label"] for r in results]
    in_view = [ok for r, ok in zip(results, right) if (by_frame[int(r["frame"])].get("lesion_visible") or 0) > 0]
    changes = sum(a["label"] != b["label"] for a, b in zip(results, results[1:]))
    minutes = truth.get("frames", len(by_frame)) / float(truth.get("fps") or VIDEO_FPS) / 60.0
    return {"frames_scored": len(right), "accuracy": sum(right) / len(right) if right else None,
            "frames_in_view": len(in_view), "accuracy_in_view": sum(in_view) / len(in_view) if in_view else None,
            "label_changes": changes, "changes_per_minute": changes / minutes if minutes > 0 else float("nan"),
            "labels": {lab: sum(r["label"] == lab for r in results) for lab in sorted({r["label"] for r in results})},
            "truth_label": truth.get("label")}


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
