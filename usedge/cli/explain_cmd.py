"""usedge explain commands."""

from __future__ import annotations

from pathlib import Path

import typer

from usedge.cli.app import app
from usedge.cli.terminal import rich_console
from usedge.runtime.threads import MAX_THREADS


@app.command()
def explain(
    model: Path = typer.Argument(..., help="Checkpoint (.pt) written by usedge train."),
    data: Path = typer.Argument(..., help="Data set folder (with manifest.csv for lesion masks) or a manifest .csv."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for overlays, sheets, explain.json/.md."),
    maps: str = typer.Option("cam,gradcam,att1,att2", help="Comma-separated maps: cam, gradcam, att1, att2."),
    target: str = typer.Option("pred", help="Explain the predicted class (pred) or the true class (label)."),
    weighting: str = typer.Option("paper", help="CAM weighting: paper (branch heads) or exact (final layer folded in)."),
    topk: str = typer.Option("mask", help="Top-k region for IoU: 'mask' (lesion's own area) or a fraction."),
    overlays: str = typer.Option("all", help="all: overlay per image + sheets; sheets: contact sheets only; none."),
    sheet_rows: int = typer.Option(12, help="Images per class on a contact sheet."),
    images: str = typer.Option("test", help="test: only patients the checkpoint never saw, when DATA is its run's "
                               "data set (its folds.csv; a fold model: its test fold) | all: every image."),
    limit: int = typer.Option(0, help="Use at most N images, taken from the classes in turn (0 = all)."),
    seed: int = typer.Option(0, help="Seed of the patient bootstrap (confidence intervals)."),
    threads: int = typer.Option(0, min=0, max=MAX_THREADS, help="Torch CPU threads (0 = default)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Explanation maps (CAM, Grad-CAM, attention) per image, contact sheets, and measured localisation."""

    from usedge.train.explain import ExplainConfig, run_explain

    cfg = ExplainConfig(maps=tuple(m.strip() for m in maps.split(",") if m.strip()), target=target,
                        weighting=weighting, topk=topk, overlays=overlays, sheet_rows=sheet_rows,
                        images=images, limit=limit, seed=seed, threads=threads, progress=not quiet)
    summary = run_explain(model, data, out, cfg)
    console = rich_console()
    d = summary["data"]
    console.print(f"explained {d['images']}: {d['n_images']} images ({d['n_with_lesion']} with a lesion, "
                  f"{d['n_patients_with_lesion']} patients) -> {out}", markup=False)
    for note in summary["notes"]:
        console.print(f"  note: {note}", markup=False)
    for name, res in summary["localisation"].items():
        parts = []
        for s, t in res["tests"]["others"].items():
            parts.append(f"{s} {t['mean_map']:.3f} (other images {t['mean_baseline']:.3f}, "
                         f"Holm p={t['p_holm']:.2g})")
        console.print(f"  {name}, by patient: " + "; ".join(parts), markup=False)
    console.print(f"  report: {out / 'explain.md'}", markup=False)
