"""A training run described in one printable config, and the pieces it is built from.

:class:`TrainConfig` holds every setting of a run as plain data (nanoGPT style): it is
printed at the start, written to ``config.json``, stored in every checkpoint, and the
command line ``python -m diffusion_course.train`` is generated from its fields, so the two
cannot drift apart. From it come

- the network (:func:`build_model`, a U-Net preset),
- the diffusion setup a sampler will need (:func:`build_diffusion_config`, recorded in every
  checkpoint), and
- the objective the training loop minimises (:func:`build_objective`, DDPM Algorithm 1 with
  the options of Improved DDPM and min-SNR).

The loop itself is :class:`diffusion_course.trainer.Trainer`; it knows nothing of diffusion.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from .conditioning import TEXT_ENCODERS
from .data import DATASETS, default_hflip
from .diffusion import CONDITIONINGS, PREDICTION_TYPES, DiffusionConfig
from .losses import LOSS_TYPES, MIN_SNR_GAMMA, DiffusionObjective, variance_for_loss
from .runtime import DEVICES
from .schedules import SCHEDULES
from .timesteps import TIMESTEP_SAMPLERS
from .unet import PRESETS
from .validation import (
    check_choice,
    check_ema_decay,
    check_int,
    check_min_snr_gamma,
    check_non_negative,
    check_positive,
)

PRECISIONS = ("fp32", "bf16", "fp16")
FLIP_CHOICES = ("auto", "on", "off")

CPU_RECIPE: dict[str, Any] = {
    "model": "tiny",
    "schedule": "linear",
    "prediction": "x0",
    "min_snr": 5.0,
    "batch_size": 64,
    "lr": 1e-3,
    "warmup_steps": 0,
    "ema_decay": 0.9995,
    "max_minutes": 15.0,
}
"""The course's laptop-CPU run on Fashion-MNIST: the :class:`TrainConfig` fields that differ from
its defaults, chosen by measurement (``benchmarks/ablations.py``, README "Ablations"). In 15 minutes
on 2 cores it reached 0.27x the FID of the recipe it replaced (``small``, cosine, eps, lr 5e-4, EMA
0.999, 100 warm-up steps). Why each choice: the ``tiny`` U-Net makes about 3200 updates in the budget
where ``small`` makes 1900, and at this budget updates matter more than capacity; predicting x0 does
not amplify the network's error at high noise as eps does (x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab));
min-SNR-5 weighting keeps the nearly clean timesteps from dominating the loss; a short run wants
the larger learning rate and no warm-up. The command line's default on the CPU (``--recipe cpu``),
notebook 03's long training cell and the notebooks' pretrained models all read it."""

DDPM_RECIPE: dict[str, Any] = {
    "model": "ddpm-cifar10",
    "schedule": "linear",
    "timesteps": 1000,
    "prediction": "eps",
    "batch_size": 128,
    "lr": 2e-4,
    "warmup_steps": 5000,
    "grad_clip": 1.0,
    "ema_decay": 0.9999,
}
"""DDPM's CIFAR-10 settings (Ho et al. 2020, appendix B): the 35.7 M-parameter U-Net, linear
betas over T = 1000, Adam at 2e-4 with 5000 warm-up steps, batch 128, gradient clipping at 1 and
EMA 0.9999. For a GPU and the CIFAR-10 reproduction (``--recipe ddpm``); far too slow for a CPU."""

RECIPES: dict[str, dict[str, Any]] = {"cpu": CPU_RECIPE, "ddpm": DDPM_RECIPE}
"""Named starting points for the command line's ``--recipe``; options given by hand win."""


def default_recipe(device: torch.device | str) -> str:
    """The recipe ``--recipe auto`` picks: ``cpu`` unless the run is on a CUDA GPU (then ``ddpm``)."""
    return "ddpm" if torch.device(device).type == "cuda" else "cpu"


def _setting(default: Any, help: str, *, choices: tuple | None = None, group: str, **cli) -> Any:
    """A config field with the text and choices its command-line option shows."""
    return field(default=default, metadata={"help": help, "choices": choices, "group": group, **cli})


@dataclass
class TrainConfig:
    """Every setting of a training run; plain data, printed at start and stored in checkpoints.

    Length: training stops at whichever comes first of ``epochs``, ``max_steps`` and
    ``max_minutes`` (``None`` = no limit). ``batch_size`` is per process and per forward
    pass; one optimizer step sees ``batch_size * grad_accum * world_size`` images.
    Preview grids use ``sample_steps`` respaced DDPM steps (100: a grid of 64 small-model
    images takes about a minute on a laptop CPU); ``None`` runs all T steps of Algorithm 2.
    ``grad_clip=None`` disables clipping; ``min_snr`` is min-SNR's gamma (``None`` = off).
    Each field's metadata holds the help text of its command-line option.
    """

    # data
    dataset: str = _setting("fashion-mnist", "which images", choices=DATASETS, group="data")
    data_dir: str | None = _setting(None, "local copy of the data (required for 'folder')", group="data")
    image_size: int | None = _setting(None, "resize to this side (default: native)", group="data")
    limit: int | None = _setting(None, "use only N training images, spread evenly over the set", group="data")
    hflip: str = _setting("auto", "random left-right flips: auto = on for cifar10/folder, off for mnist/"
                          "fashion-mnist", choices=FLIP_CHOICES, group="data")
    # diffusion
    timesteps: int = _setting(1000, "T, the number of diffusion steps", group="diffusion")
    schedule: str = _setting("linear", "beta schedule", choices=SCHEDULES, group="diffusion")
    prediction: str = _setting("eps", "network target", choices=PREDICTION_TYPES, group="diffusion")
    loss: str = _setting("simple", "simple = DDPM's MSE; hybrid = MSE + 0.001 VLB with a learned variance "
                         "(Improved DDPM); vlb = the bound alone", choices=LOSS_TYPES, group="diffusion")
    min_snr: float | None = _setting(None, f"min-SNR loss weighting (Hang et al. 2023), gamma {MIN_SNR_GAMMA:g} "
                                     "if no value", group="diffusion", nargs="?", const=MIN_SNR_GAMMA,
                                     metavar="GAMMA")
    timestep_sampler: str = _setting("uniform", "how t is drawn: importance = Improved DDPM 3.3 (with --loss vlb)",
                                     choices=TIMESTEP_SAMPLERS, group="diffusion")
    conditioning: str = _setting("none", "class = class-conditional (labels of the dataset); text = "
                                 "captions made from the labels, read by a text encoder",
                                 choices=CONDITIONINGS, group="diffusion")
    cond_drop: float = _setting(0.1, "probability of dropping a label (text: the caption) in training (for "
                                "classifier-free guidance)", group="diffusion")
    text_encoder: str = _setting("course", "text conditioning's encoder: course = a small transformer trained "
                                 "with the U-Net (offline); clip = a frozen pretrained CLIP text model (needs "
                                 "pip install 'diffusion-course[text]' and one download)", choices=TEXT_ENCODERS,
                                 group="diffusion")
    # model
    model: str = _setting("tiny", "U-Net preset", choices=tuple(PRESETS), group="model")
    grad_checkpoint: bool = _setting(False, "recompute activations to save memory", group="model")
    channels_last: bool = _setting(False, "NHWC memory format (faster on GPUs)", group="model")
    compile: bool = _setting(False, "torch.compile the model", group="model")
    latent: bool = _setting(False, "latent diffusion: train on the latents of a VAE (trained once per dataset "
                            "and cached under data/autoencoders; Rombach et al. 2022)", group="model")
    vae_epochs: float = _setting(5.0, "epochs of the VAE's one-off training (with --latent)", group="model")
    # optimisation
    batch_size: int = _setting(128, "images per process per forward pass", group="optimisation")
    grad_accum: int = _setting(1, "micro-batches per optimizer step", group="optimisation")
    lr: float = _setting(2e-4, "AdamW learning rate", group="optimisation")
    weight_decay: float = _setting(0.0, "AdamW weight decay", group="optimisation")
    warmup_steps: int = _setting(500, "linear learning-rate warm-up", group="optimisation")
    grad_clip: float | None = _setting(1.0, "max gradient norm, 0 = off", group="optimisation")
    ema_decay: float = _setting(0.9999, "EMA decay", group="optimisation")
    precision: str = _setting("fp32", "fp32, bf16 autocast (CPU/GPU), fp16 + grad scaler (CUDA only)",
                              choices=PRECISIONS, group="optimisation")
    # how long
    epochs: float | None = _setting(None, "passes over the data", group="length")
    max_steps: int | None = _setting(None, "optimizer steps", group="length")
    max_minutes: float | None = _setting(None, "wall-clock minutes, then save and stop", group="length")
    # bookkeeping
    seed: int = _setting(0, "random seed", group="run")
    device: str = _setting("auto", "auto = cuda, then mps, then cpu", choices=DEVICES, group="run")
    num_workers: int = _setting(2, "DataLoader workers for large folders", group="run")
    out: str = _setting("runs/default", "output folder", group="run")
    log_every: int = _setting(50, "steps per metrics line", group="run")
    sample_every: int = _setting(1000, "steps per preview grid, 0 = off", group="run")
    sample_count: int = _setting(64, "images per preview grid", group="run")
    sample_steps: int | None = _setting(100, "respaced DDPM steps per preview grid, min(this, T)", group="run")
    checkpoint_every: int = _setting(1000, "steps per checkpoint, 0 = only at the end", group="run")
    progress: bool = _setting(True, "show a progress bar", group="run")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`'s output; unknown keys are an error. Fields added since
        a checkpoint was written take their defaults."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{field: default}`` for every field."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    def describe(self) -> str:
        """One ``name = value`` line per field (nanoGPT style), ready to print."""
        width = max(len(f.name) for f in fields(self))
        return "\n".join(f"{f.name:<{width}} = {getattr(self, f.name)!r}" for f in fields(self))

    def validate(self) -> None:
        """Check choices and ranges; raise a one-line ValueError naming the fix."""
        for f in fields(self):
            if f.metadata.get("choices"):
                check_choice(f.name, getattr(self, f.name), f.metadata["choices"])
        if self.dataset == "mnist" and self.hflip == "on":
            raise ValueError("hflip='on' is not allowed for mnist: a mirrored digit is not a digit")
        if self.latent and self.hflip == "on":
            raise ValueError("hflip='on' does not work with latent: the latents are encoded once, and a mirrored "
                             "latent is not the latent of the mirrored image; use --hflip auto or off")
        check_positive("vae_epochs", self.vae_epochs)
        for name in ("batch_size", "grad_accum", "sample_count", "log_every"):
            check_int(name, getattr(self, name))
        check_int("timesteps", self.timesteps, minimum=2)
        for name in ("sample_every", "checkpoint_every", "warmup_steps", "num_workers", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        for name in ("limit", "max_steps", "image_size", "sample_steps"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        check_positive("lr", self.lr)
        check_non_negative("weight_decay", self.weight_decay)
        check_ema_decay(self.ema_decay)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip, " (or None for no clipping)")
        if self.min_snr is not None:
            check_min_snr_gamma(self.min_snr)
        if self.text_encoder != "course" and self.conditioning != "text":
            raise ValueError(f"text_encoder {self.text_encoder!r} is for conditioning 'text'; add --conditioning "
                             "text or drop --text-encoder")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop} (0.1 is typical)")
        for name in ("epochs", "max_minutes"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if self.timestep_sampler == "importance" and self.loss != "vlb":
            raise ValueError(
                "importance sampling of t is for the 'vlb' loss (Improved DDPM sec. 3.3): with "
                f"loss {self.loss!r} its weights would rescale L_simple too; use --loss vlb or the uniform sampler"
            )


def resolve_hflip(config: TrainConfig) -> bool:
    """The flip decision for ``config``: ``auto`` asks the data layer (:func:`~diffusion_course.data.default_hflip`);
    a latent run never flips (its latents are encoded once)."""
    if config.latent:
        return False
    if config.hflip == "auto":
        return default_hflip(config.dataset)
    return config.hflip == "on"


def build_diffusion_config(config: TrainConfig, num_classes: int | None = None) -> DiffusionConfig:
    """The :class:`DiffusionConfig` of a run: schedule, T, target, the variance its loss implies
    (:func:`~diffusion_course.losses.variance_for_loss`), and the conditioning."""
    return DiffusionConfig(
        schedule=config.schedule,
        timesteps=config.timesteps,
        prediction=config.prediction,
        variance=variance_for_loss(config.loss),
        conditioning=config.conditioning,
        num_classes=num_classes if config.conditioning == "class" else None,
    )


def build_objective(config: TrainConfig, num_classes: int | None = None, model: nn.Module | None = None
                    ) -> DiffusionObjective:
    """The :class:`~diffusion_course.losses.DiffusionObjective` that ``config`` describes. A text-conditioned
    run needs its ``model`` (a :class:`~diffusion_course.text_model.TextConditionedUNet`): its text encoder
    tokenizes the captions made from the labels."""
    if config.conditioning == "class" and num_classes is None:
        raise ValueError("a class-conditional run needs the number of classes of its dataset")
    captions = None
    if config.conditioning == "text":
        from .conditioning import CaptionSampler, caption_set
        from .ema import unwrap_model

        model = unwrap_model(model) if model is not None else None
        if model is None or not hasattr(model, "tokenize"):
            raise ValueError("a text-conditioned run needs its text-conditioned model to tokenize the captions")
        captions = CaptionSampler(caption_set(model.config.dataset, "train", model.config.class_names),
                                  model.tokenize)
    return DiffusionObjective(
        build_diffusion_config(config, num_classes),
        loss=config.loss,
        min_snr=config.min_snr,
        timestep_sampler=config.timestep_sampler,
        cond_drop=config.cond_drop,
        captions=captions,
    )


def build_model(config: TrainConfig, channels: int, image_size: int, num_classes: int | None = None,
                classes: list[str] | None = None) -> nn.Module:
    """The U-Net preset ``config.model`` for ``channels`` x ``image_size``^2 images.

    The output channels follow the diffusion setup (twice ``channels`` for a learned variance,
    Improved DDPM sec. 3.1); a class-conditional run gets a label embedding for ``num_classes``
    classes plus the "no class" label; a text-conditioned run gets cross-attention and a text
    encoder (:func:`~diffusion_course.text_model.build_text_unet`) for captions made from the
    class names ``classes``. Raises ValueError if the preset cannot take the size.
    """
    from .unet import UNet, get_config

    diffusion = build_diffusion_config(config, num_classes)
    unet = get_config(
        config.model,
        image_size=image_size,
        in_channels=channels,
        out_channels=diffusion.output_channels(channels),
        grad_checkpoint=config.grad_checkpoint,
        num_classes=diffusion.num_classes,
    )
    if config.conditioning == "text":
        from .text_model import build_text_unet

        if not classes:
            raise ValueError("text conditioning makes captions from class names, and this dataset has no classes")
        return build_text_unet(unet, classes, config.dataset, encoder=config.text_encoder)
    return UNet(unet)


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; a clear error where unsupported."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(
                f"precision fp16 needs a CUDA GPU (it relies on a gradient scaler); "
                f"use bf16 or fp32 on {device.type}"
            )
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use --precision fp16 or fp32")
    return torch.bfloat16


__all__ = [
    "CPU_RECIPE",
    "DDPM_RECIPE",
    "FLIP_CHOICES",
    "PRECISIONS",
    "RECIPES",
    "TrainConfig",
    "build_diffusion_config",
    "build_model",
    "build_objective",
    "check_precision",
    "default_recipe",
    "resolve_hflip",
]
