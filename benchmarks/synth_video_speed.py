"""How long does `usedge synth video` take, against just encoding the same number of frames?

Baseline (same run, same size and codec): OpenCV writes N copies of one pre-rendered 1080p screen
with a moving bar (encoder cost only). Then write_scanner_video renders and writes N frames.
The ratio shows what the phantom adds on top of the encoder.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/synth_video_speed.py --seconds 20

Writes benchmarks/results/synth_video_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--doppler", action="store_true")
    args = ap.parse_args()
    from usedge.synth.video import write_scanner_video

    w, h = (int(v) for v in args.size.split("x"))
    n = int(round(args.seconds * args.fps))
    with tempfile.TemporaryDirectory() as tmp:
        base = np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)
        base = cv2.cvtColor(cv2.GaussianBlur(base, (0, 0), 1.5), cv2.COLOR_GRAY2BGR)
        t0, c0 = time.perf_counter(), time.process_time()
        wr = cv2.VideoWriter(str(Path(tmp) / "base.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (w, h))
        for i in range(n):
            f = base.copy()
            f[:, (i * 7) % w] = 255
            wr.write(f)
        wr.release()
        enc_wall, enc_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        write_scanner_video(Path(tmp) / "scan.mp4", frames=n, fps=args.fps, size=(w, h), doppler=args.doppler,
                            progress=False)
        vid_wall, vid_cpu = time.perf_counter() - t0, time.process_time() - c0
    res = {"frames": n, "seconds_of_video": args.seconds, "size": [w, h], "doppler": args.doppler,
           "encode_only_wall_s": round(enc_wall, 1), "encode_only_cpu_s": round(enc_cpu, 1),
           "synth_video_wall_s": round(vid_wall, 1), "synth_video_cpu_s": round(vid_cpu, 1),
           "ratio_cpu": round(vid_cpu / enc_cpu, 2), "ratio_wall": round(vid_wall / enc_wall, 2),
           "note": "2-core machine shared with other engineers' jobs; CPU seconds are the steadier number"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth_video_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    md = ["# usedge synth video: time against the encoder alone", "",
          f"`OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/synth_video_speed.py --seconds {args.seconds:g}`", "",
          "| frames | size | encode only: wall s / CPU s | synth video: wall s / CPU s | ratio (CPU) |",
          "|---|---|---|---|---|",
          f"| {n} | {w}x{h} | {res['encode_only_wall_s']} / {res['encode_only_cpu_s']} | "
          f"{res['synth_video_wall_s']} / {res['synth_video_cpu_s']} | {res['ratio_cpu']} |", "", res["note"]]
    (RESULTS / "synth_video_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
