"""`usedge export`: checkpoint -> model.onnx (+ fp16, int8, TensorRT engine, Triton repository) + report.

Polygraphy's shape: a list of formats (`plan`), each with one `build` and an aim against a
reference; then one loop runs every built ONNX with onnxruntime on the same held-out images and
compares it with its reference's outputs (torch for FP32, FP32 for FP16 and INT8).

Every artifact is first written into a staging folder inside the output folder and moved into place
only when all requested artifacts and their checks are done; the report is written last. An
interrupted or failed export therefore leaves the previous complete set (or nothing), never a mix
of half-written files; a staging folder left by a killed export is removed by the next one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import usedge
from usedge.errors import ConfigError, MissingDependency, ModelError, OutputError
from usedge.export import images as image_data
from usedge.export import parity
from usedge.export.model_card import build_card
from usedge.export.report import Check, ExportReport
from usedge.fileio import sha256_file, writable_folder
from usedge.runtime.model_info import ModelInfo
from usedge.runtime.preprocess import PreprocessSpec

FP32_NAME, FP16_NAME, INT8_NAME = "model.onnx", "model.fp16.onnx", "model.int8.onnx"
STAGING_PREFIX = ".usedge-export-"
CAM_WEIGHTINGS = ("exact", "paper")
TRITON_MODELS = ("auto", "fp32", "fp16", "int8", "engine")


@dataclass
class ExportOptions:
    fp16: bool = True
    int8: bool = True
    engine: bool = False
    triton: Path | None = None
    cam: bool = False
    cam_weighting: str = "exact"        # exact | paper (usedge.train.cam); exact: the CAM of the output logits
    data: Path | None = None            # images for parity + calibration (default: recorded in the checkpoint)
    calib_count: int = 64               # INT8 calibration images
    calib_method: str = "minmax"        # minmax | entropy | percentile
    activations: str = "uint8"          # INT8 activation type: uint8 (fast without VNNI) | int8
    parity_count: int = 200             # held-out images for parity and INT8 accuracy (1 image = 0.5 point)
    reference_count: int = 2            # images for onnx.reference (slow, pure numpy)
    opset: int = 18
    max_batch: int = 8                  # TensorRT profile maximum and Triton max_batch_size
    opt_batch: int = 1
    optimization_level: int = 3         # TensorRT builder, 0..5
    workspace_mib: int = 1024           # TensorRT workspace pool, MiB
    timing_cache: Path | None = None    # default: <out>/trt_timing.cache
    triton_name: str = "usedge"
    triton_model: str = "auto"          # auto | fp32 | fp16 | int8 | engine
    seed: int = 0
    overwrite: bool = True              # replace an earlier export in `out` (the CLI asks for --overwrite)
    uncertain_margin: float = 0.2       # model card: top-2 probability margin below which a result is uncertain

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def check(self) -> None:
        """ConfigError on any option that cannot work, before the slow work starts."""
        from usedge.export.int8 import check_options

        if self.calib_count < 1 or self.parity_count < 1 or self.reference_count < 0:
            raise ConfigError("--calib-count and --parity-count must be >= 1, --reference-count >= 0",
                              hint="pass positive image counts")
        check_options(self.calib_method, self.activations)
        if self.triton_model not in TRITON_MODELS:
            raise ConfigError(f"unknown --triton-model '{self.triton_model}'", hint=f"use {', '.join(TRITON_MODELS)}")
        if not 0.0 <= self.uncertain_margin < 1.0:
            raise ConfigError(f"--uncertain-margin {self.uncertain_margin:g} is outside 0..1",
                              hint="pass a probability margin such as 0.2")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch} is below 1", hint="pass --max-batch >= 1 (default 8)")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"--trt-opt-level {self.optimization_level} is outside 0..5", hint="use 0..5 (default 3)")
        if self.cam_weighting not in CAM_WEIGHTINGS:
            raise ConfigError(f"unknown --cam-weighting '{self.cam_weighting}'", hint=f"use {', '.join(CAM_WEIGHTINGS)}")


@dataclass(frozen=True)
class Aim:
    """What a file's outputs must meet against its reference's: max |dp| and top-1 agreement on the
    images that are not near ties (reference top-2 margin above twice the max |dp| allowed: only
    those can show a real change of class, see parity), or (accuracy_drop set) an accuracy drop, as
    a fraction, on labelled images."""

    max_abs_diff: float = 1.0
    top1: float = 0.0
    accuracy_drop: float | None = None

    @property
    def tie_margin(self) -> float:
        return 2 * self.max_abs_diff if self.accuracy_drop is None else 0.0

    def judge(self, name: str, artifact: str, ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None,
              note: str = "", available: int | None = None) -> Check:
        """Compare `got` with the reference probabilities `ref` (near ties by this aim's margin) and judge it.
        `available`: the held-out images the data set has (None: unknown), which --parity-count can use."""
        a = parity.compare(ref, got, labels, tie_margin=self.tie_margin)
        if self.accuracy_drop is None:
            return Check(name, artifact, a.max_abs_diff <= self.max_abs_diff and a.decisive_top1_agreement >= self.top1,
                         f"max abs(dp) <= {self.max_abs_diff:g}, top-1 >= {self.top1:.1%} "
                         f"(images with a top-2 margin > {self.tie_margin:g})",
                         {"n": a.n, "max_abs_diff": a.max_abs_diff, "top1_agreement": a.top1_agreement,
                          "near_ties": a.near_ties, "decisive_top1_agreement": a.decisive_top1_agreement}, note)
        drop = a.accuracy_a - a.accuracy_b if a.accuracy_a is not None else 0.0
        # one image is 100/n points: below 1/accuracy_drop images the aim cannot allow a single flip
        coarse = a.n and 1.0 / a.n > self.accuracy_drop
        needed = int(round(1 / self.accuracy_drop))
        more = (f"--parity-count {needed} or more resolves 1 point" if available is None or available >= needed
                else f"--parity-count {available} uses every held-out image, still coarser than 1 point"
                if available > a.n else "the data set has no more held-out images: a larger one resolves finer")
        note = "; ".join(filter(None, [note, coarse and (
            f"{a.n} held-out images: one image is {100 / a.n:.2g} points, so one more error misses the aim ({more})")]))
        return Check(name, artifact, drop <= self.accuracy_drop + 1e-9,
                     f"accuracy drop <= {self.accuracy_drop * 100:g} point",
                     {**a.to_dict(), "accuracy_drop": drop}, note)


AIM_FP32 = Aim(max_abs_diff=1e-4, top1=1.0)
AIM_FP16 = Aim(max_abs_diff=1e-2, top1=0.995)
AIM_INT8 = Aim(accuracy_drop=0.01)


@dataclass
class Run:
    """What every build and check reads: the model, its description, the images and the staging folder."""

    model: object
    info: ModelInfo
    opts: ExportOptions
    out: Path
    stage: Path
    calib: image_data.ImageSet | None
    held: image_data.ImageSet
    report: ExportReport


@dataclass
class Format:
    """One artifact: how it is built (into the staging folder) and what it is compared with."""

    precision: str
    build: Callable[[Run], list[Path]]   # -> staged files, the artifact first (an engine adds its sidecar)
    check: str = ""                      # report name of the onnxruntime comparison ("" = not run on CPU)
    reference: str = "torch"             # "torch" or the precision whose outputs are the reference
    aim: Aim | None = None
    cross_check: str = ""                # report name of the same comparison run by onnx.reference
    extra_checks: Callable[[Run, Path, dict], list[Check]] | None = None
    openvino_check: str = ""             # report name of the same comparison run by OpenVINO (when installed)


# --------------------------------------------------------------------------- builds

def _build_fp32(run: Run) -> list[Path]:
    from usedge.export.onnx_export import export_onnx

    path = export_onnx(run.model, run.stage / FP32_NAME, run.info, with_cam=run.opts.cam, opset=run.opts.opset,
                       cam_weighting=run.opts.cam_weighting)
    run.report.add_check(Check("onnx.checker (full_check)", FP32_NAME, True, "no error"))
    return [path]


def _build_fp16(run: Run) -> list[Path]:
    from usedge.export.fp16 import convert_fp16

    return [convert_fp16(run.stage / FP32_NAME, run.stage / FP16_NAME)]


def _build_int8(run: Run) -> list[Path]:
    from usedge.export.int8 import quantize_int8

    return [quantize_int8(run.stage / FP32_NAME, run.stage / INT8_NAME, run.calib.x, method=run.opts.calib_method,
                          activations=run.opts.activations)]


def _build_engine(run: Run) -> list[Path]:
    from usedge.export.tensorrt import build_engine
    from usedge.runtime.engine_sidecar import sidecar_path

    o = run.opts
    engine, _ = build_engine(run.stage / FP16_NAME, run.stage, max_batch=o.max_batch, opt_batch=o.opt_batch,
                             optimization_level=o.optimization_level, workspace_mib=o.workspace_mib,
                             timing_cache=o.timing_cache or run.out / "trt_timing.cache")
    return [engine, sidecar_path(engine)]


def _cam_check(run: Run, path: Path, outputs: dict) -> list[Check]:
    if not run.opts.cam:
        return []
    ref, got = outputs["torch"]["cam"], outputs["fp32"]["cam"]
    diff, scale = float(np.abs(ref - got).max()), float(np.abs(ref).max()) or 1.0
    return [Check("torch vs onnxruntime (cam)", FP32_NAME, diff <= 1e-4 * max(1.0, scale),
                  "max abs(dcam) <= 1e-4 x max abs(cam)", {"max_abs_diff": diff, "max_abs_cam": scale})]


def _saturation_check(run: Run, path: Path, outputs: dict) -> list[Check]:
    import onnx

    from usedge.export.int8 import SATURATION_FREE_WEIGHT, max_abs_weight

    biggest = max_abs_weight(onnx.load(str(path)))
    return [Check("int8 weights saturation-free (AVX2 without VNNI)", INT8_NAME, biggest <= SATURATION_FREE_WEIGHT,
                  f"max abs(w) <= {SATURATION_FREE_WEIGHT}", {"max_abs_weight": biggest})]


def plan(opts: ExportOptions, calib, report: ExportReport) -> list[Format]:
    """The formats this export builds, in build order (each later one may read an earlier file)."""
    formats = [Format("fp32", _build_fp32, "torch vs onnxruntime", "torch", AIM_FP32, "torch vs onnx.reference",
                      _cam_check, openvino_check="torch vs OpenVINO")]
    if opts.fp16 or opts.engine:
        formats.append(Format("fp16", _build_fp16, "fp16 vs fp32 (onnxruntime CPU)", "fp32", AIM_FP16,
                              "fp16 vs fp32 (onnx.reference)"))
    if opts.int8 and calib is None:
        report.skipped[INT8_NAME] = f"no calibration images ({report.data.get('why', 'no data set')}): pass --data DIR"
    elif opts.int8:
        formats.append(Format("int8", _build_int8, "int8 vs fp32 accuracy (held-out)", "fp32", AIM_INT8,
                              extra_checks=_saturation_check, openvino_check="int8 on OpenVINO vs fp32 accuracy (held-out)"))
    if opts.engine:
        from usedge.export.tensorrt import BUILD_ELSEWHERE, tensorrt_available

        ok, why = tensorrt_available()
        if ok:
            formats.append(Format("fp16", _build_engine))
        else:
            report.skipped["engine"] = f"{why}; {BUILD_ELSEWHERE}"
    return formats


# --------------------------------------------------------------------------- checks

def write_card(run: Run, built: list[tuple[Format, Path]], card: dict) -> Path:
    """Put the model card into every staged ONNX's metadata (the graph, and so its digest, is
    unchanged) and the engine sidecar's model info; write MODEL_CARD.md; returns its staged path."""
    import onnx

    from usedge.export.model_card import CARD_NAME, card_markdown
    from usedge.export.onnx_export import read_model_info, set_metadata
    from usedge.fileio import write_bytes_atomic, write_text_atomic
    from usedge.runtime.engine_sidecar import read_sidecar, write_sidecar
    from usedge.runtime.model_info import model_card_line

    for _, path in built:
        if path.suffix == ".onnx":
            model = onnx.load(str(path))
            info = read_model_info(model, path)
            info.model_card = card
            write_bytes_atomic(path, set_metadata(model, info).SerializeToString())
        else:
            sidecar = read_sidecar(path)
            sidecar.model_info = read_model_info(run.stage / FP16_NAME).to_json()
            write_sidecar(path, sidecar)
    run.info.model_card = card
    return write_text_atomic(run.stage / CARD_NAME, card_markdown(card, model_card_line(run.info)))


def cpu_note(onnxruntime: bool = True) -> str:
    """Which CPU the numerical checks ran on: int8 results differ between VNNI and AVX2-only CPUs (with
    onnxruntime: how its u8 x s8 kernels add up on this CPU; OpenVINO's kernels are its own)."""
    from usedge.runtime.cpu import cpu_model, int8_kernels

    name, flags = cpu_model()
    where = f"ran on {name} ({', '.join(flags) or 'no AVX2'})"
    if not onnxruntime:
        return where
    return where + ("; VNNI: u8 x s8 pairs widen to int32 here" if int8_kernels(flags) == "vnni"
                    else "; no VNNI: u8 x s8 pairs add in int16 here")


def check_all(run: Run, built: list[tuple[Format, Path]], say: Callable[[str], None]) -> None:
    """Run every built ONNX on the held-out images and compare it with its reference (one loop)."""
    x = run.held.x
    labels = run.held.labels if len(run.held.labels) else None
    say("running torch on the held-out images")
    outputs = {"torch": parity.torch_outputs(run.model, x, with_cam=run.opts.cam, cam_weighting=run.opts.cam_weighting)}
    k = min(run.opts.reference_count, len(x))
    # `--backend auto` may run the files on OpenVINO: where it is installed, they are checked on it too
    from usedge.runtime.backends.openvino import OpenVINOBackend

    openvino, why = (OpenVINOBackend.available() if any(fmt.openvino_check for fmt, _ in built)
                     else (False, "no file to check on it"))
    if not openvino and any(fmt.openvino_check for fmt, _ in built):
        run.report.not_run["OpenVINO checks"] = why
    for fmt, path in built:
        if not fmt.check:
            continue
        say(f"checking {path.name}")
        outputs[fmt.precision] = parity.ort_outputs(path, x)
        ref = outputs[fmt.reference]["probs"]
        note = cpu_note() if fmt.precision == "int8" else ""
        if fmt.precision == "int8" and run.report.data.get("trained_on_checks"):
            note += ("; the model trained (or chose its best epoch) on these images: its accuracies here are training accuracies (read the "
                     "row as fp32/int8 agreement, the run's report.md for generalisation)")
        run.report.add_check(fmt.aim.judge(fmt.check, path.name, ref, outputs[fmt.precision]["probs"], labels, note,
                                           available=run.report.data.get("held_out_available")))
        if fmt.cross_check and k:
            got = parity.reference_outputs(path, x[:k])["probs"]
            run.report.add_check(fmt.aim.judge(fmt.cross_check, path.name, ref[:k], got))
        for check in fmt.extra_checks(run, path, outputs) if fmt.extra_checks else []:
            run.report.add_check(check)
        if fmt.openvino_check and openvino:
            say(f"checking {path.name} on OpenVINO")
            got = parity.openvino_outputs(path, x)["probs"]
            ov_note = note.replace(cpu_note(), cpu_note(onnxruntime=False)) if note else ""
            run.report.add_check(fmt.aim.judge(fmt.openvino_check, path.name, ref, got, labels, ov_note,
                                               available=run.report.data.get("held_out_available")))


# --------------------------------------------------------------------------- the command

def check_writable(out: Path, overwrite: bool = True) -> None:
    """Create `out` and prove a file can be written there; OutputError otherwise, or when `out`
    already holds an export and `overwrite` is False."""
    from usedge.export.report import REPORT_JSON

    earlier = sorted(p.name for p in (out / n for n in (FP32_NAME, FP16_NAME, INT8_NAME, REPORT_JSON)) if p.exists())
    if earlier and not overwrite:
        raise OutputError(f"output folder already holds an export ({', '.join(earlier)})", path=out,
                          hint="pass --overwrite to replace it, or another --out")
    writable_folder(out, "--out", "the export (new or earlier)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def clean_stale_staging(out: Path) -> list[str]:
    """Remove staging folders (`.usedge-export-<pid>-*`) whose export process is gone (killed).
    Folders of a live export on this machine are left alone. Returns the removed names."""
    removed = []
    for stage in out.glob(STAGING_PREFIX + "*"):
        pid = stage.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if stage.is_dir() and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage.name)
    return removed


def load_for_export(checkpoint: Path):
    """load_checkpoint with every failure as a ModelError naming the file."""
    from usedge.train.checkpoint import load_checkpoint

    try:
        return load_checkpoint(checkpoint)
    except ConfigError as exc:   # e.g. an architecture this usedge does not know
        raise ModelError(f"checkpoint describes a model this usedge cannot build: {exc.message}",
                         path=checkpoint, hint="export with the usedge version that trained it") from exc


def training_summary(meta: dict) -> dict:
    """A short, JSON-able summary of how the checkpoint was trained (goes into ONNX metadata)."""
    config = meta.get("config") or {}
    metrics = meta.get("metrics") or {}
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    return {"config": {k: config[k] for k in ("model", "data", "loss", "optim", "cv") if k in config},
            "metrics": keep, "usedge_version": meta.get("usedge_version", "")}


def _choose_images(checkpoint: Path, meta: dict, spec: PreprocessSpec, class_names: list[str], opts: ExportOptions,
                   report: ExportReport):
    """(calibration ImageSet | None, held-out ImageSet, training-data provenance for the model card) —
    random inputs when no data set is known."""
    from usedge.export.model_card import describe_data

    data = opts.data or image_data.recorded_data(meta, checkpoint)
    if data is None:
        rng = np.random.default_rng(opts.seed)
        x = rng.uniform(-1, 1, size=(max(4, min(opts.parity_count, 16)), 1, spec.size, spec.size)).astype(np.float32)
        raw = image_data.recorded_data_path(meta, checkpoint)
        why = (f"the training data folder the run recorded, {raw}, is not found from {Path.cwd()}" if raw
               else "no data set given or recorded")
        report.data = {"source": "random", "why": why, "note": f"{why}: parity on uniform noise, "
                       "no INT8 (calibration needs real images); pass --data DIR"}
        return None, image_data.ImageSet(x=x, labels=np.array([], dtype=np.int64), paths=[]), {"note": why}
    ds = image_data.open_dataset(data, class_names)
    trained_here = opts.data is None or image_data.is_training_data(ds, meta, checkpoint)
    split = image_data.split_from_run(ds.samples, ds.root, checkpoint) if trained_here else None
    how = "the fold's train / test patients (folds.csv)" if split else "split by patient hash"
    if not trained_here:
        how += "; not the data set the checkpoint was trained on: the checks' images only"
    elif not split and (checkpoint.parent / "folds.csv").is_file():   # a run's all-data model.pt
        how += ("; this model was trained (or chose its best epoch) on all of them, so its accuracy here is training accuracy: "
                "read the int8 row as fp32/int8 agreement, and the run's report.md for generalisation")
    calib, held = split or image_data.split_by_patient(ds.samples)
    available = len(held)
    calib = image_data.spread(calib, opts.calib_count)
    held = image_data.spread(held, opts.parity_count)
    report.data = {"source": str(data), "images": len(ds), "calibration": len(calib), "held_out": len(held),
                   "held_out_available": available,
                   "trained_on_checks": bool(trained_here and not split and (checkpoint.parent / "folds.csv").is_file()),
                   "split": how, "note": f"{len(calib)} calibration / {len(held)} held-out images, {how}"}
    fold = checkpoint.parent.name if split else None       # a fold model: described by what it trained on
    if trained_here:
        provenance = {**describe_data(ds, fold, split[0] if split else None),
                      "named_by": "--data at export" if opts.data else "the checkpoint"}
    else:       # --data names other images: the card describes the recorded training data, if it is here
        recorded = image_data.recorded_data(meta, checkpoint)
        raw = image_data.recorded_data_path(meta, checkpoint)
        provenance = ({**describe_data(image_data.open_dataset(recorded, class_names)), "named_by": "the checkpoint"}
                      if recorded is not None else
                      {"note": f"the run recorded {raw}, not found from here" if raw else "not recorded"})
        provenance["checks_data"] = f"{data} (--data: the export checks' images, not the training data)"
    return image_data.load_images(calib, spec), image_data.load_images(held, spec), provenance


def run_export(checkpoint: str | Path, out: str | Path, opts: ExportOptions = ExportOptions(),
               progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export a checkpoint into `out`; returns the report (also written as export_report.json/.md)."""
    say = progress or (lambda _msg: None)
    checkpoint, out = Path(checkpoint), Path(out)
    opts.check()
    created = not out.exists()
    try:
        return _export(checkpoint, out, opts, say)
    except BaseException:
        if created:      # a failed export leaves no empty --out folder behind (nothing of it was kept)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _export(checkpoint: Path, out: Path, opts: ExportOptions, say: Callable[[str], None]) -> ExportReport:
    import torch

    check_writable(out, opts.overwrite)
    if opts.triton is not None and (Path(opts.triton) / opts.triton_name / "config.pbtxt").exists() and not opts.overwrite:
        raise OutputError(f"the Triton repository already holds a model named {opts.triton_name!r}",
                          path=Path(opts.triton) / opts.triton_name,
                          hint="pass --overwrite to replace it, or another --triton-name")
    say("loading checkpoint")
    model, meta = load_for_export(checkpoint)
    spec = PreprocessSpec.from_dict(meta.get("preprocess") or {})
    info = ModelInfo(class_names=list(meta["class_names"]), input_size=spec.size, preprocess=spec, arch=meta["arch"],
                     checkpoint_sha256=meta["sha256"], usedge_version=usedge.__version__, precision="fp32",
                     outputs=["probs", "cam"] if opts.cam else ["probs"], training=training_summary(meta),
                     export={"opset": opts.opset, "exporter": f"torch {torch.__version__} dynamo",
                             "checkpoint": checkpoint.name,
                             **({"cam_weighting": opts.cam_weighting} if opts.cam else {})})
    report = ExportReport(checkpoint=str(checkpoint), checkpoint_sha256=meta["sha256"], out_dir=str(out),
                          usedge_version=usedge.__version__, settings=opts.to_dict())
    report.removed_stale = clean_stale_staging(out)
    say("reading images")
    calib, held, provenance = _choose_images(checkpoint, meta, spec, info.class_names, opts, report)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    run = Run(model, info, opts, out, stage, calib, held, report)
    try:
        built: list[tuple[Format, Path]] = []
        produced: list[Path] = []
        for fmt in plan(opts, calib, report):
            say(f"building {fmt.precision}{' engine' if fmt.build is _build_engine else ''}")
            t0 = time.perf_counter()
            files = fmt.build(run)
            report.timings_s[files[0].name] = round(time.perf_counter() - t0, 2)
            built.append((fmt, files[0]))
            produced += files
        check_all(run, built, say)
        carried = (meta.get("metrics") or {}).get("cross_validation") or None
        produced.append(write_card(run, built, build_card(checkpoint, info.class_names, provenance, report,
                                                          opts.uncertain_margin, carried)))
        say("moving artifacts into place")
        for fmt, path in built:
            report.add_artifact(path, precision=fmt.precision)
        for path in produced:
            os.replace(path, out / path.name)
        report.removed_stale += remove_stale(out, [p.name for p in produced], info)
        if opts.triton is not None:
            engine = next((p for f, p in built if f.build is _build_engine), None)
            _write_triton(out, opts, report, engine)
        report.write(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _describes(other: ModelInfo | None, info: ModelInfo) -> bool:
    """True when an artifact's ModelInfo names the same checkpoint, outputs, input size and CAM weighting."""
    def key(i: ModelInfo) -> tuple:
        return i.checkpoint_sha256, i.outputs, i.input_size, (i.export or {}).get("cam_weighting")
    return other is not None and key(other) == key(info)


def remove_stale(out: Path, produced: list[str], info: ModelInfo) -> list[str]:
    """Delete artifacts an earlier export left in `out` that this export did not write: every FP16/INT8
    ONNX (an int8 file of other settings, e.g. another CAM weighting, would sit beside the new fp32 one),
    and TensorRT engines (+ sidecars) that do not describe the model just exported (another checkpoint,
    outputs, input size or CAM weighting; an engine built from it on the GPU machine stays). Returns
    the deleted names."""
    from usedge.runtime.engine_sidecar import read_sidecar, sidecar_path
    from usedge.runtime.model_info import model_info_from_metadata

    def info_of(read: Callable[[], ModelInfo]) -> ModelInfo | None:
        try:
            return read()
        except Exception:  # unreadable leftovers are stale too
            return None

    stale = [out / name for name in (FP16_NAME, INT8_NAME) if name not in produced and (out / name).exists()]
    for engine in out.glob("*.engine"):
        if engine.name not in produced and not _describes(info_of(
                lambda: model_info_from_metadata({"model_info": read_sidecar(engine).model_info}, engine)), info):
            stale += [engine] + [p for p in (sidecar_path(engine),) if p.exists()]
    for path in stale:
        path.unlink(missing_ok=True)
    return [p.name for p in stale]


def _write_triton(out: Path, opts: ExportOptions, report: ExportReport, engine: Path | None) -> None:
    from usedge.export.triton import TritonSettings, parse_config, write_model_repository
    from usedge.runtime.engine_sidecar import read_sidecar

    choice = opts.triton_model
    if choice == "auto":
        choice = "engine" if engine is not None else "fp32"
    files = {"fp32": FP32_NAME, "fp16": FP16_NAME, "int8": INT8_NAME}
    if choice == "engine":
        if engine is None:
            raise ConfigError("--triton-model engine needs a built engine", hint="add --engine on a GPU machine")
        source = out / engine.name
        extra = {"engine_max_batch": read_sidecar(source).max_batch, "onnx_for_io": out / FP16_NAME}
        kind = "KIND_GPU"
    else:
        source, extra = out / files[choice], {}
        if not source.is_file():
            raise ConfigError(f"--triton-model {choice} needs {files[choice]}, which this export did not build",
                              hint=f"enable it (--{choice}) or pick another --triton-model")
        kind = "KIND_CPU" if choice == "int8" else "KIND_AUTO"
    settings = TritonSettings(name=opts.triton_name, max_batch_size=opts.max_batch, instance_kind=kind,
                              preferred_batch_sizes=[b for b in (1, 2, 4, 8, 16) if b <= opts.max_batch][-2:])
    config = write_model_repository(opts.triton, source, settings, **extra)
    figures = {"model": choice, "max_batch_size": settings.max_batch_size}
    try:
        parsed = parse_config(config)
        report.add_check(Check("config.pbtxt parses as Triton ModelConfig", str(config), parsed.name == settings.name,
                               "parsed with tritonclient's model_config.proto", figures))
    except MissingDependency:  # record, do not fail the export
        report.add_check(Check("config.pbtxt written", str(config), True, "parse check needs tritonclient", figures,
                               note="tritonclient not installed: not parsed"))
    report.artifacts[f"triton:{config.parent.name}"] = {"sha256": sha256_file(config), "bytes": config.stat().st_size,
                                                        "path": str(config.parent), "precision": choice}
