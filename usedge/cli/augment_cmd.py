"""usedge augment: Fast AutoAugment search, policy preview and the list of operations.

    usedge augment search DATA --out policy.json [--config run.toml] [--preset usedge|authors] [--trials 100 ...]
    usedge augment preview DATA --out grid.png [--policy policy.json]
    usedge augment ops
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usedge.cli.app import app
from usedge.cli.terminal import rich_console

augment_app = typer.Typer(help="Fast AutoAugment: search augmentation policies, preview them, list the ops.",
                          no_args_is_help=True)
app.add_typer(augment_app, name="augment")


@augment_app.command("search")
def search_cmd(
    data: Path = typer.Argument(..., help="Data set folder (with manifest.csv) or a manifest .csv."),
    out: Path = typer.Option(Path("policy.json"), "--out", "-o", help="Policy JSON to write."),
    preset: str = typer.Option("usedge", help="usedge (default; NOT the authors' search: focal-loss children, 10 "
                               "epochs at a constant rate from random init, objective on augmented images "
                               "only, 21 ops) | authors (their code as far as offline allows: cross-entropy "
                               "children, 30 epochs, StepLR(7, 0.1), ImageNet init with --child-pretrained, "
                               "objective on augmented plus original images, their 14 ops)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="The training run's TOML (as for usedge "
                                          "train): its seed, folds, final model, crop, Doppler removal, resize and gate."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL shared by all machines running this "
                                          "search; default sqlite:///<out>.optuna.db (resumable)."),
    study_name: Optional[str] = typer.Option(None, help="Study name prefix (default: from the data set's hash)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where child weights are kept for resuming "
                                             "(default <out>.children/)."),
    folds: Optional[int] = typer.Option(None, help="Outer folds (default: the run's, 5): each fold's non-test "
                                        "part is searched with usedge train's patient splits; 0 = all data only."),
    seed: Optional[int] = typer.Option(None, help="The run's seed (default: the run's, 0): splits, children, sampler."),
    final_model: Optional[bool] = typer.Option(None, "--final-model/--no-final-model",
                                               help="Also search all data, for usedge train's final model "
                                               "(default: the run's, yes)."),
    crop: Optional[str] = typer.Option(None, help="The run's crop (default: the run's config)."),
    remove_doppler: Optional[bool] = typer.Option(None, "--remove-doppler/--keep-doppler",
                                                  help="The run's Doppler removal (default: the run's config)."),
    resize: Optional[str] = typer.Option(None, help="The run's resize: colour-halve-linear | halve-linear | area (default: the run's config)."),
    max_folds: Optional[int] = typer.Option(None, help="Search only the first N outer folds (0 = all)."),
    inner_splits: Optional[int] = typer.Option(None, help="Inner splits (by patient) per scope [4]."),
    trials: Optional[int] = typer.Option(None, help="TPE trials per inner split [100]."),
    top: Optional[int] = typer.Option(None, help="Best sub-policies kept per inner split [5]."),
    ops: Optional[str] = typer.Option(None, help="Search space: all | paper | ultrasound | Op1,Op2,... "
                                      "(usedge augment ops) [usedge: all; authors: paper]."),
    ops_per_sub_policy: Optional[int] = typer.Option(None, help="Operations per sub-policy [2]."),
    objective: Optional[str] = typer.Option(None, help="loss (minimised) | accuracy (the anchor's; maximised) [loss]."),
    heldout: Optional[str] = typer.Option(None, help="Images the objective scores: augmented | augmented+original "
                                          "[usedge: augmented; authors: augmented+original]."),
    child_arch: Optional[str] = typer.Option(None, help="Child architecture: ag_resnet18 | resnet18 [ag_resnet18]."),
    child_size: Optional[int] = typer.Option(None, help="Child input side, pixels; smaller = cheaper [224]."),
    child_epochs: Optional[int] = typer.Option(None, help="Child training epochs, no augmentation [usedge 10; authors 30]."),
    child_batch: Optional[int] = typer.Option(None, help="Child batch size [16]."),
    child_lr: Optional[float] = typer.Option(None, help="Child Adam learning rate [1e-4]."),
    child_step_size: Optional[int] = typer.Option(None, help="Child StepLR step, epochs; 0 = constant [usedge 0; authors 7]."),
    child_pretrained: Optional[str] = typer.Option(None, help="Child init: none | imagenet (online) | PATH to "
                                                   "ResNet18 weights [none]."),
    loss: Optional[str] = typer.Option(None, help="Child and objective loss: focal | ce [usedge focal; authors ce]."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (0 = default)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Search a policy by density matching for a training run; resumes from --storage if interrupted.

    The defaults (5 folds + all data, 4 inner splits, 100 trials, 224 px children) are a GPU job: an
    estimated ~9 CPU-hours on a ~700-image cohort (~18 with --preset authors); docs/augment.md gives a
    CPU-sized command."""

    import optuna  # noqa: F401  - the search's own packages, before minutes of image loading
    import sklearn  # noqa: F401
    import torch  # noqa: F401

    from usedge.dataset import load_dataset
    from usedge.train.config import load_config
    from usedge.train.search import SearchConfig, default_storage, search

    run = load_config(config, {"run.seed": seed, "cv.folds": folds if folds else None,
                               "cv.final_model": final_model, "data.crop": crop,
                               "data.remove_doppler": remove_doppler, "data.resize": resize})
    cfg = SearchConfig.for_run(
        run, preset, folds=folds, max_folds=max_folds, inner_splits=inner_splits, trials=trials, top=top, ops=ops,
        ops_per_sub_policy=ops_per_sub_policy, objective=objective, heldout=heldout, child_arch=child_arch,
        child_image_size=child_size, child_epochs=child_epochs, child_batch_size=child_batch, child_lr=child_lr,
        child_step_size=child_step_size, child_pretrained=child_pretrained, child_loss=loss, child_device=device,
        child_threads=threads).validate()
    dataset = load_dataset(data)
    storage = storage or default_storage(out)
    cache = cache_dir or out.with_suffix(".children")
    policy = search(dataset, cfg, storage=storage, cache_dir=cache, study_name=study_name, show_progress=not quiet)
    policy.save(out)
    console = rich_console(stderr=True)
    scopes = ", ".join(f"{k}: {len(v)}" for k, v in policy.meta["scopes"].items())
    console.print(f"wrote {out}: sub-policies per scope ({scopes}), search {policy.meta['search_minutes']} min; "
                  f"storage {policy.meta['storage']}", markup=False)
    for sub in policy.sub_policies[: min(5, len(policy))]:
        console.print(f"  {sub.score:.4f}  {sub.describe()}", markup=False)


@augment_app.command("preview")
def preview_cmd(
    data: Path = typer.Argument(..., help="Data set folder/manifest, or one image file."),
    out: Path = typer.Option(Path("augment_preview.png"), "--out", "-o", help="PNG grid to write."),
    policy: Optional[Path] = typer.Option(None, help="Policy JSON; without it every op is shown at "
                                          "magnitudes 0, 0.25, 0.5, 0.75, 1."),
    images: int = typer.Option(4, min=1, help="Rows (images) when previewing a policy."),
    columns: int = typer.Option(6, min=2, help="Tiles per row (the first is the original)."),
    size: int = typer.Option(128, min=16, max=1024, help="Tile side, pixels."),
    seed: int = typer.Option(0),
) -> None:
    """Write a grid of augmented examples to eyeball a policy or the operations."""
    import cv2
    import numpy as np

    from usedge.fileio import write_bytes_atomic
    from usedge.train.augment import OPS, Policy, apply_op, preview_grid
    from usedge.runtime.crop import prepare_file
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.config import load_config
    from usedge.train.search import load_images

    run = load_config(None)
    if data.is_file() and data.suffix.lower() != ".csv":
        pics = [prepare_file(data, PreprocessSpec(size=size, crop="none", remove_doppler=False, resize=run.data.resize))[0]]
    else:
        from usedge.dataset import load_dataset

        ds = load_dataset(data)
        pick = np.random.default_rng(seed).permutation(len(ds))[:images]
        pics = list(load_images(ds, pick, size, run.data.crop, run.data.remove_doppler, run.data.resize))
    if policy is not None:
        grid = preview_grid(pics, Policy.load(policy), columns=columns, seed=seed, size=size)
    else:
        rows = []
        for name in OPS:
            tiles = [apply_op(name, pics[0], m, np.random.default_rng(seed)) for m in (0.0, 0.25, 0.5, 0.75, 1.0)]
            label = np.full((size, size), 255, np.uint8)
            cv2.putText(label, name, (4, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0, 1, cv2.LINE_AA)
            rows.append(np.concatenate([np.pad(t, 2, constant_values=255) for t in [label] + tiles], axis=1))
        grid = np.concatenate(rows, axis=0)
    ok, buf = cv2.imencode(".png", grid)
    write_bytes_atomic(out, buf.tobytes())
    typer.echo(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]} px)")


@augment_app.command("ops")
def ops_cmd() -> None:
    """List the operations, their magnitude mapping, and whether magnitude 0 is the identity."""
    from rich.table import Table

    from usedge.train.augment import OP_SETS, OPS, magnitude_table

    table = Table("op", "magnitude m in [0, 1] ->", "m=0 identity", "ultrasound-safe", "paper")
    for name, doc in magnitude_table():
        o = OPS[name]
        table.add_row(name, doc, "yes" if o.identity_at_zero else "-", "yes" if o.ultrasound_safe else "-",
                      "yes" if name in OP_SETS["paper"] else "-")
    rich_console().print(table)
