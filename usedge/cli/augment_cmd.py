"""usedge augment: Fast AutoAugment search, policy preview and the list of operations.

    usedge augment search DATA --out policy.json [--storage sqlite:///search.db] [--trials 100 ...]
    usedge augment preview DATA --out grid.png [--policy policy.json]
    usedge augment ops
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usedge.cli.app import app

augment_app = typer.Typer(help="Fast AutoAugment: search augmentation policies, preview them, list the ops.",
                          no_args_is_help=True)
app.add_typer(augment_app, name="augment")


@augment_app.command("search")
def search_cmd(
    data: Path = typer.Argument(..., help="Data set folder (with manifest.csv) or a manifest .csv."),
    out: Path = typer.Option(Path("policy.json"), "--out", "-o", help="Policy JSON to write."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL shared by all machines running this "
                                          "search; default sqlite:///<out>.optuna.db (resumable)."),
    study_name: Optional[str] = typer.Option(None, help="Study name prefix (default: from the data set's hash)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where child weights are kept for resuming "
                                             "(default <out>.children/)."),
    inner_splits: int = typer.Option(4, help="Inner splits (by patient) per searched scope."),
    trials: int = typer.Option(100, help="TPE trials per inner split."),
    top: int = typer.Option(5, help="Best sub-policies kept per inner split."),
    ops: str = typer.Option("all", help="Search space: all | paper | ultrasound | Op1,Op2,... (usedge augment ops)."),
    ops_per_sub_policy: int = typer.Option(2, help="Operations per sub-policy."),
    objective: str = typer.Option("loss", help="loss (authors; minimised) | accuracy (anchor; maximised)."),
    folds: int = typer.Option(5, help="Search each outer fold's training part, with the same patient splits "
                              "as `usedge train` (same --seed); 0 = one search on the whole set."),
    max_folds: int = typer.Option(0, help="Search only the first N outer folds (0 = all)."),
    seed: int = typer.Option(0, help="Seed of splits, children and sampler (use usedge train's seed)."),
    child_arch: str = typer.Option("ag_resnet18", help="Child model architecture: ag_resnet18 | resnet18."),
    child_size: int = typer.Option(224, help="Child input side, pixels (smaller = cheaper search)."),
    child_epochs: int = typer.Option(10, help="Child training epochs (no augmentation)."),
    child_batch: int = typer.Option(16, help="Child batch size."),
    child_lr: float = typer.Option(1e-4, help="Child Adam learning rate."),
    loss: str = typer.Option("focal", help="Child loss and objective loss: focal | ce."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    threads: int = typer.Option(0, help="torch CPU threads (0 = default)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Search a policy by density matching; resumes from --storage if interrupted."""
    from rich.console import Console

    from usedge.dataset import load_dataset
    from usedge.train.search import ChildConfig, SearchConfig, default_storage, search

    cfg = SearchConfig(inner_splits=inner_splits, trials=trials, top=top, ops=ops,
                       ops_per_sub_policy=ops_per_sub_policy, objective=objective, folds=folds,
                       max_folds=max_folds, seed=seed,
                       child=ChildConfig(arch=child_arch, image_size=child_size, epochs=child_epochs,
                                         batch_size=child_batch, lr=child_lr, loss=loss, threads=threads,
                                         device=device)).validate()
    dataset = load_dataset(data)
    storage = storage or default_storage(out)
    cache = cache_dir or out.with_suffix(".children")
    policy = search(dataset, cfg, storage=storage, cache_dir=cache, study_name=study_name, show_progress=not quiet)
    policy.save(out)
    console = Console(stderr=True)
    console.print(f"wrote {out}: {len(policy)} sub-policies ({1 + len(policy)}x with --augment expand), "
                  f"search {policy.meta['search_minutes']} min; storage {policy.meta['storage']}")
    for sub in policy.sub_policies[: min(5, len(policy))]:
        console.print(f"  {sub.score:.4f}  {sub.describe()}")


@augment_app.command("preview")
def preview_cmd(
    data: Path = typer.Argument(..., help="Data set folder/manifest, or one image file."),
    out: Path = typer.Option(Path("augment_preview.png"), "--out", "-o", help="PNG grid to write."),
    policy: Optional[Path] = typer.Option(None, help="Policy JSON; without it every op is shown at "
                                          "magnitudes 0, 0.25, 0.5, 0.75, 1."),
    images: int = typer.Option(4, help="Rows (images) when previewing a policy."),
    columns: int = typer.Option(6, help="Tiles per row (the first is the original)."),
    size: int = typer.Option(128, help="Tile side, pixels."),
    seed: int = typer.Option(0),
) -> None:
    """Write a grid of augmented examples to eyeball a policy or the operations."""
    import cv2
    import numpy as np

    from usedge.fileio import write_bytes_atomic
    from usedge.train.augment import OPS, Policy, apply_op, preview_grid
    from usedge.runtime.crop import prepare_file
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.search import load_images

    if data.is_file() and data.suffix.lower() != ".csv":
        pics = [prepare_file(data, PreprocessSpec(size=size, crop="none", remove_doppler=False))[0]]
    else:
        from usedge.dataset import load_dataset

        ds = load_dataset(data)
        pick = np.random.default_rng(seed).permutation(len(ds))[:images]
        pics = list(load_images(ds, pick, size))
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
    from rich.console import Console
    from rich.table import Table

    from usedge.train.augment import OP_SETS, OPS, magnitude_table

    table = Table("op", "magnitude m in [0, 1] ->", "m=0 identity", "ultrasound-safe", "paper")
    for name, doc in magnitude_table():
        o = OPS[name]
        table.add_row(name, doc, "yes" if o.identity_at_zero else "-", "yes" if o.ultrasound_safe else "-",
                      "yes" if name in OP_SETS["paper"] else "-")
    Console().print(table)
