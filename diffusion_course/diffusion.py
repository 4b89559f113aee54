"""The forward process: turning an image into noise in closed form, and undoing one step.

Chaining DDPM's one-step noising ``q(x_t | x_{t-1})`` gives a closed form for any t at
once (Ho et al. 2020, DDPM eq. 4):

    q(x_t | x_0) = N(x_t; sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)

and, with the reparameterisation trick (Kingma & Welling 2014), a sample is

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,    eps ~ N(0, I).

Given both ends, the step back is Gaussian too (DDPM eqs. 6-7):

    q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I)
    mu_tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
    beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

A network never sees x_0 at sampling time, so it predicts one of three equivalent
targets and the others follow by algebra (the conversions at the end of this file):
the noise ``eps`` (DDPM), the clean image ``x0``, or the velocity
``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`` (Salimans & Ho 2022, sec. 4).

Shapes: images are ``[B, C, H, W]`` (any ``[B, ...]`` works), timesteps ``t`` are
integer tensors of shape ``[B]`` with values in ``[0, T-1]``.
"""

from __future__ import annotations

import torch

from .schedules import NoiseSchedule, check_timesteps, gather

PREDICTION_TYPES = ("eps", "x0", "v")


def _check_batch(x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point tensor (e.g. x.float()), got {kind}")
    if not isinstance(t, torch.Tensor):
        raise ValueError("t must be a tensor of integer timesteps, e.g. torch.tensor([10, 500])")
    if x.ndim < 1 or t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t must have shape [B] matching the batch of {name}: got t {tuple(t.shape)} "
            f"for {name} {tuple(x.shape)}"
        )
    check_timesteps(t, schedule.timesteps)


def q_sample(
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in one step (DDPM eq. 4 with the reparameterisation trick).

    Args:
        x0: clean images ``[B, ...]``, float, typically in [-1, 1].
        t: integer timesteps ``[B]`` in ``[0, T-1]``; each image gets its own t.
        noise: standard normal noise shaped like ``x0``; ``None`` draws fresh noise.
            Pass it explicitly when you need the same noise again (training targets,
            reproducible pictures).
        schedule: the :class:`~diffusion_course.schedules.NoiseSchedule`.

    Returns:
        ``sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise``, shape and dtype of ``x0``.
    """
    _check_batch(x0, t, schedule, "x0")
    if noise is None:
        noise = torch.randn_like(x0)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    signal = gather(schedule.sqrt_alphas_cumprod, t, x0)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0)
    return signal * x0 + sigma * noise


def q_posterior(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7).

    Args:
        x0: clean images ``[B, ...]``.
        x_t: the same images noised to step t, ``[B, ...]``.
        t: integer timesteps ``[B]``; at ``t = 0`` the "previous" image is x0 itself,
            so the mean is x0 and the variance 0.
        schedule: the noise schedule.

    Returns:
        ``(mean, variance)``: ``mean`` shaped like ``x0``; ``variance`` shaped
        ``[B, 1, ..., 1]`` (one number per image, broadcastable against ``x0``).
    """
    _check_batch(x0, t, schedule, "x0")
    if x_t.shape != x0.shape:
        raise ValueError(f"x_t must have the shape of x0 {tuple(x0.shape)}, got {tuple(x_t.shape)}")
    mean = gather(schedule.posterior_mean_coef1, t, x0) * x0 + gather(
        schedule.posterior_mean_coef2, t, x0
    ) * x_t
    variance = gather(schedule.posterior_variance, t, x0)
    return mean, variance


# ---------------------------------------------------------------------------
# Prediction targets: eps, x0 and v are three views of the same (x_t, t) pair.
# ---------------------------------------------------------------------------


def predict_x0_from_eps(
    x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)  (DDPM eq. 4 solved for x0)."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x_t)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return (x_t - sigma * eps) / signal


def predict_eps_from_x0(
    x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x_t)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return (x_t - signal * x0) / sigma


def velocity(
    x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """The v target: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x0)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0)
    return signal * eps - sigma * x0


def predict_x0_from_v(
    x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x_t)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return signal * x_t - sigma * v


def predict_eps_from_v(
    x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x_t)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return sigma * x_t + signal * v


def to_x0_and_eps(
    prediction: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str = "eps",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output of any prediction type into ``(x0_hat, eps_hat)``."""
    if prediction_type == "eps":
        return predict_x0_from_eps(x_t, t, prediction, schedule), prediction
    if prediction_type == "x0":
        return prediction, predict_eps_from_x0(x_t, t, prediction, schedule)
    if prediction_type == "v":
        return predict_x0_from_v(x_t, t, prediction, schedule), predict_eps_from_v(
            x_t, t, prediction, schedule
        )
    raise ValueError(
        f"unknown prediction type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}"
    )
