"""Run by tests/test_train_ddp.py: one tiny `fit` under torchrun (DDP, gloo) or as a single process.

    python tests/train_ddp_worker.py OUT.json [--dtype float64] [--no-sync-bn]         # single process
    python -m torch.distributed.run --nproc-per-node 2 tests/train_ddp_worker.py OUT.json ...   # DDP
Writes (rank 0) the per-epoch losses, the final inner-validation probabilities and, for every
optimiser step, a digest of each process's parameters (DDP promises they are bit-identical).
"""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def _digest(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--no-sync-bn", action="store_true")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(1)
    from usedge.dataset import Sample
    from usedge.train.config import load_config
    from usedge.train.data import TumorDataset, make_loader
    from usedge.train.trainer import _make_model, evaluate, fit, init_distributed, resolve_device, seed_everything

    class Typed(TumorDataset):  # the model's dtype; float64 leaves summation order as the only difference
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x.to(dtype), y

    cfg = load_config(overrides={"data.image_size": 32, "optim.epochs": 3, "optim.batch_size": 8,
                                 "optim.lr": 1e-3, "run.device": "cpu", "loss.name": "ce",
                                 "run.sync_bn": not args.no_sync_bn})
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 3
    images = (rng.random((32, 32, 32)) * 80).astype(np.uint8)
    images[labels == 0, 8:24, 8:24] = 220          # learnable: a bright square, a stripe, plain noise
    images[labels == 1, ::4] = 200
    samples = [Sample(path=Path(f"img{i}.png"), label=int(y), patient_id=f"p{i}") for i, y in enumerate(labels)]
    spec = cfg.preprocess_spec()
    train = Typed(samples[:24], spec, images=images[:24])
    val = Typed(samples[24:], spec, images=images[24:])
    device = resolve_device("cpu")
    dist = init_distributed(device)
    seed_everything(0)
    model = _make_model(cfg, 3, seed=0).to(dtype)
    steps: list[str] = []
    hook = register_optimizer_step_post_hook(
        lambda opt, *_: steps.append(_digest(p for g in opt.param_groups for p in g["params"])))
    res = fit(model, train, val, cfg, device, class_names=["a", "b", "c"], dist=dist, seed=0)
    hook.remove()
    probs, _ = evaluate(model, make_loader(val, 16, train=False), device)
    per_rank = [steps]
    if dist.enabled:
        per_rank = [None] * dist.world_size
        torch.distributed.all_gather_object(per_rank, steps)
    if dist.main:
        Path(args.out).write_text(json.dumps({"world_size": dist.world_size, "dtype": args.dtype,
                                              "train_loss": [h["train_loss"] for h in res.history],
                                              "val_loss": [h["val_loss"] for h in res.history],
                                              "probs": probs.tolist(), "step_digests": per_rank}))
    if dist.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
