"""Which timesteps a sampler visits, and the schedule over just those steps.

A model trained with T = 1000 steps does not have to be sampled with 1000 steps: a sampler can
visit a subsequence ``tau_1 < ... < tau_S`` of the timesteps (DDIM sec. 4.2; Improved DDPM
sec. 4). How the subsequence is chosen is the *spacing*; these are diffusers' three meanings
(Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2),
shown for T = 1000 and 10 steps:

``linspace``  ``round(linspace(0, T-1, S))``:          999, 888, 777, ..., 111, 0
``leading``   ``arange(S) * (T // S)``:                 900, 800, 700, ..., 100, 0
``trailing``  ``round(arange(T, 0, -T/S)) - 1``:       999, 899, 799, ...,  199, 99

``leading`` never visits the noisiest step (it starts at t = 900, where alpha_bar is already
4e-4 rather than 4e-5), so the first model call sees noise the model was not trained to
denoise from; ``trailing`` starts at T-1 and is the default here (Lin et al. 2023, sec. 3.3).
Every sampler then steps from the last visited t to alpha_bar = 1, the clean image.

Respacing (Improved DDPM sec. 4): keep ``alpha_bar`` at the visited steps and recompute
``beta_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}``; ``q(x_tau | x_0)`` is then unchanged
at every visited step, so the DDPM step can run on the short chain as if it were the whole one.
"""

from __future__ import annotations

import numpy as np
import torch

from ..schedules import NoiseSchedule

SPACINGS = ("trailing", "leading", "linspace")
"""Timestep spacings :func:`spaced_timesteps` knows (diffusers' ``timestep_spacing``); the first is the default."""


def check_steps(steps: object, timesteps: int) -> None:
    """``steps`` must be an integer in ``[1, T]``: a sampler cannot visit more steps than were trained."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be an integer in [1, {timesteps}] (the model's T), got {steps!r}")


def spaced_timesteps(timesteps: int, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """The ``steps`` timesteps a sampler visits, descending, as a ``[steps]`` long tensor.

    Args:
        timesteps: T, the number of training steps.
        steps: how many steps to visit, in ``[1, T]``.
        spacing: ``trailing`` (default), ``leading`` or ``linspace``, with diffusers' meanings
            (module docstring). One exception: ``linspace`` with one step visits ``T-1``, not 0 (a
            single step must start from pure noise; diffusers would start at t = 0).

    Computed in NumPy float64 exactly as diffusers does, so both visit the same steps.
    """
    check_steps(steps, timesteps)
    if spacing == "linspace":
        if steps == 1:
            return torch.tensor([timesteps - 1])
        grid = np.linspace(0, timesteps - 1, steps).round()[::-1]
    elif spacing == "leading":
        grid = (np.arange(0, steps) * (timesteps // steps)).round()[::-1]
    elif spacing == "trailing":
        # arange with a float step may overshoot by one element through rounding; keep `steps`
        grid = np.round(np.arange(timesteps, 0, -timesteps / steps))[:steps] - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
    return torch.from_numpy(grid.astype(np.int64).copy())


def respaced_timesteps(timesteps: int, steps: int | None) -> torch.Tensor:
    """The timesteps the legacy :func:`ddpm_sample` visits, descending: ``[steps]`` long.

    Evenly spaced from ``T-1`` to ``0`` (``linspace`` spacing), so the first step starts from the
    noisiest ``t`` and the last one is ``t = 0``. ``steps=None`` -> all of ``T-1 .. 0``.
    """
    return spaced_timesteps(timesteps, timesteps if steps is None else steps, "linspace")


def respace_betas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Betas of the chain that visits only ``timesteps`` (Improved DDPM sec. 4).

    ``beta_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}`` with ``alpha_bar_{tau_0} = 1``, where
    ``tau`` is ``timesteps`` sorted ascending (any order and repeats are accepted).

    Args:
        alphas_cumprod: alpha_bar of the full schedule, ``[T]``.
        timesteps: the visited steps, integers in ``[0, T-1]``.

    Returns:
        float64 ``[S]`` (S distinct steps); index ``i`` stands for the i-th smallest visited step.
    """
    keep = torch.unique(torch.as_tensor(timesteps).long().cpu())  # sorted ascending
    alpha_bar = alphas_cumprod.detach().double().cpu()[keep]
    before = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return 1.0 - alpha_bar / before


def respace_schedule(schedule: NoiseSchedule, timesteps: torch.Tensor) -> NoiseSchedule:
    """A schedule over the subsequence ``timesteps`` (any order) of ``schedule``.

    Its betas are :func:`respace_betas`, so ``alpha_bar`` is kept at every chosen step and index
    ``i`` of the new schedule stands for ``sorted(timesteps)[i]``.
    """
    return NoiseSchedule(f"{schedule.name}-respaced", respace_betas(schedule.alphas_cumprod, timesteps))


__all__ = [
    "SPACINGS",
    "check_steps",
    "respace_betas",
    "respace_schedule",
    "respaced_timesteps",
    "spaced_timesteps",
]
