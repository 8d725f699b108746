"""Can a small CNN learn the synthetic cohort where a histogram cannot? (a sanity check, CPU, minutes)

Trains a 4-block CNN (about 80 k parameters, from scratch) on 96 x 96 resized whole images of a
cohort with one patient-grouped stratified split (80/20), and compares its balanced accuracy with the
64-bin histogram logistic regression on the same split. This is not usedge's model or trainer
(see usedge train): it only shows the lesion signatures are learnable from pixels.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/synth_learnability.py --data /tmp/cohort
    (without --data a default cohort, seed 0, difficulty 0.5, is generated first)

Writes benchmarks/results/synth_learnability.{json,md}.
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
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from torch import nn

    from usedge.dataset import load_dataset
    from usedge.synth.cohort import make_cohort

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = Path(tmp) / "cohort"
            make_cohort(root, seed=args.seed, progress=False)
        ds = load_dataset(root)
        imgs = np.stack([cv2.resize(cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE), (args.size, args.size),
                                    interpolation=cv2.INTER_AREA) for s in ds.samples])
        meta = json.loads((root / "cohort.json").read_text()) if (root / "cohort.json").is_file() else {}
    y, groups = np.asarray(ds.labels), np.asarray(ds.groups)
    tr, te = next(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=args.seed).split(imgs, y, groups))

    hist = np.stack([np.bincount((im.astype(int) // 4).ravel(), minlength=64) / im.size for im in imgs])
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced")).fit(hist[tr], y[tr])
    hist_bacc = balanced_accuracy_score(y[te], lr.predict(hist[te]))

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    model = nn.Sequential(block(1, 16), block(16, 32), block(32, 64), block(64, 96),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(96, 3))
    x = torch.from_numpy(imgs).float().div(127.5).sub(1).unsqueeze(1)
    yt = torch.from_numpy(y)
    counts = np.bincount(y[tr], minlength=3)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(len(tr) / (3 * counts), dtype=torch.float32))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    for _ in range(args.epochs):
        model.train()
        for b in np.array_split(rng.permutation(tr), max(1, len(tr) // 32)):
            xb = x[b]
            if rng.random() < 0.5:
                xb = xb.flip(3)  # the probe can face either way
            opt.zero_grad()
            loss_fn(model(xb), yt[b]).backward()
            opt.step()
        sched.step()
        print(f"epoch {_ + 1}/{args.epochs} {time.perf_counter() - t0:.0f} s", flush=True)
    model.eval()
    with torch.no_grad():
        pred = model(x[te]).argmax(1).numpy()
    cnn_bacc = balanced_accuracy_score(y[te], pred)
    res = {"data": str(args.data or "generated"), "difficulty": meta.get("difficulty"), "images": len(ds),
           "train_images": int(len(tr)), "test_images": int(len(te)), "test_patients": int(len(set(groups[te]))),
           "input_px": args.size, "epochs": args.epochs, "train_s": round(time.perf_counter() - t0, 1),
           "cnn_balanced_accuracy": round(float(cnn_bacc), 4), "histogram_lr_balanced_accuracy": round(float(hist_bacc), 4),
           "note": "one split, small CNN from scratch, CPU with other jobs running; a sanity check, not usedge's model"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth_learnability.json").write_text(json.dumps(res, indent=2) + "\n")
    md = ["# Synthetic cohort: a small CNN vs a histogram baseline", "",
          "`OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/synth_learnability.py`", "",
          "| difficulty | train / test images (test patients) | CNN balanced acc. | histogram-LR balanced acc. | epochs | train s |",
          "|---|---|---|---|---|---|",
          f"| {res['difficulty']} | {res['train_images']} / {res['test_images']} ({res['test_patients']}) | "
          f"{res['cnn_balanced_accuracy']} | {res['histogram_lr_balanced_accuracy']} | {res['epochs']} | {res['train_s']} |",
          "", res["note"]]
    (RESULTS / "synth_learnability.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
