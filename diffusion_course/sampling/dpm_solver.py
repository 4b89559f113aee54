"""DPM-Solver++(2M): a second-order ODE solver that needs 10-20 model calls, not hundreds.

Deterministic sampling follows the probability-flow ODE. Written in the half log-SNR
``lambda_t = log(alpha_t / sigma_t)`` (with ``alpha_t = sqrt(alpha_bar_t)``,
``sigma_t = sqrt(1 - alpha_bar_t)``) and the data prediction ``x0_theta``, its exact solution from
``s`` to ``t`` is (Lu et al. 2022, "DPM-Solver++", eq. 8)::

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^lambda x0_theta d lambda

Holding ``x0_theta`` constant over the step gives the first-order solver, which is exactly DDIM with
eta = 0::

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s,        h = lambda_t - lambda_s

The multistep second-order solver (DPM-Solver++(2M), Lu et al. 2022, Algorithm 2) instead extrapolates
``x0_theta`` linearly from the current and the previous prediction, at no extra model call::

    r = h_prev / h,    D = (1 + 1 / (2r)) x0_s - 1 / (2r) x0_before
    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D

The first step has no previous prediction and the last one goes to sigma = 0 (alpha_bar = 1), where
h is infinite, so both are first order ("lower order final", which also steadies few-step runs).
"""

from __future__ import annotations

import math

import torch

from ..diffusion import to_x0_and_eps
from .base import Sampler, alpha_bar_at


def half_log_snr(alpha_bar: float) -> float:
    """``lambda = log(alpha / sigma) = 0.5 log(alpha_bar / (1 - alpha_bar))`` (+inf at alpha_bar = 1)."""
    return math.inf if alpha_bar >= 1.0 else 0.5 * math.log(alpha_bar / (1.0 - alpha_bar))


def dpm_solver_2m_step(
    x_s: torch.Tensor,
    x0_s: torch.Tensor,
    alpha_bar_s: float,
    alpha_bar_t: float,
    x0_before: torch.Tensor | None = None,
    alpha_bar_before: float | None = None,
) -> torch.Tensor:
    """One DPM-Solver++ update from ``s`` to the less noisy ``t`` (Lu et al. 2022, Algorithm 2).

    Args:
        x_s: the current sample ``[B, C, H, W]`` at ``alpha_bar_s``.
        x0_s: the data prediction at ``(x_s, s)``, shaped like ``x_s``.
        alpha_bar_s, alpha_bar_t: alpha_bar now and after the step (``alpha_bar_t = 1``: the clean image).
        x0_before, alpha_bar_before: the previous step's data prediction and its alpha_bar; with
            them the update is second order (2M), without them first order (= DDIM, eta = 0).

    Returns:
        ``x_t``, shaped like ``x_s``.
    """
    sigma_s, sigma_t = math.sqrt(1.0 - alpha_bar_s), math.sqrt(1.0 - alpha_bar_t)
    alpha_s, alpha_t = math.sqrt(alpha_bar_s), math.sqrt(alpha_bar_t)
    # alpha_t (1 - e^{-h}) with e^{-h} = (alpha_s sigma_t) / (alpha_t sigma_s): finite also at sigma_t = 0
    data_weight = alpha_t - alpha_s * sigma_t / sigma_s
    if x0_before is None:
        return (sigma_t / sigma_s) * x_s + data_weight * x0_s
    if alpha_bar_before is None or alpha_bar_t >= 1.0:
        raise ValueError("the second-order step needs alpha_bar_before and a target with alpha_bar < 1")
    h = half_log_snr(alpha_bar_t) - half_log_snr(alpha_bar_s)
    h_before = half_log_snr(alpha_bar_s) - half_log_snr(alpha_bar_before)
    r = h_before / h
    d = (1.0 + 0.5 / r) * x0_s - (0.5 / r) * x0_before
    return (sigma_t / sigma_s) * x_s + data_weight * d


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M) (multistep, data prediction, first-order first and last steps).

    Deterministic: it never needs noise. Multistep: it remembers the previous step's data
    prediction, so call :meth:`step` in order after :meth:`set_timesteps`.
    """

    name = "dpm-solver++"

    def reset(self) -> None:
        self._before: tuple[torch.Tensor, float] | None = None  # (x0_hat, alpha_bar) of the last step
        self._before_index = -1

    def step(self, model_output, i, x_t, noise=None):
        t, t_prev = self._pair(i)
        if i == 0:
            self.reset()
        elif self._before is None or self._before_index != i - 1:
            raise ValueError(f"DPM-Solver++ steps must run in order: step {i} came before step {i - 1}")
        pred, _ = self.checked_prediction(model_output, x_t)
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0_hat, _ = to_x0_and_eps(pred, x_t, t_batch, self.schedule, self.prediction_type)
        if self.clip_x0:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        alpha_bar_s, alpha_bar_t = alpha_bar_at(self.schedule, t), alpha_bar_at(self.schedule, t_prev)
        last = t_prev < 0
        x0_before, alpha_bar_before = (None, None) if last or self._before is None else self._before
        x_prev = dpm_solver_2m_step(x_t, x0_hat, alpha_bar_s, alpha_bar_t, x0_before, alpha_bar_before)
        self._before, self._before_index = (x0_hat, alpha_bar_s), i
        return x_prev, x0_hat


__all__ = ["DPMSolverSampler", "dpm_solver_2m_step", "half_log_snr"]
