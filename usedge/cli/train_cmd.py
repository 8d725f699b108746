"""usedge train: patient-grouped cross-validation, the paper's metrics report, and an all-data model.

    usedge train DATA --out runs/NAME [--config my.toml] [--epochs 5 --image-size 96 ...] [--resume]
    torchrun --nproc-per-node 2 -m usedge train DATA --out runs/NAME      # DDP (gloo on CPU)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usedge.cli.app import app


@app.command()
def train(
    data: Path = typer.Argument(..., help="Data set folder (<class>/<image>, optionally manifest.csv) or a manifest .csv."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (checkpoints, metrics.json, report.md, plots)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file overriding the defaults (same keys as usedge/train/defaults.toml)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (same config)."),
    # [model]
    arch: Optional[str] = typer.Option(None, help="ag_resnet18 | resnet18"),
    gate_norm: Optional[str] = typer.Option(None, help="Attention gate normalisation: paper | softmax | sigmoid."),
    pretrained: Optional[str] = typer.Option(None, help="Backbone initialisation: none | imagenet (online) | PATH to a ResNet18 state_dict."),
    # [data]
    image_size: Optional[int] = typer.Option(None, help="Model input side, pixels (paper: 224)."),
    crop: Optional[str] = typer.Option(None, help="Crop applied to each image (the bedside preprocessing): auto | fov | none | x,y,w,h | preset:NAME."),
    remove_doppler: Optional[bool] = typer.Option(None, "--remove-doppler/--keep-doppler", help="Remove Doppler colour."),
    num_workers: Optional[int] = typer.Option(None, help="DataLoader worker processes (images are cached in memory)."),
    augment: Optional[str] = typer.Option(None, help="Augmentation: none | expand (1 + N copies, the paper) | random (one sub-policy per image per epoch)."),
    policy: Optional[Path] = typer.Option(None, help="Policy JSON from `usedge augment search` (for --augment)."),
    # [loss]
    loss: Optional[str] = typer.Option(None, help="focal | ce"),
    gamma: Optional[float] = typer.Option(None, help="Focal loss exponent (paper: 3)."),
    alpha: Optional[str] = typer.Option(None, help="Focal per-class weights, comma separated, class order (paper: 0.75,0.75,0.25)."),
    # [optim]
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (paper: 1e-4)."),
    weight_decay: Optional[float] = typer.Option(None, help="Adam weight decay (paper: 0)."),
    step_size: Optional[int] = typer.Option(None, help="StepLR step, epochs (paper: 7)."),
    step_gamma: Optional[float] = typer.Option(None, help="StepLR factor (paper: 0.1)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per model (paper: 30)."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size (paper: 16)."),
    # [cv]
    folds: Optional[int] = typer.Option(None, help="Outer folds, by patient (paper: 5)."),
    inner_val_fraction: Optional[float] = typer.Option(None, help="Share of each training part (by patient) that chooses the checkpoint."),
    select_on: Optional[str] = typer.Option(None, help="Checkpoint choice on inner validation: loss | accuracy."),
    final_model: Optional[bool] = typer.Option(None, "--final-model/--no-final-model", help="Also train model.pt on all data."),
    max_folds: Optional[int] = typer.Option(None, help="Run only the first N outer folds (0 = all)."),
    # [run]
    seed: Optional[int] = typer.Option(None, help="Random seed (splits, initialisation, order)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (CUDA only)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="channels_last memory format (CUDA only)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (0 = default)."),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", help="Under torchrun: BatchNorm over the global batch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Cross-validate a classifier by patient and write the paper's metrics report."""
    from rich.console import Console

    from usedge.dataset import load_dataset
    from usedge.train.config import load_config
    from usedge.train.trainer import cross_validate

    overrides = {
        "model.arch": arch, "model.gate_norm": gate_norm, "model.pretrained": pretrained,
        "data.image_size": image_size, "data.crop": crop, "data.remove_doppler": remove_doppler,
        "data.num_workers": num_workers, "data.augment": augment, "data.policy": str(policy) if policy else None,
        "loss.name": loss, "loss.gamma": gamma, "loss.alpha": alpha,
        "optim.lr": lr, "optim.weight_decay": weight_decay, "optim.step_size": step_size,
        "optim.step_gamma": step_gamma, "optim.epochs": epochs, "optim.batch_size": batch_size,
        "cv.folds": folds, "cv.inner_val_fraction": inner_val_fraction, "cv.select_on": select_on,
        "cv.final_model": final_model, "cv.max_folds": max_folds,
        "run.seed": seed, "run.device": device, "run.amp": amp, "run.channels_last": channels_last,
        "run.threads": threads, "run.sync_bn": sync_bn,
    }
    cfg = load_config(config, overrides)
    dataset = load_dataset(data)
    augmenter = None
    if cfg.data.augment != "none":
        from usedge.train.augment import make_train_augmenter

        augmenter = make_train_augmenter(cfg.data.policy, cfg.data.augment, run=(dataset, cfg))
    console = Console(stderr=True)
    summary = cross_validate(dataset, cfg, out, resume=resume, augmenter=augmenter, progress=not quiet,
                             log=console.print)
    if summary:
        agg = summary["aggregate"]
        console.print(f"overall accuracy {100 * agg['overall_accuracy']['mean']:.1f} ± "
                      f"{100 * agg['overall_accuracy']['sd']:.1f} % over {agg['folds']} folds; "
                      f"report: {out / 'report.md'}")
