"""Command-line evaluation: ``python -m diffusion_course.evaluate`` (or ``diffusion-course-evaluate``).

Samples from a checkpoint and prints FID, KID, the Inception-Score analogue and precision/recall
against the real test images, on the course classifier's features (offline) or Inception-v3's::

    python -m diffusion_course.evaluate --checkpoint runs/fmnist/checkpoint.pt --num-samples 1000 \\
        --sampler dpm-solver++ --steps 20

The first evaluation of a dataset trains its classifier once (a few CPU minutes for
Fashion-MNIST) and caches it, with the real images' features, under ``data/features/``.
Bad input ends with one line on stderr and exit code 2, as in the sample command (whose options
this one shares). For a class-conditional model, ``--class-id all`` draws every class in turn and
adds the class accuracy (the course classifier judges whether each sample shows its class).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import UsageError, check_writable_file, error, parse
from .features import EXTRACTORS
from .sample import build_parser as sample_parser
from .sample import check_arguments, condition_kwargs, describe_condition, load_pipeline

PROG = "diffusion-course-evaluate"


def build_parser():
    p = sample_parser()
    p.prog = PROG
    p.description = "Sample from a trained diffusion model and measure the samples (FID, KID, IS, precision/recall)."
    p.set_defaults(num_samples=1000, out=None)
    p.add_argument("--features", choices=EXTRACTORS, default="classifier",
                   help="feature space: the course classifier (offline, default) or Inception-v3")
    p.add_argument("--real", type=int, default=None, help="real test images to compare with (default: all)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers to this .json file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit code: 0 done, 2 bad input, 130 interrupted."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        if args.num_samples < 4:
            raise UsageError(f"--num-samples must be at least 4 to estimate a covariance, got {args.num_samples}")
        if args.real is not None and args.real < 4:
            raise UsageError(f"--real must be at least 4, got {args.real}")
        if args.out is None:
            args.out = Path("evaluation_samples.png")
        check_arguments(args)
        if args.json is not None:
            check_writable_file(args.json, "--json", (".json",))
        pipe = load_pipeline(args)
        dataset = (pipe.checkpoint or {}).get("config", {}).get("dataset")
        if dataset is None or dataset == "folder":
            raise UsageError("this checkpoint's dataset has no test split the course knows; "
                             "evaluate models trained on mnist, fashion-mnist or cifar10")
    except UsageError as err:
        error(PROG, err)
        return 2
    from .evaluation import evaluate_images
    from .features import get_extractor
    from .viz import save_image_grid

    try:
        extractor = get_extractor(args.features, dataset, device=pipe.device, progress=args.progress)
        print(f"{PROG}: {args.num_samples} samples with {args.sampler}, {args.steps} steps"
              f"{describe_condition(args, pipe)} ...", file=sys.stderr)
        images = pipe.generate(args.num_samples, sampler=args.sampler, steps=args.steps, eta=args.eta or 0.0,
                               spacing=args.spacing, seed=args.seed, batch_size=args.batch_size,
                               progress=args.progress, **condition_kwargs(args))
        report = evaluate_images(images, dataset, extractor=extractor, real_limit=args.real, seed=args.seed,
                                 labels=args.labels)
    except KeyboardInterrupt:
        error(PROG, "interrupted; nothing was written")
        return 130
    save_image_grid(images[:64], args.out, nrow=args.nrow)
    print("\n".join(report.lines()))
    if args.json is not None:
        record = {"checkpoint": str(args.checkpoint), "sampler": args.sampler, "steps": args.steps,
                  "eta": args.eta, "spacing": args.spacing, "seed": args.seed, "class_id": args.class_ids,
                  "guidance": args.guidance, **report.to_dict()}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
