"""`srgan models`: the weights this installation can find, with their recorded numbers; `get` fetches
community models, `list --available` shows the catalogue they come from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .. import community, weights
from ..errors import ForeignWeights, UsageError
from .common import JsonOpt, console, guard, stdout
from .results import print_result

app = typer.Typer()


@app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    inspect: Annotated[
        Path | None,
        typer.Option(
            "--inspect",
            metavar="FILE",
            help="Say what a model file is (ours, or any architecture spandrel knows): architecture, "
            "scale, parameters, precisions, size needs.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the weights this installation finds (shipped, yours, community) with their numbers.

    Scale, size and validation numbers for srgan-cli weights; architecture, scale, licence and
    source for community models. `srgan models get NAME|URL` adds a community model, `srgan models
    list --available` lists the catalogue it comes from.
    """
    if ctx.invoked_subcommand is not None:
        return
    if inspect is not None:
        with guard(as_json):
            facts = _inspect(inspect)
        if as_json:
            stdout.print(json.dumps(facts, indent=2), markup=False, highlight=False)
        else:
            for key, value in facts.items():
                print_result(f"[bold]{escape(key)}[/]: {escape(str(value))}")
        return
    _list_installed(as_json)


@app.command("get", no_args_is_help=True)
def get_cmd(
    source: Annotated[
        str,
        typer.Argument(
            metavar="NAME|URL|FILE",
            help="A model of the catalogue (srgan models list --available), an https URL of a "
            ".pth/.safetensors/.ckpt/.bin/.pt file, hf://OWNER/REPO/FILE or OWNER/REPO:FILE (the "
            "Hugging Face Hub; pip install 'srgan-cli[hub]'), or a file you downloaded.",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="Store it as NAME.safetensors. Default: its catalogue id or file name."),
    ] = None,
    folder: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            metavar="DIR",
            help="The weights folder to store it in. Default: the first folder of SRGAN_WEIGHTS_DIR, "
            "else ~/.local/share/srgan-cli/weights (both searched by name).",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a model of that name.")] = False,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Fetch the catalogue again even if the cached copy is recent.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a community model, verify it and store it in the weights folder.

    The download is checked against the size and SHA-256 its source announces (refused and deleted
    when they differ), loaded without running pickled code, recognised by spandrel, and stored as
    NAME.safetensors with its source, licence, author and hash recorded in the file. Then
    `srgan upscale -m NAME` runs it. The catalogue is OpenModelDB's (openmodeldb.info), cached for a
    day; SRGAN_MODEL_CATALOGUE names another URL or a local file. Check a model's licence before you
    use its output.
    """
    with guard(as_json):
        plan = community.resolve(source, name=name, refresh=refresh)
        community.check_free(community.target(plan, folder), overwrite)
        said = [
            plan.architecture,
            f"x{plan.scale}" if plan.scale else "",
            plan.license and f"licence {plan.license}",
        ]
        facts = ", ".join(x for x in [*said, _size(plan.size) if plan.size else ""] if x)
        console.print(
            escape(f"getting {plan.name}{f' ({facts})' if facts else ''} from {plan.host}"),
            soft_wrap=True,
        )
        with _download_bar(plan.name) as on_progress:
            done = community.install(plan, folder=folder, overwrite=overwrite, on_progress=on_progress)
    for note in done.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if as_json:
        stdout.print(json.dumps(done.to_dict(), indent=2), markup=False, highlight=False)
        return
    scale = f" x{done.scale}" if done.scale else ""
    print_result(
        escape(
            f"stored {done.name}: {done.architecture}{scale}, licence {done.license or 'unknown'}, "
            f"{_size(done.size_bytes)}, sha256 {done.sha256[:12]}... -> {done.path}"
        )
    )
    console.print(f"use: srgan upscale -m {escape(done.name)} IMAGE", soft_wrap=True)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 / 10 else f"{n / 1024:.1f} KB"


@contextmanager
def _download_bar(name: str) -> Iterator[community.OnProgress | None]:
    """A download bar on a terminal (bytes, speed, time left); nothing elsewhere."""
    if not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(escape(name), total=None)

        def on_progress(done: int, total: int | None) -> None:
            finished = total is not None and done >= total  # then it is checked and converted
            bar.update(
                task,
                completed=done,
                total=total,
                description=escape(f"{name}: checking" if finished else name),
            )

        yield on_progress


@app.command("list")
def list_cmd(
    words: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="WORDS",
            help="With --available: models whose id, name, author, tags or description hold every word.",
            show_default=False,
        ),
    ] = None,
    available: Annotated[
        bool,
        typer.Option("--available", help="The catalogue's models (what `srgan models get NAME` fetches)."),
    ] = False,
    scale: Annotated[
        int | None, typer.Option("--scale", min=1, help="With --available: only models of this scale.")
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch", metavar="ARCH", help="With --available: only this architecture (esrgan, compact, ...)."
        ),
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Fetch the catalogue again even if the cached copy is recent.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List installed models (as plain `srgan models` does), or with --available the catalogue's."""
    if not available:
        with guard(as_json):
            if words or scale is not None or arch is not None or refresh:
                raise UsageError("WORDS, --scale, --arch and --refresh search the catalogue: add --available")
        _list_installed(as_json)
        return
    with guard(as_json):
        catalogue = community.load_catalogue(refresh=refresh)
        found = catalogue.search(" ".join(words or []), scale=scale, arch=arch)
    if catalogue.stale:
        console.print(f"[yellow]note:[/] {escape(catalogue.note)}", soft_wrap=True)
    if as_json:
        stdout.print(json.dumps([e.to_dict() for e in found], indent=2), markup=False, highlight=False)
        return
    if not found:
        console.print(f"no catalogue model matches (of {len(catalogue.entries)})")
        return
    table = Table(
        show_edge=False,
        header_style="bold",
        caption=escape(community.fetched_text(catalogue)),
        caption_justify="left",
    )
    table.add_column("name", no_wrap=True)
    table.add_column("architecture", no_wrap=True)
    table.add_column("scale", justify="right", no_wrap=True)
    table.add_column("licence", overflow="fold", ratio=1, min_width=8)
    table.add_column("MB", justify="right", no_wrap=True)
    for e in found:
        table.add_row(
            escape(e.id),
            escape(e.architecture),
            f"x{e.scale}",
            escape(e.license or "-"),
            f"{e.size / 2**20:.1f}" if e.size else "-",
        )
    print_result(table, fit=True)
    console.print(f"[dim]{len(found)} of {len(catalogue.entries)} models; get one: srgan models get NAME[/]")


def _list_installed(as_json: bool) -> None:
    infos, status = weights.list_models(), weights.foreign_status()
    installed = [community.about(f) for f, why in status if why is None]
    refused = [(f, why) for f, why in status if why is not None]  # listed with why they cannot run
    if as_json:
        rows = [
            {
                "name": i.name,
                "arch": i.arch,
                "scale": i.scale,
                "params": i.n_params,
                "config": i.config,
                "trained_on": i.trained_on,
                "metrics": i.metrics,
                "provenance": i.provenance,
                "path": str(i.path),
                "default": i.name == weights.DEFAULT_MODEL,
                "use": weights.shipped_use(i),  # what a shipped file is for; "" for any other
            }
            for i in infos
        ]
        rows += [
            {
                "name": _stem(c.path),
                "arch": "third-party",
                "architecture": c.architecture,
                "scale": c.scale,
                "license": c.license,
                "author": c.author,
                "source": c.source,
                "sha256": c.sha256,
                "size_bytes": c.size_bytes,
                "retrieved": c.retrieved,
                "path": str(c.path),
                "default": False,
            }
            for c in installed
        ]
        rows += [
            {"name": _stem(f), "arch": "cannot run", "reason": why, "path": str(f), "default": False}
            for f, why in refused
        ]
        stdout.print(json.dumps(rows, indent=2), markup=False, highlight=False)
        return
    if not infos and not installed and not refused:
        console.print(
            f"no weights found (searched: {', '.join(map(str, weights.search_dirs())) or 'nothing'})"
        )
        return
    if infos:
        _ours_table(infos)
    if installed:
        print_result(_community_table(installed), fit=True)
        console.print("[dim]details of one: srgan models --inspect FILE[/]")
    for f, why in refused:
        print_result(f"[yellow]cannot run[/] {escape(f.name)}: {escape(str(why))}")
    console.print("[dim]paths and training details: srgan models --json[/]")


def _ours_table(infos: list[weights.WeightsInfo]) -> None:
    # names never wrap (they are what users type); the "use" column takes what width is left
    table = Table(
        show_edge=False,
        header_style="bold",
        caption="PSNR-Y (dB), LPIPS: each file's recorded validation (shipped: weights/README.md)",
        caption_justify="left",
    )
    table.add_column("name", no_wrap=True)
    for col in ("scale", "params", "PSNR-Y", "LPIPS"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("use", overflow="fold", ratio=1, min_width=12)
    for i in infos:
        psnr, lpips = i.metrics.get("val_psnr_y"), i.metrics.get("val_lpips")
        use = weights.shipped_use(i) or (f"trained on {i.trained_on}" if i.trained_on else "-")
        if i.name == weights.DEFAULT_MODEL:
            use = f"[green](default)[/] {use}"
        table.add_row(
            i.name,
            f"x{i.scale}" if i.scale > 1 else "-",  # generators and the checker do not enlarge
            f"{i.n_params / 1e6:.2f}M",
            f"{psnr:.2f}" if psnr is not None else "-",
            f"{lpips:.3f}" if lpips is not None else "-",
            use,
        )
    print_result(table, fit=True)


def _community_table(rows: list[community.Installed]) -> Table:
    """Community models: what `get` recorded in each file, else what spandrel says of it."""
    table = Table(
        show_edge=False,
        header_style="bold",
        title="third-party models (run through spandrel)",
        title_justify="left",
    )
    table.add_column("name", no_wrap=True)
    table.add_column("architecture", no_wrap=True)
    table.add_column("scale", justify="right", no_wrap=True)
    table.add_column("licence", overflow="fold")
    table.add_column("MB", justify="right", no_wrap=True)
    table.add_column("source", overflow="fold", ratio=1, min_width=10)
    for c in rows:
        table.add_row(
            escape(_stem(c.path)),
            escape(c.architecture),
            f"x{c.scale}" if c.scale else "-",
            escape(c.license or "-"),
            f"{c.size_bytes / 2**20:.1f}",
            escape(_source_text(c)),
        )
    return table


def _source_text(c: community.Installed) -> str:
    from urllib.parse import urlsplit

    if c.catalogue_id:
        return f"OpenModelDB {c.catalogue_id}" if "openmodeldb" in c.page else c.catalogue_id
    if c.source:
        parts = urlsplit(c.source)
        return "a local file" if parts.scheme == "file" else parts.hostname or c.source
    return "-"


def _inspect(path: Path) -> dict[str, Any]:
    """What a model file is: srgan-cli weights from their header, anything else through spandrel."""
    try:
        info = weights.read_info(path)
    except ForeignWeights:
        from ..runtime.third_party import describe, summary

        facts = {"file": str(path), "kind": "third-party (spandrel)", **summary(describe(path))}
        return {**facts, **_record(path)}
    weights.read_state(info.path)  # the header says what it is; the tensors must also be finite
    return {
        "file": str(info.path),
        "kind": "srgan-cli weights",
        "architecture": info.arch,
        "scale": info.scale,
        "parameters": info.n_params,
        "config": info.config,
        "trained_on": info.trained_on,
        "metrics": info.metrics,
    }


def _record(path: Path) -> dict[str, str]:
    """What `srgan models get` recorded in a file it stored: licence, author, source, hash, date."""
    record = weights.read_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    if record.get("format") != community.RECORD_FORMAT:
        return {}
    keys = ("license", "author", "source", "page", "catalogue_id", "sha256", "retrieved")
    return {("sha256 (as downloaded)" if k == "sha256" else k): record[k] for k in keys if record.get(k)}


def _stem(path: Path) -> str:
    return path.name.rsplit(".", 1)[0]
