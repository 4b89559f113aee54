"""Command-line trainer: ``python -m diffusion_course.train`` (or ``diffusion-course-train``).

With no options it trains the course's best measured CPU recipe on Fashion-MNIST for 15 minutes
(``--recipe cpu``, :data:`~diffusion_course.training.CPU_RECIPE`; on a CUDA GPU DDPM's own settings,
``--recipe ddpm``). Options given by hand win over the recipe, e.g. a longer laptop run::

    python -m diffusion_course.train --max-minutes 60 --out runs/fmnist

and DDPM's CIFAR-10 run on K GPUs (or K CPU processes) with DistributedDataParallel::

    torchrun --nproc_per_node=K -m diffusion_course.train --dataset cifar10 --recipe ddpm --epochs 100 ...

The script reads like its four steps: **parse** the arguments, **validate** everything
that can be checked before training starts (bad input ends with one line on stderr and
exit code 2), **build** data, model, objective and :class:`~diffusion_course.trainer.Trainer`, and
**run**. Exit codes: 0 done (or time limit reached), 1 non-finite loss, 2 bad input,
130 interrupted by Ctrl-C (after saving a checkpoint).

Every option is a field of :class:`~diffusion_course.training.TrainConfig`: the parser is
generated from the dataclass (its help texts and choices live in the field metadata), so
the two cannot drift apart.

A run never loses a checkpoint: ``--out`` holding a checkpoint is refused unless
``--resume`` is given, ``--resume`` continues bit for bit on the CPU (see
:mod:`~diffusion_course.trainer` for GPUs and for a checkpoint from another device), and every
save is atomic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .cli import UsageError, check_writable_dir, error, parse
from .distributed import cleanup_distributed, init_distributed, launched_by_torchrun
from .runtime import get_device, seed_everything
from .trainer import NonFiniteLossError, Trainer
from .training import (
    RECIPES,
    TrainConfig,
    build_model,
    build_objective,
    check_precision,
    default_recipe,
    resolve_hflip,
)

PROG = "diffusion-course-train"
RESUMABLE = {
    "epochs", "max_steps", "max_minutes", "device", "precision", "compile", "channels_last",
    "grad_checkpoint", "num_workers", "data_dir", "out", "log_every", "sample_every",
    "sample_count", "sample_steps", "checkpoint_every", "progress",
}  # fmt: skip
"""Settings that ``--resume`` may change: how long, where and how fast -- not what is learned."""


# ---------------------------------------------------------------------------
# 1. Parse
# ---------------------------------------------------------------------------


GROUP_TITLES = {
    "data": "data", "diffusion": "diffusion", "model": "model", "optimisation": "optimisation",
    "length": "how long (the first limit reached ends the run)", "run": "run",
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one option per :class:`TrainConfig` field (``--batch-size`` for
    ``batch_size``). Options left out keep the config's defaults."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train a diffusion model (DDPM / Improved DDPM) on an image dataset.",
        argument_default=argparse.SUPPRESS,  # only options the user gave end up in the namespace
        epilog="recipes (--recipe): " + "; ".join(
            f"{name} = " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
            for name, values in RECIPES.items()
        ),
    )
    groups = {key: p.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        group = groups[meta.pop("group")]
        text, choices = meta.pop("help"), meta.pop("choices")
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            if f.default:  # an option can only switch a True default off
                group.add_argument(f"--no-{flag[2:]}", dest=f.name, action="store_false", help=f"don't {text}")
            else:
                group.add_argument(flag, action="store_true", help=text)
            continue
        shown = "" if f.default is None else f" (default: {f.default})"
        by_recipe = [f"{name} recipe: {values[f.name]}" for name, values in RECIPES.items() if f.name in values]
        if by_recipe:
            shown = f" (default: {f.default}; {'; '.join(by_recipe)})"
        group.add_argument(flag, type=_option_type(f.type), choices=choices, help=text + shown, **meta)
        if f.name == "out":
            group.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument(
        "--recipe", choices=("auto", *RECIPES),
        help="the settings to start from (options you give win): cpu = the best measured 15-minute CPU run "
             "(benchmarks/ablations.py); ddpm = DDPM's CIFAR-10 settings, for a GPU; auto (default) = cpu, or "
             "ddpm on a CUDA GPU",
    )
    return p


def _option_type(annotation: str):
    """The argparse type of a field annotated ``int``, ``float | None``, ``str`` ..."""
    for name, kind in (("int", int), ("float", float)):
        if annotation.split(" | ")[0] == name:
            return kind
    return str


# ---------------------------------------------------------------------------
# 2. Validate
# ---------------------------------------------------------------------------


def make_config(given: dict, resume: bool) -> tuple[TrainConfig, dict | None]:
    """The run's config from the options the user gave, and the checkpoint to resume (if any).

    Raises :class:`UsageError` for anything that would stop a run later: bad values, an
    output folder that holds a checkpoint without ``--resume`` (or none with it), an
    unwritable output folder, a device or precision this machine lacks.
    """
    given = dict(given)
    recipe = given.pop("recipe", None)
    if resume and recipe is not None:
        raise UsageError("--recipe cannot be used with --resume: a resumed run keeps its checkpoint's settings; "
                         "drop --recipe")
    if not resume:
        given = with_recipe(given, recipe or "auto")
    if given.get("grad_clip") == 0:
        given["grad_clip"] = None
    out = Path(given.get("out", TrainConfig.out))
    checkpoint = out / CHECKPOINT_NAME
    state = None
    if resume:
        if not checkpoint.is_file():
            raise UsageError(f"--resume: no checkpoint in {out} (looked for {checkpoint}); check --out")
        try:
            state = load_checkpoint(checkpoint)
        except ValueError as err:
            raise UsageError(str(err)) from err
        config = TrainConfig.from_dict(dict(state["config"]))
        if "diffusion_config" not in state and config.schedule == "linear" and config.timesteps != 1000:
            raise UsageError(
                f"{checkpoint} was trained with an older version's unscaled linear schedule at T = "
                f"{config.timesteps}; it can still be sampled but not resumed: start a new run with another --out"
            )
        for key, value in given.items():
            old = getattr(config, key)
            if key not in RESUMABLE and value != old:
                flag = "--" + key.replace("_", "-")
                raise UsageError(
                    f"{flag} cannot change when resuming (the checkpoint has {old!r}, you gave "
                    f"{value!r}); drop it, or start a new run with another --out"
                )
            setattr(config, key, value)
        config.out = str(out)
    else:
        if checkpoint.exists():
            raise UsageError(
                f"{out} already holds a checkpoint ({checkpoint}); use --resume to continue it "
                "or another --out for a new run"
            )
        config = TrainConfig(**given)
    try:
        config.validate()
    except ValueError as err:
        raise UsageError(str(err)) from err
    if config.epochs is None and config.max_steps is None and config.max_minutes is None:
        raise UsageError("say how long to train: --epochs, --max-steps or --max-minutes")
    if config.dataset == "folder" and not config.data_dir:
        raise UsageError("--dataset folder needs --data-dir (an ImageFolder tree or a .tar.gz of one)")
    if config.data_dir and not Path(config.data_dir).expanduser().exists():
        raise UsageError(f"--data-dir {config.data_dir} does not exist; check the path")
    try:
        device = get_device(config.device)
        check_precision(config.precision, device)
    except ValueError as err:
        raise UsageError(str(err)) from err
    check_writable_dir(out)
    return config, state


LENGTH_OPTIONS = ("epochs", "max_steps", "max_minutes")


def with_recipe(given: dict, name: str) -> dict:
    """The options ``given`` on top of recipe ``name`` (``auto``: see
    :func:`~diffusion_course.training.default_recipe`). The recipe's length (the CPU recipe's 15
    minutes) applies only when no length option was given: ``--max-steps 100`` alone means 100 steps."""
    if name == "auto":
        try:
            name = default_recipe(get_device(given.get("device", TrainConfig.device)))
        except ValueError as err:
            raise UsageError(str(err)) from err
    settings = dict(RECIPES[name])
    if any(key in given for key in LENGTH_OPTIONS):
        for key in LENGTH_OPTIONS:
            settings.pop(key, None)
    return {**settings, **given}


def check_model_fits(config: TrainConfig, image_size: int) -> None:
    """Refuse an image size the U-Net preset cannot take (before loading every image)."""
    from .unet import get_config

    what = "latents" if config.latent else "images"
    try:
        get_config(config.model, image_size=image_size)
    except ValueError as err:
        raise UsageError(f"--model {config.model} cannot take {image_size}x{image_size} {what}: {err}") from err


def _model_side(config: TrainConfig, channels: int, image_size: int) -> int:
    """The side of what the U-Net sees: the images, or with ``--latent`` their latents."""
    if not config.latent:
        return image_size
    from .autoencoder import autoencoder_config

    return autoencoder_config(config.dataset, channels, image_size).latent_size


# ---------------------------------------------------------------------------
# 3. Build and 4. run
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer; returns the exit code (0 ok, 1 non-finite loss, 2 bad input, 130 Ctrl-C)."""
    rank = int(os.environ.get("RANK", "0"))
    args = parse(build_parser(), argv)
    if isinstance(args, int):  # argparse has printed its usage line already
        return args
    given = vars(args)
    resume = bool(given.pop("resume", False))
    try:
        config, state = make_config(given, resume)
        device = get_device(config.device)
        info, device = init_distributed(device) if launched_by_torchrun() else (None, device)
    except ValueError as err:  # UsageError included
        _error(err, rank)
        return 2
    try:
        trainer = build_trainer(config, state, device, info)
    except ValueError as err:  # data or model that cannot work, found before any training step
        _error(err, rank)
        cleanup_distributed()
        return 2
    try:
        result = trainer.train()
    except NonFiniteLossError as err:
        _error(err, rank)
        return 1
    except KeyboardInterrupt:
        _error("aborted by a second Ctrl-C; the last checkpoint in --out is intact", rank)
        return 130
    finally:
        cleanup_distributed()
    if trainer.info.is_main:
        last = "n/a" if result.last_loss is None else f"{result.last_loss:.5f}"
        print(f"done: {result.reason} at step {result.step}; checkpoint {result.checkpoint}; last loss {last}")
    return 130 if result.reason == "interrupted" else 0


def build_trainer(config: TrainConfig, state: dict | None, device: torch.device, info) -> Trainer:
    """Data, model and Trainer for ``config`` (restored from ``state`` when resuming).

    Raises ValueError (:class:`UsageError`) for data or a model that cannot work, before any
    training step. Prints the config on rank 0 and writes it to ``out/config.json``.
    """
    from .batching import load_training_data
    from .data import load_dataset

    main_rank = info is None or info.is_main
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest conv algorithms for fixed shapes
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # the checks that need the data's shape come before loading every image
    probe = load_dataset(config.dataset, train=True, image_size=config.image_size, data_dir=config.data_dir)
    check_model_fits(config, _model_side(config, probe.channels, probe.image_size))

    source, stats = load_training_data(config, device, progress=main_rank)
    channels, side, space = stats["channels"], stats["image_size"], None
    if config.latent:  # the same run on the latents of a VAE (trained once and cached)
        from .latent import latent_training_data

        source, stats, space = latent_training_data(config, source, stats, state=state, device=device, info=info,
                                                    progress=main_rank)
        channels, side = space.shape[0], space.shape[1]
    num_classes = len(stats["classes"]) if stats.get("classes") else None
    seed_everything(config.seed)  # identical initial weights on every rank
    model = build_model(config, channels, side, num_classes, stats.get("classes"))
    objective = build_objective(config, num_classes, model)
    if space is not None:
        from .latent import LatentObjective

        objective = LatentObjective(objective, space)
    trainer = Trainer(config, model, source, objective=objective, device=device, data_stats=stats, info=info)
    if state is not None:
        trainer.load_state(state)
        trainer.last_checkpoint = trainer.checkpoint_path

    if main_rank:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{PROG} config:\n{config.describe()}")
        print(
            f"derived: device={device} processes={trainer.info.world_size} "
            f"images/step={trainer.images_per_step} images={stats['count']} "
            f"shape={stats['channels']}x{stats['image_size']}x{stats['image_size']} "
            + (f"latents={'x'.join(map(str, space.shape))} scale={space.scaling_factor:.4f} " if space else "")
            + f"hflip={resolve_hflip(config)} batches/epoch={trainer.stream.batches_per_epoch} "
            f"total_steps={trainer.total_steps()} params={n_params:,}"
            + (f" resumed_at_step={trainer.step}" if state is not None else "")
        )
        (Path(config.out) / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return trainer


def _error(message, rank: int) -> None:
    error(PROG, message, rank)


if __name__ == "__main__":
    sys.exit(main())
