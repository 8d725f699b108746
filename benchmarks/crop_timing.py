"""Time per 1080p frame: field-of-view detection vs the cached stream path (FrameCropper), for both
PreprocessSpec.resize methods, and how far the fast method's model inputs are from "area".

    nice -n 10 .venv/bin/python benchmarks/crop_timing.py --frames 200 --layouts 4

Frames: synthetic 1920x1080 scanner screens (usedge.synth.scanner, linear probe, every other layout
with a colour Doppler box), one screen layout per run of frames with the B-mode content changing per
frame. Measured, per frame, with OpenCV and numpy on one thread, in the same run (the methods alternate
which goes first; each timed call gets a fresh copy of the frame, made just before it, so every path
starts from the frame as the decoder has just written it):
  baseline        prepare(crop=none, resize=area): gray + INTER_AREA of the whole frame (no detection)
  detection       prepare(crop=auto) from scratch: field of view + skin line + Doppler + resize
  cached crop + normalise (METHOD)
                  what the stream loop does before the model (issue 18 item 2): FrameCropper(crop=auto,
                  resize=METHOD) after its first frame (layout re-check, skin line, gray and resize of the
                  crop box, Doppler), the quality gate (with it, the loop's crop stage), then normalise
                  into the model's reused input buffer
  resize alone (METHOD)
                  gray + resize of the same crop box in the method's order (crop.model_image: the resize
                  step of the definition; colour-halve-linear halves the colour crop before the gray)
CPU time (process_time, one OpenCV thread) is the primary figure: the machine is shared, and CPU time
excludes the waits for other processes; wall time (perf_counter) is reported beside it. Ratios are
against the baseline and detection, and the new models' method (colour-halve-linear) against area, all
measured in this run.

Fidelity of colour-halve-linear against area (the uint8 model inputs, same crop boxes): PSNR and absolute
differences in grey levels over the cached path's crops of the 1080p screens, over --cohort views of
the synthetic phantom (usedge.synth.phantom, crop=auto: what training sees on the synthetic cohort)
and over every frame of pydicom's four ultrasound files (real scanners, when pydicom has them). An
aliasing check: a 1-pixel checkerboard of each crop side, resized by each method and by plain
decimation (INTER_NEAREST): the spread (max - min) of the output in grey levels (0 = fully filtered).

Writes benchmarks/results/crop_timing.json and .md (crop_timing_<tag>.* with --tag, for another CPU: the
docs keep the developers' machine's figures), and (unless --no-docs or --tag) regenerates the figures
that README.md and docs/crop.md quote from them, so the docs always match the results file
(--docs-only: from the existing JSON, measuring nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from usedge.bench.machine import cpu_model  # noqa: E402
from usedge.bench.stats import cpu_counters, load_average, steal_since  # noqa: E402
from usedge.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from usedge.runtime.crop import FrameCropper, model_image, prepare, resize_to_model  # noqa: E402
from usedge.runtime.preprocess import RESIZE_FOR_NEW_MODELS, RESIZE_METHODS, PreprocessSpec, normalise  # noqa: E402
from usedge.runtime.quality import no_image_reason  # noqa: E402
from usedge.synth.phantom import render_view, sample_patient, sample_view  # noqa: E402
from usedge.synth.scanner import ScannerScreen  # noqa: E402

KINDS = ("B-mode", "colour-Doppler")   # screens(): layouts 0, 2, ... are B-mode only; 1, 3, ... have a Doppler box
TARGET_MS = 1.0   # issue 18 item 2: crop + normalise of a 1080p frame on the cached-layout path, CPU ms
FAST = RESIZE_FOR_NEW_MODELS
PREVIOUS = "halve-linear"   # new models' method before colour-halve-linear: the same bytes on gray pixels
DICOM_FILES = ("examples_jpeg2k.dcm", "examples_palette.dcm", "examples_ybr_color.dcm", "examples_rgb_color.dcm")
CLASSES = ("epidermal_cyst", "lipoma", "pilomatricoma")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "nice -n 10 .venv/bin/python benchmarks/crop_timing.py"


def screens(n_layouts: int, per_layout: int, seed: int):
    """Yield lists of 1080p frames, one list per screen layout (same UI, changing B-mode)."""
    rng = np.random.default_rng(seed)
    for k in range(n_layouts):
        p = sample_patient(f"T{k}", CLASSES[k % 3], rng)
        views = [render_view(p, sample_view(p, rng), rng)[0] for _ in range(3)]
        shape = views[0].shape
        screen = ScannerScreen(rng, shape, size=(1920, 1080), doppler=bool(k % 2))
        frames = []
        for i in range(per_layout):
            f = screen.background.copy()
            screen.place(f, cv2.resize(views[i % 3], shape[::-1]))
            screen.paint_doppler(f, phase=0.3 * i)
            frames.append(f)
        yield frames


def timed(fn, frame):
    """(wall ms, CPU ms) of fn on a fresh copy of frame, made just before (not timed): every path starts
    from the frame as a decoder has just written it, whichever ran before it on the same frame."""
    frame = frame.copy()
    w0, c0 = time.perf_counter(), time.process_time()
    fn(frame)
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


# --------------------------------------------------------------------------- fidelity

def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, int, float]:
    """(PSNR dB, inf when identical; max abs difference; mean abs difference) of two uint8 images."""
    d = a.astype(np.int16) - b.astype(np.int16)
    mse = float(np.mean(d.astype(np.float64) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    return psnr, int(np.abs(d).max()), float(np.abs(d).mean())


def summarise(diffs: list[tuple[float, int, float]], what: str) -> dict:
    psnr = np.array([p for p, _, _ in diffs])
    finite = psnr[np.isfinite(psnr)]
    mx = np.array([m for _, m, _ in diffs])
    mean = np.array([m for _, _, m in diffs])
    return {"what": what, "crops": len(diffs), "identical": int(len(psnr) - len(finite)),   # PSNR: of the others
            "psnr_db_median": float(np.median(finite)) if len(finite) else None,
            "psnr_db_p5": float(np.percentile(finite, 5)) if len(finite) else None,
            "psnr_db_min": float(finite.min()) if len(finite) else None,
            "max_abs_median": float(np.median(mx)) if len(mx) else None, "max_abs_max": int(mx.max()) if len(mx) else None,
            "mean_abs_median": float(np.median(mean)) if len(mean) else None}


def cohort_diffs(n: int, seed: int) -> list[tuple[float, int, float]]:
    """Phantom views (the synthetic cohort's images), prepared with crop=auto by both methods."""
    rng = np.random.default_rng(seed)
    area, fast = PreprocessSpec(resize="area"), PreprocessSpec(resize=FAST)
    out = []
    for i in range(n):
        p = sample_patient(f"C{i}", CLASSES[i % 3], rng)
        image = render_view(p, sample_view(p, rng), rng)[0]
        out.append(difference(prepare(image, area)[0], prepare(image, fast)[0]))
    return out


def dicom_diffs() -> tuple[list[tuple[float, int, float]], list[str]]:
    """Every frame of pydicom's ultrasound files (when pydicom ships them), DICOM regions as at the bedside."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        return [], []
    from usedge.runtime.dicom import open_dicom

    area, fast = PreprocessSpec(resize="area"), PreprocessSpec(resize=FAST)
    out, used = [], []
    for name in DICOM_FILES:
        path = get_testdata_file(name, download=False)
        if not path:
            continue
        d = open_dicom(path)
        used.append(name)
        for _, frame in d.frames():
            out.append(difference(prepare(frame, area, regions=d.regions)[0],
                                  prepare(frame, fast, regions=d.regions)[0]))
    return out, used


def aliasing(sides: list[int], size: int) -> dict[str, int]:
    """Spread (max - min, grey levels) of a 1-pixel checkerboard of each side brought to size x size:
    the worst over the sides, per method and for plain decimation."""
    worst = {m: 0 for m in RESIZE_METHODS} | {"decimation (INTER_NEAREST)": 0}
    for side in sorted(set(sides)):
        board = ((np.indices((side, side)).sum(axis=0) % 2) * 255).astype(np.uint8)
        outs = {m: resize_to_model(board, size, m) for m in RESIZE_METHODS}
        outs["decimation (INTER_NEAREST)"] = cv2.resize(board, (size, size), interpolation=cv2.INTER_NEAREST)
        for k, o in outs.items():
            worst[k] = max(worst[k], int(o.max()) - int(o.min()))
    return worst


# --------------------------------------------------------------------------- docs

def _replace(text: str, start: str, end: str, new: str, where: str) -> str:
    """text with the part from `start` up to (not including) `end` replaced by `new`."""
    a = text.find(start)
    b = text.find(end, a)
    if a < 0 or b < 0:
        raise SystemExit(f"{where}: cannot find the crop timing figures to regenerate "
                         f"(from {start[:40]!r} to {end[:40]!r}); fix the file or pass --no-docs")
    return text[:a] + new + text[b:]


def update_docs(r: dict, frames: int, layouts: int) -> None:
    """Regenerate the figures README.md and docs/crop.md quote from benchmarks/results/crop_timing.*."""
    s, fid, tgt = r["summary"], r["fidelity"], r["target"]
    kinds = tgt["by_layout_kind"]
    cached = {m: s[f"cached crop + normalise ({m})"] for m in RESIZE_METHODS}
    alone = {m: s[f"resize alone ({m})"] for m in RESIZE_METHODS}

    def row(label, k):
        v = s[k]
        return (f"| {label} | {v['cpu_ms_median']:.2f} | {v['cpu_ms_p90']:.2f} | {v['wall_ms_median']:.2f} | "
                f"{v['cpu_ratio_to_baseline']:.2f} | {v['cpu_ratio_to_detection']:.2f} |")

    def fid_row(label, f):
        if f["psnr_db_median"] is None:
            return f"| {label} | {f['crops']} | identical | | | |"
        n = f"{f['crops']} ({f['identical']} identical)" if f["identical"] else f"{f['crops']}"
        return (f"| {label} | {n} | {f['psnr_db_median']:.1f} | {f['psnr_db_p5']:.1f} | "
                f"{f['max_abs_median']:.0f} / {f['max_abs_max']} | {f['mean_abs_median']:.2f} |")

    al = r["aliasing_spread"]
    crop_md = f"""`{COMMAND} --frames {frames} --layouts {layouts}` (one OpenCV
thread; CPU time (process_time) and wall time per frame; ratios against `crop=none` and against
detection in the same run; `benchmarks/results/crop_timing.md`):

| path | CPU median ms | CPU p90 ms | wall median ms | CPU / baseline | CPU / detection |
|---|---|---|---|---|---|
{row("baseline `crop=none` (gray + INTER_AREA of the whole frame)", "baseline")}
{row("detection from scratch (`prepare`, crop=auto)", "detection")}
{row("cached stream path, resize=area: `FrameCropper` + quality gate + normalise into the reused input buffer", "cached crop + normalise (area)")}
{row(f"the same, resize={PREVIOUS}", f"cached crop + normalise ({PREVIOUS})")}
{row(f"the same, resize={FAST}", f"cached crop + normalise ({FAST})")}
{row(f"of which ({FAST}): B-mode layouts", f"cached crop + normalise ({FAST}), B-mode layouts")}
{row(f"of which ({FAST}): colour-Doppler layouts", f"cached crop + normalise ({FAST}), colour-Doppler layouts")}
{row("of which: gray + resize of the crop box, area", "resize alone (area)")}
{row(f"of which: gray + resize of the crop box, {PREVIOUS}", f"resize alone ({PREVIOUS})")}
{row(f"of which: gray + resize of the crop box, {FAST}", f"resize alone ({FAST})")}

{FAST} / area, same frames: cached path {r['cached_ratio_fast_to_area']:.2f}, resize alone
{r['resize_ratio_fast_to_area']:.2f} (crop sides {", ".join(map(str, r["crop_sides_px"]))} px to {r["model_size"]} px;
`benchmarks/results/crop_timing.md`). The CPU time is the honest cost here: the machine is shared
(the results file states the load). Issue 18 aims at **<= 1 ms** for the cached path (crop +
normalise of a 1080p frame); with {FAST} (the default for new models) it measures
**{tgt['measured_ms']:.2f} ms of CPU: {'met' if tgt['met'] else 'not met'}** ({PREVIOUS}: {cached[PREVIOUS]['cpu_ms_median']:.2f} ms, area: {cached['area']['cpu_ms_median']:.2f} ms). Half the
layouts carry a colour Doppler box, so that median falls between the two kinds of frame: B-mode
frames {kinds['B-mode']['measured_ms']:.2f} ms ({'met' if kinds['B-mode']['met'] else 'not met'}), colour-Doppler frames
{kinds['colour-Doppler']['measured_ms']:.2f} ms ({'met' if kinds['colour-Doppler']['met'] else 'not met'}: the colour mask and its fill). What is left besides the
resize ({alone[FAST]['cpu_ms_median']:.2f} ms) already works on the region of interest or a sampled view of it:
the blank check on every 16th pixel, the layout re-check on eight short strided lines, the skin line
on a grid of the field of view, Doppler on the halved colour crop (already read by the first halving) at the model grid,
the quality gate from the model image's histogram, and normalise into the Classifier's reused float32
buffer.

How far {FAST}'s model inputs are from area's (uint8, same crop boxes, grey levels;
`benchmarks/results/crop_timing.md`):

| crops | n | PSNR median dB | PSNR p5 dB | max abs diff median / max | mean abs diff median |
|---|---|---|---|---|---|
{fid_row("1080p synthetic screens, cached path", fid["screens"])}
{fid_row("synthetic phantom views (the cohort's images), crop=auto", fid["cohort"])}
{fid_row("pydicom's ultrasound files, every frame", fid["dicom"])}
{fid_row(f"1080p synthetic screens, cached path: {FAST} against {PREVIOUS}", r["fidelity_against_previous"])}

On crops larger than the model input the differences are those of two anti-aliasing filters on
speckle near the model grid's resolution (about {fid['screens']['mean_abs_median']:.1f} grey levels on average on the screens). The
largest are on crops smaller than the model input (pydicom's small screens), which are enlarged:
there OpenCV's INTER_AREA is close to nearest-neighbour and {FAST} is bilinear. A model runs
with the method it was trained with (the recorded `resize`); how a model trained with one method
fares on the other's inputs was not measured. Aliasing check (1-pixel
checkerboard of each crop side, spread of the output in grey levels; 0 = filtered out): area
{al['area']}, {PREVIOUS} {al[PREVIOUS]}, {FAST} {al[FAST]}, plain decimation {al['decimation (INTER_NEAREST)']} (`benchmarks/results/crop_timing.md`).

"""
    p = ROOT / "docs" / "crop.md"
    p.write_text(_replace(p.read_text(), f"`{COMMAND} --frames", "### Real ultrasound DICOM files shipped with pydicom",
                          crop_md, str(p)))
    readme = (f"- Cached stream path (crop, quality gate, normalise): {tgt['measured_ms']:.2f} ms CPU per 1080p frame with\n"
              f"  resize={FAST} (new models; B-mode frames {kinds['B-mode']['measured_ms']:.2f} ms, colour Doppler"
              f" {kinds['colour-Doppler']['measured_ms']:.2f} ms),\n"
              f"  {cached[PREVIOUS]['cpu_ms_median']:.2f} ms with resize={PREVIOUS} and"
              f" {cached['area']['cpu_ms_median']:.2f} ms with resize=area (older models);"
              f" full detection: {s['detection']['cpu_ms_median']:.2f} ms CPU\n")
    loads = (r["load_average_start"][0], r["load_average_end"][0])
    quiet = max(loads) < 0.5 * (os.cpu_count() or 1)
    readme += f"  (`benchmarks/results/crop_timing.md`, {'quiet machine' if quiet else 'under load'}).\n"
    p = ROOT / "README.md"
    p.write_text(_replace(p.read_text(), "- Cached stream path (crop, quality gate, normalise):",
                          "- Real DICOMs shipped with pydicom", readme, str(p)))


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200, help="cached-path frames (detection runs on a tenth)")
    ap.add_argument("--layouts", type=int, default=4)
    ap.add_argument("--cohort", type=int, default=300, help="phantom views for the fidelity figures")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="", help="write crop_timing_<tag>.json/.md (another CPU) and leave the docs alone")
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate the figures in README.md and docs/crop.md")
    ap.add_argument("--docs-only", action="store_true", help="measure nothing: regenerate the docs' figures from "
                                                             "benchmarks/results/crop_timing.json")
    args = ap.parse_args(argv)
    if args.docs_only:
        r = json.loads((RESULTS / "crop_timing.json").read_text())
        update_docs(r, r.get("frames", r["layouts"] * r["frames_per_layout"]), r["layouts"])
        return 0
    per = max(2, args.frames // args.layouts)
    none_spec = PreprocessSpec(crop="none", resize="area")
    specs = {m: PreprocessSpec(crop="auto", resize=m) for m in RESIZE_METHODS}
    size = specs[FAST].size
    keys = ["baseline", "detection"] + [f"cached crop + normalise ({m})" for m in RESIZE_METHODS] \
        + [f"cached crop + normalise ({FAST}), {kind} layouts" for kind in KINDS] \
        + [f"resize alone ({m})" for m in RESIZE_METHODS]
    t = {k: [] for k in keys}
    detections, sides, screen_diffs, previous_diffs = 0, [], [], []
    buf = np.empty((1, 1, size, size), np.float32)
    load_start = load_average() or [float("nan")] * 3
    counters = cpu_counters()

    def loop_stages(cropper, frame):   # Classifier.predict's crop stage (cropper + quality gate) and normalise
        image, _ = cropper(frame)
        no_image_reason(image)
        normalise(image, cropper.spec, out=buf)

    for layout, frames in enumerate(screens(args.layouts, per, args.seed)):
        kind = KINDS[layout % 2]                            # screens(): every other layout has a Doppler box
        croppers = {m: FrameCropper(specs[m]) for m in RESIZE_METHODS}
        for c in croppers.values():
            c(frames[0])                                    # first frame: the one detection
        for i, f in enumerate(frames):
            t["baseline"].append(timed(lambda x: prepare(x, none_spec), f))
            order = RESIZE_METHODS if i % 2 == 0 else RESIZE_METHODS[::-1]
            for m in order:
                t[f"cached crop + normalise ({m})"].append(timed(lambda x: loop_stages(croppers[m], x), f))
                if m == FAST:
                    t[f"cached crop + normalise ({m}), {kind} layouts"].append(t[f"cached crop + normalise ({m})"][-1])
            outs = {m: croppers[m](f) for m in RESIZE_METHODS}
            x0, y0, w, h = outs[FAST][1].crop_box
            if outs["area"][1].crop_box == (x0, y0, w, h):
                screen_diffs.append(difference(outs["area"][0], outs[FAST][0]))
            if outs[PREVIOUS][1].crop_box == (x0, y0, w, h):
                previous_diffs.append(difference(outs[PREVIOUS][0], outs[FAST][0]))
            for m in order:
                t[f"resize alone ({m})"].append(timed(lambda x: model_image(x[y0:y0 + h, x0:x0 + w], specs[m])[0], f))
            if i % 10 == 0:
                t["detection"].append(timed(lambda x: prepare(x, specs[FAST]), f))
        detections += sum(c.detections for c in croppers.values())
        sides.append(w)                                     # the crop side on this layout's last frame
    print("timing done; fidelity on the phantom views and DICOM files ...", flush=True)
    dicom, dicom_files = dicom_diffs()
    fidelity = {"screens": summarise(screen_diffs, "1080p synthetic screens, cached path (same crop box)"),
                "cohort": summarise(cohort_diffs(args.cohort, args.seed), "synthetic phantom views, crop=auto"),
                "dicom": summarise(dicom, f"every frame of {', '.join(dicom_files) or 'no pydicom file'}")}
    against_previous = summarise(previous_diffs, f"1080p synthetic screens, cached path (same crop box): {FAST} "
                                                 f"against {PREVIOUS}")
    medians = {k: (float(np.median([w for w, _ in v])), float(np.median([c for _, c in v]))) for k, v in t.items()}
    summary = {}
    for k, v in t.items():
        wall, cpu = np.array([w for w, _ in v]), np.array([c for _, c in v])
        summary[k] = {"n": len(v), "wall_ms_median": float(np.median(wall)), "wall_ms_p90": float(np.percentile(wall, 90)),
                      "cpu_ms_median": float(np.median(cpu)), "cpu_ms_p90": float(np.percentile(cpu, 90)),
                      "cpu_ratio_to_baseline": float(np.median(cpu)) / medians["baseline"][1],
                      "cpu_ratio_to_detection": float(np.median(cpu)) / medians["detection"][1],
                      "wall_ratio_to_baseline": float(np.median(wall)) / medians["baseline"][0]}
    load_end = load_average() or [float("nan")] * 3
    steal = steal_since(counters)
    cpu, flags = cpu_model()
    stage = summary[f"cached crop + normalise ({FAST})"]
    target = {"what": f"cached crop + normalise (resize={FAST}), CPU ms median per 1920x1080 frame",
              "aim_ms": TARGET_MS, "measured_ms": round(stage["cpu_ms_median"], 3),
              "met": stage["cpu_ms_median"] <= TARGET_MS,
              "resize_alone_ms": round(summary[f"resize alone ({FAST})"]["cpu_ms_median"], 3),
              "by_layout_kind": {kind: {"measured_ms": round(v, 3), "met": v <= TARGET_MS} for kind in KINDS
                                 for v in [summary[f"cached crop + normalise ({FAST}), {kind} layouts"]["cpu_ms_median"]]}}
    ratio = lambda k: summary[f"{k} ({FAST})"]["cpu_ms_median"] / summary[f"{k} (area)"]["cpu_ms_median"]  # noqa: E731
    result = {"cpu": cpu, "cpu_flags": flags, "frame_size": [1920, 1080], "model_size": size,
              "frames": args.frames, "layouts": args.layouts, "frames_per_layout": per, "resize_methods": list(RESIZE_METHODS),
              "fast_method": FAST, "crop_sides_px": sides, "cropper_detections": detections, "summary": summary,
              "cached_ratio_fast_to_area": ratio("cached crop + normalise"),
              "resize_ratio_fast_to_area": ratio("resize alone"),
              "fidelity": fidelity, "fidelity_against_previous": against_previous, "aliasing_spread": aliasing(sides, size), "target": target,
              "opencv_threads": cv2.getNumThreads(), "load_average_start": load_start, "load_average_end": load_end,
              "cpu_steal": steal,
              "machine": f"{cpu} ({', '.join(flags) or 'no AVX2'}), {os.cpu_count()} cores, one OpenCV thread; "
                         f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end"
                         + (f"; CPU steal {steal:.1%} (the VM host's other guests)" if steal is not None else "")
                         + (" (other work ran concurrently)" if max(load_start[0], load_end[0]) >= 0.5 * (os.cpu_count() or 1)
                            else "")}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"crop_timing_{args.tag}" if args.tag else "crop_timing"
    write_json_atomic(args.out / f"{name}.json", result)
    md = [f"# Crop time per 1920x1080 frame, and resize={FAST} against resize=area", "",
          f"`{COMMAND} --frames {args.frames} --layouts {args.layouts}{f' --tag {args.tag}' if args.tag else ''}`", "",
          f"{result['machine']}. The stream croppers (one per resize method) ran {detections} detection(s) over "
          f"{args.layouts} layouts x {per} frames; crop sides {', '.join(map(str, sides))} px (every other layout "
          f"with colour Doppler); model input {size} px.", "",
          "| path | frames | CPU median ms | CPU p90 ms | wall median ms | wall p90 ms | CPU / baseline | CPU / detection |",
          "|---|---|---|---|---|---|---|---|"]
    for k, s in summary.items():
        md.append(f"| {k} | {s['n']} | {s['cpu_ms_median']:.2f} | {s['cpu_ms_p90']:.2f} | {s['wall_ms_median']:.2f} | "
                  f"{s['wall_ms_p90']:.2f} | {s['cpu_ratio_to_baseline']:.2f} | {s['cpu_ratio_to_detection']:.2f} |")
    md += ["", f"{FAST} / area, CPU median, same frames: cached path {result['cached_ratio_fast_to_area']:.2f}, "
               f"resize alone {result['resize_ratio_fast_to_area']:.2f}.", "",
           f"Target (issue 18 item 2): {target['what']} <= {TARGET_MS:g} ms: measured {target['measured_ms']:.2f} ms, "
           f"{'met' if target['met'] else 'not met'}; the gray + resize of the crop box takes "
           f"{target['resize_alone_ms']:.2f} ms of it. By layout: "
           + "; ".join(f"{kind} {v['measured_ms']:.2f} ms, {'met' if v['met'] else 'not met'}"
                       for kind, v in target["by_layout_kind"].items())
           + " (the Doppler layouts add the colour mask and its fill; the median over all frames falls between "
             "the two kinds).", "",
           f"## Fidelity: {FAST} against area (uint8 model inputs, grey levels)", "",
           "| crops | n | identical (PSNR over the others) | PSNR median dB | PSNR p5 dB | PSNR min dB | max abs diff median | max abs diff max | mean abs diff median |",
           "|---|---|---|---|---|---|---|---|---|"]
    for f in [*fidelity.values(), against_previous]:
        if f["psnr_db_median"] is not None:
            md.append(f"| {f['what']} | {f['crops']} | {f['identical']} | {f['psnr_db_median']:.1f} | {f['psnr_db_p5']:.1f} | "
                      f"{f['psnr_db_min']:.1f} | {f['max_abs_median']:.0f} | {f['max_abs_max']} | {f['mean_abs_median']:.2f} |")
    md += ["", "Aliasing check, a 1-pixel checkerboard of each crop side resized to the model size: spread "
               "(max - min) of the output, grey levels (0 = fully filtered, 255 = aliased): "
           + ", ".join(f"{k} {v}" for k, v in result["aliasing_spread"].items()) + "."]
    write_text_atomic(args.out / f"{name}.md", "\n".join(md) + "\n")
    if not args.no_docs and not args.tag and args.out.resolve() == RESULTS.resolve():
        update_docs(result, args.frames, args.layouts)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
