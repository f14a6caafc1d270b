"""Side-by-side crops (bicubic | model ... | original) made with the tool itself, for the docs.

usage:
  python scripts/make_gallery.py HR_IMAGE_OR_FOLDER ... -o OUT [-m MODEL ...] [--box X Y SIZE]
         [--size N] [--zoom Z] [--lpips-weights DIR] [--degrade SPEC] [--markdown FILE [--note TEXT]]

Each HR photo is cropped to a multiple of the scale and downscaled with antialiased bicubic (the
evaluation protocol); the LR image is upscaled by bicubic and by every model, and the same box of
each is shown enlarged (nearest neighbour) next to the original, labelled with the full image's
PSNR-Y (and LPIPS with --lpips-weights). The box is --box, or else the SIZE x SIZE window with the
most fine detail (largest HR gradient energy), so the crops show where methods differ.

With --degrade SPEC (as `srgan eval --degrade`: light, moderate, heavy, blur=S,noise=S,jpeg=Q, a
preset), the LR is damaged that way first, and the first panel is that damaged input enlarged.

One input and an OUT ending in .png writes that file; otherwise OUT is a folder that gets one PNG
per photo, and --markdown FILE writes a page that shows them with the numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from srgan_cli import weights
from srgan_cli.degradations import damage_image, parse_damage
from srgan_cli.devices import resolve_device
from srgan_cli.photos import list_images, load_rgb_uint8
from srgan_cli.runtime.loader import build_upscaler
from srgan_cli.sr.data import bicubic_downscale, bicubic_upscale
from srgan_cli.sr.evaluate import lpips_score, score


def detail_box(hr: np.ndarray, size: int, flattest: bool = False) -> tuple[int, int]:
    """Top-left corner of the size x size window with the most gradient energy (on a coarse grid).

    With `flattest`, the window with the least, among windows that are neither near black nor near
    white (clipped areas would hide a pattern): where a checkerboard artefact shows first.
    """
    gray = hr.astype(np.float32).mean(axis=2)
    energy = np.zeros_like(gray)
    energy[:, 1:] += np.abs(np.diff(gray, axis=1))
    energy[1:, :] += np.abs(np.diff(gray, axis=0))
    h, w = gray.shape
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    brightness = np.pad(gray, ((1, 0), (1, 0))).cumsum(0).cumsum(1)

    def window(table: np.ndarray, x: int, y: int) -> float:
        return float(table[y + size, x + size] - table[y, x + size] - table[y + size, x] + table[y, x])

    best, where = -1.0, (0, 0)
    step = max(8, size // 4)
    for y in range(0, max(1, h - size + 1), step):
        for x in range(0, max(1, w - size + 1), step):
            total = window(integral, x, y)
            if flattest:
                if not 40 <= window(brightness, x, y) / size**2 <= 215:
                    continue
                total = -total
            if total > best or best == -1.0:
                best, where = total, (x, y)
    return where


def panel(img: np.ndarray, label: str, x: int, y: int, size: int, zoom: int) -> Image.Image:
    crop = Image.fromarray(img[y : y + size, x : x + size]).resize(
        (size * zoom, size * zoom), Image.Resampling.NEAREST
    )
    canvas = Image.new("RGB", (crop.width, crop.height + 22), "white")
    canvas.paste(crop, (0, 22))
    ImageDraw.Draw(canvas).text((6, 5), label, fill="black")
    return canvas


def side_by_side(tiles: list[Image.Image], gap: int = 6) -> Image.Image:
    out = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), tiles[0].height), "white")
    for i, tile in enumerate(tiles):
        out.paste(tile, (i * (tile.width + gap), 0))
    return out


def stack(strips: list[Image.Image], gap: int = 6) -> Image.Image:
    out = Image.new(
        "RGB", (strips[0].width, sum(s.height for s in strips) + gap * (len(strips) - 1)), "white"
    )
    for i, strip in enumerate(strips):
        out.paste(strip, (0, i * (strip.height + gap)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", type=Path, nargs="+", help="HR photos or folders of them")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("-m", "--model", action="append", help="weights name or path (repeatable)")
    parser.add_argument("--box", type=int, nargs=3, metavar=("X", "Y", "SIZE"), help="HR crop box")
    parser.add_argument("--size", type=int, default=128, help="HR crop side when --box is not given")
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument(
        "--flat", action="store_true", help="add a second row: the flattest window (where grids show)"
    )
    parser.add_argument("--lpips-weights", type=Path, help="add LPIPS (lower is better) to the labels")
    parser.add_argument("--degrade", help="damage the LR first (srgan eval --degrade SPEC)")
    parser.add_argument("--markdown", type=Path, help="also write a page showing the images")
    parser.add_argument("--note", default="", help="a paragraph for the page, after the command")
    args = parser.parse_args()

    device = resolve_device("auto")
    # ours and community models alike (spandrel), through the same loader as `srgan upscale`
    models = [
        build_upscaler(m, device=str(device), precision="fp32", tile=None, mode="auto")
        for m in (args.model or [weights.DEFAULT_MODEL])
    ]
    scale = models[0].scale
    if any(m.scale != scale for m in models):
        parser.error("all models must have the same scale")
    upscalers = [(m.name, m.upscaler) for m in models]
    lpips = None
    if args.lpips_weights:
        from srgan_cli.metrics.lpips import load_lpips

        lpips = load_lpips(args.lpips_weights, device=device)
    photos = [p for path in args.inputs for p in (list_images(path) if path.is_dir() else [path])]
    single = len(photos) == 1 and args.out.suffix.lower() == ".png"
    rows: list[tuple[str, Path, list[dict[str, float]]]] = []
    for photo in photos:
        hr = load_rgb_uint8(photo)
        h, w = hr.shape[:2]
        hr = hr[: h - h % scale, : w - w % scale]
        if args.degrade:
            lr = damage_image(hr, scale, parse_damage(args.degrade), photo.stem)
            results = [(f"{args.degrade} input", bicubic_upscale(lr, scale))]
        else:
            lr = bicubic_downscale(hr, scale)
            results = [("bicubic", bicubic_upscale(lr, scale))]
        for name, upscaler in upscalers:
            results.append((name, np.rint(upscaler(lr.astype(np.float32) / 255) * 255).astype(np.uint8)))
        if args.box:
            x, y, size = args.box
            boxes = [(x, y)]
        else:
            size = min(args.size, hr.shape[0], hr.shape[1])
            boxes = [detail_box(hr, size)]
        if args.flat:
            boxes.append(detail_box(hr, size, flattest=True))
        labels, numbers = [], []
        for name, img in results:
            psnr = score(img, hr, scale)[0]
            label = f"{name}  {psnr:.2f} dB"
            entry = {"method": name, "psnr": psnr}
            if lpips is not None:
                entry["lpips"] = lpips_score(img, hr, scale, lpips)
                label += f"  LPIPS {entry['lpips']:.3f}"
            labels.append(label)
            numbers.append(entry)
        strips = []
        for x, y in boxes:
            tiles = [
                panel(img, label, x, y, size, args.zoom)
                for (_, img), label in zip(results, labels, strict=True)
            ]
            strips.append(side_by_side([*tiles, panel(hr, "original", x, y, size, args.zoom)]))
        target = args.out if single else args.out / f"{photo.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        stack(strips).save(target, optimize=True)
        rows.append((photo.stem, target, numbers))
        print(f"wrote {target}")
    if args.markdown:
        write_markdown(args.markdown, rows, scale, lpips is not None, args.note, args.flat)
        print(f"wrote {args.markdown}")


def write_markdown(
    path: Path,
    rows: list[tuple[str, Path, list[dict[str, float]]]],
    scale: int,
    lp: bool,
    note: str = "",
    flat: bool = False,
) -> None:
    import os
    import shlex
    import sys

    command = "python scripts/make_gallery.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# Gallery",
        "",
        "Made by the tool itself; rerun it with (paths as on the machine that made it):",
        "",
        "```bash",
        command,
        "```",
        "",
        *([note, ""] if note else []),
        f"Each row: the photo downscaled x{scale} (antialiased bicubic), brought back by each method; the",
        "crop is the window with the most fine detail, enlarged with nearest neighbour"
        + ("; the second row is the flattest window, where a checkerboard shows first." if flat else "."),
        "Numbers are for the whole photo: PSNR on Y (higher is better)"
        + (", LPIPS (lower is better)." if lp else "."),
        "",
    ]
    for stem, image, numbers in rows:
        summary = "; ".join(
            f"{n['method']} {n['psnr']:.2f} dB" + (f" / {n['lpips']:.3f}" if "lpips" in n else "")
            for n in numbers
        )
        rel = os.path.relpath(image, path.parent)
        lines += [f"### {stem}", "", f"![{stem}]({rel})", "", summary, ""]
    path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
