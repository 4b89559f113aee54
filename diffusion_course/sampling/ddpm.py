"""DDPM ancestral sampling: the reverse process one Gaussian step at a time.

DDPM Algorithm 2 (Ho et al. 2020) starts from pure noise ``x_T ~ N(0, I)`` and walks back::

    for t = T, ..., 1:
        z = N(0, I) if t > 1 else 0
        x_{t-1} = mu_theta(x_t, t) + sigma_t z

For an eps-predicting network the mean is DDPM eq. 11,
``mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t)``, which is the
posterior mean of ``q(x_{t-1} | x_t, x_0)`` (eq. 7) with ``x_0`` replaced by the network's estimate;
this module computes it in that second form so that x0 can be clipped to the data range [-1, 1]
first (as the DDPM reference code does) and x0- or v-predicting networks work the same way.
``sigma_t^2`` is beta-tilde_t (``fixed_small``), beta_t (``fixed_large``; DDPM sec. 3.2 found both
equally good) or Improved DDPM eq. 15's learned interpolation between their logs. In this
package's 0-based indexing the loop runs ``t = T-1, ..., 0`` and the last step adds no noise.

Fewer steps: the same step runs on a respaced schedule (:func:`.spacing.respace_schedule`,
Improved DDPM sec. 4), whose index ``i`` stands for the i-th smallest visited timestep.
"""

from __future__ import annotations

import torch

from ..diffusion import p_mean_variance, split_output
from ..schedules import NoiseSchedule
from .base import Sampler
from .spacing import respace_schedule


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
    """One step of DDPM Algorithm 2: ``x_t -> x_{t-1} = mu_theta(x_t, t) + sigma_t z`` (eq. 11 for the mean).

    Args:
        model_output: the network's output for ``(x_t, t)``, ``[B, C, H, W]`` (``[B, 2C, H, W]``
            with a learned variance).
        x_t: current images ``[B, C, H, W]``.
        t: the step, an int in ``[0, T-1]`` of ``schedule`` (0 is the last step, no noise).
        schedule: the (possibly respaced) schedule; ``t`` indexes it.
        noise: standard normal ``z``, ``[B, C, H, W]``, for ``t > 0`` (ignored at ``t = 0``).
        prediction_type: what the network predicts: ``eps``, ``x0`` or ``v``.
        learned_variance: the output carries variance channels (Improved DDPM eq. 15); the same as
            ``variance_type="learned"``.
        clip_x0: clamp the x0 estimate to [-1, 1] before forming the mean.
        variance_type: ``fixed_small`` (beta-tilde_t), ``fixed_large`` (beta_t) or ``learned``.

    Returns:
        ``(x_{t-1}, x0_hat)``, both shaped like ``x_t``.
    """
    learned = learned_variance or variance_type == "learned"
    pred, var_values = split_output(model_output, learned)
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    fixed = "fixed_small" if learned else variance_type
    mean, log_var, x0_hat = p_mean_variance(
        pred, var_values, x_t, t_batch, schedule, prediction_type, clip_x0=clip_x0, variance_type=fixed
    )
    if t == 0:
        return mean, x0_hat
    if noise is None or noise.shape != x_t.shape:
        raise ValueError(f"noise of shape {tuple(x_t.shape)} is needed for t > 0")
    if var_values is None:
        # sigma_t^2 itself, beta-tilde_t or beta_t (for t >= 1 the log tables hold exactly these)
        table = schedule.posterior_variance if fixed == "fixed_small" else schedule.betas
        std = table[t].sqrt().to(x_t.dtype)
        return mean + std * noise, x0_hat
    return mean + torch.exp(0.5 * log_var) * noise, x0_hat


class DDPMSampler(Sampler):
    """DDPM ancestral sampling (Algorithm 2) over all T steps or a respaced subsequence.

    Every step but the last adds noise. With ``steps < T`` the step runs on the respaced schedule
    over the visited timesteps (Improved DDPM sec. 4), the model still sees the original ``t``.
    """

    name = "ddpm"

    def set_timesteps(self, steps: int, spacing: str = "trailing", start: int | None = None) -> list[tuple[int, int]]:
        pairs = super().set_timesteps(steps, spacing, start)
        full = len(self.timesteps) == self.schedule.timesteps
        # all T steps: the schedule itself (respacing would only add float64 rounding)
        self.chain = self.schedule if full else respace_schedule(self.schedule, self.timesteps)
        return pairs

    def needs_noise(self, i: int) -> bool:
        return i < len(self.timesteps) - 1

    def step(self, model_output, i, x_t, noise=None):
        self._pair(i)
        self.checked_prediction(model_output, x_t)  # checks the channel count against variance_type
        index = len(self.timesteps) - 1 - i  # the visited steps sorted ascending: index into the chain
        if self.needs_noise(i):
            noise = self._check_noise(noise, x_t, i)
        return ddpm_step(
            model_output.to(x_t.dtype), x_t, index, self.chain, noise if index > 0 else None,
            prediction_type=self.prediction_type, clip_x0=self.clip_x0, variance_type=self.variance_type,
        )

__all__ = ["DDPMSampler", "ddpm_step"]
