"""usedge demo: the whole chain on synthetic data (needs the train and export extras)."""

from __future__ import annotations

from pathlib import Path

import typer

from usedge.cli.app import app
from usedge.cli.options import deprecated, force_alias, overwrite_option, quiet_option
from usedge.cli.terminal import line_printer
from usedge.runtime.threads import MAX_THREADS


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for everything the demo writes."),
    overwrite: bool = overwrite_option("Redo every step, even those whose recorded parameters match."),
    force: bool | None = force_alias(),
    image_size: int = typer.Option(96, "--image-size", help="Model input side, pixels (paper: 224; reduced for a 2-core CPU)."),
    epochs: int = typer.Option(6, "--epochs", help="Epochs per model (paper: 30; reduced for a 2-core CPU)."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (measured best at the demo's 6 epochs; the usedge defaults' 3e-4 for longer runs; paper: 1e-4)."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds, split by patient (paper: 5)."),
    video_seconds: float = typer.Option(10.0, "--video-seconds", help="Length of the synthetic 1080p scanner video, seconds."),
    images: int = typer.Option(698, "--images", help="Images in the synthetic cohort (paper: 698)."),
    seed: int = typer.Option(0, "--seed", help="Seed for data, splits and training."),
    threads: int = typer.Option(0, "--threads", min=0, max=MAX_THREADS, help="torch / onnxruntime threads (0 = all cores)."),
    quiet: bool = quiet_option(),
) -> None:
    """Synthetic cohort -> 5-fold training -> CAMs -> fp32/int8 ONNX -> 1080p stream, scored -> report folder.

    A rerun reuses each step whose recorded parameters match and reruns the rest (and what follows);
    an interrupted run just runs again.
    """
    import time

    from rich import get_console
    from rich.markup import escape
    from rich.table import Table

    from usedge.demo import MODELS, Demo, DemoConfig
    from usedge.errors import MissingDependency

    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("torch", "usedge demo (it trains a model)", extra="train,export") from exc
    overwrite = deprecated(overwrite, force, old="--force", new="--overwrite", default=False)
    # the demo's progress bars (its own and each step's) and its log share one console, so log lines
    # print above the bars instead of over them
    console = get_console()
    console.soft_wrap = True     # one line per message in logs and pipes (rich_console's rule)
    cfg = DemoConfig(out=out, overwrite=overwrite, image_size=image_size, epochs=epochs, lr=lr, folds=folds,
                     video_seconds=video_seconds, images=images, seed=seed, threads=threads, progress=not quiet)
    start = time.perf_counter()
    d = Demo(cfg, log=(lambda _m: None) if quiet else line_printer(console), console=console)
    report = d.run()
    if not quiet:
        steps = Table(title=f"usedge demo — this run {time.perf_counter() - start:.0f} s")
        for name, justify in (("step", "left"), ("this run", "left"), ("s", "right"), ("CPU s", "right")):
            steps.add_column(name, justify=justify)
        for s in d.steps:
            steps.add_row(s.name, "reused" if s.reused else "ran", f"{s.seconds:.1f}", f"{s.cpu_seconds:.1f}")
        console.print(steps)
        results = Table(title="accuracy (synthetic data)")
        results.add_column("what")
        results.add_column("value", justify="right")
        cv = d.cv_summary()
        for key, name in (("overall_accuracy", "CV accuracy (3-class), mean over folds"),
                          ("balanced_accuracy", "CV balanced accuracy"), ("macro_roc_auc", "CV macro AUC")):
            if cv.get(key) is not None:
                results.add_row(name, f"{100 * cv[key]:.1f} %")
        for tag, s in d.scores().items():
            score = s.get("score", {})
            check = "" if d.model_passed(tag) else " [red](FAILED its check)[/]"
            if score.get("accuracy") is not None:
                results.add_row(f"stream {tag} ({MODELS[tag]}){check}: frames right",
                                f"{100 * score['accuracy']:.1f} % of {score['frames_scored']}")
                results.add_row(f"stream {tag}: label changes per minute", f"{score['changes_per_minute']:.0f}")
        console.print(results)
    for line in d.failed_lines():
        console.print(f"[bold red]usedge demo: check failed:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if d.overlay_note():
        console.print(f"usedge demo: {d.overlay_note()}", highlight=False, soft_wrap=True, markup=False)
    console.print(f"report: {report}", highlight=False, soft_wrap=True, markup=False)
