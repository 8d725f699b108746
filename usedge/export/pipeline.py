"""`usedge export`: checkpoint -> model.onnx (+ fp16, int8, TensorRT engine, Triton repository) + report.

Every artifact is first written into a staging folder inside the output folder and moved into place
only when all requested artifacts and their checks are done; the report is written last. An
interrupted or failed export therefore leaves the previous complete set (or nothing), never a mix
of half-written files.
"""

from __future__ import annotations

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
from usedge.fileio import sha256_file
from usedge.export import images as image_data
from usedge.export.report import Check, ExportReport
from usedge.runtime.model_info import ModelInfo
from usedge.runtime.preprocess import PreprocessSpec

FP32_NAME, FP16_NAME, INT8_NAME = "model.onnx", "model.fp16.onnx", "model.int8.onnx"
AIM_FP32 = (1e-4, 1.0)     # max |dp|, top-1 agreement: torch vs onnxruntime / reference
AIM_FP16 = (1e-2, 0.995)
AIM_INT8_ACC_DROP = 0.01   # accuracy points (fraction) int8 may lose against fp32


@dataclass
class ExportOptions:
    fp16: bool = True
    int8: bool = True
    engine: bool = False
    triton: Path | None = None
    cam: bool = False
    data: Path | None = None            # images for parity + calibration (default: recorded in the checkpoint)
    calib_count: int = 64               # INT8 calibration images
    calib_method: str = "minmax"        # minmax | entropy | percentile
    activations: str = "uint8"          # INT8 activation type: uint8 (fast without VNNI) | int8
    parity_count: int = 64              # held-out images for parity and INT8 accuracy
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

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def check_writable(out: Path) -> None:
    """Create `out` and prove a file can be written there (OutputError otherwise)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".usedge-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"output folder is not writable ({exc.strerror})", path=out,
                          hint="pass --out to a folder you can write") from exc


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
    """(calibration ImageSet | None, held-out ImageSet) — random inputs when no data set is known."""
    data = opts.data or image_data.recorded_data_path(meta)
    if data is None:
        rng = np.random.default_rng(opts.seed)
        x = rng.uniform(-1, 1, size=(max(4, min(opts.parity_count, 16)), 1, spec.size, spec.size)).astype(np.float32)
        report.data = {"source": "random", "note": "no data set given or recorded: parity on uniform noise, "
                       "no INT8 (calibration needs real images); pass --data DIR"}
        return None, image_data.ImageSet(x=x, labels=np.array([], dtype=np.int64), paths=[])
    ds = image_data.open_dataset(data, class_names)
    split = image_data.split_from_run(ds.samples, ds.root, checkpoint)
    how = "the fold's train / test patients (folds.csv)" if split else "split by patient hash"
    if not split and (checkpoint.parent / "folds.csv").is_file():   # a run's all-data model.pt
        how += ("; this model was trained on all of them, so its accuracy here is training accuracy: "
                "read the int8 row as fp32/int8 agreement, and the run's report.md for generalisation")
    calib, held = split or image_data.split_by_patient(ds.samples)
    calib = image_data.spread(calib, opts.calib_count)
    held = image_data.spread(held, opts.parity_count)
    report.data = {"source": str(data), "images": len(ds), "calibration": len(calib), "held_out": len(held),
                   "split": how, "note": f"{len(calib)} calibration / {len(held)} held-out images, {how}"}
    return image_data.load_images(calib, spec), image_data.load_images(held, spec)


def _agreement_check(name, artifact, agreement, aim: tuple[float, float], note="") -> Check:
    max_diff, top1 = aim
    figures = {"n": agreement.n, "max_abs_diff": agreement.max_abs_diff, "top1_agreement": agreement.top1_agreement}
    return Check(name=name, artifact=artifact, aim=f"max abs(dp) <= {max_diff:g}, top-1 >= {top1:.1%}",
                 passed=agreement.max_abs_diff <= max_diff and agreement.top1_agreement >= top1,
                 figures=figures, note=note)


def run_export(checkpoint: str | Path, out: str | Path, opts: ExportOptions = ExportOptions(),
               progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export a checkpoint into `out`; returns the report (also written as export_report.json/.md)."""
    from usedge.export import parity
    from usedge.export.onnx_export import export_onnx

    say = progress or (lambda _msg: None)
    checkpoint, out = Path(checkpoint), Path(out)
    if opts.calib_count < 1 or opts.parity_count < 1 or opts.reference_count < 0:
        raise ConfigError("--calib-count and --parity-count must be >= 1, --reference-count >= 0",
                          hint="pass positive image counts")
    from usedge.export.int8 import ACTIVATION_TYPES, CALIB_METHODS

    if opts.calib_method not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method '{opts.calib_method}'", hint=f"use {', '.join(CALIB_METHODS)}")
    if opts.activations not in ACTIVATION_TYPES:
        raise ConfigError(f"unknown INT8 activation type '{opts.activations}'", hint=f"use {', '.join(ACTIVATION_TYPES)}")
    if opts.triton_model not in ("auto", "fp32", "fp16", "int8", "engine"):
        raise ConfigError(f"unknown --triton-model '{opts.triton_model}'", hint="use auto, fp32, fp16, int8 or engine")
    check_writable(out)
    say("loading checkpoint")
    model, meta = load_for_export(checkpoint)
    spec = PreprocessSpec.from_dict(meta.get("preprocess") or {})
    class_names = list(meta["class_names"])
    import torch

    info = ModelInfo(class_names=class_names, input_size=spec.size, preprocess=spec, arch=meta["arch"],
                     checkpoint_sha256=meta["sha256"], usedge_version=usedge.__version__, precision="fp32",
                     outputs=["probs", "cam"] if opts.cam else ["probs"], training=training_summary(meta),
                     export={"opset": opts.opset, "exporter": f"torch {torch.__version__} dynamo",
                             "checkpoint": checkpoint.name})
    report = ExportReport(checkpoint=str(checkpoint), checkpoint_sha256=meta["sha256"], out_dir=str(out),
                          usedge_version=usedge.__version__, settings=opts.to_dict())
    say("reading images")
    calib, held = _choose_images(checkpoint, meta, spec, class_names, opts, report)
    labels = held.labels if len(held.labels) else None

    stage = Path(tempfile.mkdtemp(prefix=".usedge-export-", dir=out))
    try:
        # FP32 ONNX + the three checks the issue asks for on every export.
        t0 = time.perf_counter()
        say(f"exporting {FP32_NAME} (opset {opts.opset})")
        fp32 = export_onnx(model, stage / FP32_NAME, info, with_cam=opts.cam, opset=opts.opset)
        report.timings_s["onnx"] = round(time.perf_counter() - t0, 2)
        report.add_check(Check("onnx.checker (full_check)", FP32_NAME, True, "no error"))
        say("parity: torch vs onnxruntime")
        ref = parity.torch_outputs(model, held.x, with_cam=opts.cam)
        ort32 = parity.ort_outputs(fp32, held.x)
        report.add_check(_agreement_check("torch vs onnxruntime", FP32_NAME,
                                          parity.compare(ref["probs"], ort32["probs"], labels), AIM_FP32))
        if opts.cam:
            cam_diff = float(np.abs(ref["cam"] - ort32["cam"]).max())
            scale = float(np.abs(ref["cam"]).max()) or 1.0
            report.add_check(Check("torch vs onnxruntime (cam)", FP32_NAME, cam_diff <= 1e-4 * max(1.0, scale),
                                   "max abs(dcam) <= 1e-4 x max abs(cam)", {"max_abs_diff": cam_diff, "max_abs_cam": scale}))
        if opts.reference_count:
            say("parity: onnx reference evaluator")
            k = min(opts.reference_count, len(held))
            refeval = parity.reference_outputs(fp32, held.x[:k])
            report.add_check(_agreement_check("onnx.reference vs onnxruntime", FP32_NAME,
                                              parity.compare(refeval["probs"], ort32["probs"][:k]), AIM_FP32))
        report.add_artifact(fp32, precision="fp32", opset=opts.opset, outputs=info.outputs)

        produced = [FP32_NAME]
        if opts.fp16 or opts.engine:
            from usedge.export.fp16 import convert_fp16

            say(f"converting {FP16_NAME}")
            t0 = time.perf_counter()
            fp16 = convert_fp16(fp32, stage / FP16_NAME)
            report.timings_s["fp16"] = round(time.perf_counter() - t0, 2)
            out16 = parity.ort_outputs(fp16, held.x)
            report.add_check(_agreement_check("fp16 vs fp32 (onnxruntime CPU)", FP16_NAME,
                                              parity.compare(ort32["probs"], out16["probs"], labels), AIM_FP16))
            if opts.reference_count:
                k = min(opts.reference_count, len(held))
                ref16 = parity.reference_outputs(fp16, held.x[:k])
                report.add_check(_agreement_check("fp16 vs fp32 (onnx.reference)", FP16_NAME,
                                                  parity.compare(ort32["probs"][:k], ref16["probs"]), AIM_FP16))
            report.add_artifact(fp16, precision="fp16")
            produced.append(FP16_NAME)

        if opts.int8 and calib is None:
            report.skipped[INT8_NAME] = "no calibration images: pass --data DIR"
        elif opts.int8:
            from usedge.export.int8 import quantize_int8

            say(f"quantising {INT8_NAME} ({len(calib)} images, {opts.calib_method})")
            t0 = time.perf_counter()
            int8 = quantize_int8(fp32, stage / INT8_NAME, calib.x, method=opts.calib_method,
                                 activations=opts.activations)
            report.timings_s["int8"] = round(time.perf_counter() - t0, 2)
            out8 = parity.ort_outputs(int8, held.x)
            agreement = parity.compare(ort32["probs"], out8["probs"], labels)
            drop = (agreement.accuracy_a - agreement.accuracy_b) if labels is not None else 0.0
            report.add_check(Check("int8 vs fp32 accuracy (held-out)", INT8_NAME, drop <= AIM_INT8_ACC_DROP,
                                   f"accuracy drop <= {AIM_INT8_ACC_DROP * 100:g} point",
                                   {**agreement.to_dict(), "accuracy_drop": drop}))
            report.add_artifact(int8, precision="int8", calibration=opts.calib_method, calib_images=len(calib),
                                activations=opts.activations)
            produced.append(INT8_NAME)

        engine_path = sidecar = None
        if opts.engine:
            from usedge.export.tensorrt import BUILD_ELSEWHERE, build_engine, tensorrt_available

            ok, why = tensorrt_available()
            if not ok:
                report.skipped["engine"] = f"{why}; {BUILD_ELSEWHERE}"
                say(f"no TensorRT engine: {why} — {BUILD_ELSEWHERE}")
            else:
                say("building TensorRT engine")
                t0 = time.perf_counter()
                engine_path, sidecar = build_engine(
                    stage / FP16_NAME, stage, max_batch=opts.max_batch, opt_batch=opts.opt_batch,
                    optimization_level=opts.optimization_level, workspace_mib=opts.workspace_mib,
                    timing_cache=opts.timing_cache or out / "trt_timing.cache")
                report.timings_s["engine"] = round(time.perf_counter() - t0, 2)
                report.add_artifact(engine_path, precision="fp16", gpu=sidecar.gpu_name,
                                    compute_capability=sidecar.compute_capability, trt_version=sidecar.trt_version)
                produced += [engine_path.name, engine_path.name + ".json"]

        say("moving artifacts into place")
        for name in produced:
            os.replace(stage / name, out / name)
        report.removed_stale = remove_stale(out, produced, info)
        if opts.triton is not None:
            _write_triton(out, opts, report, engine_path, sidecar)
        report.write(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _describes(info_json: str, info: ModelInfo) -> bool:
    """True when an artifact's model-info JSON names the same checkpoint, outputs and input size."""
    try:
        other = ModelInfo.from_json(info_json)
    except (ValueError, TypeError, KeyError):
        return False
    return (other.checkpoint_sha256, other.outputs, other.input_size) == (info.checkpoint_sha256, info.outputs,
                                                                           info.input_size)


def remove_stale(out: Path, produced: list[str], info: ModelInfo) -> list[str]:
    """Delete artifacts an earlier export left in `out` that do not describe the model just exported
    (another checkpoint, other outputs or input size): FP16/INT8 files this run did not write and
    TensorRT engines (+ sidecars). Returns the deleted names."""
    import onnx

    from usedge.runtime.engine_sidecar import read_sidecar, sidecar_path
    from usedge.runtime.model_info import METADATA_KEY

    stale = []
    for name in (FP16_NAME, INT8_NAME):
        path = out / name
        if name in produced or not path.exists():
            continue
        try:
            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception:  # unreadable leftovers are stale too
            meta = {}
        if not _describes(meta.get(METADATA_KEY, ""), info):
            stale.append(path)
    for engine in out.glob("*.engine"):
        if engine.name in produced:
            continue
        try:
            keep = _describes(read_sidecar(engine).model_info, info)
        except ModelError:
            keep = False
        if not keep:
            stale += [engine] + [p for p in (sidecar_path(engine),) if p.exists()]
    for path in stale:
        path.unlink(missing_ok=True)
    return [p.name for p in stale]


def _write_triton(out: Path, opts: ExportOptions, report: ExportReport, engine_path, sidecar) -> None:
    from usedge.export.triton import TritonSettings, parse_config, write_model_repository

    choice = opts.triton_model
    if choice == "auto":
        choice = "engine" if engine_path is not None else "fp32"
    files = {"fp32": FP32_NAME, "fp16": FP16_NAME, "int8": INT8_NAME}
    if choice == "engine":
        if engine_path is None:
            raise ConfigError("--triton-model engine needs a built engine", hint="add --engine on a GPU machine")
        source, extra = out / engine_path.name, {"engine_max_batch": sidecar.max_batch, "onnx_for_io": out / FP16_NAME}
        kind = "KIND_GPU"
    elif choice in files:
        source, extra = out / files[choice], {}
        if not source.is_file():
            raise ConfigError(f"--triton-model {choice} needs {files[choice]}, which this export did not build",
                              hint=f"enable it (--{choice}) or pick another --triton-model")
        kind = "KIND_CPU" if choice == "int8" else "KIND_AUTO"
    else:
        raise ConfigError(f"unknown --triton-model '{choice}'", hint="use auto, fp32, fp16, int8 or engine")
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
