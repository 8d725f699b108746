"""The typer application object; command modules register themselves on it."""

import typer

app = typer.Typer(
    name="usedge",
    help="Ultrasound skin-tumor classifier: synth -> train -> export -> infer beside the scanner.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    state["debug"] = debug
