"""usedge doctor: what works on this machine. Lean: only usedge.runtime, never torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usedge.cli.app import app


@app.command()
def doctor(model: Optional[Path] = typer.Argument(None, help="Also load this model here and show its model card's "
                                                  "provenance (training data, CV metrics, export checks)."),
           as_json: bool = typer.Option(False, "--json", help="print the checks as JSON"),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the checks that fail.")) -> None:
    """What is installed, which backends and providers work here, and why not; with MODEL, whether it runs."""
    import json

    from usedge.runtime.doctor import run_checks

    checks = [c for c in run_checks(model) if not (quiet and c.ok)]
    if as_json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="usedge doctor", show_lines=False)
    for col in ("section", "check", "", "detail"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.section, c.name, "[green]ok[/]" if c.ok else "[red]no[/]", c.detail)
    Console().print(table)
