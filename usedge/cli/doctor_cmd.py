"""usedge doctor: what works on this machine. Lean: only usedge.runtime, never torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usedge.cli.app import app
from usedge.cli.terminal import rich_console


@app.command()
def doctor(model: Optional[Path] = typer.Argument(None, help="Also load this model here and show its model card's "
                                                  "provenance (training data, CV metrics, export checks)."),
           as_json: bool = typer.Option(False, "--json", help="print the checks as JSON"),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the checks that fail.")) -> None:
    """What is installed, which backends and providers work here, and why not; with MODEL, whether it runs
    (exit status 1 when MODEL does not load, for scripted pre-flight checks)."""
    import json

    from usedge.runtime.doctor import run_checks

    every = run_checks(model)
    # optional parts (a GPU, OpenVINO, TensorRT) may be missing; a MODEL that does not load here is a failure
    code = int(model is not None and any(c.section == "model" and c.name == Path(model).name and not c.ok
                                         for c in every))
    checks = [c for c in every if not (quiet and c.ok)]
    if as_json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
        raise typer.Exit(code)
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="usedge doctor", show_lines=False)
    for col in ("section", "check", "", "detail"):
        table.add_column(col)
    for c in checks:
        table.add_row(escape(c.section), escape(c.name), "[green]ok[/]" if c.ok else "[red]no[/]", escape(c.detail))
    rich_console().print(table)
    raise typer.Exit(code)
