"""usedge demo: the whole chain on synthetic data (needs the train and export extras)."""

from __future__ import annotations

from pathlib import Path

import typer

from usedge.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for everything the demo writes."),
    force: bool = typer.Option(False, "--force", help="Redo every step, even those whose output exists."),
    image_size: int = typer.Option(96, help="Model input side, pixels (paper: 224; reduced for a 2-core CPU)."),
    epochs: int = typer.Option(6, help="Epochs per model (paper: 30; reduced for a 2-core CPU)."),
    video_seconds: float = typer.Option(10.0, help="Length of the synthetic 1080p scanner video, seconds."),
    images: int = typer.Option(698, help="Images in the synthetic cohort (paper: 698)."),
    seed: int = typer.Option(0, help="Seed for data, splits and training."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Synthetic cohort -> 5-fold training -> CAMs -> fp32/int8 ONNX -> 1080p stream -> report folder."""
    import time

    from rich.console import Console
    from rich.table import Table

    from usedge.demo import Demo, DemoConfig
    from usedge.errors import MissingDependency

    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("torch", "usedge demo (it trains a model)", extra="train,export") from exc
    console = Console(stderr=True)
    # the paper's 149/74/32 patients for 698 images; a smaller cohort keeps the same shape
    patients = tuple(max(2, round(n * min(1.0, images / 698))) for n in (149, 74, 32))
    cfg = DemoConfig(out=out, force=force, image_size=image_size, epochs=epochs, video_seconds=video_seconds,
                     images=images, patients=patients, seed=seed, progress=not quiet)
    start = time.perf_counter()
    d = Demo(cfg, log=console.print)
    report = d.run()
    table = Table(title=f"usedge demo — {time.perf_counter() - start:.0f} s")
    table.add_column("step")
    table.add_column("s", justify="right")
    table.add_column("output")
    for s in d.steps:
        first = next(iter(s.outputs.values()), "")
        table.add_row(s.name + (" (reused)" if s.reused else ""), f"{s.seconds:.1f}", first)
    table.add_row("report", "", str(report))
    console.print(table)
