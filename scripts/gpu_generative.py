#!/usr/bin/env python3
"""Train the generative models on a lent GPU in one call: text-to-image at the paper's widths on the
shapes set, then a wider LAPGAN on the photos; their weights, logs and checks come back.

  here    python scripts/gpu_run.py prepare --perceptual DIR --no-extra
          (packs the 53 train photos into .carry/train/train, LAPGAN's data; DIR from
          ../shared/tools/perceptual_weights.py, which prepare needs for the SR calls)
  there   python3 scripts/gpu_generative.py train --minutes 9       carry: .carry/train/train
          (make-shapes, `srgan text2img train` with the shipped recipe at ngf/ndf 64 for about half
          the time, its last part in --resume calls with the shipped mode-seeking terms and
          moving average of G, its
          `srgan text2img eval` on a fresh held-out set, then `srgan lapgan train`
          level by level at --n-feats 128 for the rest; every run stops cleanly at its
          --time-limit)
  here    python scripts/gpu_generative.py collect FILES_AT [--dest runs/gpu_generative]
          (joins the text-to-image weights, which come back in parts under 16 MiB, checks every
          file's SHA-256 and unpacks the logs, sample grids and the eval result)

Then, here: `srgan text2img eval` against the CPU-trained model and `srgan lapgan eval` (Parzen)
against the shipped pyramid, as docs/text2img.md and docs/lapgan.md describe. The shared helpers
(running the CLI, the GPU monitor, the manifest and its limits) are gpu_run.py's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_run  # noqa: E402  (the sibling script: srgan, gpu_monitor, parts, manifest)

sys.path.insert(0, str(gpu_run.REPO))
from srgan_cli.lapgan.models import LapganConfig  # noqa: E402

WORK = Path(".carry/generative")  # scratch run folders on the device (relative to gpu_run.ROOT)
PHOTOS = gpu_run.TRAIN / "train"  # the 53 training photos `gpu_run.py prepare` packed
# The shipped text-to-image recipe (weights/README.md, text2img_shapes) at the paper's widths.
TEXT2IMG = (
    "--ngf 64 --ndf 64 --batch-size 64 --d-condition projection --loss hinge "
    "--encoder-negatives hard --hard-wrong 0.5 --checkpoint-every 5000 --sample-every 2500"
)
# ... whose last steps continue the run (--resume) as the shipped model's did: (options, steps) of
# each call, which gets that share of the finishing time
TEXT2IMG_FINISH = (
    ("--mode-seeking 0.5 --mode-seeking-distance outline", 1000),
    ("--mode-seeking 0.75 --mode-seeking-distance outline", 1000),
    ("--mode-seeking 2 --mode-seeking-distance outline --ema 0.995", 3000),
)
FINISH_SHARE = sum(steps for _, steps in TEXT2IMG_FINISH) / 11750
# the shipped pyramid's layout at twice its conv width; --no-classes: photos, never class folders
LAPGAN = (
    "--size 64 --levels 4 --n-feats 128 --batch-size 64 --no-classes "
    "--checkpoint-every 5000 --sample-every 2500"
)
WEIGHTS_T2I, WEIGHTS_LAPGAN, EXTRAS = "text2img.safetensors", "lapgan.safetensors", "extras.tar.gz"


def say(*parts: object) -> None:
    print("[gpu_generative]", *parts, flush=True)


def train(args: argparse.Namespace) -> None:
    start = time.monotonic()
    out = gpu_run.out_dir(args.out)
    console = out / "console.log"
    work = gpu_run.ROOT / WORK
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    monitor = gpu_run.gpu_monitor(out / "gpu.csv")
    budget = args.minutes * 60 - args.reserve - (time.monotonic() - start)
    try:
        shapes, fresh = work / "shapes", work / "shapes_fresh"
        gpu_run.srgan(
            "text2img", "make-shapes", str(shapes), "--n", str(args.shapes), "--seed", "0", log=console
        )
        gpu_run.srgan(
            "text2img", "make-shapes", str(fresh), "--n", str(args.fresh), "--seed", "7", log=console
        )
        t2i_time = args.text2img_share * (budget - (time.monotonic() - start))
        t2i = work / "text2img"
        _time_boxed(
            console,
            (1 - args.finish_share) * t2i_time,
            "text2img", "train", "--data", str(shapes), "--out", str(t2i), "--steps", "1000000",
            "--device", args.device, *shlex.split(args.text2img_args),
        )  # fmt: skip
        given = [(finish, 1) for finish in args.text2img_finish or []]
        finishes = (given or list(TEXT2IMG_FINISH)) if args.finish_share > 0 else []
        weight = sum(steps for _, steps in finishes)
        for finish, steps in finishes:
            _time_boxed(
                console,
                args.finish_share * t2i_time * steps / weight,
                "text2img", "train", "--out", str(t2i), "--resume", "--steps", "1000000",
                "--device", args.device, *shlex.split(finish),
            )  # fmt: skip
        report = gpu_run.srgan(
            "text2img", "eval", "-m", str(t2i / WEIGHTS_T2I), "--data", str(fresh),
            "--captions", str(args.captions), "--device", args.device, "--json",
            log=console, capture=True, timeout=300,
        )  # fmt: skip
        (t2i / "eval.json").write_text(report[report.index("{") :])
        lapgan = work / "lapgan"
        level, levels = 0, 4  # the pyramid's depth is read from run.json after the first call
        while level < levels:
            left = budget - (time.monotonic() - start)
            # level k's share of what is left: (k + 1) / (k + 1 + ... + levels), finer levels cost more
            share = (level + 1) / sum(range(level + 1, levels + 1))
            _time_boxed(
                console,
                share * left,
                "lapgan", "train", "--data", str(gpu_run.ROOT / args.photos), "--out", str(lapgan),
                "--level", str(level), "--steps", "1000000", "--device", args.device,
                *shlex.split(args.lapgan_args),
            )  # fmt: skip
            levels = LapganConfig(**json.loads((lapgan / "run.json").read_text())["model"]).levels
            level += 1
    finally:
        if monitor is not None:
            monitor.terminate()
    _return(out, t2i, lapgan)
    say(f"done in {time.monotonic() - start:.0f} s")


def _time_boxed(console: Path, seconds: float, *command: str) -> None:
    """One training command with --time-limit `seconds` (it stops itself and writes its weights);
    killed if it overruns by more than a minute."""
    limit = max(seconds, 1.0)
    gpu_run.srgan(*command, "--time-limit", f"{limit:.0f}", log=console, timeout=limit + 60)


def _return(out: Path, t2i: Path, lapgan: Path) -> None:
    """Into $OUT: the weights (text-to-image in parts under 16 MiB), one archive of the logs, sample
    grids and eval result, and the manifest with every file's SHA-256."""
    files = ["console.log"] + (["gpu.csv"] if (out / "gpu.csv").is_file() else [])
    manifest: dict = {"stage": "generative", "parts": {}, "sha256": {}}
    source = t2i / WEIGHTS_T2I
    parts = gpu_run.split_parts(source, out)
    manifest["parts"][WEIGHTS_T2I] = parts
    manifest["sha256"][WEIGHTS_T2I] = gpu_run.sha256(source)
    files += parts
    if (lapgan / WEIGHTS_LAPGAN).is_file():
        shutil.copyfile(lapgan / WEIGHTS_LAPGAN, out / WEIGHTS_LAPGAN)
        manifest["sha256"][WEIGHTS_LAPGAN] = gpu_run.sha256(out / WEIGHTS_LAPGAN)
        files.append(WEIGHTS_LAPGAN)
    with tarfile.open(out / EXTRAS, "w:gz") as tar:
        for run in (t2i, lapgan):
            for path in [run / "log.jsonl", run / "run.json", run / "eval.json", *_last_grids(run)]:
                if path.is_file():
                    tar.add(path, arcname=f"{run.name}/{path.relative_to(run)}")
    files.append(EXTRAS)
    gpu_run.write_manifest(out, manifest, files)


def _last_grids(run: Path) -> list[Path]:
    """The last sample grid of the run (of each level, for LAPGAN)."""
    grids = sorted((run / "samples").glob("*.png"))
    last: dict[str, Path] = {}
    for grid in grids:  # names are <prefix>step<N>.png with N zero-padded: sorted order is step order
        last[grid.name.rsplit("step", 1)[0]] = grid
    return list(last.values())


def collect(args: argparse.Namespace) -> None:
    back, dest = Path(args.files_at), Path(args.dest)
    manifest_path = back / "manifest.json"
    if not manifest_path.is_file():
        sys.exit(f"{manifest_path} not found: is {back} the files_at folder of a generative call?")
    manifest = json.loads(manifest_path.read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for name, digest in manifest["sha256"].items():
        if name in manifest["parts"]:
            gpu_run.join_parts(back, manifest["parts"][name], digest, dest / name)
        elif gpu_run.sha256(back / name) != digest:
            sys.exit(f"{name}: SHA-256 differs from the device's; the transfer is incomplete")
        else:
            shutil.copyfile(back / name, dest / name)
    with tarfile.open(back / EXTRAS) as tar:
        tar.extractall(dest, filter="data")
    for name in ("console.log", "gpu.csv"):
        if (back / name).is_file():
            shutil.copyfile(back / name, dest / name)
    say(f"{', '.join(manifest['sha256'])} checked -> {dest}/")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="on the device: train both models within --minutes")
    t.add_argument("--minutes", type=float, default=9.0)
    t.add_argument("--reserve", type=float, default=60.0, help="seconds kept for start-up and $OUT")
    t.add_argument("--out", help="where the returned files go (default: $OUT)")
    t.add_argument("--device", default="cuda")
    t.add_argument("--photos", default=str(PHOTOS), help="LAPGAN's photos (relative to the checkout)")
    t.add_argument("--shapes", type=int, default=20000, help="training images of the shapes set")
    t.add_argument("--fresh", type=int, default=1000, help="held-out images for the eval")
    t.add_argument("--captions", type=int, default=500, help="held-out captions the eval scores")
    t.add_argument("--text2img-share", type=float, default=0.5, help="of the time, for text-to-image")
    t.add_argument("--text2img-args", default=TEXT2IMG, help="`srgan text2img train` options")
    t.add_argument(
        "--finish-share", type=float, default=FINISH_SHARE, help="of text-to-image's time, to finish with"
    )
    t.add_argument(
        "--text2img-finish",
        action="append",
        help="options of one finishing --resume call (repeat for several, sharing the time equally; "
        "default: the shipped recipe's)",
    )
    t.add_argument("--lapgan-args", default=LAPGAN, help="`srgan lapgan train` options")
    c = sub.add_parser("collect", help="here: join and check what a train call brought back")
    c.add_argument("files_at")
    c.add_argument("--dest", default="runs/gpu_generative")
    args = parser.parse_args(argv)
    {"train": train, "collect": collect}[args.command](args)


if __name__ == "__main__":
    main()
