"""`srgan degrade`: write what the degradation pipeline makes of photos, to see and tune it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape

from ..atomic import atomic_open
from ..degradations import DAMAGE_PRESET_NAMES, damage_image, load_degradation, parse_damage
from ..errors import ImageError, UsageError
from ..imageio.formats import ImageData
from ..imageio.write import write_image
from ..photos import READABLE_SUFFIXES, list_images, load_rgb_uint8
from .common import JsonOpt, console, guard, stdout


def _inputs(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(file, its path relative to the input it came from) for every image named or in a folder."""
    out = []
    for p in paths:
        if p.is_dir():
            out += [(f, f.relative_to(p)) for f in list_images(p)]
        elif p.is_file():
            out.append((p, Path(p.name)))
        else:
            raise UsageError(f"{p}: no such file or folder")
    return out


def degrade(
    inputs: Annotated[
        list[Path], typer.Argument(help="Photos or folders of photos (HR).", show_default=False)
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the damaged LR images (PNG).")],
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            "-p",
            metavar="SPEC",
            help=f"{DAMAGE_PRESET_NAMES} or FILE.toml (random, seeded per image); or the "
            "fixed eval levels light, moderate, heavy, or blur=S,noise=S,jpeg=Q,h264=CRF (or h265=CRF).",
        ),
    ] = "realesrgan",
    seed: Annotated[
        int, typer.Option("--seed", help="Seed; each image's draws also depend on its name.")
    ] = 0,
    scale: Annotated[int, typer.Option("--scale", min=1, help="Downscale factor of the LR.")] = 4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Damage photos as training (`--degradation`) or `srgan eval --degrade` would, and write the LR.

    Each output is a lossless PNG of the LR (its JPEG or codec damage already inside); degrade.json
    in the output folder lists the ranges used and what each image went through."""
    with guard(as_json):
        damage = parse_damage(preset, seed=seed)
        table = load_degradation(damage.preset).to_dict() if damage.preset else None
        files = _inputs(inputs)
        if not files:
            raise UsageError(
                f"no images found in {', '.join(map(str, inputs))}",
                hint=f"readable: {', '.join(READABLE_SUFFIXES)}",
            )
        out.mkdir(parents=True, exist_ok=True)
        rows, failed = [], 0
        for path, rel in files:
            target = out / rel.with_suffix(".png")
            row: dict[str, object] = {"input": str(path), "output": str(target)}
            try:
                if path.resolve() == target.resolve():
                    raise ImageError(target, "would overwrite the input")
                if target.exists() and not overwrite:
                    raise ImageError(target, "already exists; pass --overwrite to replace it")
                hr = load_rgb_uint8(path)
                h, w = hr.shape[:2]
                if min(h, w) < scale:
                    raise ImageError(path, f"{w}x{h} is smaller than the scale {scale}")
                hr = np.ascontiguousarray(hr[: h - h % scale, : w - w % scale])
                record: dict[str, object] = {}
                lr = damage_image(hr, scale, damage, rel.as_posix(), record)
                target.parent.mkdir(parents=True, exist_ok=True)
                write_image(target, ImageData(lr, None), overwrite=overwrite)
                row.update(
                    size=f"{lr.shape[1]}x{lr.shape[0]}",
                    applied=record,
                    preset=preset,
                    spec=damage.spec,
                    seed=seed,
                    scale=scale,
                )
                if not as_json:
                    what = ", ".join(f"{k} {v}" for k, v in record.items()) or damage.spec
                    console.print(f"{escape(str(path))} -> {escape(str(target))}: {escape(what)}")
            except (ImageError, OSError) as exc:
                failed += 1
                row["error"] = str(exc)
                if not as_json:
                    console.print(f"[red]failed[/] {escape(str(exc))}")
            rows.append(row)
        summary = {
            "preset": preset,
            "spec": damage.spec,
            "seed": seed,
            "scale": scale,
            "ranges": table,
            "images": rows,
        }
        if failed < len(rows) or not (out / "degrade.json").exists():  # a run that wrote nothing keeps the
            kept = {**summary, "images": _merged_rows(out / "degrade.json", rows)}  # record as it is
            with atomic_open(out / "degrade.json") as fh:
                fh.write(json.dumps(kept, indent=2).encode())
    if as_json:
        stdout.print(json.dumps(summary, indent=2), markup=False)
    else:
        console.print(f"{len(rows) - failed} written, {failed} failed -> {escape(str(out))}")
    if failed:
        raise typer.Exit(1)


def _merged_rows(record: Path, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The images of an earlier degrade.json in that folder that this run did not write again (each
    with the preset, spec, seed and scale that made it), then this run's rows: a run that adds
    images to a folder, or fails on some, does not lose the record of the images already there."""
    try:
        earlier = json.loads(record.read_text())
        settings = {k: earlier.get(k) for k in ("preset", "spec", "seed", "scale")}
        old = [{**settings, **row} for row in earlier.get("images", []) if "error" not in row]
    except (OSError, ValueError, AttributeError, TypeError):
        old = []  # none, or not ours to read: this run's record alone
    written = {row["output"] for row in rows if "error" not in row}
    kept = [row for row in old if row.get("output") not in written]
    have = {row.get("output") for row in kept}
    return kept + [row for row in rows if "error" not in row or row["output"] not in have]
