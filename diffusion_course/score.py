"""The score view of a denoiser: eps, the score and Tweedie's formula.

The *score* of a density is the gradient of its log, ``grad_x log p(x)``: an arrow at every
point towards where the data is denser. For the noisy marginal ``p_t`` of the forward
process, a network trained to predict the noise (DDPM eq. 14) estimates it, because the
best possible noise prediction is a rescaled score (Vincent 2011, denoising score matching;
Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 5 and appendix):

    eps_theta(x_t, t) ~= E[eps | x_t] = -sqrt(1 - alpha_bar_t) grad log p_t(x_t)

and Tweedie's formula (Robbins 1956; Efron 2011, "Tweedie's formula and selection bias")
turns the score into the posterior mean of the clean data:

    E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) grad log p_t(x_t)) / sqrt(alpha_bar_t)

Substituting the first line into the second gives back
:func:`~diffusion_course.diffusion.predict_x0_from_eps`: "predict the noise", "estimate the
score" and "denoise" are one network read three ways.

Shapes: ``x_t``, ``eps`` and scores are ``[B, ...]`` (images ``[B, C, H, W]`` or points
``[B, D]``); ``t`` is ``[B]`` integers in ``[0, T-1]``.
"""

from __future__ import annotations

import torch

from .schedules import NoiseSchedule, gather


def score_from_eps(eps: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """``grad log p_t(x_t) = -eps / sqrt(1 - alpha_bar_t)`` from a noise prediction ``eps``."""
    return -eps / gather(schedule.sqrt_one_minus_alphas_cumprod, t, eps)


def eps_from_score(score: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """The inverse of :func:`score_from_eps`: ``eps = -sqrt(1 - alpha_bar_t) * score``."""
    return -gather(schedule.sqrt_one_minus_alphas_cumprod, t, score) * score


def tweedie_x0(x_t: torch.Tensor, t: torch.Tensor, score: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Tweedie's formula: ``E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) score) / sqrt(alpha_bar_t)``.

    Exact when ``score`` is the true score of the noisy marginal ``p_t``; with a network's
    estimate it is the network's denoised guess x-hat_0. Shape of ``x_t``.
    """
    alpha_bar = gather(schedule.alphas_cumprod, t, x_t)
    return (x_t + (1 - alpha_bar) * score) / alpha_bar.sqrt()


__all__ = ["eps_from_score", "score_from_eps", "tweedie_x0"]
