"""Command-line sampler: ``python -m diffusion_course.sample`` (or ``diffusion-course-sample``).

Draws images from a training checkpoint and saves them as one PNG grid::

    python -m diffusion_course.sample --checkpoint runs/fmnist/checkpoint.pt --num-samples 64 \\
        --sampler dpm-solver++ --steps 20 --seed 0 --out samples.png

Like nanoGPT's ``sample.py``, it imports the model, the checkpoint reader and the samplers,
never the trainer. Everything that can be checked is checked before sampling starts; bad input
(a missing, corrupt or foreign checkpoint, steps outside [1, T], a negative eta or an eta for a
sampler that has none, an output that cannot be written) ends with one line on stderr and exit
code 2. The checkpoint is only read, never written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .cli import UsageError, check_writable_file, error, parse
from .runtime import DEVICES, get_device
from .sampling import SAMPLERS, SPACINGS

PROG = "diffusion-course-sample"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Draw images from a trained diffusion model.")
    p.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint written by the trainer")
    p.add_argument("--num-samples", type=int, default=64, help="how many images (default: 64)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="default: ddim")
    p.add_argument("--steps", type=int, default=50, help="model calls, 1..T (default: 50)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM's noise level: 0 deterministic (default), 1 DDPM-like; ddim only")
    p.add_argument("--spacing", choices=SPACINGS, default="trailing", help="which timesteps (default: trailing)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG grid (default: samples.png)")
    p.add_argument("--save-npz", type=Path, default=None, help="also save the images as uint8 in a .npz")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row (default: square)")
    p.add_argument("--batch-size", type=int, default=256, help="images per sampling batch (default: 256)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda, then mps, then cpu")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Everything about the arguments that needs no checkpoint (raises :class:`UsageError`)."""
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.nrow is not None and args.nrow < 1:
        raise UsageError(f"--nrow must be at least 1, got {args.nrow}")
    if args.eta is not None:
        if args.sampler != "ddim":
            raise UsageError(f"--eta is only for --sampler ddim ({args.sampler} has no eta); drop --eta")
        if not 0.0 <= args.eta <= 1.0:
            raise UsageError(f"--eta must be in [0, 1] (0 deterministic, 1 DDPM-like), got {args.eta:g}")
    if not args.checkpoint.is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file; check the path (the trainer writes "
                         "runs/<name>/checkpoint.pt)")
    check_writable_file(args.out, "--out", (".png",))
    if args.save_npz is not None:
        check_writable_file(args.save_npz, "--save-npz", (".npz",))


def load_pipeline(args: argparse.Namespace):
    """The model of ``--checkpoint`` as a :class:`~diffusion_course.pipeline.DiffusionPipeline`,
    checked against ``--steps`` (raises :class:`UsageError`)."""
    from .pipeline import DiffusionPipeline

    try:
        device = get_device(args.device)
        pipe = DiffusionPipeline.from_checkpoint(args.checkpoint, device=device, ema=not args.raw_weights)
    except CheckpointError as err:
        raise UsageError(f"--checkpoint: {err}") from err
    except ValueError as err:
        raise UsageError(str(err)) from err
    T = pipe.diffusion.timesteps
    if not 1 <= args.steps <= T:
        raise UsageError(f"--steps must be in [1, {T}] for this model (trained with T = {T}), got {args.steps}")
    return pipe


def save_npz(images: torch.Tensor, path: Path) -> None:
    """Images ``[N, C, H, W]`` in [-1, 1] as uint8 ``[N, H, W, C]`` (the layout of common FID tools), atomically."""
    import numpy as np

    from .checkpoint import atomic_write

    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    atomic_write(path, lambda f: np.savez_compressed(f, images=pixels))


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit code: 0 done, 2 bad input, 130 interrupted."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        check_arguments(args)
        pipe = load_pipeline(args)
    except UsageError as err:
        error(PROG, err)
        return 2
    from .viz import save_image_grid

    d = pipe.diffusion
    space = f", in a {'x'.join(map(str, d.latent.shape))} latent space" if d.latent is not None else ""
    print(f"{PROG}: {args.num_samples} images from {args.checkpoint} ({d.schedule} schedule, T={d.timesteps}, "
          f"predicts {d.prediction}{space}) with {args.sampler}, {args.steps} steps, seed {args.seed}",
          file=sys.stderr)
    try:
        images = pipe.generate(
            args.num_samples, sampler=args.sampler, steps=args.steps, eta=args.eta or 0.0, spacing=args.spacing,
            seed=args.seed, batch_size=args.batch_size, progress=args.progress,
        )
    except KeyboardInterrupt:
        error(PROG, "interrupted; nothing was written")
        return 130
    save_image_grid(images, args.out, nrow=args.nrow)
    written = [str(args.out)]
    if args.save_npz is not None:
        save_npz(images, args.save_npz)
        written.append(str(args.save_npz))
    print(f"wrote {' and '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
