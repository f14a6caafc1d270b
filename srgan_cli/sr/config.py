"""`srgan train`'s configuration: TrainConfig (every hyper-parameter, typed, with its default and
why), the run folder's file names, the TOML loader, and the shape taken from --init weights."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .. import weights as weights_mod
from ..degradations import load_degradation
from ..errors import TrainingError
from ..tomlfile import read_toml
from ..training import (
    TrainingOptionError,
    load_checkpoint,
    option_name,
    require_positive,
    require_rate,
    require_seed,
    require_unit,
    require_weight,
)
from .data import (
    parse_data_spec,
)
from .losses import (
    CONTENT_LAYERS,
)
from .models import DISCRIMINATORS

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
SAMPLES = "samples"
# the choices of TrainConfig's string fields (validate() checks them; the CLI builds its choices from them)
STAGES = ("pretrain", "gan", "restore")
LOSSES = ("mse", "l1")
SCHEDULES = ("constant", "cosine", "step")
AMPS = ("auto", "off", "bf16", "fp16")
GAN_LOSSES = ("standard", "ragan")
D_ARCHS = tuple(DISCRIMINATORS)
VGG_INPUTS = ("auto", "torchvision", "caffe")
FAST_STEPS = ("auto", "on", "off")
SCALES = (2, 4, 8)  # the generator has one x2 sub-pixel stage per factor of 2 (sr.models)
MIN_CROP = 8  # smallest HR crop side (the CLI's --crop min)

# Fields that define the run: a resumed run must agree with its checkpoint on these.
RUN_FIELDS = (
    "stage",
    "scale",
    "n_blocks",
    "n_feats",
    "global_skip",
    "restore_blocks",
    "restore_feats",
    "front_end_only",
    "d_feats",
    "d_arch",
    "crop",
    "batch_size",
    "loss",
    "content_layer",
    "gan_loss",
    "seed",
    "ema",
    "augment",
    "degradation",
)
ARCH_FIELDS = ("scale", "n_blocks", "n_feats", "global_skip")  # the generator's, from --init
RESTORE_FIELDS = ("restore_blocks", "restore_feats")  # its LR front-end: from --init when it has one
RETIRED = ("cache_images", "workers")  # options of older versions, ignored in old checkpoints


@dataclass
class TrainConfig:
    # --- run ----------------------------------------------------------------------------------
    # folders of HR training photos (searched recursively), each "DIR" or "DIR:WEIGHT"; crops are
    # drawn in proportion to weight x pixels (sr.data.CropPool); a str is taken as one folder
    data: list[str] = field(default_factory=list)
    # real LR photos paired with the one --data folder's HR photos (same relative names, 1/scale
    # the size; BasicSR's dataroot_lq): aligned crops of both instead of made LR; None = made LR
    data_lr: str | None = None
    val: str | None = None  # folder of HR validation photos; None skips validation
    out: str = ""  # run folder (checkpoint, log, samples, weights); "" = runs/<name>_x<scale>
    # pretrain: SRResNet with a pixel loss; gan: SRGAN from SRResNet weights; restore: only the LR
    # restoration front-end (restore_blocks), in front of --init's frozen SR network, learns to make
    # damaged LR inputs (--degradation) into the clean LR images that network was trained on
    stage: str = "pretrain"
    # generator weights to start from (default: gan stage srresnet_x<scale>, restore srgan_x<scale>)
    init: str | None = None
    # gan stage: D's weights to start from (BasicSR's pretrain_network_d): a gan-stage run's
    # checkpoint.pt or a .safetensors of D's state; None = a fresh D. Adam starts fresh either way
    init_d: str | None = None
    # --- generator (taken from --init in the gan stage) -----------------------------------------
    # the defaults of the fields the pretrain stage reads are the shipped srresnet_x4's (RECIPES),
    # but for its cosine schedule
    scale: int = 4  # 2, 4 or 8
    n_blocks: int = 16  # residual blocks (paper: 16)
    n_feats: int = 64  # channels per block (paper: 64)
    global_skip: bool = True  # learn a residual over bicubic upscaling (not in the paper: off)
    # the LR restoration front-end (sr.models.Restorer, not in the paper): residual blocks of
    # dilated convs at the LR size; 0 = none. Added to --init weights without one, it starts as
    # the identity; the restore stage trains it alone, the other stages with the whole generator
    restore_blocks: int = 0
    restore_feats: int = 64  # its channels
    # pretrain/gan: train only the front-end, through the frozen SR network (batch-norm statistics
    # included), with the stage's losses on the whole model's output; the restore stage always does
    front_end_only: bool = False
    # --- discriminator --------------------------------------------------------------------------
    d_feats: int = 64  # channels of D's first conv (paper: 64)
    # srgan: the paper's 8 convs and one logit per crop; unet: Real-ESRGAN's U-Net with spectral
    # normalisation, one logit per pixel (sr.models)
    d_arch: str = "srgan"
    # --- data -----------------------------------------------------------------------------------
    crop: int = 128  # HR crop side; LR crops are crop/scale (paper: 96)
    batch_size: int = 64  # crops per step and process (paper: 16)
    augment: bool = True  # random flips and 90-degree rotations of each crop
    # how LR inputs are made from HR crops: bicubic (the SR protocol), a preset of realistic damage
    # (realesrgan, photo, video, noisy, repair: degradations/config.py) or a TOML file of ranges
    degradation: str = "bicubic"
    data_device: str = "auto"  # where decoded photos live: auto (GPU if they fit), cpu, or the device
    # --- optimisation ---------------------------------------------------------------------------
    steps: int = 4_000  # total optimiser steps (paper: 10^6 SRResNet, 2x10^5 SRGAN)
    lr: float = 2e-4  # Adam learning rate of G (paper: 1e-4)
    d_lr: float | None = None  # Adam learning rate of D; None = the same as lr
    # constant (paper), cosine (to lr_min), or step (x lr_gamma at lr_step_at). srresnet_x4 used
    # cosine; the default stays constant so that a run stopped, resumed or extended (--steps) keeps it
    schedule: str = "constant"
    lr_min: float = 1e-6  # floor of the cosine schedule
    lr_step_at: float = 0.5  # step schedule: fraction of the steps where the rate drops
    lr_gamma: float = 0.1  # step schedule: factor of the drop (paper: 1e-4 -> 1e-5 halfway)
    beta1: float = 0.9  # Adam beta1 (paper: 0.9)
    beta2: float = 0.999
    # --- losses ---------------------------------------------------------------------------------
    loss: str = "l1"  # pixel loss: mse (paper) or l1; the whole loss of the pretrain stage
    pixel_weight: float = 0.0  # gan stage: weight of the pixel loss (paper: 0)
    content_layer: str = "vgg54"  # gan stage: vgg54 (paper), vgg22, vgg16_53, vgg16_22, vgg19_multi
    content_weight: float = 1.0  # weight of the VGG content loss (paper: 1)
    vgg_weights: str | None = None  # VGG weights file; None = $SRGAN_VGG_WEIGHTS or torchvision's
    vgg_input: str = "auto"  # input convention of those weights: auto, torchvision or caffe
    content_scale: float | None = None  # feature rescale; None = the paper's 1/12.75 (Caffe units)
    adv_weight: float = 1e-3  # weight of the adversarial loss (paper: 1e-3)
    gan_loss: str = "standard"  # standard (paper: -log D(G(z)), BCE for D) or ragan (ESRGAN)
    r1_gamma: float = 0.0  # R1 penalty on D's gradient at real images; 0 = off
    tv_weight: float = 2e-8  # total-variation regulariser (paper: 2e-8)
    grid_weight: float = 0.0  # phase-consistency (anti-checkerboard) loss, not in the paper; 0 = off
    # restore stage: perceptual terms on the restored LR beside its pixel loss (0 = off): the VGG
    # content loss (--content-layer) and an adversarial loss with a discriminator (--d-arch) on LR crops
    restore_content_weight: float = 0.0
    restore_adv_weight: float = 0.0
    # restore stage: a loss on the restored LR's error steps across the lines of JPEG's 8x8 blocks
    restore_block_weight: float = 0.0
    # restore stage: a one-sided loss on the restored LR's steps across those lines beyond the clean LR's
    restore_block_excess_weight: float = 0.0
    # --- averaging, validation, logging --------------------------------------------------------
    ema: float = 0.999  # decay of an exponential moving average of G's weights; 0 turns it off
    val_every: int = 500  # steps between validations (and interim weights, and sample grids)
    val_limit: int = 0  # validate on at most this many photos; 0 = all
    lpips_weights: str | None = None  # LPIPS weights folder; None = $SRGAN_LPIPS_WEIGHTS (else no LPIPS)
    samples: int = 4  # sample crops in the grid saved at each validation; 0 = none
    snapshots: bool = False  # keep the weights of each validation as <name>_step<N>.safetensors
    checkpoint_every: int = 500  # steps between checkpoints
    log_every: int = 20  # steps between log lines (the only host-device syncs of the loop)
    tensorboard: bool = False  # also write TensorBoard events to <out>/tb
    # --- machine --------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N (under torchrun: each process's own GPU)
    amp: str = "auto"  # mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16
    compile: bool = False  # torch.compile the networks (slow start, faster steps on GPUs)
    fast_step: str = "auto"  # fused, compiled, graph-captured step (sr/trainer.py): auto = on CUDA

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):  # one folder (and checkpoints of older versions)
            self.data = [str(self.data)] if str(self.data) else []
        else:
            self.data = [str(d) for d in self.data]

    @classmethod
    def for_stage(cls, stage: str) -> TrainConfig:
        """The paper's recipe of a stage (srresnet_paper, srgan_paper: the defaults of earlier
        versions); `from_recipe` gives the shipped models' recipes."""
        return cls.from_recipe("srgan_paper" if stage == "gan" else "srresnet_paper")

    @classmethod
    def new_run(cls, recipe: str | None, stage: str | None = None) -> TrainConfig:
        """The base of a new run, under a config file and options: `recipe`'s config (refused if
        it is for another `stage`), else the defaults of `stage` (pretrain: TrainConfig(), which is
        the srresnet_x4 recipe at a constant rate; gan: the srgan_x4 recipe)."""
        recipe = choose_recipe(recipe, stage)
        return cls.from_recipe(recipe) if recipe else cls(stage=stage or "pretrain")

    @classmethod
    def from_recipe(cls, name: str, **values: Any) -> TrainConfig:
        """The config of a recipe (RECIPES), with `values` (any fields) on top of it."""
        recipe = RECIPES.get(name)
        if recipe is None:
            raise TrainingOptionError(f"unknown --recipe {name!r}: use {', '.join(RECIPES)}")
        return cls(**{"stage": recipe.stage, **recipe.values, **values})

    @property
    def name(self) -> str:
        if self.stage == "restore":
            return f"restore_x{self.scale}"
        return f"{'srgan' if self.stage == 'gan' else 'srresnet'}_x{self.scale}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.name}")

    @property
    def init_weights(self) -> str | None:
        if self.init:
            return self.init
        if self.stage == "restore":
            return f"srgan_x{self.scale}"
        return f"srresnet_x{self.scale}" if self.stage == "gan" else None

    def validate_options(self) -> None:
        """Each option on its own: a known choice, a number in its range (UsageError naming the
        option). Safe before --init fills in the generator's shape; `validate` checks the rest."""

        def one_of(field: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, field) not in allowed:
                raise TrainingOptionError(
                    f"unknown {option_name(field)} {getattr(self, field)!r}: use {', '.join(allowed)}"
                )

        one_of("stage", STAGES)
        for spec in self.data:
            parse_data_spec(spec)  # raises on a bad weight
        one_of("loss", LOSSES)
        one_of("schedule", SCHEDULES)
        one_of("amp", AMPS)
        one_of("gan_loss", GAN_LOSSES)
        one_of("d_arch", D_ARCHS)
        one_of("content_layer", tuple(CONTENT_LAYERS))
        one_of("vgg_input", VGG_INPUTS)
        one_of("fast_step", FAST_STEPS)
        if self.scale not in SCALES or isinstance(self.scale, bool):
            raise TrainingOptionError(
                f"--scale must be {', '.join(map(str, SCALES[:-1]))} or {SCALES[-1]}, got {self.scale}"
            )
        require_positive(
            self,
            ("n_blocks", "n_feats", "restore_feats", "d_feats", "crop", "batch_size", "steps")
            + ("val_every", "checkpoint_every", "log_every"),
        )
        for name in ("val_limit", "samples", "restore_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TrainingOptionError(f"{option_name(name)} must be 0 or more, got {value}")
        require_rate(self, ("lr", "lr_gamma"))
        if self.d_lr is not None:
            require_rate(self, ("d_lr",))
        if self.content_scale is not None:
            require_rate(self, ("content_scale",))
        require_weight(
            self,
            (
                "lr_min",
                "pixel_weight",
                "content_weight",
                "adv_weight",
                "r1_gamma",
                "tv_weight",
                "grid_weight",
                "restore_content_weight",
                "restore_adv_weight",
                "restore_block_weight",
                "restore_block_excess_weight",
            ),
        )
        require_unit(self, ("beta1", "beta2", "ema"))
        if not 0.0 < self.lr_step_at <= 1.0:
            raise TrainingOptionError(
                f"--lr-step-at is a fraction of the steps, in (0, 1], got {self.lr_step_at:g}"
            )
        require_seed(self)

    def validate(self) -> None:
        """Every option (`validate_options`) and how they go together; raises UsageError (exit 2)
        naming the option, which is also a TrainingError."""
        self.validate_options()
        if not load_degradation(self.degradation).bicubic and self.data_lr:
            raise TrainingOptionError(
                "--data-lr gives real LR photos; a --degradation would make them: use one or the other"
            )
        if self.data_lr and len(self.data) != 1:
            raise TrainingOptionError("--data-lr pairs with exactly one --data folder of HR photos")
        if self.stage == "gan" and self.batch_size < 2 and self.gan_loss == "ragan":
            raise TrainingOptionError("ragan compares a crop with the batch mean: use --batch-size 2 or more")
        if self.stage == "restore":
            if not self.restore_blocks:
                raise TrainingOptionError(
                    "the restore stage trains the LR front-end: give it --restore-blocks (e.g. 8), "
                    "or --init weights that have one"
                )
            if load_degradation(self.degradation).bicubic and not self.data_lr:
                raise TrainingOptionError(
                    "the restore stage learns to undo damage: give a --degradation (e.g. noisy) "
                    "or real LR photos (--data-lr)"
                )
        for name in (
            "restore_content_weight",
            "restore_adv_weight",
            "restore_block_weight",
            "restore_block_excess_weight",
        ):
            if getattr(self, name) > 0 and self.stage != "restore":
                raise TrainingOptionError(
                    f"{option_name(name)} weighs a term of the restore stage's loss: use it with "
                    "--stage restore (the gan stage has --content-weight, --adv-weight, --grid-weight)"
                )
        if self.front_end_only and not self.restore_blocks:
            raise TrainingOptionError(
                "--front-end-only trains the LR front-end: give it --restore-blocks (e.g. 8), "
                "or --init weights that have one"
            )
        if self.init_d and self.stage != "gan":
            raise TrainingOptionError("--init-d starts the discriminator, which only the gan stage has")
        if self.crop % self.scale:
            raise TrainingOptionError(f"--crop {self.crop} must be a multiple of the scale {self.scale}")
        if self.crop < MIN_CROP:
            raise TrainingOptionError(f"--crop must be at least {MIN_CROP} pixels, got {self.crop}")
        if self.stage == "gan" or (self.stage == "restore" and self.restore_content_weight > 0):
            # the content layer's feature map must keep at least one pixel of the crop it sees: the
            # HR crop, or in the restore stage the restored LR crop, `scale` times smaller
            pools = _vgg_min_side(CONTENT_LAYERS[self.content_layer])
            need = pools * (self.scale if self.stage == "restore" else 1)
            if self.crop < need:
                raise TrainingOptionError(
                    f"--content-layer {self.content_layer} pools a crop {pools} times smaller: "
                    f"use --crop {need} or more, got {self.crop}"
                )
        if self.grid_weight > 0 and self.crop < 8 * self.scale:
            raise TrainingOptionError(
                f"the grid loss works on tiles of {8 * self.scale} px (8 x the scale): "
                f"use --crop {8 * self.scale} or more, or --grid-weight 0"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = {k.replace("-", "_"): v for k, v in data.items() if k not in RETIRED}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TrainingError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Recipe:
    """A named set of TrainConfig values: what a shipped model was trained with (its weights'
    provenance.train_config; weights/README.md), or the paper's. It leaves out the photos, the run
    folder, the machine (device, amp) and, in the gan stage, the generator's shape (from --init)."""

    stage: str
    about: str  # one line, printed when a run starts from it
    values: dict[str, Any]


# the losses of the shipped GAN models (weights/README.md: chosen by the CPU runs there)
_SHIPPED_GAN_LOSSES: dict[str, Any] = dict(
    loss="l1",
    pixel_weight=1.0,
    content_layer="vgg19_multi",
    content_weight=0.01,
    adv_weight=1e-3,
    gan_loss="standard",
    r1_gamma=0.0,
    tv_weight=2e-8,
    grid_weight=10.0,
)
_SRRESNET_X4: dict[str, Any] = dict(
    scale=4,
    n_blocks=16,
    n_feats=64,
    global_skip=True,
    loss="l1",
    lr=2e-4,
    schedule="cosine",
    lr_min=1e-6,
    batch_size=64,
    crop=128,
    augment=True,
    degradation="bicubic",
    ema=0.999,
    steps=4_000,
    val_every=500,
)
RECIPES: dict[str, Recipe] = {
    "srresnet_x4": Recipe(
        "pretrain",
        "as shipped: 16x64, global skip, L1, lr 2e-4 cosine, 4,000 steps of 64 crops of 128 px",
        _SRRESNET_X4,
    ),
    "srresnet_x4_fast": Recipe(
        "pretrain",
        "as shipped: 10x48, as srresnet_x4 but 4,200 steps of 16 crops of 96 px (80 min on 2 CPU cores)",
        {
            **_SRRESNET_X4,
            "n_blocks": 10,
            "n_feats": 48,
            "batch_size": 16,
            "crop": 96,
            "steps": 4_200,
            "val_every": 250,
        },
    ),
    "srgan_x4": Recipe(
        "gan",
        "as shipped: from srresnet_x<scale>, vgg19_multi 0.01 + L1 1 + adv 1e-3 + grid 10, "
        "3,900 steps of 16 crops of 96 px, lr 1e-4 x0.1 halfway",
        dict(
            scale=4,
            **_SHIPPED_GAN_LOSSES,
            d_feats=64,
            lr=1e-4,
            d_lr=None,
            schedule="step",
            lr_step_at=0.5,
            lr_gamma=0.1,
            batch_size=16,
            crop=96,
            augment=True,
            degradation="bicubic",
            ema=0.999,
            steps=3_900,
            val_every=975,
        ),
    ),
    "srgan_x4_real": Recipe(
        "gan",
        "as shipped: from srgan_x4, LR by --degradation photo, srgan_x4's losses, "
        "5,315 steps of 8 crops of 96 px, lr 1e-4 constant (shipped as a chain of runs, its "
        "discriminator started afresh at steps 400 and 4,715: weights/README.md)",
        dict(
            scale=4,
            init="srgan_x4",
            **_SHIPPED_GAN_LOSSES,
            d_feats=64,
            lr=1e-4,
            d_lr=None,
            schedule="constant",
            batch_size=8,
            crop=96,
            augment=True,
            degradation="photo",
            ema=0.999,
            steps=5_315,
        ),
    ),
    "srgan_x4_denoise": Recipe(
        "restore",
        "as shipped: srgan_x4 frozen behind an 8x64 restoration front-end trained alone on "
        "--degradation repair, L1 against the clean LR of the sharpened HR, 16 crops of 192 px, lr 1e-4 "
        "cosine (shipped as a chain: 6,000 steps on noisy at 2e-4, then 17,000 with blur and sharpened "
        "targets: weights/README.md)",
        dict(
            scale=4,
            init="srgan_x4",
            restore_blocks=8,
            restore_feats=64,
            loss="l1",
            lr=1e-4,
            schedule="cosine",
            batch_size=16,
            crop=192,
            augment=True,
            degradation="repair",
            ema=0.999,
            steps=6_000,
            val_every=1_500,
        ),
    ),
    "srresnet_paper": Recipe(
        "pretrain",
        "the paper's SRResNet (the earlier default): MSE, no global skip, lr 1e-4 constant, "
        "100,000 steps of 16 crops of 96 px",
        dict(
            scale=4,
            n_blocks=16,
            n_feats=64,
            global_skip=False,
            loss="mse",
            lr=1e-4,
            schedule="constant",
            batch_size=16,
            crop=96,
            augment=True,
            degradation="bicubic",
            ema=0.999,
            steps=100_000,
            val_every=1000,
        ),
    ),
    "srgan_paper": Recipe(
        "gan",
        "the paper's SRGAN (the earlier default): vgg54 + adv 1e-3 + TV 2e-8, "
        "200,000 steps of 16 crops of 96 px, lr 1e-4 x0.1 halfway",
        dict(
            scale=4,
            loss="mse",
            pixel_weight=0.0,
            content_layer="vgg54",
            content_weight=1.0,
            adv_weight=1e-3,
            gan_loss="standard",
            r1_gamma=0.0,
            tv_weight=2e-8,
            grid_weight=0.0,
            d_feats=64,
            lr=1e-4,
            d_lr=None,
            schedule="step",
            lr_step_at=0.5,
            lr_gamma=0.1,
            batch_size=16,
            crop=96,
            augment=True,
            degradation="bicubic",
            ema=0.999,
            steps=200_000,
            val_every=1000,
        ),
    ),
}
# a new run given no --recipe: the gan stage's recipe (pretrain: TrainConfig's own defaults)
DEFAULT_RECIPES = {"gan": "srgan_x4"}


def choose_recipe(name: str | None, stage: str | None) -> str | None:
    """The recipe of a new run: `name` (--recipe, or a config file's `recipe`), else the default
    recipe of `stage` (None: TrainConfig's defaults); a recipe of the other stage than an explicit
    `stage` is refused."""
    if name is None:
        return DEFAULT_RECIPES.get(stage or "pretrain")
    recipe = RECIPES.get(name)
    if recipe is None:
        raise TrainingOptionError(f"unknown --recipe {name!r}: use {', '.join(RECIPES)}")
    if stage is not None and stage != recipe.stage:
        same = [n for n, r in RECIPES.items() if r.stage == stage]
        raise TrainingOptionError(
            f"--recipe {name} is a {recipe.stage}-stage recipe, not for --stage {stage}",
            hint=f"leave out --stage, or pick {', '.join(same)}" if same else None,
        )
    return name


def _vgg_min_side(layer: object) -> int:
    """The smallest crop side a VGG content layer still sees as one pixel: block i comes after
    i - 1 max-pools of stride 2 (a multi-layer loss: its deepest layer)."""
    deepest = max(tap.block for tap in getattr(layer, "layers", [layer]))
    return int(2 ** (deepest - 1))


def load_toml(path: str | Path) -> dict[str, Any]:
    """A `--config` file: TOML with the TrainConfig field names (dashes or underscores), flat or in
    tables ([model], [gan], ...) whose keys are merged; every name is checked. `recipe = "NAME"`
    names the recipe under the file's values (the caller takes it out: it is not a field)."""
    path = Path(path)
    raw = read_toml(path, TrainingError, "config file")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            k = k.replace("-", "_")
            if k in flat:
                raise TrainingError(f"{path}: option {k!r} is set twice")
            flat[k] = v
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(flat) - set(known) - {"recipe"})
    if unknown:
        raise TrainingError(f"{path}: unknown option(s): {', '.join(unknown)}")
    defaults = TrainConfig()
    for k, v in flat.items():
        if k == "recipe":  # not a field: the recipe under the file's values (choose_recipe)
            if not isinstance(v, str):
                raise TrainingError(f"{path}: recipe should be a name ({', '.join(RECIPES)}), got {v!r}")
            continue
        want = type(getattr(defaults, k)) if getattr(defaults, k) is not None else None
        ok = want is None or isinstance(v, want) or (want is float and isinstance(v, int))
        if want is list:  # data: one folder, or a list of them
            if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
                raise TrainingError(f"{path}: {k} should be a folder or a list of folders, got {v!r}")
            continue
        if not ok or (want is int and isinstance(v, bool)):
            raise TrainingError(f"{path}: {k} should be a {want.__name__ if want else 'value'}, got {v!r}")
        if want is float:
            flat[k] = float(v)
    return flat


def apply_init_arch(config: TrainConfig, given: set[str]) -> TrainConfig:
    """With --init (always in the gan stage; in pretrain to fine-tune, e.g. the shipped weights on
    your photos) the generator's shape comes from those weights; options the user set explicitly
    (`given`) must agree with them."""
    init = config.init_weights
    if init is None:
        return config
    info = weights_mod.read_info(init)
    if info.arch != "srresnet":
        raise TrainingError(f"--init {init} is a {info.arch} model; training starts from srresnet weights")
    arch = {k: info.config[k] for k in ARCH_FIELDS if k in info.config}
    if info.config.get("restore_blocks"):  # weights with a front-end bring theirs; others get this run's
        arch.update({k: info.config[k] for k in RESTORE_FIELDS if k in info.config})
    clash = [
        f"{k}: {getattr(config, k)} (given) vs {v} (in {init})"
        for k, v in arch.items()
        if k in given and getattr(config, k) != v
    ]
    if clash:
        raise TrainingError(
            f"the generator's shape comes from --init, which disagrees: {'; '.join(clash)}",
            hint="leave out the shape options, or pick --init weights of that shape",
        )
    return replace(config, **arch)


def read_checkpoint_config(out: str | Path) -> TrainConfig:
    """The config a run in `out` was started with (for `--resume` without restating options)."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"nothing to resume: {path} does not exist")
    return TrainConfig.from_dict(load_checkpoint(path)["config"])
