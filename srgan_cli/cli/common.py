"""Options shared by several commands, the console, and the one place errors become exit codes."""

from __future__ import annotations

import contextlib
import errno
import json
import re
import signal
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

from ..errors import SrganError

# Progress, tables and errors go to stderr so that `--json` output on stdout stays parseable.
console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


BackendOpt = Annotated[
    Backend,
    typer.Option(
        "--backend",
        help="auto: ONNX Runtime for .onnx models, PyTorch for our weights, and for a community "
        "model on the CPU whichever was timed faster once. onnx with weights exports them once "
        "to a cache.",
        rich_help_panel="Performance",
    ),
]
LapganLevelsOpt = Annotated[
    int | None,
    typer.Option(
        "--lapgan-levels",
        min=1,
        help="LAPGAN models: how many conditional levels upscale (x2 each, the finest ones). Default: all.",
        show_default=False,
        rich_help_panel="Model",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="DEVICE",
        help="auto (first CUDA GPU, else CPU), cpu, cuda or cuda:N.",
        rich_help_panel="Performance",
    ),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="auto = fp16 on CUDA, fp32 on CPU. fp16 on CPU is refused.",
        rich_help_panel="Performance",
    ),
]


class Ensemble(str, Enum):
    one = "1"
    two = "2"
    four = "4"
    eight = "8"


SelfEnsembleOpt = Annotated[
    Ensemble,
    typer.Option(
        "--self-ensemble",
        metavar="N",
        help="Average N mirrored/rotated passes (1, 2, 4 or 8): N times the time, a little more "
        "PSNR; smooths GAN texture.",
        rich_help_panel="Model",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)")


def parse_duration(text: str) -> float:
    """Seconds from "540", "540s", "9m" or "1.5h"."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise typer.BadParameter(
            f"{text!r} is not a duration: give seconds (540) or a number with s, m or h (9m, 1.5h)",
            param_hint="--time-limit",
        )
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


TIME_LIMIT_HELP = (
    "Stop cleanly before this much time has passed (e.g. 540, 9m, 2h): checkpoint, then --resume later."
)


def parse_tile(value: str) -> int | None:
    """'auto' -> None (pick from free memory); an integer >= 0 (0 = whole image when it fits)."""
    if value.strip().lower() == "auto":
        return None
    try:
        tile = int(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not 'auto' or a whole number") from None
    if tile < 0 or 0 < tile < 16:
        raise typer.BadParameter("use 0 (whole image), auto, or a tile of at least 16 pixels")
    return tile


TileOpt = Annotated[
    str,
    typer.Option(
        "--tile",
        metavar="auto|0|N",
        help="LR tile side in pixels: auto (from free memory), 0 (whole image, smaller tiles if it "
        "does not fit), or N.",
        rich_help_panel="Performance",
    ),
]
TilePadOpt = Annotated[
    int | None,
    typer.Option(
        "--tile-pad",
        min=0,
        help="Overlap in LR pixels around each tile. Default: the model's reach (SRResNet's receptive "
        "field; a community model's, measured once and cached), so tiles match the whole image.",
        show_default=False,
        rich_help_panel="Performance",
    ),
]

MaxMegapixelsOpt = Annotated[
    float,
    typer.Option(
        "--max-megapixels",
        min=0.01,
        help="Refuse inputs larger than this (bomb guard).",
        rich_help_panel="Limits",
    ),
]
MaxOutputMegapixelsOpt = Annotated[
    float,
    typer.Option(
        "--max-output-megapixels",
        min=0.01,
        help="Refuse results larger than this, before any work (memory guard).",
        rich_help_panel="Limits",
    ),
]


def panel_option(default_panel: str, defaults: object | None = None) -> Callable[..., Any]:
    """A typer.Option maker for one command's options: each lands in `default_panel` of --help
    unless it is given panel=.

    Training options default to None (so that a run's saved settings and --config can fill what
    the command line leaves out), so typer cannot show their defaults. With `defaults` (the command's
    config dataclass) an option whose long name is a field (--n-blocks: n_blocks; or field=) gets
    "[default: value]" from that field at the end of its help; default="text" says it in words
    where the value depends on something else. (Before this, the defaults were written by hand
    into each help text, unescaped, and Rich dropped every one of them from --help.)"""

    def option(
        *names: str,
        panel: str = default_panel,
        field: str | None = None,
        default: str | None = None,
        **kw: Any,
    ) -> Any:
        text = default if default is not None else _default_text(defaults, field or _field_name(names))
        if text is not None:
            # escaped: typer reads help as Rich markup, where a bare "[default: 16]" is a tag
            kw["help"] = f"{kw.get('help') or ''} \\[default: {text}]".lstrip()
        return typer.Option(*names, rich_help_panel=panel, **kw)

    return option


def _field_name(names: tuple[str, ...]) -> str:
    """--n-blocks -> n_blocks; --cls/--no-cls -> cls."""
    long = next((n for n in names if n.startswith("--")), "")
    return long.split("/")[0].removeprefix("--").replace("-", "_")


def _default_text(defaults: object | None, name: str) -> str | None:
    if defaults is None or not hasattr(defaults, name):
        return None
    value = getattr(defaults, name)
    if value is None or isinstance(value, (list, dict)):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return _short_float(value)
    return str(value)


def _short_float(value: float) -> str:
    """1e-4 rather than 0.0001, 0.5 rather than 0.500000."""
    if value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def given_options(params: dict[str, Any], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The options a training command was actually given (None = left out), as config values:
    paths as strings, enums as their values. `skip` names the ones that are not config fields."""
    return {
        k: v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v
        for k, v in params.items()
        if k not in skip and v is not None
    }


def print_table(table: Table) -> None:
    """A wide table is never squeezed into "0.7…" cells: it is printed at its natural width and the
    terminal wraps it instead."""
    natural = Measurement.get(console, console.options.update(width=10_000), table).maximum
    if natural <= console.width:
        console.print(table)
    else:
        Console(stderr=True, highlight=False, width=natural).print(table, crop=False)


def report_error(exc: SrganError, as_json: bool = False, exit_code: int = 1, *, quiet: bool = False) -> None:
    """The error as one red line and its hint on stderr (unless `quiet`), and with `as_json` as a
    JSON document on stdout."""
    if not quiet:
        console.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
        if exc.hint:
            console.print(f"[yellow]hint:[/] {escape(exc.hint)}")
    if as_json:
        document = {"error": exc.message, "hint": exc.hint, "exit_code": exit_code}
        stdout.print(json.dumps(document, indent=2), markup=False, highlight=False)


_OS_HINTS = {
    errno.ENOSPC: "free some space, or write somewhere else; finished files are kept",
    errno.EACCES: "choose a folder you can write to",
    errno.EROFS: "choose a folder on a writable disk",
    errno.EEXIST: "a file has that name: choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def _os_message(exc: OSError) -> str:
    """`path: reason` for an OS error, e.g. "runs/x: File exists" or "out.png: No space left on device"."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {reason}" if where else reason


@contextlib.contextmanager
def guard(as_json: bool = False) -> Iterator[None]:
    """Turn a library error into one red line (plus a hint) and the error's exit code; with
    `as_json` the error is also printed on stdout as {"error", "hint", "exit_code"}, so a caller
    parsing --json always gets a JSON document."""
    try:
        yield
    except SrganError as exc:
        report_error(exc, as_json, exc.exit_code)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:  # a path that is a file, a read-only folder, a full disk: never a traceback
        report_error(SrganError(_os_message(exc), hint=_OS_HINTS.get(exc.errno or 0)), as_json, 1)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM under signals.terminate_as_interrupt
        code = 128 + int(getattr(exc, "signum", signal.SIGINT))  # 130 for SIGINT, 143 for SIGTERM
        word = "interrupted" if code == 130 else "terminated"
        console.print(f"[yellow]{word}[/]")
        if as_json:
            report_error(SrganError(word), True, code, quiet=True)
        raise typer.Exit(code) from None


def training_progress(stats: str = "{task.fields[stats]}", *, remaining: bool = False) -> Progress:
    """The live line of the training commands. In a narrow terminal the stats at its end are cut
    with an ellipsis; the step count and the times keep their full width."""
    fixed = {"table_column": Column(no_wrap=True)}
    columns: list[ProgressColumn] = [
        TextColumn("[bold]{task.description}", **fixed),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=8)),
        MofNCompleteColumn(**fixed),
        TimeElapsedColumn(**fixed),
    ]
    if remaining:
        columns.append(TimeRemainingColumn(**fixed))
    columns.append(TextColumn(stats, table_column=Column(no_wrap=True, overflow="ellipsis", ratio=3)))
    return Progress(*columns, console=console, expand=True)
