"""Sampling: turning noise into images by running the learned reverse process.

DDPM Algorithm 2 (Ho et al. 2020) starts from pure noise ``x_T ~ N(0, I)`` and walks back
one step at a time::

    for t = T, ..., 1:
        z = N(0, I) if t > 1 else 0
        x_{t-1} = mu_theta(x_t, t) + sigma_t z

Here the mean ``mu_theta`` is the posterior mean of ``q(x_{t-1} | x_t, x_0)`` (DDPM eq. 7)
with ``x_0`` replaced by the network's estimate, clipped to the data range [-1, 1] (as in
the DDPM reference code), and ``sigma_t^2`` is the posterior variance beta-tilde_t
(DDPM sec. 3.2's "sigma_t^2 = beta-tilde_t" choice) or, for a model trained with a learned
variance, Improved DDPM eq. 15's interpolation. In this package's 0-based indexing the
loop runs ``t = T-1, ..., 0`` and the last step adds no noise.

Fewer steps: Improved DDPM sec. 4 samples with a subsequence ``S`` of the timesteps by
recomputing ``beta_{S_i} = 1 - alpha_bar_{S_i} / alpha_bar_{S_{i-1}}``; ``steps=`` does
that, with evenly spaced timesteps from ``T-1`` down to ``0`` (diffusers' "linspace"
spacing). ``steps=None`` runs all T steps, exactly Algorithm 2.

Phase 4 of the course extends this file (DDIM and friends).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .diffusion import VARIANCE_TYPES, p_mean_variance, split_output
from .schedules import NoiseSchedule


def respaced_timesteps(timesteps: int, steps: int | None) -> torch.Tensor:
    """The timesteps a ``steps``-step sampler visits, descending: ``[steps]`` long.

    Evenly spaced from ``T-1`` to ``0`` (rounded), so the first step starts from the
    noisiest ``t`` and the last one is ``t = 0``. ``steps=None`` -> all of ``T-1 .. 0``.
    """
    if steps is None or steps == timesteps:
        return torch.arange(timesteps - 1, -1, -1)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be an integer in [1, {timesteps}], got {steps!r}")
    if steps == 1:
        return torch.tensor([timesteps - 1])  # one step must start from pure noise, not t = 0
    grid = torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).round().long()
    return grid.flip(0)


def respace_schedule(schedule: NoiseSchedule, timesteps: torch.Tensor) -> NoiseSchedule:
    """A schedule over the subsequence ``timesteps`` (any order) of ``schedule``.

    Keeps ``alpha_bar`` at the chosen steps and sets ``beta_i = 1 - alpha_bar_{S_i} /
    alpha_bar_{S_{i-1}}`` (Improved DDPM sec. 4), so that ``q(x_t | x_0)`` is unchanged at
    every chosen step. Index ``i`` of the new schedule stands for ``sorted(timesteps)[i]``.
    """
    keep = torch.unique(timesteps.long().cpu())  # sorted ascending
    alpha_bar = schedule.alphas_cumprod[keep]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return NoiseSchedule(f"{schedule.name}-respaced", 1.0 - alpha_bar / prev)


def ddpm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    schedule: NoiseSchedule,
    noise: torch.Tensor | None,
    *,
    prediction_type: str = "eps",
    learned_variance: bool = False,
    clip_x0: bool = True,
    variance_type: str = "fixed_small",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of DDPM Algorithm 2: ``x_t -> x_{t-1}``.

    Args:
        model_output: the network's output for ``(x_t, t)``, ``[B, C, H, W]`` (``[B, 2C, H, W]``
            with ``learned_variance``).
        x_t: current images ``[B, C, H, W]``.
        t: the step, an int in ``[0, T-1]`` of ``schedule`` (0 is the last step, no noise).
        schedule: the (possibly respaced) schedule.
        noise: standard normal ``[B, C, H, W]`` for ``t > 0`` (ignored at ``t = 0``).
        clip_x0: clamp the x0 estimate to [-1, 1] before forming the mean.
        variance_type: ``fixed_small`` (beta-tilde_t) or ``fixed_large`` (beta_t) when the
            variance is not learned.

    Returns:
        ``(x_{t-1}, x0_hat)``, both shaped like ``x_t``.
    """
    pred, var_values = split_output(model_output, learned_variance)
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    fixed = "fixed_small" if learned_variance else variance_type
    mean, log_var, x0_hat = p_mean_variance(
        pred, var_values, x_t, t_batch, schedule, prediction_type, clip_x0=clip_x0, variance_type=fixed
    )
    if t == 0:
        return mean, x0_hat
    if noise is None or noise.shape != x_t.shape:
        raise ValueError(f"noise of shape {tuple(x_t.shape)} is needed for t > 0")
    if var_values is None:
        # sigma_t^2 itself, beta-tilde_t or beta_t (for t >= 1 the log tables hold exactly these)
        table = schedule.posterior_variance if variance_type == "fixed_small" else schedule.betas
        std = table[t].sqrt().to(x_t.dtype)
        return mean + std * noise, x0_hat
    return mean + torch.exp(0.5 * log_var) * noise, x0_hat


@torch.no_grad()
def ddpm_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    steps: int | None = None,
    prediction_type: str = "eps",
    device: torch.device | str | None = None,
    clip_x0: bool = True,
    progress: bool = False,
    variance_type: str | None = None,
) -> torch.Tensor:
    """Draw images with DDPM ancestral sampling (Algorithm 2), ``[B, C, H, W]`` in [-1, 1].

    Args:
        model: called as ``model(x_t, t)`` with ``x_t [B, C, H, W]`` and ``t [B]`` long
            (the *original* timesteps, also when respaced); returns ``[B, C, H, W]`` or,
            for a learned variance, ``[B, 2C, H, W]`` (detected from the channel count).
        schedule: the schedule the model was trained with.
        shape: ``(B, C, H, W)``.
        generator: a torch.Generator on ``device`` for reproducible samples; the initial
            noise is drawn first, then one noise tensor per step with ``t > 0``.
        steps: number of sampling steps (``None``: all T, exactly Algorithm 2).
        prediction_type: what the model predicts: ``eps``, ``x0`` or ``v``.
        device: where to sample; defaults to the model's device (or the CPU).
        clip_x0: clamp each x0 estimate to [-1, 1] (DDPM's reference sampler does).
        progress: show a tqdm bar.
        variance_type: the model's reverse variance (its :class:`~diffusion_course.diffusion.DiffusionConfig`'s
            ``variance``); ``None`` reads it from the output's channel count (2C: learned, else fixed_small).

    The result is clamped to [-1, 1].
    """
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    order = respaced_timesteps(schedule.timesteps, steps)
    sched = schedule if steps is None or steps == schedule.timesteps else respace_schedule(schedule, order)
    channels = shape[1]
    if variance_type is not None and variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance type {variance_type!r}; choose one of: {', '.join(VARIANCE_TYPES)}")

    x = torch.randn(shape, generator=generator, device=device)
    iterator = enumerate(order.tolist())
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(order), desc="sampling", leave=False)
    n = len(order)
    for i, t in iterator:
        t_model = torch.full((shape[0],), t, device=device, dtype=torch.long)
        out = model(x, t_model).float()
        learned = out.shape[1] == 2 * channels if variance_type is None else variance_type == "learned"
        expected = 2 * channels if learned else channels
        if out.shape[1] != expected:
            raise ValueError(
                f"the model returned {out.shape[1]} channels for {channels}-channel images; "
                f"expected {expected} for variance type {variance_type or 'fixed_small'!r}"
            )
        step_index = n - 1 - i  # index into the (respaced) schedule
        noise = torch.randn(shape, generator=generator, device=device) if step_index > 0 else None
        x, _ = ddpm_step(
            out,
            x,
            step_index,
            sched,
            noise,
            prediction_type=prediction_type,
            learned_variance=learned,
            clip_x0=clip_x0,
            variance_type="fixed_small" if learned or variance_type is None else variance_type,
        )
    return x.clamp(-1.0, 1.0)


__all__ = ["ddpm_sample", "ddpm_step", "respace_schedule", "respaced_timesteps"]
