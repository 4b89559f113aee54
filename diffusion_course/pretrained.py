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

Phase 5 needs conditional models: :func:`conditional_model` trains (once) a class- or text-conditioned
model with the same recipe, in pixels or on the latents of the course VAE.
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
    recipe (:data:`~diffusion_course.training.CPU_RECIPE`), for a budget of
    ``minutes`` and/or ``max_steps``, written to ``out``. ``model``: another preset than the recipe's."""
    from .training import CPU_RECIPE, TrainConfig

    recipe = {**CPU_RECIPE, "max_minutes": minutes}
    if model is not None:
        recipe["model"] = model
    return TrainConfig(
        dataset="fashion-mnist", max_steps=max_steps, limit=limit, seed=seed,
        sample_every=0, checkpoint_every=500, log_every=50, num_workers=0, out=str(out), device="cpu", **recipe,
    )


def train_short_run(config, *, progress: bool = True) -> Path:
    """Train ``config`` (a TrainConfig) from scratch with the package's Trainer; returns its checkpoint.

    Class- and text-conditioned runs (``config.conditioning``) and latent runs (``config.latent``:
    the cached VAE of the same images, or one trained now) are built as the command-line trainer
    builds them. Refuses to overwrite a checkpoint already in ``config.out`` (use it, or pick
    another folder).
    """
    from .batching import load_training_data
    from .runtime import seed_everything
    from .trainer import Trainer
    from .training import build_model, build_objective

    out = Path(config.out)
    if (out / "checkpoint.pt").exists():
        raise ValueError(f"{out / 'checkpoint.pt'} exists already: load it, or train into another folder")
    config.progress = progress
    device = torch.device(config.device)
    source, stats = load_training_data(config, device, progress=progress)
    channels, side, space = stats["channels"], stats["image_size"], None
    if config.latent:  # the VAE comes from its cache (or is trained once), the images become latents
        from .latent import latent_training_data

        source, stats, space = latent_training_data(config, source, stats, device=device, progress=progress)
        channels, side = space.shape[0], space.shape[1]
    num_classes = len(stats["classes"]) if config.conditioning != "none" else None
    seed_everything(config.seed)
    model = build_model(config, channels, side, num_classes, stats.get("classes"))
    objective = build_objective(config, num_classes, model)
    if space is not None:
        from .latent import LatentObjective

        objective = LatentObjective(objective, space)
    result = Trainer(config, model, source, objective=objective, device=device, data_stats=stats).train()
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
    config = notebook_03_recipe(out, minutes=minutes)
    _say(f"no model from notebook 03 found: training the {config.model} U-Net for {minutes:g} minutes into {out} ...")
    path = train_short_run(config, progress=progress)
    return DiffusionPipeline.from_checkpoint(path, device=device)


CONDITIONINGS = ("class", "text")
"""What :func:`conditional_model` conditions on: the class labels, or captions made from them."""

FAST_RUN = {"model": "tiny", "max_steps": 4, "limit": 256, "batch_size": 16, "warmup_steps": 2, "vae_epochs": 1.0}
"""Fast mode's conditional runs (CI, grading): a few steps of the tiny U-Net on 256 images."""


def conditional_recipe(out: str | Path, conditioning: str = "class", *, latent: bool = False,
                       model: str | None = None, minutes: float | None = 10.0, max_steps: int | None = None,
                       limit: int | None = None, vae_epochs: float = 1.0, seed: int = 0):
    """Notebook 03's recipe (:func:`notebook_03_recipe`) for a conditional model: ``conditioning``
    ``class`` or ``text`` with 10 % condition dropout (classifier-free guidance), on the latents of
    the course VAE when ``latent`` (trained for ``vae_epochs`` epochs once, then cached)."""
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}")
    config = notebook_03_recipe(out, model=model, minutes=minutes, max_steps=max_steps, limit=limit, seed=seed)
    config.conditioning, config.cond_drop, config.latent, config.vae_epochs = conditioning, 0.1, latent, vae_epochs
    config.validate()
    return config


def conditional_model(
    conditioning: str = "class",
    *,
    latent: bool = False,
    minutes: float = 10.0,
    vae_epochs: float = 1.0,
    out: str | Path | None = None,
    fast: bool | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> DiffusionPipeline:
    """A class- or text-conditioned Fashion-MNIST model (in pixels, or on VAE latents) as a pipeline.

    Notebook 05's models: :func:`conditional_recipe`, the ``small`` U-Net for ``minutes`` CPU minutes,
    saved in ``out`` (default ``runs/05_fashion_<conditioning>``, ``runs/05_fashion_latent_<conditioning>``
    for a latent model) and reused by the next call. A latent model's VAE trains for ``vae_epochs``
    epochs first (one epoch of Fashion-MNIST: 469 steps, a few CPU minutes), once: it is cached under
    ``data/autoencoders``. ``fast`` (default: the course's fast mode) trains :data:`FAST_RUN` in a
    temporary folder instead. Prints where the model came from.
    """
    fast = fast_mode() if fast is None else fast
    kind = f"{'latent ' if latent else ''}{conditioning}-conditional"
    if fast:
        settings = dict(FAST_RUN)
        batch_size, warmup_steps = settings.pop("batch_size"), settings.pop("warmup_steps")
        config = conditional_recipe(Path(tempfile.mkdtemp(prefix="diffusion-course-")) / "run", conditioning,
                                    latent=latent, minutes=None, **settings)
        config.batch_size, config.warmup_steps, config.log_every = batch_size, warmup_steps, config.max_steps
        path = train_short_run(config, progress=False)
        _say(f"fast mode: trained a tiny {kind} U-Net for {config.max_steps} steps (expect blobs, not clothes)")
        return DiffusionPipeline.from_checkpoint(path, device=device)
    name = f"05_fashion_{'latent_' if latent else ''}{conditioning}"
    out = Path("runs") / name if out is None else Path(out)
    path = out / "checkpoint.pt"
    if path.is_file():
        _say(f"using the {kind} model trained earlier in {path}")
        return DiffusionPipeline.from_checkpoint(path, device=device)
    config = conditional_recipe(out, conditioning, latent=latent, minutes=minutes, vae_epochs=vae_epochs)
    _say(f"training a {kind} {config.model} U-Net for {minutes:g} minutes into {out} ...")
    path = train_short_run(config, progress=progress)
    return DiffusionPipeline.from_checkpoint(path, device=device)


def _say(message: str) -> None:
    print(message, file=sys.stdout, flush=True)


__all__ = ["CONDITIONINGS", "FAST_RUN", "NOTEBOOK_03_RUN", "QUICK_RUN", "conditional_model", "conditional_recipe",
           "course_model", "notebook_03_checkpoint", "notebook_03_recipe", "train_short_run"]
