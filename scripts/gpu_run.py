#!/usr/bin/env python3
"""Train srresnet_x4 / srgan_x4 on a lent GPU machine within its limits, in resumable calls.

The lending tool runs one command of at most 10 minutes per call, on a bare machine that is
given back 30 s after each call, within 15 minutes of device time per task (the machine's start
included; it was 30 when the three-call plan below was written: with 15, use `chunk continue`).
What travels is the working tree (tracked and untracked-not-ignored files) plus the ignored paths
named in `carry`, 64 MiB in all; what comes back is at most 8 files of 16 MiB. From scratch:

  here    python scripts/gpu_run.py prepare      fill .carry/ (photos, packed VGG, LPIPS weights)
  here    python scripts/gpu_run.py slim         leave the shipped weights and doc images out of
                                                 what travels (undo: unslim; never commit slimmed)
  here    python scripts/gpu_run.py plan         each call's command, carry list and size vs 64 MiB
  there   python3 scripts/gpu_run.py chunk pretrain --minutes 7.5   (first call: bench, then train)
  here    python scripts/gpu_run.py collect FILES_AT   checkpoint parts -> .carry/runs/..., archive
  there   python3 scripts/gpu_run.py chunk pretrain --minutes 7.5   (resumes from the checkpoint)
  here    python scripts/gpu_run.py collect FILES_AT   the weights -> .carry/init/ for the GAN stage
  there   python3 scripts/gpu_run.py chunk gan --minutes 7          (one call: D cannot come back)
  here    python scripts/gpu_run.py collect FILES_AT   per-validation snapshots -> runs/gpu/
  here    python scripts/gpu_run.py unslim

The pretrain checkpoint (G, EMA, Adam: 25 MB at 16x64) comes back split in parts under 16 MiB
and is joined and checked (SHA-256) by `collect`. The GAN stage's checkpoint also holds the
discriminator and its Adam state (about 0.3 GB), which cannot come back, so that stage runs in
one call and returns the weights of each validation (--snapshots) to choose from.

The first chunk measures the training step (`srgan benchmark train`) and sizes the runs from it:
the pretrain run gets as many steps as fit in --plan-minutes of training (so the cosine schedule
ends where the planned chunks end), the GAN run as many as fit in its own call.

Measuring the training step (issue 24's table: the plain and the fast step, each profiled):

  there   python3 scripts/gpu_run.py chunk speed --minutes 5
          (`srgan benchmark train --fast-step compare --profile` at each size of SPEED, then the
          real `srgan train` loop for a minute; speed.json and the logs come back)

Measuring upscaling from files to files and video (issue 25), with PyAV carried as a wheel:

  here    echo /.whl/ >> .git/info/exclude && python3 -m pip download --no-deps --only-binary=:all: \
            --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 -d .whl av==18.1.0
  there   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
            PYTHONPATH=/tmp/site:. python3 scripts/gpu_run.py chunk upscale --minutes 6
          (`srgan benchmark upscale --pipeline` at 960x540 and 1920x1080, fp16, with and without
          --compile; then the val photos on the GPU in fp32 against the CPU; upscale.json back)

Continuing from trained weights in one call (what a 15-minute loan allows: one ~9-minute command):

  here    python scripts/gpu_run.py prepare --perceptual DIR [--init WEIGHTS]
  here    python scripts/gpu_run.py slim && python scripts/gpu_run.py plan
  there   python3 scripts/gpu_run.py chunk continue --minutes 9
          (a new cosine cycle of pretraining from --init on every packed photo, then the GAN
          stage from its result; both weights, the GAN snapshots and all logs come back)
  here    python scripts/gpu_run.py collect FILES_AT
  there   python3 scripts/gpu_run.py chunk continue --minutes 4 --only train --skip-gan --steps N
          (optional second call, if time is left: the same pretraining without the extra photos)

The real-world GAN (issue 38): the same GAN recipe on LR inputs made by the degradation pipeline
(`--degradation photo`, on the GPU), continuing from the weights of the CPU fine-tune in one call,
then `srgan eval --degrade light/moderate/heavy` of the result next to `srgan_x4` and its start:

  here    python scripts/gpu_run.py prepare --perceptual DIR     (--real-init: srgan_x4_real, the shipped one)
  here    python scripts/gpu_run.py slim && python scripts/gpu_run.py plan
  there   python3 scripts/gpu_run.py chunk real --minutes 9
          (the GAN stage with --degradation photo from .carry/real_start; the weights, the last
          snapshots, real_eval.json and the logs come back; D and its Adam state, about 0.3 GB,
          cannot, so each call starts a fresh D from the latest G, as the CPU run's D is not carried)
          Real-ESRGAN's discriminator and loss weights instead (the arm docs/degradations.md names):
          chunk real --minutes 9 -- --d-arch unet --content-weight 1 --adv-weight 0.1
  here    python scripts/gpu_run.py collect FILES_AT

The restoration front-end (issue 38, `srgan train --stage restore`): only the front-end of a model
such as srgan_x4_denoise trains (L1 against the clean LR; the SR network behind it is frozen and
never runs, so a step is cheap), on LR damaged by --degradation (default repair), in one call; then
`srgan eval` of the result on the damage levels and on noise alone:

  here    python scripts/gpu_run.py prepare --perceptual DIR     (--restore-init: srgan_x4_denoise)
  here    python scripts/gpu_run.py slim && python scripts/gpu_run.py plan
  there   python3 scripts/gpu_run.py chunk restore --minutes 9 [--degradation FILE.toml]
          (a new cosine cycle at 1e-4 when the start has a front-end, at 2e-4 when it
          gets a new one; the weights, the last snapshots, restore_eval.json and the logs come back;
          the lead of docs/degradations.md: `-- --restore-content-weight 0.05
          --restore-adv-weight 0.005 --restore-block-excess-weight 2`, a VGG loss, a
          discriminator and the one-sided block term on the restored LR)
  here    python scripts/gpu_run.py collect FILES_AT

`prepare` packs the photos small enough to travel: train/ and train_extra/ of the shared photos,
each photo's longest side capped (--max-side) and re-encoded (--format, --quality), into
.carry/train/train and .carry/train/extra; every chunk trains on both, the extra photos weighted
to give --extra-share (0.5) of the crops (by pixels alone they would give 71%). `plan` adds up
what each call carries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # this checkout: its code runs, its git is asked
ROOT = REPO  # where .carry/ lives and the runs run (tests point it elsewhere)
CARRY = Path(".carry")  # git-ignored; every path below is relative to the repository root
TRAIN, VAL = CARRY / "train", CARRY / "val"
PACKING = TRAIN / "packing.json"  # how prepare packed the photos (a different packing repacks)
VGG_DIR, LPIPS_DIR, INIT_DIR = CARRY / "vgg", CARRY / "lpips", CARRY / "init"
VGG_FILE = VGG_DIR / "vgg19_caffe_features_palette.safetensors"  # "caffe" in the name: its convention
INIT_FILE = INIT_DIR / "srresnet_x4.safetensors"
START_DIR = CARRY / "start"  # the weights `chunk continue` starts from (prepare --init)
START_FILE = START_DIR / "srresnet_x4.safetensors"
REAL_START_DIR = CARRY / "real_start"  # the weights `chunk real` continues (prepare --real-init)
REAL_START_FILE = REAL_START_DIR / "srgan_x4.safetensors"
RESTORE_START_DIR = CARRY / "restore_start"  # the weights `chunk restore` continues (prepare --restore-init)
RESTORE_START_FILE = RESTORE_START_DIR / "srgan_x4_denoise.safetensors"
# models `chunk real` also scores, if put there by hand (Real-ESRGAN's general-x4v3 and WDN: 9.7 MB,
# more than the real call's carry has room for; their numbers on the val photos are the same on the
# CPU, docs/degradations.md)
PEERS_DIR = CARRY / "peers"
RUNS = CARRY / "runs"
PRETRAIN_RUN, GAN_RUN = RUNS / "srresnet_x4", RUNS / "srgan_x4"
CONTINUE_RUN, CONTINUE_GAN_RUN = RUNS / "continue_srresnet_x4", RUNS / "continue_srgan_x4"
REAL_RUN = RUNS / "srgan_x4_real"
RESTORE_RUN = RUNS / "restore_x4"
# the shared photo folders prepare packs, and the subfolder of .carry/train each goes to
PHOTO_SETS = {"train": "train", "extra": "train_extra"}
LIMIT = 64 * 2**20  # what may travel in one call
PART = 15 * 2**20  # checkpoint parts, under the 16 MiB a returned file may have
MAX_FILES = 8  # files that may come back from one call
SLIM_BEGIN, SLIM_END = "# gpu_run.py slim: begin", "# gpu_run.py slim: end"

# The recipes (docs: weights/README.md, "Owed on a GPU"). Steps are filled in from the benchmark.
PRETRAIN = dict(
    batch=64, crop=128, args=["--n-blocks", "16", "--n-feats", "64", "--global-skip", "--loss", "l1",
    "--schedule", "cosine", "--lr", "2e-4", "--ema", "0.999", "--checkpoint-every", "5000"],
)  # fmt: skip
GAN = dict(
    batch=16, crop=96, args=["--content-layer", "vgg19_multi", "--content-weight", "0.01", "--loss", "l1",
    "--pixel-weight", "1", "--adv-weight", "1e-3", "--grid-weight", "10", "--schedule", "step",
    "--snapshots", "--samples", "0"],
)  # fmt: skip
# continuing: a new cosine cycle from a lower rate (the weights are trained already), then the GAN
CONTINUE = dict(
    batch=PRETRAIN["batch"], crop=PRETRAIN["crop"], args=["--loss", "l1", "--schedule", "cosine",
    "--lr", "1e-4", "--ema", "0.999"],
)  # fmt: skip
# the real-world GAN: the GAN recipe with its LR made by a degradation preset (issue 38)
REAL = dict(batch=GAN["batch"], crop=GAN["crop"], degradation="photo", args=GAN["args"])
DAMAGE = ["light", "moderate", "heavy"]  # `srgan eval --degrade` levels (docs/degradations.md)
# the restoration front-end: the recipe srgan_x4_denoise (batch 16 of 192 px crops, L1 against the
# clean LR), continued; its eval adds noise alone, the damage it was first trained for
RESTORE = dict(batch=16, crop=192, degradation="repair", args=["--recipe", "srgan_x4_denoise"])
RESTORE_DAMAGE = [*DAMAGE, "noise=5", "noise=10"]
# the training-step measurements of `chunk speed` (docs/benchmarks.md, issue 24's goals)
SPEED = {
    "pretrain_b64": ["--stage", "pretrain", "--batch-size", "64", "--crop", "96"],
    "pretrain_b256": ["--stage", "pretrain", "--batch-size", "256", "--crop", "96"],
    "gan_b16": ["--stage", "gan", "--batch-size", "16", "--crop", "96", "--content-layer", "vgg19_multi"],
    "gan_b64": ["--stage", "gan", "--batch-size", "64", "--crop", "96", "--content-layer", "vgg19_multi"],
}
# the upscaling measurements of `chunk upscale` (issue 25): name -> `srgan benchmark upscale` options
UPSCALE = {
    "540p_fp16": ["--size", "960x540", "--precision", "fp16", "--files", "24"],
    "540p_fp16_compile": ["--size", "960x540", "--precision", "fp16", "--files", "24", "--compile"],
    "1080p_fp16": ["--size", "1920x1080", "--precision", "fp16", "--files", "8"],
}
# sizes of what collect makes, for `plan` before it exists: the 16x64 pretrain checkpoint
# (G, EMA and Adam state, measured 25,150,201 bytes) and its weights file (6,243,588 bytes)
EXPECTED = {
    PRETRAIN_RUN: 25_200_000,
    INIT_DIR: 6_250_000,
    START_DIR: 6_250_000,
    REAL_START_DIR: 6_250_000,
    RESTORE_START_DIR: 8_630_000,
}
CALLS = {
    "pretrain (first call)": ("chunk pretrain --minutes 7.5", [TRAIN, VAL]),
    "pretrain (each next call)": ("chunk pretrain --minutes 7.5", [TRAIN, VAL, PRETRAIN_RUN]),
    "gan": ("chunk gan --minutes 7", [TRAIN, VAL, VGG_DIR, LPIPS_DIR, INIT_DIR]),
    "speed (the step, plain and fast, profiled)": ("chunk speed --minutes 5", [TRAIN]),
    "upscale (files to files, video; carry .whl too)": ("chunk upscale --minutes 6", [VAL]),
    "continue (one call: pretrain, then gan)": (
        "chunk continue --minutes 9",
        [TRAIN, VAL, VGG_DIR, LPIPS_DIR, START_DIR],
    ),
    "real (the real-world GAN, then its eval)": (
        "chunk real --minutes 9",
        [TRAIN, VAL, VGG_DIR, LPIPS_DIR, REAL_START_DIR],
    ),
    "restore (the denoising front-end, then its eval)": (
        "chunk restore --minutes 9",
        [TRAIN, VAL, LPIPS_DIR, RESTORE_START_DIR],
    ),
    "continue, without the extra photos (A/B)": (
        "chunk continue --minutes 4 --only train --skip-gan --steps N",
        [TRAIN, VAL, START_DIR],
    ),
}


def say(*parts: object) -> None:
    print("[gpu_run]", *parts, flush=True)


def git(*args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        sys.exit(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def size_of(path: Path) -> int:
    path = ROOT / path
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def tree_bytes() -> int:
    """Bytes of the files that travel without being carried: tracked, and untracked but not ignored."""
    names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sum((REPO / n).stat().st_size for n in names if n and (REPO / n).is_file())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------- here


def prepare(args: argparse.Namespace) -> None:
    """Fill .carry/: the packed photos, val, the packed VGG19, LPIPS, and the weights to continue from."""
    sys.path.insert(0, str(REPO))
    from srgan_cli import weights
    from srgan_cli.sr.palette import pack_file

    photos, perceptual = Path(args.photos), Path(args.perceptual)
    sets = ["train"] if args.no_extra else ["train", "extra"]
    pack_photos(photos, sets, args.max_side, args.format, args.quality)
    if not (ROOT / VAL).is_dir():  # validation stays lossless: its numbers pick the snapshots
        if not (photos / "val").is_dir():
            sys.exit(
                f"{photos / 'val'} not found (--photos is the folder holding train, train_extra and val)"
            )
        shutil.copytree(photos / "val", ROOT / VAL)
        for p in [ROOT / VAL, *(ROOT / VAL).rglob("*")]:  # the shared copies are read-only
            p.chmod(0o644 if p.is_file() else 0o755)
    vgg = perceptual / "vgg19_caffe_features.safetensors"
    if not (ROOT / VGG_FILE).is_file():
        if not vgg.is_file():
            sys.exit(f"{vgg} not found: run ../shared/tools/perceptual_weights.py {perceptual} first")
        packed, total = pack_file(vgg, ROOT / VGG_FILE)
        say(f"VGG19 packed: {packed} of {total} tensors as palettes, {mb(size_of(VGG_FILE))}, exact")
    write_lpips(perceptual)
    start = weights.resolve(args.init)
    info = weights.read_info(start)
    if info.arch != "srresnet" or info.scale != 4:
        sys.exit(f"--init {args.init} is {info.arch} x{info.scale}; chunk continue needs srresnet x4 weights")
    (ROOT / START_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(start, ROOT / START_FILE)
    say(f"chunk continue starts from {start} ({info.config['n_blocks']}x{info.config['n_feats']})")
    real = weights.resolve(args.real_init)
    if weights.read_info(real).arch != "srresnet":
        sys.exit(f"--real-init {args.real_init} is not srresnet weights")
    (ROOT / REAL_START_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(real, ROOT / REAL_START_FILE)
    say(f"chunk real continues {real}")
    restore = weights.resolve(args.restore_init)
    info = weights.read_info(restore)
    if info.arch != "srresnet":
        sys.exit(f"--restore-init {args.restore_init} is not srresnet weights")
    (ROOT / RESTORE_START_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(restore, ROOT / RESTORE_START_FILE)
    front = info.config.get("restore_blocks") or 0
    what = f"its {front}-block front-end" if front else "a new front-end"
    say(f"chunk restore continues {restore} ({what})")
    plan(args)


def pack_photos(photos: Path, sets: list[str], max_side: int, fmt: str, quality: int) -> None:
    """The shared photo folders -> .carry/train/<set>/: each photo's longest side at most `max_side`
    (Lanczos, as the shared copies were made), re-encoded as `fmt` at `quality` (JPEG in 4:4:4);
    a CREDITS.tsv travels with its photos. Kept when already packed the same way."""
    sys.path.insert(0, str(REPO))
    from PIL import Image

    from srgan_cli.photos import list_images, load_rgb_uint8

    settings = {"sets": sets, "max_side": max_side, "format": fmt, "quality": quality}
    if (ROOT / PACKING).is_file() and json.loads((ROOT / PACKING).read_text()) == settings:
        say(f"photos already packed ({mb(size_of(TRAIN))}): {settings}")
        return
    if (ROOT / TRAIN).exists():
        shutil.rmtree(ROOT / TRAIN)  # packed differently, or the flat copy of older versions
    for name in sets:
        src, dst = photos / PHOTO_SETS[name], ROOT / TRAIN / name
        if not src.is_dir():
            sys.exit(f"{src} not found (--photos is the folder holding train, train_extra and val)")
        dst.mkdir(parents=True)
        if (src / "CREDITS.tsv").is_file():
            shutil.copyfile(src / "CREDITS.tsv", dst / "CREDITS.tsv")
        for path in list_images(src):
            img = Image.fromarray(load_rgb_uint8(path))
            if max(img.size) > max_side:
                factor = max_side / max(img.size)
                size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
                img = img.resize(size, Image.Resampling.LANCZOS)
            target = dst / path.relative_to(src).with_suffix(".webp" if fmt == "webp" else ".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "webp":
                img.save(target, "WEBP", quality=quality, method=4)
            else:
                img.save(target, "JPEG", quality=quality, subsampling=0)
        say(f"packed {src} -> {TRAIN / name}: {len(list_images(dst))} photos, {mb(size_of(TRAIN / name))}")
    (ROOT / PACKING).write_text(json.dumps(settings))  # last: an interrupted packing is redone


def write_lpips(src: Path) -> None:
    """LPIPS weights into .carry/lpips, AlexNet in float16 (5 MB saved; validation LPIPS only, to
    pick a step: numbers to report come from `srgan eval` with the float32 file)."""
    from safetensors.torch import load_file, save_file

    (ROOT / LPIPS_DIR).mkdir(parents=True, exist_ok=True)
    for name, half in (("alexnet_features.safetensors", True), ("lpips_alex_lin.safetensors", False)):
        if not (ROOT / LPIPS_DIR / name).is_file():
            state = load_file(str(src / name))
            save_file({k: v.half() if half else v for k, v in state.items()}, str(ROOT / LPIPS_DIR / name))


def slim_paths() -> list[str]:
    """Tracked files the GPU calls do not need: shipped weights, doc images, example images."""
    names = [n for n in git("ls-files", "-z").split("\0") if n]
    return sorted(
        n
        for n in names
        if (n.startswith("weights/") and n.endswith(".safetensors"))
        or (n.startswith("docs/") and n.lower().endswith((".png", ".jpg", ".jpeg")))
        or (n.startswith("examples/") and not n.endswith(".md"))
    )


def exclude_file() -> Path:
    return REPO / git("rev-parse", "--git-path", "info/exclude").strip()


def slimmed() -> list[str]:
    path = exclude_file()
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    if SLIM_BEGIN not in lines:
        return []
    block = lines[lines.index(SLIM_BEGIN) + 1 : lines.index(SLIM_END)]
    return [line.lstrip("/") for line in block]


def slim(args: argparse.Namespace) -> None:
    if slimmed():
        sys.exit("already slimmed (python scripts/gpu_run.py unslim undoes it)")
    if git("diff", "--cached", "--name-only").strip():
        sys.exit("the index has staged changes: commit or unstage them first")
    paths = slim_paths()
    git("rm", "-q", "--cached", "--", *paths)  # untracked now; the files stay on disk
    path = exclude_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    block = "\n".join([SLIM_BEGIN, *("/" + p for p in paths), SLIM_END])
    path.write_text(old + ("" if not old or old.endswith("\n") else "\n") + block + "\n")
    say(f"{len(paths)} files ({mb(sum((REPO / p).stat().st_size for p in paths))}) no longer travel;")
    say("do not commit until `python scripts/gpu_run.py unslim`")


def unslim(args: argparse.Namespace) -> None:
    paths = slimmed()
    if not paths:
        say("not slimmed")
        return
    git("reset", "-q", "--", *paths)  # back in the index as in HEAD
    path = exclude_file()
    lines = path.read_text().splitlines()
    lines = lines[: lines.index(SLIM_BEGIN)] + lines[lines.index(SLIM_END) + 1 :]
    path.write_text("".join(line + "\n" for line in lines))
    say(f"{len(paths)} files tracked again")


def plan(args: argparse.Namespace) -> None:
    tree = tree_bytes()
    state = "slimmed" if slimmed() else "NOT slimmed: run `python scripts/gpu_run.py slim`"
    say(f"working tree that travels: {mb(tree)} ({state})")
    if (ROOT / PACKING).is_file():
        say(f"photos: {mb(size_of(TRAIN))} packed as {(ROOT / PACKING).read_text()}")
    ok = True
    for name, (command, carry) in CALLS.items():
        missing = [p for p in carry if not (ROOT / p).exists()]
        total = tree + sum(EXPECTED.get(p, 0) if p in missing else size_of(p) for p in carry)
        fits = total <= LIMIT
        ok &= fits
        say(f"{name}: {mb(total)} of {mb(LIMIT)} {'fits' if fits else 'DOES NOT FIT'}")
        say(f"  command: PYTHONPATH=. python3 scripts/gpu_run.py {command}")
        say(f"  carry:   {json.dumps([str(p) for p in carry])}")
        if missing:
            names = ", ".join(str(p) for p in missing)
            say(f"  not there yet (collect makes them; counted at their expected size): {names}")
    if not ok:
        sys.exit(1)


def collect(args: argparse.Namespace) -> None:
    """Take a chunk's returned files: join and check the checkpoint, keep weights and logs."""
    back = Path(args.files)
    manifest_path = back / "manifest.json"
    if not manifest_path.is_file():
        sys.exit(f"{manifest_path} not found: is {back} the files_at folder of a chunk call?")
    manifest = json.loads(manifest_path.read_text())
    stage, step = manifest["stage"], manifest["step"]
    archive = Path(args.archive) / f"{stage}_step{step:07d}"
    archive.mkdir(parents=True, exist_ok=True)
    for name in manifest["files"]:
        shutil.copyfile(back / name, archive / name)
    if stage == "pretrain":
        run = ROOT / PRETRAIN_RUN
        run.mkdir(parents=True, exist_ok=True)
        ckpt = manifest["checkpoint"]
        join_parts(back, ckpt["parts"], ckpt["sha256"], run / "checkpoint.pt")
        shutil.copyfile(back / "log.jsonl", run / "log.jsonl")  # the run's log goes on growing
        (ROOT / INIT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(back / manifest["weights"], ROOT / INIT_FILE)
        say(f"pretrain step {step}: checkpoint -> {PRETRAIN_RUN}/, weights -> {INIT_FILE} and {archive}/")
    elif stage in ("continue", "real", "restore"):
        with tarfile.open(back / "logs.tar.gz") as tar:
            tar.extractall(archive, filter="data")
        if stage in ("real", "restore"):
            say(f"{stage}: {'gan ' if stage == 'real' else ''}step {step}: files -> {archive}/")
        else:
            gan = f", gan step {manifest['gan_step']}" if "gan_step" in manifest else ""
            say(f"continue (data: {manifest['data']}): pretrain step {step}{gan}: files -> {archive}/")
    else:
        say(f"gan step {step}: {len(manifest['files'])} files -> {archive}/")
    logs = {
        "continue": ["pretrain_log.jsonl", "gan_log.jsonl"],
        "real": ["gan_log.jsonl"],
        "restore": ["restore_log.jsonl"],
    }.get(stage, ["log.jsonl"])
    for log in (archive / name for name in logs if (archive / name).is_file()):
        say(f" {log.name}:")
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "val":
                extra = "".join(f" {k} {event[k]:.4f}" for k in ("lpips", "grid") if event.get(k) is not None)
                say(f"  val step {event['step']}: PSNR {event['psnr']:.2f} SSIM {event['ssim']:.4f}{extra}")


# ---------------------------------------------------------------------------------------- there


def srgan(*args: str, log: Path, capture: bool = False, timeout: float | None = None) -> str:
    """Run the CLI of this checkout (PYTHONPATH) in ROOT; its output goes to `log` as it comes (so a
    call killed at its limit still returns it); with `capture`, stdout is returned instead. After
    `timeout` seconds it is killed (subprocess.TimeoutExpired)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "srgan_cli", *args]
    say("$ srgan", " ".join(args))
    with open(log, "a") as f:
        f.write(f"$ srgan {' '.join(args)}\n")
        f.flush()
        stdout = subprocess.PIPE if capture else f
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=stdout, stderr=f, text=True, check=False, timeout=timeout
        )
    tail = (log.read_text()[-2000:] if not capture or done.returncode else done.stdout[-1000:]).rstrip()
    print(tail, flush=True)
    if done.returncode:
        raise RuntimeError(f"srgan {args[0]} failed (exit {done.returncode})")
    return done.stdout if capture else ""


def gpu_monitor(path: Path) -> subprocess.Popen[bytes] | None:
    """nvidia-smi's utilisation and memory every 2 s, for docs/benchmarks.md."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = "timestamp,utilization.gpu,utilization.memory,memory.used,power.draw"
    cmd = ["nvidia-smi", f"--query-gpu={query}", "--format=csv", "-l", "2"]
    return subprocess.Popen(cmd, stdout=open(path, "w"), stderr=subprocess.DEVNULL)


def planned_steps(rate: float, seconds: float, batch: int, round_to: int) -> int:
    """Steps that fit in `seconds` at `rate` crops/s, with 15% left for data, validation and
    checkpoints, rounded down to `round_to` (at least one `round_to`)."""
    steps = int(0.85 * rate * seconds / batch)
    return max(round_to, steps // round_to * round_to)


def out_dir(given: str | None) -> Path:
    """The folder whose files come back: --out, else the lending tool's $OUT; created."""
    where = given or os.environ.get("OUT")
    if not where:
        sys.exit("no $OUT (or --out) to write the returned files into")
    out = Path(where)
    out.mkdir(parents=True, exist_ok=True)
    return out


def chunk(args: argparse.Namespace) -> None:
    start = time.monotonic()
    deadline = start + args.minutes * 60 - args.reserve  # the reserve: writing $OUT, process start
    out = out_dir(args.out)
    console = out / "console.log"
    monitor = gpu_monitor(out / "gpu.csv")
    try:
        if args.stage == "speed":
            measure_speed(args, out, console, deadline)
        elif args.stage == "upscale":
            measure_upscale(args, out, console, deadline)
        elif args.stage == "continue":
            continue_runs(args, console, deadline)
        elif args.stage == "real":
            real_run(args, out, console, deadline)
        elif args.stage == "restore":
            restore_run(args, out, console, deadline)
        else:
            run, cmd = stage_command(args, console, deadline)
            train_until(cmd, deadline, args, console)
    finally:
        if monitor is not None:
            monitor.terminate()
    if args.stage in ("speed", "upscale"):
        names = (f"{args.stage}.json", "console.log", "gpu.csv")
        write_manifest(out, {"stage": args.stage}, [n for n in names if (out / n).is_file()])
    elif args.stage == "continue":
        returned_continue(args, out)
    elif args.stage in ("real", "restore"):
        returned_real(out, args.stage)
    else:
        returned(args.stage, run, out)
    say(f"chunk done in {time.monotonic() - start:.0f} s")


def stage_command(args: argparse.Namespace, console: Path, deadline: float) -> tuple[Path, list[str]]:
    """The run folder and `srgan train` command of a pretrain or gan chunk (resuming a pretrain run
    whose checkpoint was carried)."""
    device = ["--device", args.device]
    amp = ["--amp", args.amp]
    if args.stage == "pretrain":
        run = PRETRAIN_RUN
        if (ROOT / run / "checkpoint.pt").is_file():
            cmd = ["train", "--out", str(run), "--resume"]
        else:
            rate = bench("pretrain", PRETRAIN, args, console)
            steps = args.steps or planned_steps(rate, args.plan_minutes * 60, PRETRAIN["batch"], 1000)
            say(f"pretrain: {rate:.0f} crops/s -> {steps} steps for {args.plan_minutes} min of training")
            cmd = ["train", *data_options(None, args.extra_share), "--val", str(VAL), "--out", str(run)]
            cmd += ["--seed", "0"]
            cmd += ["--batch-size", str(PRETRAIN["batch"]), "--crop", str(PRETRAIN["crop"])]
            cmd += [*PRETRAIN["args"], "--steps", str(steps), "--val-every", str(max(steps // 8, 1))]
            cmd += [*device, *amp]
    else:
        run = GAN_RUN
        if not (ROOT / INIT_FILE).is_file():
            sys.exit(f"{INIT_FILE} not found: collect a pretrain chunk first (or copy weights there)")
        rate = bench("gan", GAN, args, console)
        left = deadline - time.monotonic() - 60  # data loading, VGG, four validations
        steps = args.steps or planned_steps(rate, left, GAN["batch"], 100)
        say(f"gan: {rate:.1f} crops/s -> {steps} steps in this call")
        cmd = gan_command(INIT_FILE, run, steps, data_options(None, args.extra_share), [*device, *amp])
    return run, cmd


def gan_command(init: Path, run: Path, steps: int, data: list[str], machine: list[str]) -> list[str]:
    """`srgan train` of the GAN recipe from `init`, validating four times and keeping each
    validation's weights (--snapshots), one checkpoint at the end."""
    lpips = ["--lpips-weights", str(LPIPS_DIR)] if (ROOT / LPIPS_DIR).is_dir() else []
    cmd = ["train", "--stage", "gan", *data, "--val", str(VAL), "--out", str(run)]
    cmd += ["--init", str(init), "--vgg-weights", str(VGG_FILE), *lpips]
    cmd += ["--batch-size", str(GAN["batch"]), "--crop", str(GAN["crop"]), *GAN["args"]]
    cmd += ["--steps", str(steps), "--val-every", str(max(steps // 4, 1))]
    return cmd + ["--checkpoint-every", str(steps), "--seed", "0", *machine]


def train_until(
    cmd: list[str], deadline: float, args: argparse.Namespace, console: Path, limit: float | None = None
) -> None:
    """Run `srgan train` (with the options after `--`) stopping cleanly 10 s before `deadline`, or
    after `limit` seconds when that comes first."""
    left = deadline - time.monotonic() - 10
    limit = left if limit is None else min(limit, left)
    if limit < 30:
        sys.exit(f"only {limit:.0f} s left for training: give more --minutes (or a lower --pretrain-share)")
    srgan(*cmd, *args.extra, "--time-limit", f"{limit:.0f}", log=console)


def continue_runs(args: argparse.Namespace, console: Path, deadline: float) -> None:
    """One call: a new cosine cycle of pretraining from START_FILE on the packed photos (all, or
    --only one set), then, unless --skip-gan, the GAN stage from its result in the time left."""
    if not (ROOT / START_FILE).is_file():
        sys.exit(f"{START_FILE} not found: `prepare --init WEIGHTS` puts the weights to continue from there")
    data = TRAIN / args.only if args.only else TRAIN
    if not (ROOT / data).is_dir():
        sys.exit(f"{data} not found: run prepare (without --no-extra to pack the extra photos)")
    data_args = data_options(args.only, args.extra_share)
    machine = ["--device", args.device, "--amp", args.amp]
    lpips = ["--lpips-weights", str(LPIPS_DIR)] if (ROOT / LPIPS_DIR).is_dir() else []
    rate = bench("pretrain", CONTINUE, args, console)
    gan_rate = 0.0 if args.skip_gan else bench("gan", GAN, args, console)
    left = deadline - time.monotonic()
    share = 1.0 if args.skip_gan else args.pretrain_share
    steps = args.steps or planned_steps(rate, left * share - 30, CONTINUE["batch"], 100)  # 30 s: loading
    say(f"continue: {rate:.0f} crops/s -> {steps} pretrain steps from {START_FILE} on {data}")
    cmd = ["train", *data_args, "--val", str(VAL), "--out", str(CONTINUE_RUN), "--seed", "0"]
    cmd += [
        "--init",
        str(START_FILE),
        "--batch-size",
        str(CONTINUE["batch"]),
        "--crop",
        str(CONTINUE["crop"]),
    ]
    cmd += [*CONTINUE["args"], "--steps", str(steps), "--val-every", str(max(steps // 4, 1))]
    cmd += ["--checkpoint-every", str(steps), "--samples", "0", *lpips, *machine]
    train_until(cmd, deadline, args, console, limit=left * share)
    if args.skip_gan:
        return
    left = deadline - time.monotonic() - 60  # data loading, VGG, four validations
    gan_steps = args.gan_steps or planned_steps(gan_rate, left, GAN["batch"], 100)
    say(f"continue: gan {gan_rate:.1f} crops/s -> {gan_steps} steps")
    init = CONTINUE_RUN / "srresnet_x4.safetensors"
    train_until(gan_command(init, CONTINUE_GAN_RUN, gan_steps, data_args, machine), deadline, args, console)


def real_run(args: argparse.Namespace, out: Path, console: Path, deadline: float) -> None:
    """One call: the GAN stage with LR made by --degradation (default photo) from REAL_START_FILE,
    on every packed photo, then the result scored on damaged copies of the val photos next to the
    models in .carry/peers if any (real_eval.json), in the --eval-minutes kept for it."""
    if not (ROOT / REAL_START_FILE).is_file():
        sys.exit(
            f"{REAL_START_FILE} not found: `prepare --real-init WEIGHTS` puts the weights to continue there"
        )
    degradation = args.degradation or REAL["degradation"]
    recipe = {**REAL, "degradation": degradation}
    data_args = data_options(args.only, args.extra_share)
    machine = ["--device", args.device, "--amp", args.amp]
    rate = bench("gan", recipe, args, console)
    train_end = deadline - args.eval_minutes * 60
    left = train_end - time.monotonic() - 60  # data loading, VGG, four validations
    steps = args.gan_steps or args.steps or planned_steps(rate, left, REAL["batch"], 100)
    say(f"real: {rate:.1f} crops/s with LR by {degradation} -> {steps} steps from {REAL_START_FILE}")
    cmd = gan_command(REAL_START_FILE, REAL_RUN, steps, data_args, machine) + ["--degradation", degradation]
    train_until(cmd, train_end, args, console)
    models = [str(REAL_START_FILE), str(REAL_RUN / "srgan_x4.safetensors")]
    score(args, models, DAMAGE, out / "real_eval.json", console, deadline)


def restore_run(args: argparse.Namespace, out: Path, console: Path, deadline: float) -> None:
    """One call: the restore stage (the front-end alone) from RESTORE_START_FILE on LR made by
    --degradation (default repair), then the result scored on the damage levels and noise alone
    (restore_eval.json), in the --eval-minutes kept for it."""
    if not (ROOT / RESTORE_START_FILE).is_file():
        sys.exit(f"{RESTORE_START_FILE} not found: `prepare --restore-init WEIGHTS` puts the weights there")
    sys.path.insert(0, str(REPO))
    from srgan_cli import weights

    trained = bool(weights.read_info(ROOT / RESTORE_START_FILE).config.get("restore_blocks"))
    degradation = args.degradation or RESTORE["degradation"]
    recipe = {**RESTORE, "degradation": degradation}
    rate = bench("restore", recipe, args, console)
    train_end = deadline - args.eval_minutes * 60
    left = train_end - time.monotonic() - 45  # data loading, four validations
    steps = args.steps or planned_steps(rate, left, RESTORE["batch"], 500)
    start = "its front-end" if trained else "a new front-end"
    say(f"restore: {rate:.1f} crops/s, LR by {degradation} -> {steps} steps from {RESTORE_START_FILE}")
    say(f"restore: training {start}")
    lpips = ["--lpips-weights", str(LPIPS_DIR)] if (ROOT / LPIPS_DIR).is_dir() else []
    cmd = ["train", *RESTORE["args"], *data_options(args.only, args.extra_share), "--val", str(VAL)]
    cmd += ["--out", str(RESTORE_RUN), "--init", str(RESTORE_START_FILE), "--degradation", degradation]
    cmd += ["--lr", "1e-4" if trained else "2e-4"]  # trained already: a new cycle from a lower rate
    cmd += ["--steps", str(steps), "--val-every", str(max(steps // 4, 1)), "--checkpoint-every", str(steps)]
    cmd += ["--snapshots", "--samples", "0", "--seed", "0", *lpips]
    if (ROOT / VGG_FILE).is_file():  # for `-- --restore-content-weight W` (unread without it)
        cmd += ["--vgg-weights", str(VGG_FILE)]
    cmd += ["--device", args.device, "--amp", args.amp]
    train_until(cmd, train_end, args, console)
    models = [str(RESTORE_START_FILE), str(RESTORE_RUN / "restore_x4.safetensors")]
    score(args, models, RESTORE_DAMAGE, out / "restore_eval.json", console, deadline)


def score(
    args: argparse.Namespace, models: list[str], damage: list[str], dest: Path, console: Path, deadline: float
) -> None:
    """`srgan eval --json` of `models` (and srgan_x4 and the models in .carry/peers, where they are
    there: `slim` leaves the shipped weights behind) on the val photos, clean and at each level of
    `damage`, into `dest`; if it fails or runs out of time, the weights come back without it."""
    sys.path.insert(0, str(REPO))
    from srgan_cli import weights

    try:
        models = [str(weights.resolve("srgan_x4")), *models]
    except weights.WeightsNotFound:
        say("srgan_x4 is not here (slimmed): the eval leaves it out")
    peers = sorted((ROOT / PEERS_DIR).glob("*.safetensors")) if (ROOT / PEERS_DIR).is_dir() else []
    models += [str(p.relative_to(ROOT)) for p in peers]
    cmd = ["eval", "--data", str(VAL), "--device", args.device, "--json"]
    cmd += [a for m in models for a in ("-m", m)] + [a for d in damage for a in ("--degrade", d)]
    cmd += ["--lpips-weights", str(LPIPS_DIR)] if (ROOT / LPIPS_DIR).is_dir() else []
    try:
        text = srgan(*cmd, log=console, capture=True, timeout=max(deadline - time.monotonic(), 10))
        dest.write_text(text[text.index("{") :])
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        say(f"{dest.stem}: the eval did not finish ({exc}); the weights come back without it")


def returned_real(out: Path, stage: str = "real") -> None:
    """What `chunk real` / `chunk restore` bring back: the weights, the eval, the logs, and
    snapshots in the room left."""
    run = ROOT / (REAL_RUN if stage == "real" else RESTORE_RUN)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(run / "log.jsonl", arcname="gan_log.jsonl" if stage == "real" else "restore_log.jsonl")
        for name in ("console.log", "gpu.csv"):
            if (out / name).is_file():
                tar.add(out / name, arcname=name)
                (out / name).unlink()
    files = ["logs.tar.gz"] + ([f"{stage}_eval.json"] if (out / f"{stage}_eval.json").is_file() else [])
    step = int(json.loads((run / "log.jsonl").read_text().splitlines()[-1]).get("step", 0))
    manifest: dict = {"stage": stage, "step": step}
    name = "srgan_x4" if stage == "real" else "restore_x4"
    manifest["weights"] = return_gan_weights(run, out, files, name)
    write_manifest(out, manifest, files)


def measure_speed(args: argparse.Namespace, out: Path, console: Path, deadline: float) -> None:
    """The plain and the fast training step at each size of SPEED (--cases), profiled, then the
    real `srgan train` loop of the paper-size pretrain for --loop-seconds: all into speed.json,
    rewritten after each measurement so that a call killed at its limit returns what it has."""
    results: dict = {"cases": {}, "loop": None}
    path = out / "speed.json"

    def command(name: str) -> list[str]:
        cmd = ["benchmark", "train", *SPEED[name], "--n-blocks", "16", "--n-feats", "64"]
        cmd += ["--steps", str(args.bench_steps), "--warmup", str(min(5, args.bench_steps))]
        return cmd + [
            "--device",
            args.device,
            "--amp",
            args.amp,
            "--fast-step",
            "compare",
            "--profile",
            "--json",
        ]

    run_cases(args, SPEED, command, results, path, console, deadline - args.loop_seconds - 30)
    seconds = min(args.loop_seconds, deadline - time.monotonic() - 30)
    if seconds >= 10:
        results["loop"] = loop_speed(args, console, seconds)
        path.write_text(json.dumps(results, indent=1))


def run_cases(
    args: argparse.Namespace,
    table: dict[str, list[str]],
    command: Callable[[str], list[str]],
    results: dict,
    path: Path,
    console: Path,
    until: float,
) -> None:
    """Each case of `table` (--cases picks some) as an `srgan` command with JSON on stdout, into
    results["cases"], each time-boxed to end by `until`; `path` is rewritten after each."""
    for name in [n for n in args.cases or table if n in table]:
        left = until - time.monotonic()
        if left < 45:
            say(f"no time left for {name}")
            results["cases"][name] = "skipped: no time left"
            break
        try:
            text = srgan(*command(name), *args.extra, log=console, capture=True, timeout=min(left, 240))
            start = min(i for i in (text.find("["), text.find("{")) if i >= 0)  # skip anything before
            results["cases"][name] = json.loads(text[start:])
        except (subprocess.TimeoutExpired, RuntimeError, ValueError) as exc:
            results["cases"][name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        path.write_text(json.dumps(results, indent=1))


def measure_upscale(args: argparse.Namespace, out: Path, console: Path, deadline: float) -> None:
    """Issue 25's GPU table: `srgan benchmark upscale --pipeline` (model alone, files to files one at
    a time and overlapped, and an H.264 clip) at each size of UPSCALE (--cases), then the val photos
    upscaled on the device in fp32 against the CPU. upscale.json is rewritten after each step."""
    results: dict = {"cases": {}, "devices": None}
    path = out / "upscale.json"

    def command(name: str) -> list[str]:
        cmd = ["benchmark", "upscale", "--backend", "torch", "--device", args.device, "--runs", "10"]
        return cmd + [*UPSCALE[name], "--pipeline", "--json"]

    run_cases(args, UPSCALE, command, results, path, console, deadline - 90)
    if deadline - time.monotonic() > 60:
        results["devices"] = compare_devices(args, console, deadline - time.monotonic() - 30)
        path.write_text(json.dumps(results, indent=1))


def compare_devices(args: argparse.Namespace, console: Path, seconds: float) -> dict:
    """The val photos upscaled on args.device and on the CPU, both fp32: the largest difference of
    any pixel, in 8-bit levels (goal: at most 1)."""
    import numpy as np

    from srgan_cli.imageio import read_image

    runs = {}
    for device in (args.device, "cpu"):
        folder = RUNS / f"devices_{device.replace(':', '_')}"
        shutil.rmtree(ROOT / folder, ignore_errors=True)
        cmd = ["upscale", str(VAL), "-o", str(folder), "--device", device, "--precision", "fp32"]
        cmd += ["--format", "png", *args.extra]
        try:
            srgan(*cmd, log=console, timeout=seconds / 2)
        except (subprocess.TimeoutExpired, RuntimeError) as exc:
            return {"failed": f"{device}: {type(exc).__name__}: {str(exc)[:300]}"}
        runs[device] = folder
    worst = {}
    for png in sorted((ROOT / runs["cpu"]).glob("*.png")):
        a = read_image(png).pixels
        b = read_image(ROOT / runs[args.device] / png.name).pixels
        worst[png.name] = int(np.abs(np.rint(a * 255) - np.rint(b * 255)).max())
    return {"max_level_difference": worst, "within_one_level": all(v <= 1 for v in worst.values())}


def loop_speed(args: argparse.Namespace, console: Path, seconds: float) -> dict:
    """images_per_s of the real `srgan train` loop (log.jsonl), paper-size pretrain at batch 64 x
    96 px with the default (fast) step: to hold against the benchmark of the same recipe."""
    run = RUNS / "speed_loop"
    shutil.rmtree(ROOT / run, ignore_errors=True)
    cmd = ["train", "--data", str(TRAIN), "--out", str(run), "--batch-size", "64", "--crop", "96"]
    cmd += ["--n-blocks", "16", "--n-feats", "64", "--steps", "100000", "--log-every", "5", "--samples", "0"]
    cmd += [
        "--val-every",
        "100000",
        "--checkpoint-every",
        "100000",
        "--device",
        args.device,
        "--amp",
        args.amp,
    ]
    cmd += ["--time-limit", f"{seconds:.0f}"]
    try:
        srgan(*cmd, *args.extra, log=console, timeout=seconds + 120)
    except (subprocess.TimeoutExpired, RuntimeError) as exc:
        return {"failed": f"{type(exc).__name__}: {str(exc)[:300]}"}
    events = [json.loads(line) for line in (ROOT / run / "log.jsonl").read_text().splitlines()]
    speeds = [e["images_per_s"] for e in events if e["event"] == "log"]
    start = next((e for e in events if e["event"] == "start"), {})
    return {"images_per_s": speeds, "step_mode": start.get("step_mode"), "seconds": seconds}


def d_arch_of(extra: list[str]) -> list[str]:
    """The `--d-arch` among the `srgan train` options after `--`, for the benchmark to time the
    same discriminator (the U-Net's GAN step costs about twice the SRGAN one's)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--d-arch")
    d_arch = parser.parse_known_args(extra)[0].d_arch
    return ["--d-arch", d_arch] if d_arch else []


def bench(stage: str, recipe: dict, args: argparse.Namespace, console: Path) -> float:
    """Crops per second of the real training step of `stage` (random VGG weights: speed only)."""
    if args.rate:
        return args.rate
    cmd = ["benchmark", "train", "--stage", stage, "--batch-size", str(recipe["batch"])]
    cmd += ["--crop", str(recipe["crop"]), "--n-blocks", "16", "--n-feats", "64"]
    cmd += ["--steps", str(args.bench_steps), "--warmup", str(min(5, args.bench_steps))]
    cmd += ["--device", args.device, "--amp", args.amp, "--json"]
    if stage == "gan":
        cmd += ["--content-layer", "vgg19_multi", *d_arch_of(args.extra)]
    if recipe.get("degradation"):  # timed next to the plain step; the degraded row is the last
        cmd += ["--degradation", str(recipe["degradation"])]
    text = srgan(*cmd, log=console, capture=True)
    try:
        result = json.loads(text[text.index("[") :])  # anything printed before the JSON is skipped
        return float(result[-1]["crops_per_s"])
    except (ValueError, KeyError, IndexError) as exc:
        raise RuntimeError(f"cannot read the benchmark's result ({exc}); give --rate CROPS_PER_S") from exc


def returned(stage: str, run: Path, out: Path) -> None:
    """Put what must come back into $OUT (at most 8 files under 16 MiB) with a manifest."""
    run = ROOT / run
    log = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    step = int(log.get("step", 0))
    files = ["log.jsonl", "console.log"] + (["gpu.csv"] if (out / "gpu.csv").is_file() else [])
    shutil.copyfile(run / "log.jsonl", out / "log.jsonl")
    manifest: dict = {"stage": stage, "step": step}
    if stage == "pretrain":
        weights = "srresnet_x4.safetensors"
        shutil.copyfile(run / weights, out / weights)
        ckpt = run / "checkpoint.pt"
        parts = split_parts(ckpt, out)
        manifest["checkpoint"] = {"parts": parts, "sha256": sha256(ckpt), "bytes": ckpt.stat().st_size}
        manifest["weights"] = weights
        files += [weights, *parts]
    else:
        manifest["weights"] = return_gan_weights(run, out, files)
    write_manifest(out, manifest, files)


def return_gan_weights(run: Path, out: Path, files: list[str], name: str = "srgan_x4") -> str:
    """Into $OUT: the run's weights `name` where it stopped (a time limit may stop it between
    validations), and as many of the latest validations' snapshots as the file limit leaves room
    for; their names are added to `files`."""
    weights = f"{name}.safetensors"
    shutil.copyfile(run / weights, out / weights)
    files.append(weights)
    room = MAX_FILES - len(files) - 1  # the manifest is one file too
    for snap in sorted(run.glob(f"{name}_step*.safetensors"))[-room:]:
        shutil.copyfile(snap, out / snap.name)
        files.append(snap.name)
    return weights


def split_parts(source: Path, out: Path) -> list[str]:
    """`source` cut into <name>.part0, .part1, ... of PART bytes in `out` (a returned file must
    stay under 16 MiB); their names, in order."""
    parts = []
    with open(source, "rb") as f:
        for index, block in enumerate(iter(lambda: f.read(PART), b"")):
            name = f"{source.name}.part{index}"
            (out / name).write_bytes(block)
            parts.append(name)
    return parts


def join_parts(back: Path, parts: list[str], digest: str, dest: Path) -> None:
    """The parts in `back` joined into `dest`, which appears only when the SHA-256 matches."""
    tmp = dest.with_name(f".{dest.name}.joining")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(back / part, "rb") as f:
                shutil.copyfileobj(f, out)
    if sha256(tmp) != digest:
        tmp.unlink()
        sys.exit(f"the joined {dest.name} does not match its SHA-256: a part is missing or broken")
    tmp.replace(dest)


def write_manifest(out: Path, manifest: dict, files: list[str]) -> None:
    """manifest.json beside the returned files, after checking them against the tool's limits."""
    manifest["files"] = files
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    too_big = [n for n in files if (out / n).stat().st_size >= 16 * 2**20]
    if len(files) + 1 > MAX_FILES or too_big:
        sys.exit(f"what would come back breaks the limits: {len(files) + 1} files, too big: {too_big}")
    say(f"returned: {', '.join(files)}, manifest.json")


def data_options(only: str | None, extra_share: float) -> list[str]:
    """`srgan train --data` options of every chunk: one packed set, or both with the extra
    photos weighted to give `extra_share` of the crops (by pixels alone, the 141 extra photos
    would give about 70% once train/ is capped to the packing's side; they are the lower-quality
    set, see ../shared/datasets/photos/README.md)."""
    if only:
        return ["--data", str(TRAIN / only)]
    sets = [name for name in PHOTO_SETS if (ROOT / TRAIN / name).is_dir()]
    if sets != list(PHOTO_SETS):
        return ["--data", str(TRAIN)]
    from PIL import Image

    def pixels(name: str) -> int:
        total = 0
        for path in (ROOT / TRAIN / name).rglob("*"):
            if path.suffix.lower() in (".webp", ".jpg"):
                with Image.open(path) as im:
                    total += im.width * im.height
        return total

    if not 0 < extra_share < 1:
        sys.exit("--extra-share is a fraction of the crops, between 0 and 1 (or use --only)")
    weight = extra_share / (1 - extra_share) * pixels("train") / pixels("extra")
    return ["--data", str(TRAIN / "train"), "--data", f"{TRAIN / 'extra'}:{weight:.4g}"]


def returned_continue(args: argparse.Namespace, out: Path) -> None:
    """What `chunk continue` brings back (8 files at most): the continued SRResNet weights, the
    GAN weights and as many of its validation snapshots as fit, and every log in one archive."""
    pre, gan = ROOT / CONTINUE_RUN, ROOT / CONTINUE_GAN_RUN
    logs = [(pre / "log.jsonl", "pretrain_log.jsonl")]
    if not args.skip_gan:
        logs.append((gan / "log.jsonl", "gan_log.jsonl"))
    logs += [(out / name, name) for name in ("console.log", "gpu.csv") if (out / name).is_file()]
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for path, name in logs:
            tar.add(path, arcname=name)
    for name in ("console.log", "gpu.csv"):  # inside the archive now (a killed call returns them raw)
        (out / name).unlink(missing_ok=True)

    def last_step(run: Path) -> int:
        return int(json.loads((run / "log.jsonl").read_text().splitlines()[-1]).get("step", 0))

    shutil.copyfile(pre / "srresnet_x4.safetensors", out / "srresnet_x4.safetensors")
    files = ["logs.tar.gz", "srresnet_x4.safetensors"]
    manifest: dict = {"stage": "continue", "step": last_step(pre), "data": args.only or "all"}
    if not args.skip_gan:
        return_gan_weights(gan, out, files)
        manifest["gan_step"] = last_step(gan)
    write_manifest(out, manifest, files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("prepare", help="fill .carry/ (here)")
    p.add_argument("--photos", default=str(ROOT.parent / "shared" / "datasets" / "photos"))
    p.add_argument("--perceptual", required=True, help="folder written by perceptual_weights.py")
    p.add_argument("--no-extra", action="store_true", help="pack train/ only, not train_extra/")
    p.add_argument("--max-side", type=int, default=1280, help="longest side of a packed photo (default 1280)")
    p.add_argument("--format", choices=("webp", "jpeg"), default="webp", help="packed photos' format")
    p.add_argument("--quality", type=int, default=90, help="packed photos' quality (default 90)")
    p.add_argument("--init", default="srresnet_x4", help="weights `chunk continue` starts from")
    p.add_argument("--real-init", default="srgan_x4_real", help="weights `chunk real` continues")
    p.add_argument(
        "--restore-init", default="srgan_x4_denoise", help="weights whose front-end `chunk restore` trains"
    )
    sub.add_parser("slim", help="leave shipped weights and doc images out of what travels (here)")
    sub.add_parser("unslim", help="undo slim (here)")
    sub.add_parser("plan", help="each call's command, carry list and size (here)")
    p = sub.add_parser("collect", help="take a chunk's returned files (here)")
    p.add_argument("files", help="the files_at folder of the chunk's call")
    p.add_argument("--archive", default=str(ROOT / "runs" / "gpu"), help="where to keep them")
    p = sub.add_parser("chunk", help="one call's training (there)")
    p.add_argument("stage", choices=("pretrain", "gan", "continue", "real", "restore", "speed", "upscale"))
    p.add_argument("--minutes", type=float, required=True, help="the whole command's time limit")
    p.add_argument("--reserve", type=float, default=30.0, help="seconds kept for the end (default 30)")
    p.add_argument(
        "--plan-minutes", type=float, default=13.0, help="pretrain: training minutes planned (all its calls)"
    )
    p.add_argument("--steps", type=int, default=0, help="steps of a new run (default: from the benchmark)")
    p.add_argument("--gan-steps", type=int, default=0, help="continue: GAN steps (default: the time left)")
    p.add_argument("--pretrain-share", type=float, default=0.4, help="continue: share of the time (0.4)")
    p.add_argument("--only", choices=tuple(PHOTO_SETS), help="continue, real, restore: one packed set only")
    p.add_argument(
        "--extra-share", type=float, default=0.5, help="share of crops from the extra photos (0.5)"
    )
    p.add_argument("--skip-gan", action="store_true", help="continue: pretrain only (the A/B call)")
    p.add_argument("--rate", type=float, default=0.0, help="crops/s to plan with (skips the benchmark)")
    p.add_argument("--bench-steps", type=int, default=20, help="timed steps of the benchmark")
    p.add_argument(
        "--cases", nargs="*", choices=(*SPEED, *UPSCALE), help="speed, upscale: which sizes (default: all)"
    )
    p.add_argument("--loop-seconds", type=float, default=60.0, help="speed: the srgan train loop's time")
    p.add_argument(
        "--degradation", default=None, help="real, restore: how LR inputs are made (photo; restore: repair)"
    )
    p.add_argument(
        "--eval-minutes", type=float, default=1.5, help="real, restore: minutes kept for the eval (1.5)"
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="bf16")
    p.add_argument("--out", default="", help="where returned files go (default: $OUT)")
    p.epilog = "After `--`: more `srgan train` options, given after the recipe's (so they win)."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])
    args.extra = extra
    {"prepare": prepare, "slim": slim, "unslim": unslim, "plan": plan, "collect": collect, "chunk": chunk}[
        args.verb
    ](args)


if __name__ == "__main__":
    main()
