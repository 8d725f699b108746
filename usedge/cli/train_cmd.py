"""usedge train: patient-grouped cross-validation, the paper's metrics report, and an all-data model.

    usedge train DATA --out runs/NAME [--config my.toml|paper] [--epochs 5 --image-size 96 ...] [--resume]
    usedge train DATA --out runs/NAME --set optim.schedule=step --set model.gate_norm=paper
    torchrun --nproc-per-node 2 -m usedge train DATA --out runs/NAME      # DDP (gloo on CPU)

A few common flags; every other config key through the repeatable `--set section.key=value`.
"""

from __future__ import annotations

import signal
import tomllib
from pathlib import Path
from typing import Optional

import typer

from usedge.cli.app import app
from usedge.cli.options import deprecated, quiet_option
from usedge.cli.terminal import line_printer, rich_console
from usedge.errors import ConfigError
from usedge.fileio import not_a_file
# --help shows the shipped defaults.toml (== TrainConfig's defaults, tested), read as a file so that
# importing the CLI (serve, infer) never imports the training package.
_D = tomllib.loads((Path(__file__).parent.parent / "train" / "defaults.toml").read_text())


def known_keys() -> list[str]:
    return [f"{section}.{key}" for section in _D for key in _D[section]]

# Flags of the previous release that are now `--set` keys: kept for one release, hidden.
_OLD_FLAGS = {
    "arch": "model.arch", "gate_norm": "model.gate_norm", "crop": "data.crop",
    "remove_doppler": "data.remove_doppler", "num_workers": "data.num_workers", "augment": "data.augment",
    "loss": "loss.name", "gamma": "loss.gamma", "weight_decay": "optim.weight_decay",
    "step_size": "optim.step_size", "step_gamma": "optim.step_gamma",
    "inner_val_fraction": "cv.inner_val_fraction", "select_on": "cv.select_on", "final_model": "cv.final_model",
    "max_folds": "cv.max_folds", "amp": "run.amp", "channels_last": "run.channels_last", "threads": "run.threads",
    "sync_bn": "run.sync_bn",
}


def _old(flag: str, *more: str):
    return typer.Option(None, flag, *more, hidden=True)


def parse_sets(items: list[str]) -> dict[str, str]:
    """["optim.lr=3e-4", ...] -> {"optim.lr": "3e-4"}; the key is checked by load_config."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r} is not section.key=value",
                              hint=f"e.g. --set optim.schedule=step; keys: {', '.join(known_keys())}")
        out[key.strip()] = value.strip()
    return out


@app.command()
def train(
    data: Path = typer.Argument(..., help="Data set folder (<class>/<image>, optionally manifest.csv) or a manifest .csv."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (checkpoints, metrics.json, report.md, plots)."),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", show_default="usedge defaults",
        help="A preset name (paper: the paper's protocol) or a TOML file with keys of usedge/train/defaults.toml."),
    image_size: Optional[int] = typer.Option(None, show_default=str(_D["data"]["image_size"]), help="Model input side, pixels."),
    epochs: Optional[int] = typer.Option(None, show_default=str(_D["optim"]["epochs"]), help="Epochs per model."),
    batch_size: Optional[int] = typer.Option(None, show_default=str(_D["optim"]["batch_size"]), help="Global batch size."),
    lr: Optional[float] = typer.Option(None, show_default=f"{_D['optim']['lr']:g}", help="Adam learning rate (peak of the schedule)."),
    device: Optional[str] = typer.Option(None, show_default=_D["run"]["device"], help="auto | cpu | cuda | cuda:N"),
    seed: Optional[int] = typer.Option(None, show_default=str(_D["run"]["seed"]), help="Random seed (splits, initialisation, order)."),
    folds: Optional[int] = typer.Option(None, show_default=str(_D["cv"]["folds"]), help="Outer folds, by patient."),
    alpha: Optional[str] = typer.Option(
        None, show_default=_D["loss"]["alpha"],
        help="Focal weight per class: balanced (inverse class frequency) | uniform | by class name, e.g. lipoma=0.5,epidermal_cyst=1."),
    policy: Optional[Path] = typer.Option(
        None, show_default="none", help="Fast AutoAugment policy JSON from `usedge augment search` (trains the 21x expanded set)."),
    pretrained: Optional[str] = typer.Option(
        None, show_default=_D["model"]["pretrained"], help="Backbone initialisation: none | imagenet (online) | PATH to a ResNet18 state_dict."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", metavar="SECTION.KEY=VALUE",
        help="Any other config key, repeatable, e.g. --set optim.schedule=step --set model.gate_norm=paper. "
             f"Keys: {', '.join(known_keys())}."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (same config)."),
    quiet: bool = quiet_option("No progress bars (the run's lines, notes and errors are still printed)."),
    # previous release's spellings (hidden; one deprecation line each)
    arch: Optional[str] = _old("--arch"), gate_norm: Optional[str] = _old("--gate-norm"),
    crop: Optional[str] = _old("--crop"), remove_doppler: Optional[bool] = _old("--remove-doppler/--keep-doppler"),
    num_workers: Optional[int] = _old("--num-workers"), augment: Optional[str] = _old("--augment"),
    loss: Optional[str] = _old("--loss"), gamma: Optional[float] = _old("--gamma"),
    weight_decay: Optional[float] = _old("--weight-decay"), step_size: Optional[int] = _old("--step-size"),
    step_gamma: Optional[float] = _old("--step-gamma"), inner_val_fraction: Optional[float] = _old("--inner-val-fraction"),
    select_on: Optional[str] = _old("--select-on"), final_model: Optional[bool] = _old("--final-model/--no-final-model"),
    max_folds: Optional[int] = _old("--max-folds"), amp: Optional[bool] = _old("--amp/--no-amp"),
    channels_last: Optional[bool] = _old("--channels-last/--no-channels-last"), threads: Optional[int] = _old("--threads"),
    sync_bn: Optional[bool] = _old("--sync-bn/--no-sync-bn"),
) -> None:
    """Cross-validate a classifier by patient and write the metrics report (usedge defaults, or --config paper)."""

    from usedge.dataset import load_dataset
    from usedge.runtime.interrupts import interrupt_between_frames
    from usedge.train.config import load_config
    from usedge.train.report import summary_line
    from usedge.train.trainer import cross_validate

    given = locals()
    overrides: dict = {}
    for name, key in _OLD_FLAGS.items():
        if given[name] is not None:
            flag = "--" + name.replace("_", "-")
            overrides[key] = deprecated(None, given[name], old=flag, new=f"--set {key}=...")
    overrides.update({
        "data.image_size": image_size, "optim.epochs": epochs, "optim.batch_size": batch_size, "optim.lr": lr,
        "run.device": device, "run.seed": seed, "cv.folds": folds, "loss.alpha": alpha,
        "data.policy": str(policy) if policy else None, "model.pretrained": pretrained,
    })
    overrides.update(parse_sets(set_ or []))
    # a policy means Fast AutoAugment: the paper's 21x expansion, unless the config or --set chose random
    # (the config is read without the policy here: with it, augment=light is refused as not using it)
    without_policy = {k: v for k, v in overrides.items() if k != "data.policy"}
    if policy and "data.augment" not in overrides and load_config(config, without_policy).data.augment not in ("expand", "random"):
        overrides["data.augment"] = "expand"
    cfg = load_config(config, overrides)
    not_a_file(out, "--out", "the run")
    dataset = load_dataset(data)
    console = rich_console(stderr=True)
    try:
        # SIGTERM (a scheduler's stop, `kill`, torchrun stopping its workers) ends it as Ctrl-C does: one line
        with interrupt_between_frames(signal.SIGINT, signal.SIGTERM):
            summary = cross_validate(dataset, cfg, out, resume=resume, progress=not quiet, log=line_printer(console))
    except KeyboardInterrupt:
        console.print(f"usedge: training interrupted; each fold's last finished epoch is saved in {out}: run the "
                      "same command with --resume to continue from there", markup=False)
        raise typer.Exit(130) from None
    if summary:
        console.print(f"{summary_line(summary)}; report: {out / 'report.md'}", markup=False)
