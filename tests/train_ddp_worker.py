"""Run by tests/test_train_ddp.py: one tiny `fit` under torchrun (DDP, gloo) or as a single process.

    python tests/train_ddp_worker.py OUT.json                                  # single process
    python -m torch.distributed.run --nproc-per-node 2 tests/train_ddp_worker.py OUT.json   # DDP
Writes (rank 0) the per-epoch training losses and the final inner-validation probabilities.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(out: str) -> None:
    torch.set_num_threads(1)
    from usedge.dataset import Sample
    from usedge.train.config import load_config
    from usedge.train.data import TumorDataset
    from usedge.train.trainer import _make_model, fit, init_distributed, resolve_device, seed_everything

    cfg = load_config(overrides={"data.image_size": 32, "optim.epochs": 3, "optim.batch_size": 8,
                                 "optim.lr": 1e-3, "run.device": "cpu"})
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 3
    images = (rng.random((32, 32, 32)) * 80).astype(np.uint8)
    images[labels == 0, 8:24, 8:24] = 220          # learnable: a bright square, a stripe, plain noise
    images[labels == 1, ::4] = 200
    samples = [Sample(path=Path(f"img{i}.png"), label=int(y), patient_id=f"p{i}") for i, y in enumerate(labels)]
    spec = cfg.preprocess_spec()
    train = TumorDataset(samples[:24], spec, images=images[:24])
    val = TumorDataset(samples[24:], spec, images=images[24:])
    device = resolve_device("cpu")
    dist = init_distributed(device)
    seed_everything(0)
    model = _make_model(cfg, 3, seed=0)
    res = fit(model, train, val, cfg, device, class_names=["a", "b", "c"], dist=dist, seed=0)
    from usedge.train.trainer import evaluate
    from usedge.train.data import make_loader

    probs, _ = evaluate(model, make_loader(val, 16, train=False), device)
    if dist.main:
        Path(out).write_text(json.dumps({"world_size": dist.world_size,
                                         "train_loss": [h["train_loss"] for h in res.history],
                                         "val_loss": [h["val_loss"] for h in res.history],
                                         "probs": probs.tolist()}))
    if dist.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
