"""Command-line trainer: ``python -m diffusion_course.train`` (or ``diffusion-course-train``).

Example, a laptop run on Fashion-MNIST::

    python -m diffusion_course.train --dataset fashion-mnist --epochs 5 --batch-size 128 --out runs/fmnist

and the same on K GPUs (or K CPU processes) with DistributedDataParallel::

    torchrun --nproc_per_node=K -m diffusion_course.train --dataset cifar10 --model ddpm-cifar10 ...

The script reads like its four steps: **parse** the arguments, **validate** everything
that can be checked before training starts (bad input ends with one line on stderr and
exit code 2), **build** data, model and :class:`~diffusion_course.training.Trainer`, and
**run**. Exit codes: 0 done (or time limit reached), 1 non-finite loss, 2 bad input,
130 interrupted by Ctrl-C (after saving a checkpoint).

A run never loses a checkpoint: ``--out`` holding a checkpoint is refused unless
``--resume`` is given, ``--resume`` continues bit for bit, and every save is atomic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .data import DATASETS
from .diffusion import PREDICTION_TYPES
from .distributed import cleanup_distributed, init_distributed, launched_by_torchrun
from .losses import LOSS_TYPES, MIN_SNR_GAMMA, TIMESTEP_SAMPLERS
from .runtime import get_device, seed_everything
from .schedules import SCHEDULES
from .training import (
    FLIP_CHOICES,
    PRECISIONS,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    build_model,
    check_precision,
    load_training_data,
    resolve_hflip,
)

PROG = "diffusion-course-train"
MODELS = ("tiny", "small", "ddpm-cifar10")
DEVICES = ("auto", "cpu", "cuda", "mps")

RESUMABLE = {
    "epochs", "max_steps", "max_minutes", "device", "precision", "compile", "channels_last",
    "grad_checkpoint", "num_workers", "data_dir", "out", "log_every", "sample_every",
    "sample_count", "sample_steps", "checkpoint_every", "progress",
}  # fmt: skip
"""Settings that ``--resume`` may change: how long, where and how fast -- not what is learned."""


class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit code 2."""


# ---------------------------------------------------------------------------
# 1. Parse
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser. Options left out keep :class:`TrainConfig`'s defaults."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train a diffusion model (DDPM / Improved DDPM) on an image dataset.",
        argument_default=argparse.SUPPRESS,  # only options the user gave end up in the namespace
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help=f"which images (default: {d.dataset})")
    data.add_argument("--data-dir", help="local copy of the data (required for 'folder')")
    data.add_argument("--image-size", type=int, help="resize to this side (default: native)")
    data.add_argument("--limit", type=int, help="use only N training images, spread evenly over the set (quick tests)")
    data.add_argument("--hflip", choices=FLIP_CHOICES,
                      help="random left-right flips: auto = on for cifar10/folder, off for "
                           "mnist/fashion-mnist (default: auto)")
    diff = p.add_argument_group("diffusion")
    diff.add_argument("--timesteps", type=int, help=f"T (default: {d.timesteps})")
    diff.add_argument("--schedule", choices=SCHEDULES, help=f"beta schedule (default: {d.schedule})")
    diff.add_argument("--prediction", choices=PREDICTION_TYPES,
                      help=f"network target (default: {d.prediction})")
    diff.add_argument("--loss", choices=LOSS_TYPES,
                      help="simple = DDPM's MSE; hybrid = MSE + 0.001 VLB with a learned variance "
                           f"(Improved DDPM); vlb = the bound alone (default: {d.loss})")
    diff.add_argument("--min-snr", type=float, nargs="?", const=MIN_SNR_GAMMA, metavar="GAMMA",
                      help=f"min-SNR loss weighting (Hang et al. 2023), gamma {MIN_SNR_GAMMA:g} if no value")
    diff.add_argument("--timestep-sampler", choices=TIMESTEP_SAMPLERS,
                      help="importance sampling of t (Improved DDPM 3.3; with --loss hybrid/vlb)")
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=MODELS, help=f"U-Net preset (default: {d.model})")
    model.add_argument("--grad-checkpoint", action="store_true", help="recompute activations to save memory")
    model.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster on GPUs)")
    model.add_argument("--compile", action="store_true", help="torch.compile the model")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, help=f"images per process per forward pass (default: {d.batch_size})")
    opt.add_argument("--grad-accum", type=int, help=f"micro-batches per optimizer step (default: {d.grad_accum})")
    opt.add_argument("--lr", type=float, help=f"AdamW learning rate (default: {d.lr:g})")
    opt.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default: {d.weight_decay:g})")
    opt.add_argument("--warmup-steps", type=int, help=f"linear lr warm-up (default: {d.warmup_steps})")
    opt.add_argument("--grad-clip", type=float, help=f"max gradient norm, 0 = off (default: {d.grad_clip})")
    opt.add_argument("--ema-decay", type=float, help=f"EMA decay (default: {d.ema_decay})")
    opt.add_argument("--precision", choices=PRECISIONS,
                     help="fp32, bf16 autocast (CPU/GPU), fp16 + grad scaler (CUDA only) (default: fp32)")
    length = p.add_argument_group("how long (the first limit reached ends the run)")
    length.add_argument("--epochs", type=float, help="passes over the data")
    length.add_argument("--max-steps", type=int, help="optimizer steps")
    length.add_argument("--max-minutes", type=float, help="wall-clock minutes, then save and stop")
    run = p.add_argument_group("run")
    run.add_argument("--out", help=f"output folder (default: {d.out})")
    run.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    run.add_argument("--seed", type=int, help=f"random seed (default: {d.seed})")
    run.add_argument("--device", choices=DEVICES, help="auto = cuda, then mps, then cpu")
    run.add_argument("--num-workers", type=int, help=f"DataLoader workers for large folders (default: {d.num_workers})")
    run.add_argument("--log-every", type=int, help=f"steps per metrics line (default: {d.log_every})")
    run.add_argument("--sample-every", type=int, help=f"steps per sample grid, 0 = off (default: {d.sample_every})")
    run.add_argument("--sample-count", type=int, help=f"images per grid (default: {d.sample_count})")
    run.add_argument("--sample-steps", type=int,
                     help=f"respaced DDPM steps per grid, min(this, T) (default: {d.sample_steps})")
    run.add_argument("--checkpoint-every", type=int,
                     help=f"steps per checkpoint, 0 = only at the end (default: {d.checkpoint_every})")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


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
    check_writable(out)
    return config, state


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to --out {out}: {err.strerror or err}; choose another folder") from err


def check_model_fits(config: TrainConfig, image_size: int) -> None:
    """Refuse an image size the U-Net preset cannot take (before loading every image)."""
    from .unet import get_config

    try:
        get_config(config.model, image_size=image_size)
    except ValueError as err:
        raise UsageError(f"--model {config.model} cannot take {image_size}x{image_size} images: {err}") from err


# ---------------------------------------------------------------------------
# 3. Build and 4. run
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer; returns the exit code (0 ok, 1 non-finite loss, 2 bad input, 130 Ctrl-C)."""
    rank = int(os.environ.get("RANK", "0"))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its usage line already
        return int(exit_.code or 0)
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
    from .data import load_dataset

    main_rank = info is None or info.is_main
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest conv algorithms for fixed shapes
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # the checks that need the data's shape come before loading every image
    probe = load_dataset(config.dataset, train=True, image_size=config.image_size, data_dir=config.data_dir)
    check_model_fits(config, probe.image_size)

    source, stats = load_training_data(config, device, progress=main_rank)
    seed_everything(config.seed)  # identical initial weights on every rank
    model = build_model(config, stats["channels"], stats["image_size"])
    trainer = Trainer(config, model, source, device=device, data_stats=stats, info=info)
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
            f"hflip={resolve_hflip(config)} batches/epoch={trainer.stream.batches_per_epoch} "
            f"total_steps={trainer.total_steps()} params={n_params:,}"
            + (f" resumed_at_step={trainer.step}" if state is not None else "")
        )
        (Path(config.out) / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return trainer


def _error(message, rank: int) -> None:
    if rank == 0:
        text = " ".join(str(message).split())  # always one line
        print(f"{PROG}: error: {text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
