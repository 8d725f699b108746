"""Crops of the real ultrasound DICOM files that ship inside pydicom, saved for a human to look at.

    .venv/bin/python benchmarks/crop_dicom.py

Files (pydicom/data/test_files, found with get_testdata_file(name, download=False): no download):
examples_jpeg2k.dcm (GE, linear, power Doppler), examples_palette.dcm (Philips, curved, regions),
examples_ybr_color.dcm (SonoSite, 30 frames), examples_rgb_color.dcm (GE, 320x240).
Writes benchmarks/results/crops/<name>.png (model input, 224 px), <name>.overlay.png (the frame
with field of view in green and crop in magenta), crop_dicom.json and crop_dicom.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from usedge.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic
from usedge.runtime.dicom import open_dicom
from usedge.runtime.crop import FrameCropper, prepare_all
from usedge.runtime.preprocess import PreprocessSpec

FILES = ("examples_jpeg2k.dcm", "examples_palette.dcm", "examples_ybr_color.dcm", "examples_rgb_color.dcm")
OUT = Path(__file__).resolve().parent / "results"


def find(name: str) -> Path | None:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name, download=False)
    return Path(p) if p else None


def overlay(frame: np.ndarray, infos) -> np.ndarray:
    vis = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    vis = vis.copy()
    for info in infos:
        for x, y, w, h in info.fov_boxes:
            cv2.rectangle(vis, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), 1)
        x, y, w, h = info.crop_box
        cv2.rectangle(vis, (x, y), (x + w - 1, y + h - 1), (255, 0, 255), 1)
    return vis


def png(path: Path, image: np.ndarray) -> None:
    write_bytes_atomic(path, cv2.imencode(".png", image)[1].tobytes())


def main() -> int:
    spec = PreprocessSpec()
    crops = OUT / "crops"
    rows = []
    for name in FILES:
        path = find(name)
        if path is None:
            print(f"{name}: not in this pydicom install, skipped")
            continue
        d = open_dicom(path)
        frame = d.frame(0)
        results = prepare_all(frame, spec, regions=d.raw_regions or None)
        stem = Path(name).stem
        for k, (img, info) in enumerate(results):
            png(crops / (f"{stem}.png" if len(results) == 1 else f"{stem}_v{k}.png"), img)
        png(crops / f"{stem}.overlay.png", overlay(frame, [i for _, i in results]))
        row = {"file": name, **d.describe(), "crops": [i.to_dict() for _, i in results]}
        if d.n_frames > 1:   # the stream path over the cine loop: how often the layout was re-detected
            cropper = FrameCropper(spec, regions=d.raw_regions or None)
            t0 = time.perf_counter()
            boxes = [cropper(f)[1].crop_box for _, f in d.frames()]
            row["cine"] = {"frames": d.n_frames, "detections": cropper.detections,
                           "distinct_crop_boxes": len(set(boxes)), "seconds": time.perf_counter() - t0}
        rows.append(row)
        c = results[0][1]
        print(f"{name}: {d.cols}x{d.rows}, {d.n_frames} frame(s), method {c.method}, fov {list(c.fov_box)}, "
              f"crop {list(c.crop_box)}, Doppler filled {c.doppler_fraction:.1%}; {'; '.join(c.notes)}")
    write_json_atomic(OUT / "crop_dicom.json", rows)
    md = ["# Crops of pydicom's real ultrasound files", "", "`.venv/bin/python benchmarks/crop_dicom.py`", "",
          "| file | size | frames | method | field of view | crop | Doppler filled | notes |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["crops"][0]
        md.append(f"| {r['file']} | {r['columns']}x{r['rows']} | {r['frames']} | {c['method']} | {c['fov_box']} | "
                  f"{c['crop_box']} | {c['doppler_fraction']:.1%} | {'; '.join(c['notes'])} |")
    for r in rows:
        if "cine" in r:
            md.append(f"\n{r['file']} as a stream: {r['cine']['frames']} frames, {r['cine']['detections']} "
                      f"detection(s), {r['cine']['distinct_crop_boxes']} distinct crop box(es).")
    write_text_atomic(OUT / "crop_dicom.md", "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
