"""`srgan eval`: PSNR/SSIM (and LPIPS when its weights are found) of models next to bicubic."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .. import weights
from ..degradations import DAMAGE_PRESET_NAMES, parse_damage
from ..devices import resolve_device
from ..errors import UsageError
from ..metrics.lpips import ENV_VAR as LPIPS_ENV
from ..metrics.lpips import lpips_if_available
from ..runtime.loader import (
    ReadyUpscaler,
    build_upscaler,
    has_front_end,
    is_onnx_path,
    with_self_ensemble,
)
from ..runtime.upscaler import Rescaled
from ..sr.data import damage_pairs, load_eval_set
from ..sr.evaluate import EvalReport
from ..sr.evaluate import evaluate as run_eval
from .common import (
    DeviceOpt,
    Ensemble,
    JsonOpt,
    LapganLevelsOpt,
    Precision,
    SelfEnsembleOpt,
    TileOpt,
    console,
    guard,
    parse_tile,
    stdout,
)
from .progress import StageProgress
from .results import print_result


def _labels(requested: list[str], loaded: list[ReadyUpscaler]) -> list[str]:
    """Column labels: the models' names. Where names collide, a model run another way says how
    ("srresnet_x4" and "srresnet_x4 (onnx)"); models of one kind from different files get the
    shortest path tails that differ; the same file twice is numbered."""
    names = [w.name for w in loaded]
    labels = list(names)
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name]
        if len(idx) > 1:
            for i in idx:
                labels[i] += f" ({_kind(loaded[i])})" if _kind(loaded[i]) else ""
    for label in set(labels):
        idx = [i for i, n in enumerate(labels) if n == label]
        if len(idx) < 2:
            continue
        kind = label[len(names[idx[0]]) :]  # " (onnx)" or ""
        parts = [Path(requested[i]).with_suffix("").parts or (requested[i],) for i in idx]
        for k in range(1, max(len(p) for p in parts) + 1):
            tails = ["/".join(p[-k:]) + kind for p in parts]
            if len(set(tails)) == len(tails):
                break
        if len(set(tails)) < len(tails):  # the same file twice: number them
            tails = [f"{label}#{j + 1}" for j in range(len(idx))]
        for i, tail in zip(idx, tails, strict=True):
            labels[i] = tail
    return labels


def _with_strengths(requested: list[str], strengths: list[float]) -> list[tuple[int, str, float | None]]:
    """What to score, as (index in `requested`, model, --denoise strength): each model with a
    restoration front-end once per strength, every other model once as it is (None)."""
    if not strengths:
        return [(i, m, None) for i, m in enumerate(requested)]
    entries: list[tuple[int, str, float | None]] = []
    for i, m in enumerate(requested):
        entries += [(i, m, s) for s in strengths] if has_front_end(m) else [(i, m, None)]
    if all(strength is None for _, _, strength in entries):
        raise UsageError(
            "--denoise sets how much a restoration front-end removes; none of the models has one",
            hint="e.g. -m srgan_x4_denoise --denoise 0.5 --denoise 1",
        )
    return entries


def _kind(ready: ReadyUpscaler) -> str:
    """ "" for weights run by PyTorch (the usual), else the backend and a precision other than fp32."""
    if ready.backend == "torch":
        return ""
    return ready.backend + (f" {ready.precision}" if ready.precision not in ("fp32", "") else "")


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def evaluate(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            metavar="DIR",
            help="Folder of HR photos; LR is made by bicubic downscaling.",
            rich_help_panel="Data",
        ),
    ],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "-m",
            "--model",
            metavar="NAME|PATH",
            help=f"Weights name or path, or an .onnx file; repeat to compare several models of one scale "
            f"(default: {weights.DEFAULT_MODEL}).",
            show_default=False,
            rich_help_panel="Model",
        ),
    ] = None,
    lpips_weights: Annotated[
        Path | None,
        typer.Option(
            "--lpips-weights",
            metavar="DIR",
            help=f"LPIPS weights folder (`srgan weights fetch-perceptual DIR` makes one). Default: "
            f"${LPIPS_ENV}, then the `lpips` package; LPIPS is skipped (with a note) if none is found.",
            rich_help_panel="Metrics",
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", min=0, help="Use at most this many photos (0 = all).", rich_help_panel="Data"
        ),
    ] = 0,
    task_scale: Annotated[
        int | None,
        typer.Option(
            "--scale",
            min=2,
            help="Score at this scale (LR made by downscaling N times); models of another scale are "
            "resampled to it as `srgan upscale -s N` does. Default: the models' own scale.",
            show_default=False,
            rich_help_panel="Model",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="Inference precision; fp32 gives reference numbers.",
            rich_help_panel="Performance",
        ),
    ] = Precision.fp32,
    tile: TileOpt = "auto",
    lapgan_levels: LapganLevelsOpt = None,
    self_ensemble: SelfEnsembleOpt = Ensemble.one,
    grid: Annotated[
        bool,
        typer.Option(
            "--grid",
            help="Add a column for the checkerboard artefact: the RMS (0-255) of the error that repeats "
            "every `scale` pixels, per 32 px tile; bicubic shows the floor, lower is better. "
            "Always in --json.",
            rich_help_panel="Metrics",
        ),
    ] = False,
    denoise: Annotated[
        list[float] | None,
        typer.Option(
            "--denoise",
            metavar="S",
            min=0.0,
            max=1.0,
            help="Score each model with a restoration front-end (srgan_x4_denoise) at this strength "
            "(`srgan upscale --denoise`; 1: as trained); repeat to compare strengths. Other models "
            "are scored as they are.",
            show_default=False,
            rich_help_panel="Model",
        ),
    ] = None,
    degrade: Annotated[
        list[str] | None,
        typer.Option(
            "--degrade",
            metavar="SPEC",
            help="Also score on damaged copies of the LR: light, moderate, heavy, "
            "blur=S,noise=S,jpeg=Q,h264=CRF (any of them; or h265=CRF: one video frame), a training "
            f"preset ({DAMAGE_PRESET_NAMES}) or a .toml; repeat for several. "
            "Adds the JPEG block column: the LR's 8x8 grid left in the output, 1.00 = as in the original.",
            show_default=False,
            rich_help_panel="Data",
        ),
    ] = None,
    degrade_seed: Annotated[
        int,
        typer.Option(
            "--degrade-seed",
            help="Seed of the noise and of preset draws (per image).",
            rich_help_panel="Data",
        ),
    ] = 0,
    clean: Annotated[
        bool,
        typer.Option(
            "--clean/--no-clean",
            help="With --degrade, also score the clean bicubic LR.",
            show_default=False,
            rich_help_panel="Data",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Score models against bicubic: Y-channel PSNR/SSIM (`scale` px border removed) and RGB LPIPS."""
    tile_size = parse_tile(tile)
    requested = list(model) if model else [weights.DEFAULT_MODEL]
    # nothing but the results on stdout: torch.hub prints "Downloading: ..." there when it fetches
    # weights, which would break --json (the guard's JSON error is printed after the redirect ends)
    with guard(as_json), contextlib.redirect_stdout(sys.stderr):
        dev = resolve_device(device)
        entries = _with_strengths(requested, denoise or [])
        loaded = [
            with_self_ensemble(
                build_upscaler(
                    m,
                    device=device,
                    precision="auto" if is_onnx_path(m) else precision.value,
                    tile=tile_size,
                    mode="auto",
                    lapgan_levels=lapgan_levels,
                    denoise=strength,
                ),
                int(self_ensemble.value),
            )
            for _, m, strength in entries
        ]
        for ready in loaded:
            for note in ready.notes:
                console.print(f"[yellow]note:[/] {escape(note)}")
        scales = {w.scale for w in loaded}
        if task_scale is not None:
            for w in loaded:
                if w.scale != task_scale:
                    w.upscaler = Rescaled(w.upscaler, task_scale)
                    w.name = f"{w.name} -s {task_scale}"
            scales = {task_scale}
        if len(scales) > 1:
            listing = ", ".join(f"{r} (x{w.scale})" for r, w in zip(requested, loaded, strict=True))
            raise UsageError(
                f"models of different scales cannot be compared on one table: {listing}",
                hint="run `srgan eval` once per scale, or score them all at one with --scale N",
            )
        scale = scales.pop()
        # labelled as the models given (one per -m), then each strength of a front-end's model
        first: dict[int, ReadyUpscaler] = {}
        for (i, _, _), ready in zip(entries, loaded, strict=True):
            first.setdefault(i, ready)
        given = _labels(requested, [first[i] for i in range(len(requested))])
        labels = [
            given[i] if strength is None else f"{given[i]} --denoise {strength:g}"
            for i, _, strength in entries
        ]
        lpips, why = lpips_if_available(lpips_weights, device=dev)
        if why is not None:
            hint = f" To enable it: {why.hint}." if why.hint else ""
            console.print(
                f"[yellow]note: LPIPS skipped: {escape(why.message)}.{escape(hint)}[/]", soft_wrap=True
            )
        damages = [parse_damage(spec, seed=degrade_seed) for spec in degrade or []]
        pairs, skipped = load_eval_set(data, scale, limit=limit or None)
        for path, why in skipped:
            console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(why)}")
        # (name, spec, pairs): the clean protocol first, then each damaged copy of the same photos
        sets = [("clean", "bicubic downscale", pairs)] if (clean or not damages) else []
        sets += [(d.name, d.spec, damage_pairs(pairs, scale, d)) for d in damages]
        tables: list[tuple[str, str, list[EvalReport]]] = []
        methods = [("bicubic", None), *((label, w.upscaler) for label, w in zip(labels, loaded, strict=True))]
        images = sum(len(chosen) for _, _, chosen in sets) * len(methods)
        with StageProgress(console, images, "images") as progress:  # on stderr, --json too
            for name, spec, chosen in sets:
                reports: list[EvalReport] = []
                for label, up in methods:
                    where = f"{label}, {name} LR" if damages else label
                    with progress.stage(where, len(chosen)) as on_image:
                        reports.append(run_eval(chosen, scale, up, label, lpips=lpips, on_image=on_image))
                tables.append((name, spec, reports))
    if as_json:
        payload: dict[str, object] = {
            "data": str(data),
            "scale": scale,
            "lpips": lpips is not None,
            "self_ensemble": int(self_ensemble.value),
            "skipped": [{"path": str(path), "reason": why} for path, why in skipped],
        }
        if damages:
            payload["degrade_seed"] = degrade_seed
            payload["sets"] = [
                {"name": n, "spec": sp, "results": [r.to_dict() for r in rs]} for n, sp, rs in tables
            ]
        else:
            payload["results"] = [r.to_dict() for r in tables[0][2]]
        stdout.print(json.dumps(payload, indent=2), markup=False)
    else:
        for name, spec, reports in tables:
            what = f"x{scale} on {data}" + (f", {name} LR ({spec})" if damages else "")
            _print_table(
                reports, what, scale, lpips is not None, grid, int(self_ensemble.value), block=bool(damages)
            )
    if skipped:  # as `srgan upscale` does: the others are scored, the exit code says not all were
        raise typer.Exit(1)


def _print_table(
    reports: list[EvalReport],
    what: str,
    scale: int,
    with_lpips: bool,
    grid: bool,
    ensemble: int,
    *,
    block: bool = False,
) -> None:
    """One row per image and a mean row; per method its PSNR, SSIM, LPIPS (if scored), grid (--grid)
    and JPEG block ratio (with --degrade)."""
    title = f"{what}: PSNR/SSIM on Y, border {scale}"
    title += "; LPIPS on RGB, lower is better" if with_lpips else ""
    title += f"; models with a self-ensemble of {ensemble}" if ensemble > 1 else ""
    table = Table(show_edge=False, header_style="bold", title=escape(title))
    table.add_column("image", no_wrap=True)
    metrics = ("PSNR", "SSIM") + (("LPIPS↓",) if with_lpips else ()) + (("grid↓",) if grid else ())
    metrics += ("block↓",) if block else ()
    for r in reports:
        for m in metrics:
            # two-line header (method over metric) keeps the columns as narrow as the numbers
            table.add_column(f"{escape(r.method)}\n{m}", justify="right")

    Row = tuple[float, float, float | None, float | None, float | None]

    def cells(values: list[Row], bold: bool = False) -> list[str]:
        out = []
        for p, s, lp, g, b in values:
            out += [f"{p:.2f}", f"{s:.4f}"] + ([_fmt(lp, 4)] if with_lpips else [])
            out += [_fmt(g, 3)] if grid else []
            out += [_fmt(b, 3)] if block else []
        return [f"[bold]{c}" for c in out] if bold else out

    for i, first in enumerate(reports[0].images):
        row = [
            (r.images[i].psnr, r.images[i].ssim, r.images[i].lpips, r.images[i].grid, r.images[i].block)
            for r in reports
        ]
        table.add_row(escape(first.name), *cells(row))
    table.add_row(
        "[bold]mean", *cells([(r.psnr, r.ssim, r.lpips, r.grid, r.block) for r in reports], bold=True)
    )
    print_result(table)
