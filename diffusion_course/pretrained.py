"""A trained model for the sampling notebook and benchmark: notebook 03's run, or a short one trained now.

Phase 4 needs a trained Fashion-MNIST model. A learner who ran notebook 03 has one:
``notebooks/03_training/runs/03_fashion_small/checkpoint.pt`` (notebook 03 trains into ``runs/``
next to itself, and a notebook runs in its own folder, so from ``notebooks/04_sampling/`` that is
``../03_training/runs/...``). Otherwise :func:`course_model` trains one with notebook 03's recipe,
through the package's :class:`~diffusion_course.trainer.Trainer`, and keeps it under ``runs/``
next to the calling notebook, so that the next run of the notebook finds it::

    pipe = course_model()                         # notebook 03's model, or a few CPU minutes of training
    images = pipe.generate(16, sampler="dpm-solver++", steps=20)

In fast mode (CI, nbgrader) it trains the ``tiny`` preset for a handful of steps in a temporary
folder instead: the notebook runs end to end in seconds, with a model that only makes blobs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from .pipeline import DiffusionPipeline
from .runtime import fast_mode

NOTEBOOK_03_RUN = Path("03_training") / "runs" / "03_fashion_small" / "checkpoint.pt"
"""Where notebook 03 leaves its model, relative to the notebooks' folder."""

QUICK_RUN = Path("runs") / "04_fashion_small"
"""Where :func:`course_model` keeps the model it trains (relative to the working directory)."""

_REPO_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def notebook_03_checkpoint(start: str | Path | None = None) -> Path | None:
    """Notebook 03's checkpoint if it exists, else None.

    Looked for in the notebooks' folder next to ``start`` (default: the working directory, which
    for a notebook is its own folder: ``start/../03_training/runs/03_fashion_small/checkpoint.pt``),
    in ``start`` itself (a notebook opened from the notebooks' folder), and in the repository's
    ``notebooks/`` folder (an editable install, e.g. a solution notebook run by an instructor).
    """
    start = Path.cwd() if start is None else Path(start)
    for folder in (start.parent, start, _REPO_NOTEBOOKS):
        path = folder / NOTEBOOK_03_RUN
        if path.is_file():
            return path.resolve()
    return None


def notebook_03_recipe(out: str | Path, *, model: str | None = None, minutes: float | None = 5.0,
                       max_steps: int | None = None, limit: int | None = None, seed: int = 0):
    """The :class:`~diffusion_course.training.TrainConfig` of notebook 03's run: the course's CPU
    recipe (:data:`~diffusion_course.training.CPU_RECIPE`) with the cosine schedule, for a budget of
    ``minutes`` and/or ``max_steps``, written to ``out``. ``model``: another preset than the recipe's."""
    from .training import CPU_RECIPE, TrainConfig

    recipe = {**CPU_RECIPE, "max_minutes": minutes}
    if model is not None:
        recipe["model"] = model
    return TrainConfig(
        dataset="fashion-mnist", schedule="cosine", max_steps=max_steps, limit=limit, seed=seed,
        sample_every=0, checkpoint_every=500, log_every=50, num_workers=0, out=str(out), device="cpu", **recipe,
    )


def train_short_run(config, *, progress: bool = True) -> Path:
    """Train ``config`` (a TrainConfig) from scratch with the package's Trainer; returns its checkpoint.

    Refuses to overwrite a checkpoint already in ``config.out`` (use it, or pick another folder).
    """
    from .batching import load_training_data
    from .runtime import seed_everything
    from .trainer import Trainer
    from .training import build_model

    out = Path(config.out)
    if (out / "checkpoint.pt").exists():
        raise ValueError(f"{out / 'checkpoint.pt'} exists already: load it, or train into another folder")
    config.progress = progress
    device = torch.device(config.device)
    source, stats = load_training_data(config, device, progress=progress)
    seed_everything(config.seed)
    model = build_model(config, stats["channels"], stats["image_size"])
    result = Trainer(config, model, source, device=device, data_stats=stats).train()
    return Path(result.checkpoint)


def course_model(
    *,
    out: str | Path | None = None,
    minutes: float = 5.0,
    fast: bool | None = None,
    search: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> DiffusionPipeline:
    """A trained Fashion-MNIST model as a :class:`~diffusion_course.pipeline.DiffusionPipeline`.

    In order: notebook 03's run (:func:`notebook_03_checkpoint`, when ``search``); a model this
    function trained before in ``out`` (default ``runs/04_fashion_small``); else a new run of
    notebook 03's recipe, the ``small`` U-Net for ``minutes`` CPU minutes, saved in ``out``.
    ``fast`` (default: the course's fast mode) trains the ``tiny`` U-Net for 10 steps on 2,048
    images in a temporary folder instead, and ignores earlier runs. Prints where the model came from.
    """
    fast = fast_mode() if fast is None else fast
    if fast:
        config = notebook_03_recipe(Path(tempfile.mkdtemp(prefix="diffusion-course-")) / "run", model="tiny",
                                    minutes=None, max_steps=10, limit=2_048)
        config.batch_size, config.warmup_steps, config.log_every = 32, 5, 5
        path = train_short_run(config, progress=False)
        _say(f"fast mode: trained the tiny U-Net for {config.max_steps} steps (expect blobs, not clothes)")
        return DiffusionPipeline.from_checkpoint(path, device=device)
    found = notebook_03_checkpoint() if search else None
    if found is not None:
        _say(f"using notebook 03's model: {found}")
        return DiffusionPipeline.from_checkpoint(found, device=device)
    out = Path(QUICK_RUN if out is None else out)
    path = out / "checkpoint.pt"
    if path.is_file():
        _say(f"using the model trained earlier in {path}")
        return DiffusionPipeline.from_checkpoint(path, device=device)
    _say(f"no model from notebook 03 found: training the small U-Net for {minutes:g} minutes into {out} ...")
    path = train_short_run(notebook_03_recipe(out, minutes=minutes), progress=progress)
    return DiffusionPipeline.from_checkpoint(path, device=device)


def _say(message: str) -> None:
    print(message, file=sys.stdout, flush=True)


__all__ = ["NOTEBOOK_03_RUN", "QUICK_RUN", "course_model", "notebook_03_checkpoint", "notebook_03_recipe",
           "train_short_run"]
