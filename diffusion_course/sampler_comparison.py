"""Quality against speed for every sampler: the table of ``benchmarks/samplers.py`` and notebook 04.

For one trained model, each row draws the same number of images with one sampler and step count
(:data:`DEFAULT_CONFIGS`: DDPM 1000 and 100, DDIM 10/20/50/100, DPM-Solver++ 10/20), times it,
and scores the images with :func:`~diffusion_course.evaluation.evaluate_images` (FID and KID on
the course classifier's features, the numbers of the ``evaluate`` command). :func:`goal_verdicts`
then checks the course's goals against the DDPM row with the most steps (the reference):

- DDIM with 50 steps: FID within 15 % of the reference's, at least 20x faster;
- DPM-Solver++ with 20 steps: FID within 10 %, at least 20x faster.

The benchmark writes the rows as JSON (:func:`results_record`); a copy committed as
``benchmarks/results/samplers.json`` is what :func:`load_results` finds for the notebook.
FID depends on the sample size and the feature space: compare rows of one table only, and never
with published Inception FIDs. It also depends on the seed: :func:`seed_spread` draws one setting
again with other seeds, and a gap between two rows smaller than that noise decides nothing (at 1,000
samples on a well-trained Fashion-MNIST model the seed alone moved DPM-Solver++-20's FID between
0.54 and 0.92).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .sampling import SAMPLERS

DEFAULT_CONFIGS: tuple[tuple[str, int], ...] = (
    ("ddpm", 1000), ("ddpm", 100),
    ("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100),
    ("dpm-solver++", 10), ("dpm-solver++", 20),
)
"""``(sampler, steps)`` of the benchmark's rows."""


@dataclass(frozen=True)
class Goal:
    """``sampler`` at ``steps`` must reach an FID within ``fid_margin`` of the reference and be ``speedup`` x faster."""

    sampler: str
    steps: int
    fid_margin: float
    speedup: float

    @property
    def label(self) -> str:
        return (f"{self.sampler}-{self.steps}: FID within {self.fid_margin:.0%} of the reference, "
                f">= {self.speedup:g}x faster")


GOALS = (Goal("ddim", 50, 0.15, 20.0), Goal("dpm-solver++", 20, 0.10, 20.0))

RESULTS_FILE = Path("benchmarks") / "results" / "samplers.json"
"""The committed copy of a benchmark run, relative to the repository."""

_REPO = Path(__file__).resolve().parents[1]


@dataclass
class SamplerRow:
    """One sampler setting: its time and the quality of its images."""

    sampler: str
    steps: int
    num_samples: int
    seconds: float
    images_per_s: float
    fid: float
    fid_infinity: float
    kid: float
    kid_std: float
    precision: float
    recall: float

    @property
    def name(self) -> str:
        return f"{self.sampler}-{self.steps}"


def parse_configs(text: str) -> list[tuple[str, int]]:
    """``"ddpm:1000,ddim:50"`` -> ``[("ddpm", 1000), ("ddim", 50)]``; a one-line ValueError on bad input."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, steps = item.rpartition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"bad sampler setting {item!r}: write SAMPLER:STEPS with SAMPLER one of "
                             f"{', '.join(SAMPLERS)}, e.g. ddim:50")
        configs.append((name, int(steps)))
    if not configs:
        raise ValueError("no sampler settings given: e.g. ddpm:1000,ddim:50,dpm-solver++:20")
    return configs


def time_generation(pipe, count: int, sampler: str, steps: int, *, seed: int = 0, batch_size: int = 250,
                    progress: bool = False) -> tuple[torch.Tensor, float]:
    """``(images, seconds)``: ``count`` images from ``pipe`` (a DiffusionPipeline), wall-clock timed
    (inference mode, batched; a CUDA device is synchronised before the clock stops)."""
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)
    start = time.perf_counter()
    images = pipe.generate(count, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, progress=progress)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)
    return images, time.perf_counter() - start


def compare_samplers(
    pipe,
    configs=DEFAULT_CONFIGS,
    *,
    num_samples: int = 1000,
    dataset: str = "fashion-mnist",
    extractor=None,
    real_limit: int | None = None,
    seed: int = 0,
    batch_size: int = 250,
    progress: bool = False,
    on_row=None,
    keep_images: int = 0,
) -> tuple[list[SamplerRow], dict[str, torch.Tensor]]:
    """Run every ``(sampler, steps)`` of ``configs`` on ``pipe`` and score it.

    Every row draws ``num_samples`` images from the same seed, so the rows differ only in the sampler.
    ``extractor``: the feature space (default: the course classifier of ``dataset``, trained once).
    ``on_row(row)`` is called after each row (e.g. to print it). Returns the rows and, per row name,
    its first ``keep_images`` images.
    """
    from .evaluation import evaluate_images

    if extractor is None:
        from .features import course_classifier

        extractor = course_classifier(dataset, progress=progress)
    rows, kept = [], {}
    for sampler, steps in configs:
        images, seconds = time_generation(pipe, num_samples, sampler, steps, seed=seed, batch_size=batch_size,
                                          progress=progress)
        report = evaluate_images(images, dataset, extractor=extractor, real_limit=real_limit, seed=seed)
        row = SamplerRow(sampler, steps, num_samples, seconds, num_samples / seconds, report.fid,
                         report.fid_infinity, report.kid, report.kid_std, report.precision, report.recall)
        rows.append(row)
        if keep_images:
            kept[row.name] = images[:keep_images]
        if on_row is not None:
            on_row(row)
    return rows, kept


def reference_row(rows: list[SamplerRow]) -> SamplerRow | None:
    """The DDPM row with the most steps: what the goals compare with (None without a DDPM row)."""
    ddpm = [r for r in rows if r.sampler == "ddpm"]
    return max(ddpm, key=lambda r: r.steps) if ddpm else None


@dataclass
class SeedSpread:
    """How much one sampler's FID moves when only the seed changes: the noise floor of a
    one-seed comparison at ``num_samples`` images. ``fids[0]`` is the table's own row."""

    sampler: str
    steps: int
    num_samples: int
    seeds: list[int]
    fids: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.fids)

    @property
    def std(self) -> float:
        """Sample standard deviation of the FIDs (0 with a single seed)."""
        return statistics.stdev(self.fids) if len(self.fids) > 1 else 0.0


def seed_spread(pipe, row: SamplerRow, seeds, *, row_seed: int = 0, dataset: str = "fashion-mnist",
                extractor=None, real_limit: int | None = None, batch_size: int = 250) -> SeedSpread:
    """Draw ``row``'s setting again with each of ``seeds`` (``row`` itself was drawn with ``row_seed``)
    and collect the FIDs, ``row``'s first.

    Two single-seed FIDs of equally good samplers differ by about ``sqrt(2) x std``, so a gap between
    rows smaller than ``2 sqrt(2) x std`` (a 95 % band) does not show that one sampler is better.
    """
    from .evaluation import evaluate_images

    fids = [row.fid]
    for seed in seeds:
        images, _ = time_generation(pipe, row.num_samples, row.sampler, row.steps, seed=seed, batch_size=batch_size)
        fids.append(evaluate_images(images, dataset, extractor=extractor, real_limit=real_limit, seed=seed).fid)
    return SeedSpread(row.sampler, row.steps, row.num_samples, [row_seed, *seeds], fids)


def goal_verdicts(rows: list[SamplerRow], goals=GOALS, spread: SeedSpread | None = None) -> list[dict]:
    """For each goal: the numbers and ``passed`` (None when the table lacks its row or the reference).

    With a :class:`SeedSpread`, ``within_noise`` says whether the FID gap to the reference is inside
    the 95 % band of seed noise (``2 sqrt(2) x std``): a failed goal is then not shown to fail, only
    not shown to pass, and more samples (or seeds) are needed to decide it.
    """
    ref = reference_row(rows)
    by_name = {r.name: r for r in rows}
    verdicts = []
    for goal in goals:
        row = by_name.get(f"{goal.sampler}-{goal.steps}")
        entry = {"goal": goal.label, "reference": ref.name if ref else None, "passed": None}
        if row is not None and ref is not None and row is not ref:
            ratio = row.fid / ref.fid if ref.fid > 0 else float("inf")
            speedup = ref.seconds / row.seconds
            entry.update(fid_ratio=ratio, speedup=speedup,
                         passed=bool(ratio <= 1 + goal.fid_margin and speedup >= goal.speedup))
            if spread is not None and len(spread.fids) > 1:
                band = 2 * math.sqrt(2) * spread.std
                entry.update(fid_gap=row.fid - ref.fid, noise_band=band,
                             within_noise=bool(abs(row.fid - ref.fid) <= band))
        verdicts.append(entry)
    return verdicts


def format_table(rows: list[SamplerRow], verdicts: list[dict] | None = None,
                 spread: SeedSpread | None = None) -> str:
    """The rows as a plain-text table (speed-up against the reference), the seed noise, then one line per goal."""
    ref = reference_row(rows)
    lines = [f"{'sampler':<16}{'steps':>6}{'seconds':>10}{'images/s':>10}{'speed-up':>10}"
             f"{'FID':>9}{'FID_inf':>9}{'KID':>10}{'precision':>10}{'recall':>8}"]
    for r in rows:
        speedup = f"{ref.seconds / r.seconds:.1f}x" if ref is not None else "-"
        lines.append(f"{r.sampler:<16}{r.steps:>6}{r.seconds:>10.1f}{r.images_per_s:>10.1f}{speedup:>10}"
                     f"{r.fid:>9.3f}{r.fid_infinity:>9.3f}{r.kid:>10.5f}{r.precision:>10.3f}{r.recall:>8.3f}")
    if spread is not None and len(spread.fids) > 1:
        lines.append(f"seed noise: {spread.sampler}-{spread.steps} FID over seeds {spread.seeds}: "
                     f"{', '.join(f'{f:.3f}' for f in spread.fids)} (mean {spread.mean:.3f}, std {spread.std:.3f}); "
                     f"a one-seed gap under {2 * math.sqrt(2) * spread.std:.3f} is within noise")
    for v in verdicts or []:
        if v["passed"] is None:
            lines.append(f"goal {v['goal']}: not measured (the table lacks the row or a DDPM reference)")
            continue
        note = ""
        if "within_noise" in v:
            note = (f"; the FID gap {v['fid_gap']:+.3f} is within seed noise (+-{v['noise_band']:.3f}): "
                    "not decided at this sample size" if v["within_noise"] and not v["passed"] else
                    f"; FID gap {v['fid_gap']:+.3f}, seed-noise band +-{v['noise_band']:.3f}")
        lines.append(f"goal {v['goal']}: {'PASS' if v['passed'] else 'FAIL'} "
                     f"(FID {v['fid_ratio']:.2f}x {v['reference']}'s, {v['speedup']:.1f}x faster{note})")
    return "\n".join(lines)


def results_record(rows: list[SamplerRow], verdicts: list[dict], spread: SeedSpread | None = None,
                   **about) -> dict:
    """Plain data for ``results.json``: the rows, the goal verdicts, the seed noise, the machine and
    ``about`` (the checkpoint, sample counts, features, ...)."""
    machine = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    noise = None if spread is None else {**asdict(spread), "mean": spread.mean, "std": spread.std}
    return {"rows": [asdict(r) for r in rows], "goals": verdicts, "seed_noise": noise, "machine": machine, **about}


def rows_from_record(record: dict) -> list[SamplerRow]:
    """The :class:`SamplerRow` list of a :func:`results_record` (e.g. read back from JSON)."""
    return [SamplerRow(**row) for row in record["rows"]]


def spread_from_record(record: dict) -> SeedSpread | None:
    """The :class:`SeedSpread` of a :func:`results_record`, or None if the run measured none."""
    noise = record.get("seed_noise")
    if not noise:
        return None
    return SeedSpread(**{f.name: noise[f.name] for f in fields(SeedSpread)})  # mean and std are derived


def load_results(path: str | Path | None = None) -> dict | None:
    """The committed benchmark record, or None if there is none.

    Default: ``benchmarks/results/samplers.json`` found from the working directory (a notebook's
    folder is two levels below the repository) or from the package's repository (editable install).
    """
    return load_record(RESULTS_FILE, path)


def load_record(relative: Path, path: str | Path | None = None) -> dict | None:
    """The JSON record at ``path``, or else the first of ``relative`` (a path inside the repository)
    found from a notebook's folder, the working directory or the package's repository; None if none.
    The record gets its ``"path"``."""
    candidates = [Path(path)] if path is not None else [
        Path.cwd().parent.parent / relative, Path.cwd() / relative, _REPO / relative]
    for candidate in candidates:
        if candidate.is_file():
            record = json.loads(candidate.read_text())
            record["path"] = str(candidate.resolve())
            return record
    return None


__all__ = [
    "DEFAULT_CONFIGS",
    "GOALS",
    "RESULTS_FILE",
    "Goal",
    "SamplerRow",
    "SeedSpread",
    "compare_samplers",
    "format_table",
    "goal_verdicts",
    "load_record",
    "load_results",
    "parse_configs",
    "reference_row",
    "results_record",
    "rows_from_record",
    "seed_spread",
    "spread_from_record",
    "time_generation",
]
