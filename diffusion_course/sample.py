"""Command-line sampler: ``python -m diffusion_course.sample`` (or ``diffusion-course-sample``).

Draws images from a training checkpoint and saves them as one PNG grid::

    python -m diffusion_course.sample --checkpoint runs/fmnist/checkpoint.pt --num-samples 64 \\
        --sampler dpm-solver++ --steps 20 --seed 0 --out samples.png

and from a class-conditional model (``train --conditioning class``), one class or several, with
classifier-free guidance of scale w (0: unconditional, 1: plain conditional, 2-5: guided;
:mod:`~diffusion_course.guidance`)::

    python -m diffusion_course.sample --checkpoint runs/fmnist-class/checkpoint.pt --class-id 5 --guidance 3.0
    python -m diffusion_course.sample --checkpoint runs/fmnist-class/checkpoint.pt --class-id all --num-samples 100

Several classes are drawn in turn (image i shows class ``ids[i % len(ids)]``) and the grid has one
column per class. Without ``--class-id`` a class-conditional model samples unconditionally.

A text-conditioned model (trained with ``--conditioning text``) takes ``--prompt "an ankle boot"``
(repeat it for several prompts, used in turn) and ``--guidance 3`` likewise.
Prompts are checked before sampling: an empty prompt, a prompt for a model that reads none, one
longer than the text encoder reads, or one whose words are ALL unknown to the offline encoder's
vocabulary is refused (exit code 2: such a prompt would carry no information and silently draw
arbitrary images); a prompt with SOME unknown words is drawn, with a warning naming them.

Like nanoGPT's ``sample.py``, it imports the model, the checkpoint reader and the samplers,
never the trainer. Everything that can be checked is checked before sampling starts; bad input
(a missing, corrupt or foreign checkpoint, steps outside [1, T], a negative eta or an eta for a
sampler that has none, an output that cannot be written, a class id out of range, a class or a
guidance scale for an unconditional model, a negative guidance scale, a prompt the model cannot
read) ends with one line on stderr and exit code 2. The checkpoint is only read, never written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .cli import UsageError, check_writable_file, error, parse
from .conditioning import split_words
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
    p.add_argument("--prompt", action="append", default=None,
                   help="text-conditioned models: what to draw, e.g. 'a photo of an ankle boot'; repeat the option "
                        "for several prompts, used in turn")
    p.add_argument("--class-id", nargs="+", default=None, metavar="ID",
                   help="class-conditional models: the class(es) to draw, ids or 'all' (drawn in turn)")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance scale: 0 unconditional, 1 plain conditional (default), 2-5 guided "
                        "(needs --class-id or --prompt)")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Everything about the arguments that needs no checkpoint (raises :class:`UsageError`)."""
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.nrow is not None and args.nrow < 1:
        raise UsageError(f"--nrow must be at least 1, got {args.nrow}")
    if args.guidance is not None and not (args.guidance >= 0 and args.guidance != float("inf")):  # NaN too
        raise UsageError(f"--guidance must be a number >= 0 (0 unconditional, 1 plain conditional, 2-5 guided), "
                         f"got {args.guidance:g}")
    for prompt in args.prompt or ():
        if not prompt.strip():
            raise UsageError("--prompt is empty; describe the image, e.g. --prompt 'a photo of an ankle boot' "
                             "(leave --prompt out for unconditional samples)")
    if args.prompt is not None and args.class_id is not None:
        raise UsageError("--prompt and --class-id cannot be combined: a model reads either prompts (text) or classes")
    args.class_ids = parse_class_ids(args.class_id)
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


def parse_class_ids(values: list[str] | None) -> list[int] | str | None:
    """``--class-id`` as a list of ints, ``"all"``, or None (raises :class:`UsageError`)."""
    if values is None:
        return None
    if [v.lower() for v in values] == ["all"]:
        return "all"
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UsageError(f"--class-id takes class numbers (e.g. --class-id 5 or --class-id 1 3) or 'all', "
                         f"got {' '.join(values)}") from None


def check_conditioning(args: argparse.Namespace, pipe) -> None:
    """``--class-id`` and ``--guidance`` against the model; sets ``args.labels`` (one per image, or
    None) and ``args.nrow`` for a grid of several classes (raises :class:`UsageError`)."""
    conditioning = pipe.diffusion.conditioning
    args.labels = None
    if args.class_ids is not None and conditioning != "class":
        raise UsageError(f"--class-id is for class-conditional models; this one was trained with conditioning "
                         f"{conditioning!r}: drop --class-id")
    if args.guidance is not None and conditioning == "none":
        raise UsageError("--guidance is for conditional models; this one is unconditional (trained with "
                         "conditioning 'none'): drop --guidance")
    if args.class_ids is None:
        if args.guidance is not None and conditioning == "class":
            raise UsageError("--guidance needs --class-id, the class to steer towards (e.g. --class-id 5)")
        if args.guidance is not None and conditioning == "text" and args.prompt is None:
            raise UsageError("--guidance needs --prompt (what to guide towards)")
        for warning in check_prompts(pipe, args.prompt):
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
        return
    k = pipe.num_classes
    ids = list(range(k)) if args.class_ids == "all" else args.class_ids
    for i in ids:
        if not 0 <= i < k:
            names = pipe.class_names
            known = f" ({', '.join(f'{j} {n}' for j, n in enumerate(names))})" if names else ""
            raise UsageError(f"--class-id {i} is out of range: this model knows classes 0 to {k - 1}{known}")
    args.labels = torch.tensor([ids[i % len(ids)] for i in range(args.num_samples)])
    if len(ids) > 1 and args.nrow is None:
        args.nrow = len(ids)


def condition_kwargs(args: argparse.Namespace) -> dict:
    """The conditioning keyword arguments of :meth:`DiffusionPipeline.generate` for checked ``args``."""
    return {"class_labels": getattr(args, "labels", None), "prompt": args.prompt, "guidance": args.guidance}


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
    check_conditioning(args, pipe)
    return pipe


def check_prompts(pipe, prompts: list[str] | None) -> list[str]:
    """Refuse prompts this model cannot read (raises :class:`UsageError`); return warnings to show."""
    if prompts is None:
        return ["this text-conditioned model draws unconditional samples without --prompt"] if pipe.takes_prompts \
            else []
    if not pipe.takes_prompts:
        if pipe.diffusion.conditioning == "class":
            raise UsageError("--prompt is for text-conditioned models; this one is class-conditional: "
                             "ask for a class with --class-id instead")
        raise UsageError("--prompt is for text-conditioned models (trained with --conditioning text); this one is "
                         "unconditional: drop --prompt")
    from .conditioning import TextEncoderUnavailable

    warnings = []
    for prompt in prompts:
        try:
            pipe.prompt_tokens(prompt, 1)
        except TextEncoderUnavailable as err:
            raise UsageError(f"--prompt: {err}") from err
        except ValueError as err:
            raise UsageError(f"--prompt: {err}") from err
        unknown = pipe.model.unknown_words(prompt)
        if unknown and len(unknown) == len(split_words(prompt)):
            raise UsageError(f"--prompt {prompt!r}: none of its words is known to this model's text encoder, so "
                             f"it carries no meaning; use the training words, e.g. {pipe.model.example_prompt()!r}")
        if unknown:
            warnings.append(f"--prompt {prompt!r}: unknown word(s) {' '.join(repr(w) for w in sorted(set(unknown)))} "
                            "are read as [UNK]")
    return warnings


def describe_condition(args: argparse.Namespace, pipe) -> str:
    """What the images are conditioned on, for the status line ("" when unconditional)."""
    w = 1.0 if args.guidance is None else args.guidance
    if args.prompt is not None:
        return f"; prompt(s) {args.prompt}; guidance w = {w:g}"
    if args.labels is None:
        return {"class": "; unconditional (no --class-id)", "text": "; unconditional (no --prompt)"}.get(
            pipe.diffusion.conditioning, "")
    names = pipe.class_names
    ids = sorted(set(args.labels.tolist()))
    shown = ", ".join(f"{i} {names[i]}" if names else str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
    return f"; class {shown}; guidance w = {w:g}"


def save_npz(images: torch.Tensor, path: Path, labels: torch.Tensor | None = None) -> None:
    """Images ``[N, C, H, W]`` in [-1, 1] as uint8 ``[N, H, W, C]`` (the layout of common FID tools), atomically;
    with ``labels`` (the classes asked for) also ``labels [N]``."""
    import numpy as np

    from .checkpoint import atomic_write

    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    arrays = {"images": pixels} if labels is None else {"images": pixels, "labels": labels.numpy()}
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


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
          f"predicts {d.prediction}{space}) with {args.sampler}, {args.steps} steps, seed {args.seed}"
          f"{describe_condition(args, pipe)}", file=sys.stderr)
    try:
        images = pipe.generate(
            args.num_samples, sampler=args.sampler, steps=args.steps, eta=args.eta or 0.0, spacing=args.spacing,
            seed=args.seed, batch_size=args.batch_size, progress=args.progress, **condition_kwargs(args),
        )
    except KeyboardInterrupt:
        error(PROG, "interrupted; nothing was written")
        return 130
    save_image_grid(images, args.out, nrow=args.nrow)
    written = [str(args.out)]
    if args.save_npz is not None:
        save_npz(images, args.save_npz, args.labels)
        written.append(str(args.save_npz))
    print(f"wrote {' and '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
