"""Results on stdout: the tables and lines a command exists to print (`srgan models > list.txt`).

Progress, notes, hints and errors stay on stderr (common.console), so a redirect captures the
results alone and `--json` output is one JSON document.
"""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table


def _stdout(width: int | None = None) -> Console:
    # made at each call: sys.stdout is looked up when printing, so redirections and test runners see it
    return Console(highlight=False, width=width)


def print_result(item: RenderableType | str, *, fit: bool = False) -> None:
    """A table at its natural width (a wide one is never squeezed into "0.7…" cells: the terminal
    wraps it instead; with `fit`, its folding columns take the terminal's width), or a line of Rich
    markup."""
    console = _stdout()
    if fit or not isinstance(item, Table):
        console.print(item, soft_wrap=True)
        return
    natural = Measurement.get(console, console.options.update(width=10_000), item).maximum
    if natural <= console.width:
        console.print(item)
    else:
        _stdout(natural).print(item, crop=False)
