"""Contact sheet of the synthetic cohort (rows: classes) and an example scanner screen, for the docs.

    .venv/bin/python scripts/make_contact_sheet.py                    # generates a small cohort (seed 0)
    .venv/bin/python scripts/make_contact_sheet.py --data /path/to/cohort --per-class 6

Writes docs/images/synth_contact_sheet.png and docs/images/synth_scanner_frame.png (each < 500 KB).
Images are picked one per patient, in manifest order; "*" marks an atypical lesion (see cohort.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs" / "images"


def contact_sheet(root: Path, per_class: int, tile: tuple[int, int]) -> np.ndarray:
    from usedge.dataset import load_dataset

    ds = load_dataset(root)
    meta = json.loads((root / "cohort.json").read_text()) if (root / "cohort.json").is_file() else {}
    atypical = {p["patient_id"]: p["atypical"] for p in meta.get("patient_list", [])}
    label_w = 150
    rows = []
    for ci, name in enumerate(ds.class_names):
        seen, tiles = set(), []
        for s in ds.samples:
            if s.label != ci or s.patient_id in seen:
                continue
            seen.add(s.patient_id)
            img = cv2.resize(cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE), tile, interpolation=cv2.INTER_AREA)
            if atypical.get(s.patient_id):
                cv2.putText(img, "*", (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2, cv2.LINE_AA)
            tiles.append(np.pad(img, 2))
            if len(tiles) == per_class:
                break
        head = np.zeros((tile[1] + 4, label_w), np.uint8)
        for k, word in enumerate(name.split("_")):
            cv2.putText(head, word, (8, tile[1] // 2 + 22 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1, cv2.LINE_AA)
        rows.append(np.hstack([head, *tiles]))
    return np.vstack(rows)


def save_png(path: Path, img: np.ndarray, limit_kb: int = 500) -> int:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    while len(buf) > limit_kb * 1024:  # shrink until it fits the repository budget
        img = cv2.resize(img, None, fx=0.85, fy=0.85, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    path.write_bytes(buf.tobytes())
    return len(buf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="an existing cohort (default: generate one)")
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DOCS)
    args = ap.parse_args()

    from usedge.synth.cohort import make_cohort
    from usedge.synth.scanner import render_scanner_frame

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = Path(tmp) / "cohort"
            n = args.per_class
            make_cohort(root, seed=args.seed, patients=(n, n, n), images=3 * n, progress=False)
        sheet = contact_sheet(root, args.per_class, (200, 160))
        size = save_png(args.out / "synth_contact_sheet.png", sheet)
        print(f"wrote {args.out / 'synth_contact_sheet.png'} ({size // 1024} KB)")
        first = sorted((root / "pilomatricoma").glob("*.png"))[0]
        frame, _ = render_scanner_frame(cv2.imread(str(first), cv2.IMREAD_GRAYSCALE), np.random.default_rng(args.seed),
                                        size=(1280, 720), doppler=True)
        size = save_png(args.out / "synth_scanner_frame.png", cv2.resize(frame, (960, 540), interpolation=cv2.INTER_AREA))
        print(f"wrote {args.out / 'synth_scanner_frame.png'} ({size // 1024} KB)")


if __name__ == "__main__":
    main()
