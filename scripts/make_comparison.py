"""Side-by-side crops (bicubic | model | original) made with the tool itself, for the docs.

usage: python scripts/make_comparison.py HR_IMAGE OUT.png [-m MODEL] [--box X Y SIZE] [--zoom Z]

The HR photo is cropped to a multiple of the scale and downscaled with antialiased bicubic (the
evaluation protocol); the LR image is then upscaled by bicubic and by the model, and the same box
of each is shown enlarged (nearest neighbour) next to the original, with PSNR-Y of the full image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from srgan_cli import weights
from srgan_cli.devices import resolve_device
from srgan_cli.runtime.torch_backend import TorchUpscaler
from srgan_cli.sr.data import bicubic_downscale, bicubic_upscale, load_rgb_uint8
from srgan_cli.sr.evaluate import score


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("hr", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("-m", "--model", default=weights.DEFAULT_MODEL)
    parser.add_argument("--box", type=int, nargs=3, metavar=("X", "Y", "SIZE"), help="HR crop box")
    parser.add_argument("--zoom", type=int, default=2)
    args = parser.parse_args()

    loaded = weights.load(args.model)
    scale = loaded.info.scale
    hr = load_rgb_uint8(args.hr)
    h, w = hr.shape[:2]
    hr = hr[: h - h % scale, : w - w % scale]
    lr = bicubic_downscale(hr, scale)
    upscaler = TorchUpscaler(loaded.model, device=resolve_device("auto"), tile=None)
    sr = np.rint(upscaler(lr.astype(np.float32) / 255) * 255).astype(np.uint8)
    bic = bicubic_upscale(lr, scale)

    x, y, size = args.box or (w // 2 - 64, h // 2 - 64, 128)
    panels = [
        (f"bicubic  {score(bic, hr, scale)[0]:.2f} dB", bic),
        (f"{loaded.info.name}  {score(sr, hr, scale)[0]:.2f} dB", sr),
        ("original", hr),
    ]
    tiles = []
    for label, img in panels:
        crop = Image.fromarray(img[y : y + size, x : x + size]).resize(
            (size * args.zoom, size * args.zoom), Image.Resampling.NEAREST
        )
        canvas = Image.new("RGB", (crop.width, crop.height + 22), "white")
        canvas.paste(crop, (0, 22))
        ImageDraw.Draw(canvas).text((6, 5), label, fill="black")
        tiles.append(canvas)
    gap = 6
    out = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), tiles[0].height), "white")
    for i, tile in enumerate(tiles):
        out.paste(tile, (i * (tile.width + gap), 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
