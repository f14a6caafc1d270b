"""`srgan text2img train`: a resumable GAN-CLS / GAN-INT run (Reed et al. 2016) in a run folder.

The step itself is text2img/trainer.py, the captions' embeddings text2img/captions.py; this module
runs them: data, encoder, checkpoints, sample grids, the time limit and the weights file.

A run folder holds run.json, text_encoder.safetensors and image_encoder.safetensors (builtin; the
second is the text encoder's pre-training partner, used by the matching term), embeddings.pt (the
cache), checkpoint.pt (resumable), samples/step{N}.png with samples/captions.txt (the fixed
captions, one per row), log.jsonl, and text2img.safetensors (the generator and its text encoder)
at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import training
from .. import weights as weights_mod
from ..devices import resolve_device
from ..errors import TrainingError, UsageError
from ..training import (
    Event,
    RunningMeans,
    StopClock,
    count_parameters,
    event_log,
    load_checkpoint,
    read_run,
    restore_rng,
    rng_state,
    save_png,
)
from .captions import (
    EMBEDDINGS,
    ENCODER_FILE,
    IMAGE_ENCODER_FILE,
    CaptionEmbeddings,
    TextSide,
    embeddings_of,
    encoder_pretraining,
    text_encoder_of,
)
from .data import CaptionSet, load_caption_set
from .encoders import BuiltinTextEncoder, minilm_available
from .models import Generator, Text2Img, Text2ImgConfig
from .trainer import MODEL_FIELDS, Text2ImgTrainConfig, Text2ImgTrainer, variant_name

RUN_FILE = "run.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "text2img.safetensors"
SAMPLES = "samples"


@dataclass
class Text2ImgTrainResult:
    weights: Path
    steps: int
    seconds: float
    stopped: str | None = None  # why it stopped before `config.steps`: "time limit", "stop request"


def sample_captions(data: CaptionSet, n: int = 8) -> list[str]:
    """The fixed captions of a run's sample grids: the first caption of `n` evenly spread images."""
    step = max(1, len(data.captions) // n)
    return [data.captions[i][0] for i in range(0, len(data.captions), step)][:n]


def _read_run(out: Path) -> dict[str, Any] | None:
    """run.json of a run folder: {"config"}, or None for a new folder."""
    return read_run(out / RUN_FILE, Text2ImgTrainConfig.from_dict)


def read_run_config(out: str | Path) -> Text2ImgTrainConfig | None:
    run = _read_run(Path(out))
    return run["config"] if run is not None else None


def train_text2img(
    config: Text2ImgTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_event: Event | None = None,
    time_limit: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Text2ImgTrainResult:
    """Train (or resume) a text-to-image GAN; see the module docstring. With `time_limit` (seconds
    of this call, data loading and encoder pre-training included) the run stops before a step that
    would not fit, writes its checkpoint and the weights of the steps done; `resume=True` continues.
    `should_stop` (polled before each GAN step, e.g. set by a signal handler) stops it the same
    way, with the reason "stop request" (the encoder's pre-training, if due, is finished first)."""
    emit: Event = on_event or (lambda kind, data: None)
    if time_limit is not None and time_limit < 0:
        raise TrainingError(f"the time limit must be 0 or more seconds, not {time_limit}")
    clock = StopClock(time_limit, should_stop)
    config.validate()
    out = Path(config.out)
    saved_run = _read_run(out)
    if saved_run is not None and not overwrite:
        saved = saved_run["config"]
        diff = [f for f in MODEL_FIELDS if getattr(saved, f) != getattr(config, f)]
        if diff:
            detail = ", ".join(f"{f}: {getattr(saved, f)} -> {getattr(config, f)}" for f in diff)
            raise TrainingError(
                f"{out} holds a text-to-image run with other settings ({detail})",
                hint="leave those options out to use the run's own, or choose another --out",
            )
        if not resume:
            raise TrainingError(
                f"{out} already holds a text-to-image run",
                hint="--resume continues it, --overwrite starts again from scratch",
            )
    if config.encoder == "minilm" and not minilm_available():  # before the run folder is made
        raise UsageError(
            "the MiniLM text encoder needs the [text] extra (sentence-transformers is not installed)",
            hint="pip install 'srgan-cli[text]', or use --encoder builtin",
        )
    if overwrite:
        for name in (CHECKPOINT, ENCODER_FILE, IMAGE_ENCODER_FILE, EMBEDDINGS, WEIGHTS, LOG):
            (out / name).unlink(missing_ok=True)
    device = resolve_device(config.device)
    data = load_caption_set(config.data, 64, limit=config.limit or None)
    if data.images.shape[0] < 2:
        raise TrainingError("text-to-image training needs at least 2 captioned images")
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps({"config": config.to_dict()}, indent=2) + "\n")
    emit(
        "start",
        {
            "images": int(data.images.shape[0]),
            "captions": sum(len(c) for c in data.captions),
            "format": data.format,
            "skipped": [f"{p}: {why}" for p, why in data.skipped],
            "device": str(device),
            "variant": config.variant,
        },
    )
    started = time.perf_counter()
    with event_log(out / LOG, emit) as log:
        text = text_encoder_of(config, data, out, device, log)
        if config.match_weight > 0 and text.image is None:
            raise TrainingError(
                f"--match-weight needs the builtin encoder's image encoder ({out / IMAGE_ENCODER_FILE})",
                hint="it is made with the builtin encoder: use --encoder builtin, and delete an older "
                f"{ENCODER_FILE} to pre-train both again",
            )
        embeddings = embeddings_of(data, text.encode, out, config.encoder)
        model_config = Text2ImgConfig(
            z_dim=config.z_dim,
            proj_dim=config.proj_dim,
            ngf=config.ngf,
            ndf=config.ndf,
            encoder=config.encoder,
            embed_dim=text.dim,
            text=text.builtin.config.to_dict() if text.builtin is not None else {},
            ca=config.ca,
        )
        step, stopped = _train_gan(
            config, model_config, data, embeddings, text, device, out, resume, log, clock
        )
        weights = assemble(out, model_config, text.builtin)
    seconds = time.perf_counter() - started
    emit("done", {"weights": str(weights), "steps": step, "stopped": stopped})
    return Text2ImgTrainResult(weights, step, seconds, stopped)


def _grid(g: Generator, fixed: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    """Rows: the fixed captions; columns: the same 8 noise vectors in every row and every grid."""
    from ..photos import image_grid

    g.eval()
    with torch.no_grad():
        rows, cols = fixed.shape[0], z.shape[0]
        h = fixed.repeat_interleave(cols, dim=0)
        pictures = g(z.repeat(rows, 1), h).add(1).mul(0.5).clamp(0, 1)
    g.train()
    return image_grid(pictures, cols, cell=64)


def _train_gan(
    config: Text2ImgTrainConfig,
    model_config: Text2ImgConfig,
    data: CaptionSet,
    embeddings: CaptionEmbeddings,
    text: TextSide,
    device: torch.device,
    out: Path,
    resume: bool,
    log: Event,
    clock: StopClock,
) -> tuple[int, str | None]:
    """Steps done, and why it stopped early ("time limit", "stop request") or None."""
    ckpt = out / CHECKPOINT
    torch.manual_seed(config.seed)
    trainer = Text2ImgTrainer(model_config, config, device, text.image)
    data_rng = torch.Generator().manual_seed(config.seed)
    step, elapsed = 0, 0.0
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        if state.get("model") != model_config.to_dict():
            raise TrainingError(f"{ckpt} belongs to another model config; use --overwrite or another --out")
        trainer.load_state_dict(state)
        restore_rng(state, device, data_rng)
        step, elapsed = int(state["step"]), float(state["elapsed"])
    fixed_captions = sample_captions(data)
    (out / SAMPLES).mkdir(parents=True, exist_ok=True)
    (out / SAMPLES / "captions.txt").write_text("\n".join(fixed_captions) + "\n", encoding="utf-8")
    fixed = text.encode(fixed_captions).to(device)
    fixed_z = torch.randn(8, model_config.noise_dim, generator=torch.Generator().manual_seed(1234)).to(device)
    log(
        "gan",
        {
            "step": step,
            "steps": config.steps,
            "variant": config.variant,
            "g_params": count_parameters(trainer.g),
            "d_params": count_parameters(trainer.d),
        },
    )

    def save_checkpoint() -> None:
        state = {
            **trainer.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "model": model_config.to_dict(),
            "train": {**config.to_dict(), "device": str(device)},
            **rng_state(device, data_rng),
        }
        training.save_checkpoint(state, ckpt)

    n = data.images.shape[0]
    neighbours = embeddings.neighbours() if config.cls and config.hard_wrong > 0 else None
    meter = RunningMeans()
    t_log, t_seg = time.perf_counter(), time.perf_counter()
    clock.begin(step)
    stopped, saved = None, (step if resume and ckpt.exists() else -1)  # this run's checkpoint on disk
    while step < config.steps:
        stopped = clock.reason(step, 1, val_due=False)
        if stopped is not None:
            if saved != step:
                elapsed += time.perf_counter() - t_seg
                save_checkpoint()
            log("stopped", {"step": step, "reason": stopped, "path": str(ckpt)})
            break
        idx = torch.randint(n, (config.batch_size,), generator=data_rng)
        # a caption of another image: shift each index by 1 .. n-1 (never the image itself)
        wrong = (idx + torch.randint(1, n, (config.batch_size,), generator=data_rng)) % n
        if neighbours is not None:  # --hard-wrong: some mismatches differ from the image in little
            hard = torch.rand(config.batch_size, generator=data_rng) < config.hard_wrong
            near = neighbours[
                idx, torch.randint(neighbours.shape[1], (config.batch_size,), generator=data_rng)
            ]
            wrong = torch.where(hard, near, wrong)
        h = embeddings.pick(idx, data_rng).to(device)
        h_wrong = embeddings.pick(wrong, data_rng).to(device)
        x = data.images[idx].to(device).float().div_(127.5).sub_(1.0)
        meter.add(trainer.step(x, h, h_wrong))
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            now = time.perf_counter()
            speed = meter.count * config.batch_size / max(now - t_log, 1e-9)
            log("log", {"step": step, **meter.take("", step), "images_per_s": speed})
            t_log = now
        if step % config.sample_every == 0 or step == config.steps:
            path = out / SAMPLES / f"step{step:07d}.png"
            save_png(path, _grid(trainer.generator, fixed, fixed_z))
            log("sample", {"step": step, "path": str(path)})
        if step % config.checkpoint_every == 0 or step == config.steps:
            elapsed += time.perf_counter() - t_seg
            with clock.overhead("checkpoint"):
                save_checkpoint()
            saved, t_seg = step, time.perf_counter()
            log("checkpoint", {"step": step, "path": str(ckpt)})
    return step, stopped


def assemble(out: Path, model_config: Text2ImgConfig, encoder: BuiltinTextEncoder | None) -> Path:
    """Write the generator (and builtin encoder) of the run's checkpoint as text2img.safetensors."""
    state = load_checkpoint(out / CHECKPOINT)
    model = Text2Img(model_config)
    model.generator.load_state_dict(state.get("G_ema", state["G"]))  # the moving average when there is one
    if encoder is not None:
        assert model.encoder is not None
        model.encoder.load_state_dict(encoder.state_dict())
    train = state.get("train", {})
    provenance: dict[str, Any] = {}
    if encoder is not None:  # the file's own record: the encoder may come from another run folder
        provenance["encoder_pretraining"] = encoder_pretraining(out / ENCODER_FILE) or "not recorded"
    return weights_mod.save(
        out / WEIGHTS,
        model,
        trained_on=Path(train.get("data", "")).name,
        provenance={
            "kind": "text2img",
            "variant": variant_name(bool(train.get("cls")), bool(train.get("interpolate"))),
            "steps": int(state["step"]),
            "seconds": round(float(state["elapsed"]), 1),
            "device": train.get("device"),
            "train_config": {k: v for k, v in train.items() if k != "device"},
            **provenance,
        },
    )
