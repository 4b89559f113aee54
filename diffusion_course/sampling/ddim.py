"""DDIM: a family of samplers for the same trained model, from deterministic to DDPM-like.

Song et al. 2021 ("Denoising Diffusion Implicit Models") observe that training only fixes the
marginals ``q(x_t | x_0)``, so many reverse processes fit one model. Their step, DDIM eq. 12, from
a visited step ``t`` to the next one ``t_prev`` (in our notation, with alpha_bar as in DDPM)::

    x_prev = sqrt(alpha_bar_prev) x0_hat                                "predicted x_0"
           + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_hat               "direction pointing to x_t"
           + sigma_t z                                                  random noise

    sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)

(eq. 16). ``eta = 0`` is deterministic: the same ``x_T`` always gives the same image, which is what
makes inversion and interpolation (:mod:`.inversion`) possible. ``eta = 1`` is DDPM's posterior
step with sigma_t^2 = beta-tilde (the step is then exactly :func:`.ddpm.ddpm_step` with
``fixed_small`` on the respaced chain). Any subsequence of timesteps works without retraining
(DDIM sec. 4.2), and the last step goes to ``alpha_bar = 1``: it returns ``x0_hat`` itself.

When x0 is clipped, eps is re-derived from the clipped x0 (as in Improved DDPM's and GLIDE's code,
diffusers' ``use_clipped_model_output=True``), so the step stays on the line through x_t and x0_hat.
"""

from __future__ import annotations

import math

import torch

from ..diffusion import to_x0_and_eps
from ..schedules import NoiseSchedule
from .base import Sampler, alpha_bar_at


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """sigma_t(eta) of DDIM eq. 16: ``eta sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))``.

    ``eta = 1`` gives sqrt(beta-tilde) of the (respaced) step, ``eta = 0`` gives 0. Floats in, float out.
    """
    return eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev))


def ddim_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    noise: torch.Tensor | None = None,
    *,
    eta: float = 0.0,
    prediction_type: str = "eps",
    clip_x0: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step (eq. 12 with sigma_t(eta) of eq. 16): ``x_t -> x_{t_prev}``.

    Args:
        model_output: the network's prediction for ``(x_t, t)``, ``[B, C, H, W]`` (no variance channels).
        x_t: current samples ``[B, C, H, W]``.
        t: the current timestep, an int in ``[0, T-1]`` of the full ``schedule``.
        t_prev: the next visited timestep, ``< t``; ``-1`` means alpha_bar = 1 (the clean image).
        schedule: the schedule the model was trained with (never respaced: DDIM reads alpha_bar).
        noise: standard normal ``[B, C, H, W]``; needed when sigma_t > 0 (``eta > 0`` and ``t_prev >= 0``).
        eta: 0 (deterministic DDIM) to 1 (DDPM-like).
        prediction_type: ``eps``, ``x0`` or ``v``.
        clip_x0: clamp x0_hat to [-1, 1] (and re-derive eps from it).

    Returns:
        ``(x_prev, x0_hat)``, both shaped like ``x_t``.
    """
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must lie in [-1, t) for t = {t}, got {t_prev}")
    alpha_bar_t, alpha_bar_prev = alpha_bar_at(schedule, t), alpha_bar_at(schedule, t_prev)
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    x0_hat, eps_hat = to_x0_and_eps(model_output, x_t, t_batch, schedule, prediction_type)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = (x_t - math.sqrt(alpha_bar_t) * x0_hat) / math.sqrt(1.0 - alpha_bar_t)
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    x_prev = math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps_hat
    if sigma > 0:
        if noise is None or noise.shape != x_t.shape:
            raise ValueError(f"noise of shape {tuple(x_t.shape)} is needed when eta > 0 (sigma_t = {sigma:.3g})")
        x_prev = x_prev + sigma * noise
    return x_prev, x0_hat


class DDIMSampler(Sampler):
    """DDIM over any visited subsequence, ``eta`` in [0, 1] (0: deterministic, 1: DDPM-like).

    A learned-variance model's variance channels are ignored (DDIM's sigma comes from ``eta``).
    """

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule, *, eta: float = 0.0, **kwargs) -> None:
        super().__init__(schedule, **kwargs)
        check_eta(eta)
        self.eta = float(eta)

    def needs_noise(self, i: int) -> bool:
        # the last step goes to alpha_bar = 1, where sigma_t is 0
        return self.eta > 0 and i < len(self.timesteps) - 1

    def step(self, model_output, i, x_t, noise=None):
        t, t_prev = self._pair(i)
        pred, _ = self.checked_prediction(model_output, x_t)
        if self.needs_noise(i):
            noise = self._check_noise(noise, x_t, i)
        return ddim_step(
            pred, x_t, t, t_prev, self.schedule, noise,
            eta=self.eta, prediction_type=self.prediction_type, clip_x0=self.clip_x0,
        )


def check_eta(eta: object) -> None:
    """DDIM's eta must be a number in [0, 1]."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta!r}")


__all__ = ["DDIMSampler", "check_eta", "ddim_sigma", "ddim_step"]
