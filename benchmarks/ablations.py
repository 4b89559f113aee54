"""Ablations that pick the recipe: what buys image quality per CPU-minute?

Every cell trains a diffusion model on Fashion-MNIST for the same wall-clock budget with the
course's Trainer, then samples 1,000 images (DPM-Solver++, 20 steps) and scores them with FID and
KID on the course classifier's features (:mod:`diffusion_course.evaluation`). One factor is varied
at a time around the baseline (notebook 03's recipe: ``small`` U-Net, cosine schedule, T = 1000,
eps-prediction, batch 64, lr 5e-4, EMA 0.999, 100 warm-up steps):

- timesteps T: 100 / 500 (1000 is the baseline); schedules: linear / sigmoid (cosine);
- U-Net size: ``tiny`` / a wider ``small``; attention at 14x14 and 7x7 instead of 7x7 only;
- prediction target: x0 / v (eps); min-SNR-5 weighting;
- batch size and learning rate; EMA decay; warm-up.

Stage 1 runs the whole grid at a short budget (``--grid-minutes``, default 4). Stage 2 trains the
baseline, the combination of every factor's winner and the best single-factor cells (``--finalists``,
default 3) at the full budget (``--final-minutes``, default 15) and compares samplers and step counts
on the best of them
(DDPM-1000 only with ``--ddpm-1000``: ``benchmarks/samplers.py`` measures it).
Everything lands in ``--out`` (JSON per cell, ``results.json``, ``ablations.png`` and
``ablations-finals.png``); the run is
resumable: a cell with a ``result.json`` is not trained again, so Ctrl-C and a rerun lose at most
the cell in progress. All cells run in one process, one after another, so compare them only within
one run, on one machine (``--device cuda`` runs the same study on CIFAR-10 with ``ddpm-cifar10``).

Usage::

    python benchmarks/ablations.py                       # about 2.5 hours on a 2-core CPU
    python benchmarks/ablations.py --quick                # a smoke test of every step (minutes)
    python benchmarks/ablations.py --only grid            # stage 1 only
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from diffusion_course.batching import load_training_data
from diffusion_course.experiments import format_ablations, plot_ablations
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.runtime import get_device, seed_everything
from diffusion_course.trainer import Trainer
from diffusion_course.training import TrainConfig, build_diffusion_config, build_objective
from diffusion_course.unet import UNet, count_parameters


@dataclass(frozen=True)
class Recipe:
    """The settings one cell changes; everything else is the Trainer's default."""

    model: str = "small"
    unet: tuple = ()  # UNetConfig overrides as (name, value) pairs, e.g. (("base_channels", 24),)
    schedule: str = "cosine"
    timesteps: int = 1000
    prediction: str = "eps"
    min_snr: float | None = None
    batch_size: int = 64
    lr: float = 5e-4
    ema_decay: float = 0.999
    warmup_steps: int = 100

    def describe(self) -> str:
        unet = "".join(f", {k}={v}" for k, v in self.unet)
        snr = f", min-SNR {self.min_snr:g}" if self.min_snr else ""
        return (f"{self.model}{unet}, {self.schedule} T={self.timesteps}, {self.prediction}{snr}, "
                f"batch {self.batch_size}, lr {self.lr:g}, EMA {self.ema_decay}, warm-up {self.warmup_steps}")


BASELINE = Recipe()
"""Notebook 03's recipe (the course's CPU recipe before these ablations)."""

FACTORS: dict[str, dict[str, dict]] = {
    "timesteps": {"T=100": {"timesteps": 100}, "T=500": {"timesteps": 500}},
    "schedule": {"linear": {"schedule": "linear"}, "sigmoid": {"schedule": "sigmoid"}},
    "size": {"tiny": {"model": "tiny"}, "wide": {"unet": (("base_channels", 24),)}},
    "attention": {"attention 14+7": {"unet": (("attention_resolutions", (14,)),)}},
    "prediction": {"x0": {"prediction": "x0"}, "v": {"prediction": "v"}},
    "min-snr": {"min-SNR 5": {"min_snr": 5.0}},
    "batch/lr": {"batch 128": {"batch_size": 128}, "batch 128, lr 1e-3": {"batch_size": 128, "lr": 1e-3},
                 "lr 1e-3": {"lr": 1e-3}, "lr 2e-4": {"lr": 2e-4}},
    "ema": {"EMA 0.99": {"ema_decay": 0.99}, "EMA 0.9995": {"ema_decay": 0.9995}},
    "warm-up": {"no warm-up": {"warmup_steps": 0}, "warm-up 500": {"warmup_steps": 500}},
}
"""One factor at a time around :data:`BASELINE`: ``{factor: {cell name: changes}}``."""

SAMPLER_GRID = (("ddim", 25), ("ddim", 50), ("dpm-solver++", 10), ("dpm-solver++", 20))
"""Samplers compared on the champion. DDPM-1000 (a million image-network calls for 1,000 samples, about an
hour on a 2-core CPU) is left to ``benchmarks/samplers.py --checkpoint <champion>``, which measures every
sampler on one checkpoint; ``--ddpm-1000`` adds it here too."""


@dataclass
class Cell:
    name: str
    factor: str
    recipe: Recipe
    minutes: float
    result: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        slug = "".join(ch if ch.isalnum() else "-" for ch in self.name.lower()).strip("-")
        return f"{slug}-{self.minutes:g}min"


def grid_cells(minutes: float) -> list[Cell]:
    """The baseline and every one-factor change of it, at ``minutes`` each."""
    cells = [Cell("baseline", "baseline", BASELINE, minutes)]
    for factor, options in FACTORS.items():
        for name, changes in options.items():
            cells.append(Cell(name, factor, replace(BASELINE, **changes), minutes))
    return cells


def winners(cells: list[Cell]) -> Recipe:
    """The baseline with every factor set to its best value, where that value beat the baseline's FID."""
    base = next(c for c in cells if c.factor == "baseline").result["fid"]
    recipe = BASELINE
    for factor, options in FACTORS.items():
        tried = [c for c in cells if c.factor == factor and c.result]
        if not tried:
            continue
        best = min(tried, key=lambda c: c.result["fid"])
        if best.result["fid"] < base:
            changes = options[best.name]
            if "unet" in changes:  # UNet overrides of different factors add up
                changes = {**changes, "unet": tuple((dict(recipe.unet) | dict(changes["unet"])).items())}
            recipe = replace(recipe, **changes)
    return recipe


# ---------------------------------------------------------------------------
# One cell: train for a budget, then sample and score
# ---------------------------------------------------------------------------


def train_cell(cell: Cell, args, source, stats) -> Path:
    """Train the cell's recipe for its budget; returns the checkpoint path."""
    r = cell.recipe
    out = Path(args.out) / "cells" / cell.key
    config = TrainConfig(
        dataset=args.dataset, model=r.model, schedule=r.schedule, timesteps=r.timesteps, prediction=r.prediction,
        min_snr=r.min_snr, batch_size=r.batch_size, lr=r.lr, ema_decay=r.ema_decay, warmup_steps=r.warmup_steps,
        max_minutes=cell.minutes, seed=args.seed, device=args.device, out=str(out), sample_every=0,
        checkpoint_every=0, log_every=50, num_workers=0, progress=not args.quiet,
        precision="bf16" if args.device == "cuda" else "fp32", channels_last=args.device == "cuda",
    )
    if (out / "checkpoint.pt").exists():
        (out / "checkpoint.pt").unlink()  # an unfinished cell starts again
    seed_everything(args.seed)
    diffusion = build_diffusion_config(config)
    model = UNet.from_preset(r.model, image_size=stats["image_size"], in_channels=stats["channels"],
                             out_channels=diffusion.output_channels(stats["channels"]), **dict(r.unet))
    trainer = Trainer(config, model, source, objective=build_objective(config), device=args.device, data_stats=stats)
    result = trainer.train()
    cell.result.update(steps=result.step, images_per_s=result.images_per_second, parameters=count_parameters(model),
                       final_loss=result.last_loss)
    return result.checkpoint


def score(checkpoint: Path, args, sampler: str = "dpm-solver++", steps: int = 20, count: int | None = None) -> dict:
    """Sample ``count`` images from the EMA model and score them against the test set."""
    from diffusion_course.evaluation import evaluate_images

    pipe = DiffusionPipeline.from_checkpoint(checkpoint, device=args.device)
    count = count or args.num_samples
    start = time.perf_counter()
    images = pipe.generate(count, sampler=sampler, steps=steps, seed=args.seed + 1, batch_size=500)
    seconds = time.perf_counter() - start
    report = evaluate_images(images, args.dataset, extractor=args.extractor, seed=args.seed)
    grid = Path(checkpoint).parent / f"samples-{sampler}-{steps}.png"
    from diffusion_course.viz import save_image_grid

    save_image_grid(images[:64], grid)
    return {"fid": report.fid, "fid_infinity": report.fid_infinity, "kid": report.kid, "kid_std": report.kid_std,
            "precision": report.precision, "recall": report.recall, "sampling_s": seconds,
            "sampled_images_per_s": count / seconds, "sampler": sampler, "sampler_steps": steps,
            "num_samples": count, "features": report.features}


def run_cell(cell: Cell, args, source, stats) -> Cell:
    """Train and score ``cell`` unless its result is on disk already (the run is resumable)."""
    done = Path(args.out) / "cells" / cell.key / "result.json"
    if done.is_file():
        cell.result = json.loads(done.read_text())["result"]
        print(f"[skip] {cell.name} ({cell.minutes:g} min): done before, FID {cell.result['fid']:.3f}", flush=True)
        return cell
    print(f"\n== {cell.name} ({cell.minutes:g} min): {cell.recipe.describe()}", flush=True)
    checkpoint = train_cell(cell, args, source, stats)
    cell.result.update(score(checkpoint, args))
    done.write_text(json.dumps({"name": cell.name, "factor": cell.factor, "minutes": cell.minutes,
                                "recipe": asdict(cell.recipe), "result": cell.result}, indent=2) + "\n")
    print(f"   {cell.result['steps']} steps, {cell.result['images_per_s']:.0f} img/s -> FID {cell.result['fid']:.3f}, "
          f"KID {cell.result['kid']:.4f}", flush=True)
    return cell


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def table(cells: list[Cell], stage: str, title: str) -> str:
    """The printed table of finished ``cells`` (one stage of the run), via :mod:`diffusion_course.experiments`."""
    return format_ablations({stage: [_record(c) for c in cells]}, stage, title)


def save_plots(summary: dict, out: Path) -> list[Path]:
    """Draw each stage of ``summary`` that has a finished baseline (``ablations.png`` for the grid,
    ``ablations-finals.png`` for the finals); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for stage, name in (("grid", "ablations.png"), ("finals", "ablations-finals.png")):
        if any(c["factor"] == "baseline" and c["result"] for c in summary.get(stage, [])):
            fig = plot_ablations(summary, stage)
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            written.append(out / name)
    return written


# ---------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid-minutes", type=float, default=4.0, help="training budget per grid cell (default 4)")
    p.add_argument("--final-minutes", type=float, default=15.0, help="budget of the finalists (default 15)")
    p.add_argument("--finalists", type=int, default=3,
                   help="best single-factor cells trained again at the full budget, besides the baseline and the "
                        "combination of the winners (default 3)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples scored per cell (default 1000)")
    p.add_argument("--only", choices=("grid", "final", "all"), default="all")
    p.add_argument("--device", default="cpu", help="cpu (Fashion-MNIST) or cuda (CIFAR-10, ddpm-cifar10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budgets and sample counts")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--publish", action="store_true",
                   help="also copy results.json (and the baseline's and champion's sample grids) to "
                        "benchmarks/results/ for notebook 04")
    p.add_argument("--ddpm-1000", action="store_true", help="also sample the champion with DDPM's 1000 steps")
    p.add_argument("--from-record", type=Path, default=None,
                   help="count the cells of this record (e.g. benchmarks/results/ablations.json) as finished, so "
                        "a fresh clone goes on where the published run stopped")
    args = p.parse_args(argv)
    if args.quick:
        args.grid_minutes, args.final_minutes, args.num_samples = 0.05, 0.1, 64
    if args.grid_minutes <= 0 or args.final_minutes <= 0 or args.num_samples < 4 or args.finalists < 0:
        p.error("budgets must be positive, --num-samples at least 4 and --finalists at least 0")
    try:
        get_device(args.device)
    except ValueError as err:
        p.error(str(err))
    if args.from_record is not None and not args.from_record.is_file():
        p.error(f"--from-record {args.from_record}: no such file")
    return args


def seed_from_record(record: dict, out: Path) -> list[str]:
    """Write a ``result.json`` for every finished cell of ``record`` that ``out`` lacks, so
    :func:`run_cell` skips it; returns the cells' keys. (Their checkpoints are not in a record: the
    champion's sampler comparison needs the checkpoint, so it is kept from the record instead.)"""
    seeded = []
    for stage in ("grid", "finals"):
        for entry in record.get(stage, []):
            if not entry.get("result"):
                continue
            key = Cell(entry["name"], entry["factor"], BASELINE, entry["minutes"]).key  # the name and budget decide it
            done = out / "cells" / key / "result.json"
            if not done.is_file():
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(entry, indent=2) + "\n")
                seeded.append(key)
    return seeded


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.from_record.read_text()) if args.from_record else {}
    if previous:
        seeded = seed_from_record(previous, out)
        print(f"{len(seeded)} cell(s) taken as finished from {args.from_record}", flush=True)
    global BASELINE
    if args.device == "cuda":  # the same study for CIFAR-10 on a GPU, around DDPM's network
        args.dataset = "cifar10"
        BASELINE = replace(BASELINE, model="ddpm-cifar10", lr=2e-4, batch_size=128, schedule="linear",
                           ema_decay=0.9999, warmup_steps=1000)
    else:
        args.dataset = "fashion-mnist"
    from diffusion_course.classifier import ClassifierRecipe
    from diffusion_course.features import course_classifier

    recipe = ClassifierRecipe(dataset=args.dataset, epochs=0.05) if args.quick else None
    args.extractor = course_classifier(args.dataset, device=args.device, recipe=recipe, progress=not args.quiet)
    source, stats = load_training_data(TrainConfig(dataset=args.dataset, limit=2048 if args.quick else None),
                                       torch.device(args.device), progress=not args.quiet)
    grid = [run_cell(c, args, source, stats) for c in grid_cells(args.grid_minutes)] if args.only != "final" else []
    summary = {"baseline": asdict(BASELINE), "grid": [_record(c) for c in grid]}
    if grid:
        title = f"Stage 1: every factor at {args.grid_minutes:g} min per cell ({args.dataset}, {args.device})"
        print(table(grid, "grid", title))
    finals: list[Cell] = []
    if args.only != "grid":
        if not grid:
            grid = [run_cell(c, args, source, stats) for c in grid_cells(args.grid_minutes)]
        best = sorted((c for c in grid if c.factor != "baseline"), key=lambda c: c.result["fid"])[:args.finalists]
        combined = winners(grid)
        # The baseline and the combination first: together they answer the headline question
        # (how much better than notebook 03's recipe), should the run be stopped early.
        candidates = [Cell("baseline", "baseline", BASELINE, args.final_minutes)]
        if combined not in [BASELINE, *[c.recipe for c in best]]:
            candidates.append(Cell("winners combined", "combined", combined, args.final_minutes))
        candidates += [Cell(c.name, c.factor, c.recipe, args.final_minutes) for c in best]
        finals = [run_cell(c, args, source, stats) for c in candidates]
        print(table(finals, "finals", f"Stage 2: the finalists at {args.final_minutes:g} min"))
        champion = min(finals, key=lambda c: c.result["fid"])
        base = next(c for c in finals if c.factor == "baseline")
        print(f"\nbest recipe: {champion.name}: {champion.recipe.describe()}")
        print(f"FID {champion.result['fid']:.3f} vs baseline {base.result['fid']:.3f}: "
              f"{champion.result['fid'] / base.result['fid']:.2f}x (goal <= 0.6x)")
        samplers = {}
        checkpoint = Path(args.out) / "cells" / champion.key / "checkpoint.pt"
        if not checkpoint.is_file() and previous.get("champion") == champion.name:
            print(f"no checkpoint of {champion.name} here (its cell came from {args.from_record}): "
                  "keeping that record's sampler comparison", flush=True)
            samplers = dict(previous.get("samplers", {}))
        else:
            for sampler, steps in ((("ddpm", 1000),) if args.ddpm_1000 else ()) + SAMPLER_GRID:
                key = f"{sampler}-{steps}"
                print(f"sampling {champion.name} with {key} ...", flush=True)
                samplers[key] = score(checkpoint, args, sampler, min(steps, champion.recipe.timesteps))
        print(f"\nsamplers on '{champion.name}' ({args.num_samples} samples each):")
        for key, r in samplers.items():
            print(f"  {key:<18} FID {r['fid']:8.3f}  KID {r['kid']:.4f}  {r['sampling_s']:7.1f} s "
                  f"({r['sampled_images_per_s']:.1f} img/s)")
        summary.update(finals=[_record(c) for c in finals], champion=champion.name,
                       champion_recipe=asdict(champion.recipe), samplers=samplers)
    summary["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
                          "num_samples": args.num_samples}
    plots = save_plots(summary, out)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'}" + "".join(f" and {p}" for p in plots))
    if args.publish:
        publish(summary, out, finals)
    return 0


def publish(summary: dict, out: Path, finals: list[Cell], target: Path | None = None) -> None:
    """Copy the record (and the finals' sample grids of the baseline and the champion) to ``target``,
    by default where :func:`diffusion_course.experiments.load_ablations` finds it."""
    from diffusion_course.experiments import ABLATIONS_FILE

    target = target or Path(__file__).resolve().parents[1] / ABLATIONS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary, indent=2) + "\n")
    for cell in finals:
        if cell.factor == "baseline" or cell.name == summary.get("champion"):
            grid = out / "cells" / cell.key / "samples-dpm-solver++-20.png"
            if grid.is_file():
                role = "baseline" if cell.factor == "baseline" else "champion"
                shutil.copyfile(grid, target.with_name(f"ablations-{role}.png"))
    print(f"published the record to {target} (commit it: notebook 04 shows it)")


def _record(cell: Cell) -> dict:
    return {"name": cell.name, "factor": cell.factor, "minutes": cell.minutes, "recipe": asdict(cell.recipe),
            "result": cell.result}


if __name__ == "__main__":
    sys.exit(main())
