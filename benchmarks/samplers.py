"""Samplers compared on one trained model: quality (FID/KID on the course's features) against steps and time.

For one checkpoint, draws ``--num-samples`` images with each sampler setting (DDPM 1000 and 100
steps, DDIM 10/20/50/100, DPM-Solver++ 10/20; ``--configs`` to choose), all from the same seed,
times each set (wall clock, inference mode, batched) and scores it with the package's
``evaluate_images`` (the numbers of ``python -m diffusion_course.evaluate``). It prints the table
and the verdicts on the course's goals:

- DDIM-50 within 15 % of DDPM-1000's FID, and DPM-Solver++-20 within 10 %, each >= 20x faster;
- 64 Fashion-MNIST images with DPM-Solver++-20 from the ``small`` preset in under 10 s on a 2-core
  laptop CPU (timed on this machine's CPU, with its thread count printed).

Outputs in ``--out``: ``results.json`` (every row, the verdicts, the machine) and one PNG grid per
row. ``--publish`` also writes the record to ``benchmarks/results/samplers.json``, the copy that
notebook 04's "quality vs steps" section shows (commit it).

Usage::

    python benchmarks/samplers.py --checkpoint notebooks/03_training/runs/03_fashion_small/checkpoint.pt
    python benchmarks/samplers.py                     # first trains notebook 03's model for --train-minutes
    python benchmarks/samplers.py --quick             # smoke run: tiny model, 32 images, a few settings

Cost: DDPM-1000 dominates (1000 model calls per batch). With the ``small`` preset and 1000 samples
that is about 1.5 hours on a 2-core CPU and all rows together about 2-2.5 hours; a GPU (``--device
cuda``) takes minutes. FID depends on N and on the features: compare rows of one run only, and
never with published Inception FIDs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from diffusion_course.checkpoint import CheckpointError
from diffusion_course.classifier import ClassifierRecipe
from diffusion_course.features import course_classifier
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.pretrained import notebook_03_recipe, train_short_run
from diffusion_course.runtime import get_device
from diffusion_course.sampler_comparison import (
    DEFAULT_CONFIGS,
    RESULTS_FILE,
    SamplerRow,
    SeedSpread,
    compare_samplers,
    format_table,
    goal_verdicts,
    parse_configs,
    results_record,
    seed_spread,
)
from diffusion_course.unet import UNet
from diffusion_course.viz import save_image_grid

REPO = Path(__file__).resolve().parents[1]
QUICK_CONFIGS = "ddpm:100,ddim:10,ddim:50,dpm-solver++:10,dpm-solver++:20"
THROUGHPUT_GOAL_S = 10.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a trained Fashion-MNIST checkpoint (default: train notebook 03's model first)")
    p.add_argument("--train-minutes", type=float, default=15.0,
                   help="CPU minutes of training when no --checkpoint is given (default 15, notebook 03's budget)")
    p.add_argument("--num-samples", type=int, default=1000, help="images per sampler setting (default 1000)")
    p.add_argument("--real", type=int, default=None, help="real test images to compare with (default: all 10,000)")
    p.add_argument("--configs", default=",".join(f"{s}:{n}" for s, n in DEFAULT_CONFIGS),
                   help="SAMPLER:STEPS,... (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=250, help="images per sampling batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="where to sample: auto, cpu, cuda, mps")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/samplers"))
    p.add_argument("--publish", action="store_true", help=f"also write the record to {RESULTS_FILE}")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny model trained for 20 steps, 32 images, 500 real, a quick classifier, "
                        f"settings {QUICK_CONFIGS}")
    p.add_argument("--noise-seeds", type=int, default=3,
                   help="draw DPM-Solver++-20 (or the fastest row) again with this many other seeds, to show how "
                        "much FID moves with the seed alone (default 3; 0 skips)")
    p.add_argument("--skip-throughput", action="store_true", help="skip the CPU throughput measurement")
    p.add_argument("--throughput-count", type=int, default=64)
    p.add_argument("--throughput-steps", type=int, default=20)
    args = p.parse_args(argv)
    if args.quick:
        args.num_samples = min(args.num_samples, 32)
        args.real = args.real or 500
        if args.configs == p.get_default("configs"):
            args.configs = QUICK_CONFIGS
    try:
        args.configs = parse_configs(args.configs)
    except ValueError as err:
        p.error(str(err))
    if args.num_samples < 4 or (args.real is not None and args.real < 4):
        p.error("--num-samples and --real must be at least 4 (a covariance needs samples)")
    if args.noise_seeds < 0:
        p.error("--noise-seeds must be 0 or more")
    if args.quick:
        args.noise_seeds = min(args.noise_seeds, 1)
    return args


class RowCache:
    """Rows measured earlier for the same checkpoint and settings, one JSON file each in ``folder``:
    a run stopped during DDPM-1000 (about 20 minutes on a CPU) keeps every row it finished."""

    def __init__(self, folder: Path, key: dict) -> None:
        self.folder, self.key = folder, key
        folder.mkdir(parents=True, exist_ok=True)

    def _read(self, name: str):
        path = self.folder / f"{name}.json"
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            return None
        return saved["value"] if saved.get("key") == self.key else None

    def _write(self, name: str, value: dict) -> None:
        (self.folder / f"{name}.json").write_text(json.dumps({"key": self.key, "value": value}, indent=2) + "\n")

    def row(self, name: str) -> SamplerRow | None:
        value = self._read(name)
        return None if value is None else SamplerRow(**value)

    def save_row(self, row: SamplerRow) -> None:
        self._write(row.name, asdict(row))

    def spread(self, name: str, seeds: list[int]) -> SeedSpread | None:
        value = self._read(f"seed-noise-{name}")
        return SeedSpread(**value) if value is not None and value["seeds"] == seeds else None

    def save_spread(self, spread: SeedSpread) -> None:
        self._write(f"seed-noise-{spread.sampler}-{spread.steps}", asdict(spread))


def get_checkpoint(args) -> Path:
    """``--checkpoint``, or a model trained with notebook 03's recipe in ``--out/model`` (reused if there)."""
    if args.checkpoint is not None:
        return args.checkpoint
    folder = args.out / ("model-quick" if args.quick else "model")
    path = folder / "checkpoint.pt"
    if path.is_file():
        print(f"reusing the model trained earlier in {path} (pass --checkpoint or another --out to change)")
        return path
    if args.quick:
        config = notebook_03_recipe(folder, model="tiny", minutes=None, max_steps=20, limit=2_048)
        config.batch_size, config.warmup_steps = 32, 5
    else:
        config = notebook_03_recipe(folder, minutes=args.train_minutes)
    budget = f"{config.max_minutes:g} minutes" if config.max_minutes else f"{config.max_steps} steps"
    print(f"training notebook 03's recipe ({config.model} U-Net, {config.schedule} schedule) for {budget} "
          f"into {folder} ...", flush=True)
    return train_short_run(config, progress=not args.quick)


def cpu_throughput(pipe: DiffusionPipeline, count: int = 64, steps: int = 20, seed: int = 0) -> dict:
    """Seconds for ``count`` images with DPM-Solver++ at ``steps`` from the ``small`` preset on this CPU.

    Uses the checkpoint's network when it is the ``small`` preset; otherwise an untrained ``small``
    U-Net of the same image size (the time does not depend on the weights). One batch, inference mode.
    """
    preset = (pipe.checkpoint or {}).get("config", {}).get("model")
    if preset == "small":
        model, note = pipe.model, "the checkpoint's small U-Net"
    else:
        c, size, _ = pipe.image_shape
        model, note = UNet.from_preset("small", image_size=size, in_channels=c, out_channels=c), \
            f"an untrained small U-Net (the checkpoint is {preset!r})"
    cpu = DiffusionPipeline(model.to("cpu").eval(), pipe.diffusion, pipe.image_shape, torch.device("cpu"))
    cpu.generate(1, sampler="dpm-solver++", steps=1, seed=seed)  # warm-up: first-call allocations
    start = time.perf_counter()
    cpu.generate(count, sampler="dpm-solver++", steps=steps, seed=seed, batch_size=count)
    seconds = time.perf_counter() - start
    if pipe.device.type != "cpu":
        pipe.model.to(pipe.device)
    return {"count": count, "steps": steps, "seconds": seconds, "images_per_s": count / seconds,
            "threads": torch.get_num_threads(), "model": note, "goal_seconds": THROUGHPUT_GOAL_S,
            "passed": seconds < THROUGHPUT_GOAL_S}


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        device = get_device(args.device)
        checkpoint = get_checkpoint(args)
        pipe = DiffusionPipeline.from_checkpoint(checkpoint, device=device)
    except (CheckpointError, ValueError) as err:
        print(f"samplers.py: error: {err}", file=sys.stderr)
        return 2
    dataset = (pipe.checkpoint or {}).get("config", {}).get("dataset", "fashion-mnist")
    T = pipe.diffusion.timesteps
    too_many = [f"{s}:{n}" for s, n in args.configs if n > T]
    if too_many:
        print(f"samplers.py: error: {', '.join(too_many)}: more steps than the model's T = {T}", file=sys.stderr)
        return 2
    recipe = ClassifierRecipe(dataset=dataset, epochs=0.05) if args.quick else None
    extractor = course_classifier(dataset, device=device, recipe=recipe, progress=not args.quick)
    print(f"{checkpoint}: {pipe.diffusion.schedule} schedule, T = {T}; {args.num_samples} samples per row on "
          f"{device}, features {extractor.key}", flush=True)

    def show(row):
        print(f"  {row.name:<18} {row.seconds:8.1f} s  {row.images_per_s:8.1f} img/s  FID {row.fid:8.3f}  "
              f"KID {row.kid:.5f}", flush=True)

    cache = RowCache(args.out / "rows", {
        "checkpoint": str(Path(checkpoint).resolve()), "step": (pipe.checkpoint or {}).get("step"),
        "num_samples": args.num_samples, "real": args.real, "seed": args.seed, "features": extractor.key,
        "device": str(device)})
    done = {f"{s}-{n}": cache.row(f"{s}-{n}") for s, n in args.configs}
    for row in filter(None, done.values()):
        print(f"  {row.name:<18} measured before (kept in {cache.folder})", flush=True)
        show(row)

    def measured(row):
        cache.save_row(row)
        show(row)

    todo = [(s, n) for s, n in args.configs if done[f"{s}-{n}"] is None]
    new, kept = compare_samplers(pipe, todo, num_samples=args.num_samples, dataset=dataset,
                                 extractor=extractor, real_limit=args.real, seed=args.seed,
                                 batch_size=args.batch_size, on_row=measured, keep_images=64)
    for name, images in kept.items():
        save_image_grid(images, args.out / f"samples_{name}.png", nrow=8)
    fresh = {r.name: r for r in new}
    rows = [done[f"{s}-{n}"] or fresh[f"{s}-{n}"] for s, n in args.configs]
    spread = None
    if args.noise_seeds:
        noisy = next((r for r in rows if r.name == "dpm-solver++-20"), None) or min(rows, key=lambda r: r.seconds)
        seeds = [args.seed + k for k in range(1, args.noise_seeds + 1)]
        spread = cache.spread(noisy.name, [args.seed, *seeds])
        if spread is None:
            print(f"seed noise: {noisy.name} again with seeds {seeds} ...", flush=True)
            spread = seed_spread(pipe, noisy, seeds, row_seed=args.seed, dataset=dataset, extractor=extractor,
                                 real_limit=args.real, batch_size=args.batch_size)
            cache.save_spread(spread)
    verdicts = goal_verdicts(rows, spread=spread)
    print("\n" + format_table(rows, verdicts, spread))
    print("(FID/KID on the course classifier's features: comparable within this table, "
          "not with published Inception FIDs)")

    throughput = None
    if not args.skip_throughput:
        throughput = cpu_throughput(pipe, args.throughput_count, args.throughput_steps, args.seed)
        print(f"\nCPU throughput: {throughput['count']} images with DPM-Solver++-{throughput['steps']} from "
              f"{throughput['model']} in {throughput['seconds']:.2f} s ({throughput['images_per_s']:.1f} images/s, "
              f"{throughput['threads']} threads): {'PASS' if throughput['passed'] else 'FAIL'} "
              f"(goal: under {THROUGHPUT_GOAL_S:g} s on a 2-core laptop CPU)")

    record = results_record(
        rows, verdicts, spread, checkpoint=str(checkpoint), checkpoint_step=(pipe.checkpoint or {}).get("step"),
        model=(pipe.checkpoint or {}).get("config", {}).get("model"), schedule=pipe.diffusion.schedule,
        dataset=dataset, num_samples=args.num_samples, num_real=args.real, features=extractor.key,
        device=str(device), seed=args.seed, quick=args.quick, throughput=throughput,
    )
    text = json.dumps(record, indent=2) + "\n"
    (args.out / "results.json").write_text(text)
    print(f"\nwrote {args.out / 'results.json'} and {len(kept)} sample grids in {args.out}")
    if args.publish:
        target = REPO / RESULTS_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"published the record to {target} (commit it: notebook 04 shows it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
