"""Models on real video: a slow pan across each photo, encoded as one H.264/H.265 stream (with its
inter-predicted frames), decoded, upscaled frame by frame; quality per frame and flicker.

usage:
  python scripts/video_pan.py --data DIR -m MODEL [-m MODEL ...] [--crf 23 --crf 30]
         [--codec libx264|libx265] [--frames 12] [--lpips-weights DIR] [--json OUT]

Each photo is cropped to a window of at most 640x480 px that moves 8 px (two LR pixels at x4, so the
4:2:0 chroma samples stay on the same sites) to the right per frame; each window is downscaled x4
with antialiased bicubic (the eval protocol), and the frames go through the encoder as one stream
(x264/x265 defaults but the CRF: preset medium, B-frames, one keyframe; one encoder thread, so the
stream is the same on every run), so the model sees what a decoded video frame holds, not a still.
Per model (and bicubic):

- PSNR-Y, LPIPS (with --lpips-weights): every frame against its HR window, averaged.
- flicker: the mean absolute difference in luma (grey levels) between frame t+1 and frame t moved
  by the pan, inside a 16 px margin. The HR windows and their bicubic LR are exact shifts of each
  other (0 flicker; so is a lossless stream, CRF 0), and these networks are shift-equivariant in
  whole LR pixels, so what remains is the codec's changes from frame to frame and how much the
  model amplifies them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import srgan_cli
from srgan_cli.degradations.damage import bicubic_downscale
from srgan_cli.degradations.ops import stream_round_trip
from srgan_cli.metrics.luma import psnr_y, rgb_to_y
from srgan_cli.photos import list_images, load_rgb_uint8
from srgan_cli.sr.data import bicubic_upscale
from srgan_cli.sr.evaluate import lpips_score

SCALE = 4
STEP = 2 * SCALE  # HR px per frame: two LR pixels, an even shift for 4:2:0 chroma
MARGIN = 16  # HR px left out of the flicker figure at each edge


def pan_windows(hr: np.ndarray, frames: int, step: int = STEP) -> list[np.ndarray]:
    """`frames` windows of `hr`, each `step` px right of the last, sides multiples of 4 x SCALE."""
    h, w = hr.shape[:2]
    unit = 4 * SCALE
    width = min(640, (w - step * (frames - 1)) // unit * unit)
    height = min(480, h // unit * unit)
    if width < 4 * unit or height < 4 * unit:
        raise ValueError(f"a {w}x{h} photo is too small for a {frames}-frame pan")
    y0, x0 = (h - height) // 2, (w - width - step * (frames - 1)) // 2
    return [hr[y0 : y0 + height, x0 + t * step : x0 + t * step + width] for t in range(frames)]


def luma(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].double() / 255
    return rgb_to_y(x)[0, 0]


def flicker(frames: list[np.ndarray], step: int = STEP) -> float:
    """Mean |Y(t+1) - Y(t) moved by the pan| inside the margin, grey levels."""
    diffs = []
    for a, b in zip(frames, frames[1:], strict=False):
        ya, yb = luma(a), luma(b)
        # window t+1 starts `step` px right of window t: b[:, x] shows a[:, x + step]
        d = (yb[MARGIN:-MARGIN, MARGIN : -MARGIN - step] - ya[MARGIN:-MARGIN, MARGIN + step : -MARGIN]).abs()
        diffs.append(float(d.mean()))
    return float(np.mean(diffs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder of HR photos")
    p.add_argument("-m", "--model", action="append", required=True, help="weights name or path (repeat)")
    p.add_argument("--crf", type=int, action="append", help="constant rate factors (default 23, 30)")
    p.add_argument("--codec", default="libx264", choices=("libx264", "libx265"))
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--lpips-weights", default=None, help="LPIPS weights folder (else no LPIPS)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args()
    lpips = None
    if args.lpips_weights:
        from srgan_cli.metrics.lpips import load_lpips

        lpips = load_lpips(args.lpips_weights)
    upscalers = {
        Path(m).stem: srgan_cli.Upscaler(m, device="cpu", precision="fp32", tile=0) for m in args.model
    }
    photos = list_images(args.data)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for crf in args.crf or [23, 30]:
        rows: dict[str, dict[str, list[float]]] = {}
        for path in photos:
            hr_frames = pan_windows(load_rgb_uint8(path), args.frames)
            lr = stream_round_trip(
                [bicubic_downscale(f, SCALE) for f in hr_frames], args.codec, crf, threads=1
            )
            outputs = {"bicubic": [bicubic_upscale(f, SCALE) for f in lr]}
            outputs.update({name: [up(f) for f in lr] for name, up in upscalers.items()})
            for name, frames in outputs.items():
                row = rows.setdefault(name, {"psnr_y": [], "lpips": [], "flicker": []})
                for sr, hr in zip(frames, hr_frames, strict=True):
                    a, b = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255 for x in (sr, hr))
                    row["psnr_y"].append(psnr_y(a, b, border=SCALE))
                    if lpips is not None:
                        row["lpips"].append(lpips_score(sr, hr, SCALE, lpips))
                row["flicker"].append(flicker(frames))
            print(f"{args.codec} crf {crf}: {path.name} done", flush=True)
        results[f"{args.codec}_crf{crf}"] = {
            name: {k: round(float(np.mean(v)), 4) for k, v in row.items() if v} for name, row in rows.items()
        }
        print(f"\n{args.codec} CRF {crf}, {len(photos)} photos x {args.frames} frames")
        print(f"{'model':28s} {'PSNR-Y':>7s} {'LPIPS':>6s} {'flicker':>8s}")
        for name, row in results[f"{args.codec}_crf{crf}"].items():
            lp = f"{row['lpips']:.3f}" if "lpips" in row else "-"
            print(f"{name:28s} {row['psnr_y']:7.2f} {lp:>6s} {row['flicker']:8.3f}")
    if args.json:
        args.json.write_text(
            json.dumps({"codec": args.codec, "frames": args.frames, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
