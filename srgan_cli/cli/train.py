"""`srgan train`: build a typed config from the options, run it, and show live progress."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..degradations.config import PRESET_NAMES
from ..distributed import world_from_env
from ..errors import TrainingOptionError
from ..sr.config import (
    DEFAULT_RECIPES,
    RECIPES,
    TrainConfig,
    apply_init_arch,
    choose_recipe,
    load_toml,
    read_checkpoint_config,
)
from ..sr.train import train as run_training
from ..sr.trainer import cpu_bf16_native
from .choices import Amp, ContentLayer, DArch, FastStep, GanLoss, Loss, Schedule, Stage, VggInput
from .common import (
    TIME_LIMIT_HELP,
    console,
    given_options,
    guard,
    panel_option,
    parse_duration,
    training_progress,
)
from .signals import StopOnSignal

_GAN = "GAN stage"
_RESTORE = "Restore stage"
_RUN = "Run"
_MODEL = "Model"
_OPT = "Optimisation"
_MACHINE = "Machine"


# fields only the gan stage reads: --help shows the gan recipe's value alone
_GAN_ONLY = {"pixel_weight", "content_layer", "content_weight", "vgg_weights", "vgg_input", "content_scale"}
_GAN_ONLY |= {"adv_weight", "gan_loss", "r1_gamma", "tv_weight", "grid_weight", "d_feats", "d_arch", "d_lr"}


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown_defaults() -> SimpleNamespace:
    """Each option's default as --help shows it: the default recipes' value ("A; gan B" where the
    pretrain and gan recipes differ)."""
    pre, gan = TrainConfig.new_run(None, "pretrain"), TrainConfig.new_run(None, "gan")
    shown: dict[str, object] = {}
    for f in fields(TrainConfig):
        a, b = getattr(pre, f.name), getattr(gan, f.name)
        if f.name == "stage":
            shown[f.name] = a
        elif f.name in _GAN_ONLY or a == b:
            shown[f.name] = b
        elif a is not None and b is not None:
            shown[f.name] = f"{_value_text(a)}; gan {_value_text(b)}"
    return SimpleNamespace(**shown)


_DEFAULTS = _shown_defaults()
_opt = panel_option(_OPT, _DEFAULTS)
_GAN_DEFAULTS = TrainConfig.new_run(None, "gan")
_STEPS_DEFAULT = str(_DEFAULTS.steps)
_SCHEDULE_DEFAULT = (
    f"{TrainConfig().schedule}; gan: {_GAN_DEFAULTS.schedule} "
    f"(x{_GAN_DEFAULTS.lr_gamma:g} at {_GAN_DEFAULTS.lr_step_at:.0%} of the steps)"
)
_RECIPE_HELP = (
    "Start from the settings a shipped model was trained with: "
    + ", ".join(RECIPES)
    + " (docs/training.md); --config and options given win."
)


def train(
    data: Annotated[
        list[str] | None,
        _opt(
            "--data",
            panel=_RUN,
            metavar="DIR[:WEIGHT]",
            help="Folder of HR training photos (recursive); repeat for several, DIR:WEIGHT to weight one "
            "(crops are drawn in proportion to weight x pixels; a folder of folders gives one source each).",
        ),
    ] = None,
    data_lr: Annotated[
        str | None,
        _opt(
            "--data-lr",
            panel=_RUN,
            metavar="DIR",
            help="Folder of real LR photos paired with --data's HR photos by name (1/scale the size): "
            "train on aligned crops of both instead of made LR.",
        ),
    ] = None,
    val: Annotated[
        Path | None, _opt("--val", panel=_RUN, metavar="DIR", help="Folder of HR validation photos.")
    ] = None,
    out: Annotated[
        Path | None,
        _opt(
            "--out",
            default="runs/srresnet_x4, runs/srgan_x4 or runs/restore_x4",
            panel=_RUN,
            metavar="DIR",
            help="Run folder.",
        ),
    ] = None,
    stage: Annotated[
        Stage | None,
        _opt(
            "--stage",
            panel=_RUN,
            help="pretrain: SRResNet, pixel loss. gan: SRGAN from SRResNet weights. restore: only an LR "
            "front-end (--restore-blocks) that undoes --degradation's damage before --init's SR network.",
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        _opt(
            "--recipe",
            metavar="NAME",
            default=f"none (srresnet_x4's, constant rate); gan {DEFAULT_RECIPES['gan']}",
            panel=_RUN,
            help=_RECIPE_HELP,
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        _opt(
            "--config",
            panel=_RUN,
            metavar="FILE",
            help="TOML file of options (same names); options given here win.",
        ),
    ] = None,
    resume: Annotated[bool, _opt("--resume", panel=_RUN, help="Continue the run in --out exactly.")] = False,
    time_limit: Annotated[
        str | None,
        _opt(
            "--time-limit",
            panel=_RUN,
            metavar="TIME",
            help=TIME_LIMIT_HELP + " The weights are written too.",
        ),
    ] = None,
    init: Annotated[
        str | None,
        _opt(
            "--init",
            panel=_RUN,
            metavar="NAME|PATH",
            help="Start G from these weights (gan stage: srresnet_x<scale>, restore: srgan_x<scale> "
            "if not given).",
        ),
    ] = None,
    init_d: Annotated[
        Path | None,
        _opt(
            "--init-d",
            panel=_RUN,
            metavar="PATH",
            help="gan stage: start D from a gan run's checkpoint.pt (or a .safetensors of D) "
            "instead of afresh, to fine-tune a trained pair (Adam starts afresh).",
        ),
    ] = None,
    scale: Annotated[int | None, _opt("--scale", panel=_MODEL, help="2, 4 or 8.")] = None,
    n_blocks: Annotated[int | None, _opt("--n-blocks", panel=_MODEL, min=1, help="Residual blocks.")] = None,
    n_feats: Annotated[int | None, _opt("--n-feats", panel=_MODEL, min=1, help="Channels.")] = None,
    global_skip: Annotated[
        bool | None,
        _opt(
            "--global-skip/--no-global-skip",
            panel=_MODEL,
            help="Learn a residual over bicubic upscaling (not in the paper; converges much faster).",
            show_default=False,
        ),
    ] = None,
    restore_blocks: Annotated[
        int | None,
        _opt(
            "--restore-blocks",
            panel=_MODEL,
            min=0,
            help="An LR restoration front-end of this many dilated residual blocks (0: none); "
            "from --init when its weights have one.",
        ),
    ] = None,
    restore_feats: Annotated[
        int | None, _opt("--restore-feats", panel=_MODEL, min=1, help="Channels of the front-end.")
    ] = None,
    front_end_only: Annotated[
        bool | None,
        _opt(
            "--front-end-only",
            panel=_MODEL,
            help="pretrain/gan: train only the front-end, with the stage's losses on the output through "
            "the frozen SR network.",
            show_default=False,
        ),
    ] = None,
    d_feats: Annotated[
        int | None, _opt("--d-feats", panel=_MODEL, min=1, help="Discriminator base width.")
    ] = None,
    d_arch: Annotated[
        DArch | None,
        _opt(
            "--d-arch",
            panel=_MODEL,
            help="Discriminator: srgan (the paper's, one score per crop) or unet (Real-ESRGAN's, "
            "spectral norm, one score per pixel).",
        ),
    ] = None,
    degradation: Annotated[
        str | None,
        _opt(
            "--degradation",
            help=f"How LR inputs are made: {PRESET_NAMES}, or FILE.toml of ranges (docs/degradations.md).",
        ),
    ] = None,
    crop: Annotated[int | None, _opt("--crop", min=8, help="HR crop side.")] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", min=1, help="Crops per step and process.")] = None,
    steps: Annotated[int | None, _opt("--steps", default=_STEPS_DEFAULT, min=1, help="Total steps.")] = None,
    lr: Annotated[float | None, _opt("--lr", help="Adam learning rate of G.")] = None,
    d_lr: Annotated[float | None, _opt("--d-lr", default="--lr", help="Adam learning rate of D.")] = None,
    schedule: Annotated[Schedule | None, _opt("--schedule", default=_SCHEDULE_DEFAULT)] = None,
    lr_min: Annotated[float | None, _opt("--lr-min", help="Floor of the cosine schedule.")] = None,
    lr_step_at: Annotated[
        float | None, _opt("--lr-step-at", help="Step schedule: fraction of steps.")
    ] = None,
    lr_gamma: Annotated[float | None, _opt("--lr-gamma", help="Step schedule: factor.")] = None,
    beta1: Annotated[float | None, _opt("--beta1", help="Adam beta1, in [0, 1).")] = None,
    beta2: Annotated[float | None, _opt("--beta2", help="Adam beta2, in [0, 1).")] = None,
    loss: Annotated[Loss | None, _opt("--loss", help="Pixel loss.")] = None,
    ema: Annotated[float | None, _opt("--ema", help="EMA decay of G's weights, 0 = off.")] = None,
    augment: Annotated[
        bool | None, _opt("--augment/--no-augment", help="Flips and rotations.", show_default=False)
    ] = None,
    pixel_weight: Annotated[
        float | None, _opt("--pixel-weight", panel=_GAN, help="Weight of the pixel loss.")
    ] = None,
    content_layer: Annotated[
        ContentLayer | None,
        _opt(
            "--content-layer",
            panel=_GAN,
            help="VGG layer; vgg19_multi: 5 layers before ReLU, L1 (ESRGAN-style).",
        ),
    ] = None,
    content_weight: Annotated[float | None, _opt("--content-weight", panel=_GAN)] = None,
    vgg_weights: Annotated[
        str | None,
        _opt(
            "--vgg-weights",
            default="$SRGAN_VGG_WEIGHTS, else download",
            panel=_GAN,
            metavar="PATH",
            help="VGG weights: a file, or a folder made by `srgan weights fetch-perceptual`.",
        ),
    ] = None,
    vgg_input: Annotated[
        VggInput | None,
        _opt("--vgg-input", panel=_GAN, help="Input convention of those weights."),
    ] = None,
    content_scale: Annotated[
        float | None, _opt("--content-scale", default="paper's", panel=_GAN, help="VGG feature rescale.")
    ] = None,
    adv_weight: Annotated[float | None, _opt("--adv-weight", panel=_GAN)] = None,
    gan_loss: Annotated[
        GanLoss | None, _opt("--gan-loss", panel=_GAN, help="standard (paper) or ragan.")
    ] = None,
    r1_gamma: Annotated[
        float | None, _opt("--r1-gamma", panel=_GAN, help="R1 penalty on D, 0 = off.")
    ] = None,
    tv_weight: Annotated[float | None, _opt("--tv-weight", panel=_GAN)] = None,
    grid_weight: Annotated[
        float | None,
        _opt("--grid-weight", panel=_GAN, help="Anti-checkerboard (phase) loss, 0 = off."),
    ] = None,
    restore_content_weight: Annotated[
        float | None,
        _opt(
            "--restore-content-weight",
            panel=_RESTORE,
            help="Weight of the VGG loss (--content-layer) on the restored LR, beside its "
            "pixel loss; 0 = off.",
        ),
    ] = None,
    restore_adv_weight: Annotated[
        float | None,
        _opt(
            "--restore-adv-weight",
            panel=_RESTORE,
            help="Weight of an adversarial loss on the restored LR (a --d-arch "
            "discriminator on LR crops); 0 = off.",
        ),
    ] = None,
    restore_block_weight: Annotated[
        float | None,
        _opt(
            "--restore-block-weight",
            panel=_RESTORE,
            help="Weight of a loss on the restored LR's steps across JPEG's 8x8 block edges; 0 = off.",
        ),
    ] = None,
    restore_block_excess_weight: Annotated[
        float | None,
        _opt(
            "--restore-block-excess-weight",
            panel=_RESTORE,
            help="Weight of a one-sided loss on the restored LR's steps across JPEG's "
            "8x8 block edges beyond the clean LR's (a softened edge is free); 0 = off.",
        ),
    ] = None,
    val_every: Annotated[
        int | None, _opt("--val-every", panel=_RUN, min=1, help="Validate, sample, save.")
    ] = None,
    val_limit: Annotated[
        int | None, _opt("--val-limit", panel=_RUN, min=0, help="Validate on at most N photos.")
    ] = None,
    lpips_weights: Annotated[
        str | None,
        _opt(
            "--lpips-weights",
            default="$SRGAN_LPIPS_WEIGHTS",
            panel=_RUN,
            metavar="DIR",
            help="LPIPS weights folder (`srgan weights fetch-perceptual` makes one).",
        ),
    ] = None,
    samples: Annotated[
        int | None, _opt("--samples", panel=_RUN, min=0, help="Crops in each sample grid.")
    ] = None,
    snapshots: Annotated[
        bool | None,
        _opt("--snapshots", panel=_RUN, help="Keep each validation's weights as <name>_step<N>.safetensors."),
    ] = None,
    checkpoint_every: Annotated[int | None, _opt("--checkpoint-every", panel=_RUN, min=1)] = None,
    log_every: Annotated[int | None, _opt("--log-every", panel=_RUN, min=1)] = None,
    tensorboard: Annotated[
        bool | None, _opt("--tensorboard", panel=_RUN, help="Write TensorBoard events to <out>/tb.")
    ] = None,
    seed: Annotated[int | None, _opt("--seed", panel=_MACHINE)] = None,
    device: Annotated[
        str | None, _opt("--device", panel=_MACHINE, metavar="DEVICE", help="auto, cpu, cuda, cuda:N.")
    ] = None,
    data_device: Annotated[
        str | None,
        _opt("--data-device", panel=_MACHINE, help="Where decoded photos live: auto, cpu or a device."),
    ] = None,
    amp: Annotated[
        Amp | None,
        _opt(
            "--amp",
            panel=_MACHINE,
            help="Mixed precision: auto (CUDA: bf16 or fp16; CPU: off), bf16, fp16 (CUDA only), off.",
        ),
    ] = None,
    fast_step: Annotated[
        FastStep | None,
        _opt(
            "--fast-step",
            panel=_MACHINE,
            help="The same step with fused Adam, no host syncs, and (CUDA, or with --compile) "
            "compiled passes and losses in CUDA graphs; off = the plain eager step. auto = on CUDA.",
        ),
    ] = None,
    compile_: Annotated[
        bool | None,
        _opt(
            "--compile",
            panel=_MACHINE,
            help="torch.compile: the fast step's passes and losses (also on the CPU), else the networks.",
        ),
    ] = None,
) -> None:
    """Train a super-resolution model on your own photos (resumable; see docs/training.md)."""
    given = given_options(dict(locals()), skip=("resume", "config_file", "time_limit", "recipe"))  # first
    if "compile_" in given:  # named so as not to shadow the builtin
        given["compile"] = given.pop("compile_")
    with guard():
        seconds = parse_duration(time_limit) if time_limit is not None else None
        from_file = load_toml(config_file) if config_file else {}
        recipe = recipe or from_file.pop("recipe", None)  # under the file's values and the options
        options = {**from_file, **given}
        if resume:
            if recipe:
                raise TrainingOptionError("--recipe starts a new run; a resumed run keeps its own settings")
            base = read_checkpoint_config(
                options.get("out") or TrainConfig(stage=options.get("stage", "pretrain")).run_dir
            )
            _refuse_new_start(base, options)
        else:
            if "data" not in options:
                raise typer.BadParameter("--data is required (a folder of photos)", param_hint="--data")
            recipe = choose_recipe(recipe, options.get("stage"))
            base = TrainConfig.new_run(recipe, options.get("stage"))  # under the file and the options
        config = TrainConfig.from_dict({**base.to_dict(), **options})
        config.validate_options()  # a bad value is named before --init weights are looked for
        if not resume:
            config = apply_init_arch(config, set(options))
        config.validate()
        world = world_from_env()  # a half-set torchrun environment is refused before the photos are read
        if recipe and world.is_main:
            chosen = RECIPES[recipe]  # a gan recipe names where it starts from, whether or not it sets init
            named = {*chosen.values, *(("init",) if chosen.stage == "gan" else ())}
            overridden = [f"--{k.replace('_', '-')}" for k in options if k in named]
            but = f" (overridden: {', '.join(sorted(overridden))})" if overridden else ""
            console.print(f"recipe {recipe}: {escape(RECIPES[recipe].about)}{escape(but)}", highlight=False)
        _run(config, resume, seconds)


def _refuse_new_start(saved: TrainConfig, options: dict[str, Any]) -> None:
    """--init/--init-d choose where a new run starts; a resumed run already has its weights.

    The same value as the run was started with is accepted (a repeated command line); another is
    refused rather than ignored, since the checkpoint's weights would win without a word.
    """
    for key in ("init", "init_d"):
        if key in options and options[key] != getattr(saved, key):
            flag = "--" + key.replace("_", "-")
            raise TrainingOptionError(
                f"{flag} starts a new run, but --resume continues {saved.run_dir} from its checkpoint "
                f"(started with {flag} {getattr(saved, key) or 'none'})",
                hint=f"drop {flag} to continue, or give a new --out to start from {options[key]}",
            )


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _left_out_line(paths: list[str]) -> str:
    names = ", ".join(Path(p).name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
    return (
        f"{len(paths)} photo{'s' if len(paths) > 1 else ''} under --data also in --val "
        f"(same file or identical bytes): left out of training ({names})"
    )


def _about(seconds: float) -> str:
    """A wall time in the unit a person plans with."""
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


_LONG = 3 * 3600  # an estimate above this gets a hint


def _estimate_lines(data: dict[str, Any], config: TrainConfig) -> list[str]:
    """The "estimate" event in words, with a hint when the run would take more than a few hours."""
    per, steps = data["seconds_per_step"], data["steps"]
    lines = [
        f"estimate: about {_about(per)} per step on {data['device']} "
        f"(batch {data['batch_size']}, crop {data['crop']}): {steps:,} steps would take about "
        f"{_about(data['seconds'])}, validations not counted"
    ]
    if data["seconds"] > _LONG:
        start = config.steps - steps
        fit = int(2 * 3600 / per)
        hint = []
        if fit >= 10:
            fit = int(float(f"{fit:.2g}"))  # two significant digits: 1,700 rather than 1,734
            hint.append(f"--steps {start + fit} fits in about 2 hours")
        hint.append("--time-limit stops cleanly and --resume continues")
        if data["device"] == "cpu" and config.amp == "auto" and cpu_bf16_native() is True:
            hint.append("--amp bf16 trains 1.7-2x as fast on this CPU")
        if data["device"] == "cpu" and config.stage == "pretrain" and config.n_feats * config.n_blocks > 480:
            hint.append("--recipe srresnet_x4_fast is the shipped CPU-sized model (80 min on 2 cores)")
        lines.append("hint: " + "; ".join(hint))
    return lines


def _stats(data: dict[str, Any]) -> str:
    """The live line: the paper's quantities for the gan stage, the pixel loss for pretrain."""
    if "D(x)" in data:
        parts = [
            f"D(x) {data['D(x)']:.3f}",
            f"D(G(z)) {data['D(G(z))']:.3f}",
            f"content {data['content']:.4g}",
            f"adv {data['adversarial']:.3f}",
            f"d_loss {data['d_loss']:.3f}",
        ]
        if data.get("r1"):
            parts.append(f"r1 {data['r1']:.3g}")
        if data.get("grid"):
            parts.append(f"grid {data['grid'] * 255:.2f}")
    else:
        parts = [f"loss {data['loss']:.4f}"]
    return "  ".join(parts + [f"{data['images_per_s']:.1f} img/s"])


def _run(config: TrainConfig, resume: bool, time_limit: float | None) -> None:
    with StopOnSignal().installed() as stop:
        _run_with(config, resume, time_limit, stop)
    if stop.signum is not None:
        raise typer.Exit(128 + stop.signum)


def _run_with(config: TrainConfig, resume: bool, time_limit: float | None, stop: StopOnSignal) -> None:
    if not world_from_env().is_main:  # under torchrun only rank 0 talks
        run_training(config, resume=resume, time_limit=time_limit, should_stop=stop)
        return
    with training_progress("val {task.fields[val]}  {task.fields[stats]}", remaining=True) as progress:
        task = progress.add_task(config.stage, total=config.steps, stats="", val="-")

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "start":
                progress.update(task, completed=data["step"])
                d_params = f" + D {data['d_params'] / 1e6:.2f}M" if data["d_params"] else ""
                if data["d_params"] and config.init_d and not data["step"]:
                    d_params += f" (from {escape(config.init_d)})"
                frozen = ""
                if data.get("trained_params", data["params"]) != data["params"]:
                    frozen = f" ({data['trained_params'] / 1e6:.2f}M trained: the front-end)"
                procs = f" x {data['world_size']} processes" if data["world_size"] > 1 else ""
                progress.console.print(
                    f"{data['stage']}: {data['images']} photos ({data['pool']}), "
                    f"G {data['params'] / 1e6:.2f}M params{frozen}{d_params}, "
                    f"device {data['device']}{procs}, "
                    f"amp {data['amp']}, step {data['step_mode']}, from step {data['step']}, "
                    f"LR by {escape(str(data.get('degradation', 'bicubic')))}"
                )
                if len(data["sources"]) > 1:
                    progress.console.print(
                        "crops from: "
                        + ", ".join(
                            f"{escape(s['name'])} {s['photos']} photos {s['share']:.0%}"
                            for s in data["sources"]
                        )
                    )
                for line in data["skipped"]:
                    progress.console.print(f"[yellow]skipped[/] {line}")
                if data.get("left_out"):
                    progress.console.print(f"[yellow]note:[/] {escape(_left_out_line(data['left_out']))}")
                if data.get("val_trained_on"):
                    progress.console.print(
                        f"[yellow]note:[/] every --data photo is a --val photo ({data['val_trained_on']}): "
                        "validation measures fit to the training photos, not new ones"
                    )
                if data["note"]:
                    progress.console.print(f"[yellow]note:[/] {data['note']}")
            elif kind == "log":
                progress.update(task, completed=data["step"], stats=_stats(data))
            elif kind == "val":
                lp = f", LPIPS {data['lpips']:.4f}" if data.get("lpips") is not None else ""
                progress.update(task, val=f"{data['psnr']:.2f} dB{lp}")
                grid = f", grid {data['grid']:.3f}" if data.get("grid") is not None else ""
                progress.console.print(
                    f"step {data['step']}: val PSNR-Y {data['psnr']:.3f} dB, "
                    f"SSIM-Y {data['ssim']:.4f}{lp}{grid}"
                )
            elif kind == "note":
                progress.console.print(f"[yellow]note:[/] {escape(data['message'])}")
            elif kind == "estimate":
                for line in _estimate_lines(data, config):
                    progress.console.print(escape(line), highlight=False)
            elif kind in ("done", "stopped"):
                progress.update(task, completed=data["step"])

        result = run_training(
            config, resume=resume, on_event=on_event, time_limit=time_limit, should_stop=stop
        )
    if result.stopped:
        again = f" --time-limit {time_limit:g}" if time_limit is not None else ""
        console.print(
            f"[yellow]stopped[/] ({result.stopped}) at step {result.steps} of {config.steps}, "
            f"{_duration(result.seconds)} of training so far; checkpoint and weights written -> "
            f"{result.weights}\ncontinue with: srgan train --out {config.run_dir} --resume{again}",
            highlight=False,
        )
        return
    console.print(f"[green]done[/]: {result.steps} steps in {_duration(result.seconds)} -> {result.weights}")
