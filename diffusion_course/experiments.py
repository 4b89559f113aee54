"""What buys image quality per CPU-minute: the ablation study, read back and drawn.

``benchmarks/ablations.py`` trains one model per *cell* for the same wall-clock budget on
Fashion-MNIST, changing one thing at a time around a baseline (the number of steps T, the beta
schedule, the U-Net's size and attention, the prediction target, min-SNR weighting, batch size and
learning rate, EMA, warm-up), scores every model with FID on the course classifier's features, and
then trains the best cells again at the full 15-minute budget. With ``--publish`` it commits a copy of
its record as ``benchmarks/results/ablations.json``; :func:`load_ablations` finds that copy, so
notebook 04's last section can show and explain the study without retraining anything.

The record (``results.json``)::

    {"baseline": {...recipe...},
     "grid":   [{"name", "factor", "minutes", "recipe": {...}, "result": {"fid", "kid", "steps",
                 "images_per_s", "sampling_s", ...}}, ...],
     "finals": [... the same, at the full budget ...],
     "champion": "<name>", "champion_recipe": {...}, "samplers": {"ddim-50": {"fid", ...}, ...}}

:func:`cost_by_resolution` answers the question behind the size ablation: where does a U-Net
spend its FLOPs and keep its parameters? (A parameter of a 3x3 convolution at 28x28 is used
784 times per image, one at 7x7 only 49 times.)

FID depends on the sample size and on the feature network: compare cells of one run only, and
never with published Inception FIDs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from .sampler_comparison import load_record
from .unet import UNet, example_inputs

ABLATIONS_FILE = Path("benchmarks") / "results" / "ablations.json"
"""The committed copy of an ablation run, relative to the repository."""

STAGES = ("grid", "finals")


def load_ablations(path: str | Path | None = None) -> dict | None:
    """The committed ablation record (see the module docstring), or None if there is none.

    Default: ``benchmarks/results/ablations.json``, looked for from the working directory (a
    notebook's folder is two levels below the repository) and from the package's repository.
    """
    return load_record(ABLATIONS_FILE, path)


@dataclass(frozen=True)
class AblationRow:
    """One cell of the study: what it changed and what it got for the same budget."""

    name: str
    factor: str
    minutes: float
    steps: int
    images_per_s: float
    fid: float
    kid: float
    fid_vs_baseline: float  # this cell's FID / the baseline's at the same budget (< 1 is better)
    precision: float | None = None  # Kynkaanniemi et al. 2019, in [0, 1]; None if the record lacks it
    recall: float | None = None
    sampling_s: float | None = None  # seconds to draw the cell's scored samples


def ablation_rows(record: dict, stage: str = "grid") -> list[AblationRow]:
    """The cells of ``stage`` (``"grid"`` or ``"finals"``), best FID first.

    Raises ValueError for an unknown stage, or a stage without a baseline cell to compare with.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    cells = [c for c in record.get(stage, []) if c.get("result")]
    base = next((c["result"]["fid"] for c in cells if c["factor"] == "baseline"), None)
    if base is None:
        raise ValueError(f"the record's {stage!r} stage has no finished baseline cell to compare with")
    rows = [AblationRow(c["name"], c["factor"], c["minutes"], c["result"]["steps"], c["result"]["images_per_s"],
                        c["result"]["fid"], c["result"]["kid"], c["result"]["fid"] / base,
                        c["result"].get("precision"), c["result"].get("recall"), c["result"].get("sampling_s"))
            for c in cells]
    return sorted(rows, key=lambda r: r.fid)


def format_ablations(record: dict, stage: str = "grid", title: str | None = None) -> str:
    """A printable table of :func:`ablation_rows`, under ``title`` if given. Precision, recall and
    sampling time show as ``-`` where the record lacks them."""
    def num(value: float | None, width: int, digits: int) -> str:
        return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    rows = ablation_rows(record, stage)
    lines = [title] if title else []
    lines.append(f"{'cell':<22} {'factor':<11} {'min':>4} {'steps':>6} {'img/s':>6} {'FID':>7} {'vs base':>8} "
                 f"{'KID':>7} {'prec':>5} {'rec':>5} {'sample s':>8}")
    for r in rows:
        lines.append(f"{r.name:<22} {r.factor:<11} {r.minutes:>4g} {r.steps:>6} {r.images_per_s:>6.0f} "
                     f"{r.fid:>7.3f} {r.fid_vs_baseline:>7.2f}x {r.kid:>7.4f} {num(r.precision, 5, 2)} "
                     f"{num(r.recall, 5, 2)} {num(r.sampling_s, 8, 1)}")
    return "\n".join(lines)


def plot_ablations(record: dict, stage: str = "grid"):
    """Two panels: every cell's FID relative to the baseline (bars, one colour per factor), and FID
    against the optimizer steps the cell made in its budget (more updates usually win). Returns the
    matplotlib Figure."""
    import matplotlib.pyplot as plt

    rows = ablation_rows(record, stage)
    factors = list(dict.fromkeys(r.factor for r in rows))
    colours = {f: plt.get_cmap("tab20")(i % 20) for i, f in enumerate(factors)}
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(12, 0.28 * len(rows) + 1.6),
                                        gridspec_kw={"width_ratios": [1.3, 1]})
    bars.barh([r.name for r in rows], [r.fid_vs_baseline for r in rows], color=[colours[r.factor] for r in rows])
    bars.axvline(1.0, color="k", lw=1, ls="--")
    bars.invert_yaxis()
    bars.set(xlabel="FID / baseline's FID (left of the dashed line = better)",
             title=f"{stage}: {rows[0].minutes:g} CPU-minutes per cell")
    for r in rows:
        scatter.scatter(r.steps, r.fid, color=colours[r.factor], s=30)
        scatter.annotate(r.name, (r.steps, r.fid), fontsize=7, xytext=(3, 2), textcoords="offset points")
    scatter.set(xlabel="optimizer steps in the budget", ylabel="FID (course features)", title="FID against updates")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class ResolutionCost:
    """What the layers working at one feature-map side cost: ``side`` 1 stands for the time (and
    class) embedding, which works on vectors."""

    side: int
    flops: int  # forward FLOPs per image (multiply-add = 2)
    parameters: int


def cost_by_resolution(model: UNet, image_size: int | None = None) -> list[ResolutionCost]:
    """Forward FLOPs and parameters of ``model`` grouped by the side of the feature map each layer
    works on, largest side first; the FLOPs add up to :func:`~diffusion_course.unet.forward_flops`.

    Each block of the way down, the middle and the way up (and the input and output convolutions)
    counts at the side of its *input*, so a downsampling convolution belongs to the larger side
    and an upsampling one to the smaller. Counted with ``torch.utils.flop_counter`` on one image.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    c = model.config
    side = image_size or c.image_size
    parts: list[tuple[str, torch.nn.Module]] = [("conv_in", model.conv_in), ("time_embed", model.time_embed)]
    if model.class_embed is not None:
        parts.append(("class_embed", model.class_embed))
    for group in ("down", "mid", "up"):
        parts += [(f"{group}.{i}", m) for i, m in enumerate(getattr(model, group))]
    parts += [("norm_out", model.norm_out), ("conv_out", model.conv_out)]

    flops: dict[int, int] = defaultdict(int)
    params: dict[int, int] = defaultdict(int)
    counter = FlopCounterMode(display=False)
    started: dict[str, tuple[int, int]] = {}
    handles = []
    for name, module in parts:
        def before(mod, args, name=name):
            x = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() == 4), None)
            started[name] = (counter.get_total_flops(), 1 if x is None else x.shape[-1])

        def after(mod, args, out, name=name):
            count, at = started.pop(name)
            flops[at] += counter.get_total_flops() - count
            if name not in seen:
                params[at] += sum(p.numel() for p in mod.parameters())
                seen.add(name)

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    seen: set[str] = set()
    inputs = example_inputs(model, 1, side)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [ResolutionCost(s, flops[s], params[s]) for s in sorted(flops, reverse=True)]


__all__ = [
    "ABLATIONS_FILE",
    "AblationRow",
    "ResolutionCost",
    "ablation_rows",
    "cost_by_resolution",
    "format_ablations",
    "load_ablations",
    "plot_ablations",
]
