"""The typer application object; command modules register themselves on it."""

import sys

import typer
from typer.core import TyperGroup

from usedge.cli.options import rewrite_old_switches

#: `usedge --help` lists the commands in the order a project uses them
PIPELINE_ORDER = ("synth", "crop", "train", "augment", "explain", "export", "infer", "serve", "bench", "doctor", "demo")


class _UsedgeGroup(TyperGroup):
    """Commands listed in pipeline order; old switch spellings rewritten before parsing (options.py)."""

    def main(self, args=None, *rest, **kwargs):
        return super().main(rewrite_old_switches(list(sys.argv[1:] if args is None else args)), *rest, **kwargs)

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: PIPELINE_ORDER.index(n) if n in PIPELINE_ORDER else len(PIPELINE_ORDER))


app = typer.Typer(
    name="usedge",
    cls=_UsedgeGroup,
    help="Ultrasound skin-tumor classifier: synth -> train -> export -> infer beside the scanner.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    state["debug"] = debug
    if not debug:   # pydicom's non-conformance warnings (two lines each, with its source path): usedge reads such
        import warnings     # files or refuses them in its own one line; --debug shows them

        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
