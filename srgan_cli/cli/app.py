"""The `srgan` command: a thin Typer shell over the library, one module per command."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ..version import __version__
from . import (
    benchmark,
    degrade,
    evaluate,
    export,
    interpolate,
    lapgan,
    models,
    serve,
    text2img,
    train,
    upscale,
    weights_cmd,
)
from .helptext import HelpGroup, use_everywhere

app = typer.Typer(
    name="srgan",
    help="Image super-resolution with SRGAN: upscale photos, train and evaluate models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=HelpGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"srgan-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Image super-resolution with SRGAN."""


app.command("upscale", no_args_is_help=True)(upscale.upscale)
app.add_typer(models.app, name="models")
app.command("train", no_args_is_help=True)(train.train)
app.command("eval", no_args_is_help=True)(evaluate.evaluate)
app.command("export-onnx")(export.export_onnx_cmd)
app.command("interpolate", no_args_is_help=True)(interpolate.interpolate)
app.command("degrade", no_args_is_help=True)(degrade.degrade)
app.add_typer(weights_cmd.app, name="weights")
app.add_typer(benchmark.app, name="benchmark")
app.add_typer(lapgan.app, name="lapgan")
app.add_typer(text2img.app, name="text2img")
app.command("serve")(serve.serve)
use_everywhere(app)  # every command's --help through cli/helptext.py (80 columns, no cut names)


def main() -> None:
    """The `srgan` console script. With --json, an option refused while the command line is parsed
    (before any command runs: `-s 0`, `--format bmp`) still gives a JSON error document on stdout."""
    if "--json" not in sys.argv[1:]:
        app()
        return
    try:  # typer >= 0.2x carries its own copy of click (click may be installed beside it, unused)
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort
    except ImportError:  # older typer: click itself
        from click.exceptions import Abort, ClickException

    try:
        code = app(standalone_mode=False)
    except ClickException as exc:
        exc.show()  # the usual message, on stderr
        document = {"error": exc.format_message(), "hint": None, "exit_code": exc.exit_code}
        print(json.dumps(document, indent=2))
        sys.exit(exc.exit_code)
    except Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
