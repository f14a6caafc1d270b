#!/usr/bin/env python3
"""Write the numbers of an `srgan eval --json` run into the metrics of the weights files it measured.

usage:
  srgan eval -m A.safetensors -m B.safetensors --data VAL --lpips-weights DIR --grid --json > eval.json
  python scripts/record_metrics.py eval.json A.safetensors B.safetensors

For each file, the eval row whose method is the file's name gives `val_psnr_y`, `val_ssim_y`,
`val_lpips`, `val_grid` and `val_images`, and the bicubic row `val_bicubic_*` (what `srgan models`
shows and the shipped-weights test checks). A report of `srgan eval --degrade SPEC ...` gives those
from its clean table, and from each damaged table `val_<name>_psnr_y`, `_ssim_y`, `_lpips` and
`_block` (e.g. `val_heavy_lpips`), with the spec under `val_<name>_spec`. Every other metadata
field and every tensor stays as it was (the tensors are copied byte for byte); the file is
replaced atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save

from srgan_cli.atomic import atomic_open

KEYS = ("psnr", "ssim", "lpips", "grid")
NAMES = {"psnr": "psnr_y", "ssim": "ssim_y", "lpips": "lpips", "grid": "grid", "block": "block"}


def metrics_of(row: dict, prefix: str) -> dict[str, float]:
    return {f"{prefix}{NAMES[k]}": row[k] for k in KEYS if row.get(k) is not None}


def record(path: Path, report: dict) -> dict[str, float]:
    sets = report.get("sets") or [{"name": "clean", "results": report["results"]}]
    name = path.name.removesuffix(".safetensors")
    new: dict = {}
    for table in sets:
        rows = {r["method"]: r for r in table["results"]}
        if name not in rows:
            raise SystemExit(f"{path}: no eval row named {name!r} (rows: {', '.join(rows)})")
        if table["name"] == "clean":
            new |= metrics_of(rows[name], "val_") | {"val_images": len(rows[name]["images"])}
            if "bicubic" in rows:
                new |= metrics_of(rows["bicubic"], "val_bicubic_")
        else:
            prefix = f"val_{table['name']}_"
            new |= {
                f"{prefix}{NAMES[k]}": rows[name][k]
                for k in (*KEYS, "block")
                if rows[name].get(k) is not None
            }
            new[f"{prefix}spec"] = table.get("spec", table["name"])
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle)
    meta["metrics"] = json.dumps(json.loads(meta.get("metrics", "{}")) | new, sort_keys=True)
    with atomic_open(path) as fh:
        fh.write(save(tensors, metadata=meta))
    return new


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("report", type=Path, help="the JSON printed by `srgan eval --json`")
    parser.add_argument("weights", type=Path, nargs="+", help="weights files measured in that report")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    for path in args.weights:
        print(path, json.dumps(record(path, report), sort_keys=True))


if __name__ == "__main__":
    main()
