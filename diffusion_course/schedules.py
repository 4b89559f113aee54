"""Variance schedules: how much noise the forward process adds at each step.

The forward process of a diffusion model (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models", DDPM) adds Gaussian noise in ``T`` small steps,

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I)          (DDPM eq. 2)

A *schedule* is the sequence ``beta_1 ... beta_T``. Everything else follows from it:

    alpha_t     = 1 - beta_t
    alpha_bar_t = prod_{s<=t} alpha_s                                       (DDPM eq. 4)
    SNR(t)      = alpha_bar_t / (1 - alpha_bar_t)        (Kingma et al. 2021, VDM eq. 5)

Indexing convention used everywhere in this package: timesteps are integers
``t = 0 .. T-1`` and ``betas[t]`` is the paper's ``beta_{t+1}``. So ``t = 0`` is the
first, least noisy step and ``t = T-1`` is (almost) pure noise. diffusers uses the
same convention, which is what lets the tests compare with it number for number.

Three schedules are provided:

``linear``
    DDPM's choice: betas rise linearly from 1e-4 to 0.02 (DDPM section 4). Those end
    points were chosen for T = 1000; for another T both are multiplied by 1000 / T, as in
    the Improved DDPM code, so that alpha_bar still ends near zero (unscaled, T = 100 would
    end at alpha_bar = 0.36: sampling would start from "pure noise" that is a third image).
    T = 1000 is unchanged; for T <= 20 the largest betas are capped at 0.999.
``cosine``
    Improved DDPM (Nichol & Dhariwal 2021, eq. 17): alpha_bar follows a squared cosine,
    ``f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2`` with ``s = 0.008``, and
    ``alpha_bar_t = f(t) / f(0)``. Betas are clipped at 0.999 so the last step does
    not become a singularity. It destroys information more slowly than ``linear``:
    with the linear schedule the last quarter of the steps sees almost pure noise.
``sigmoid``
    The sigmoid schedule *on alpha_bar* of Jabri et al. 2022 ("Scalable Adaptive
    Computation for Iterative Generation") and Chen 2023 ("On the Importance of Noise
    Scheduling for Diffusion Models", Algorithm 1): ``alpha_bar`` follows a rescaled,
    mirrored logistic curve ``(sigmoid(end/tau) - sigmoid((t/T * (end-start) + start)/tau))
    / (sigmoid(end/tau) - sigmoid(start/tau))`` with start = -3, end = 3, tau = 1.
    Beware: diffusers' ``DDPMScheduler(beta_schedule="sigmoid")`` is a *different*
    schedule (GeoDiff's sigmoid over the betas themselves), so the two do not agree.

All tensors are float64 on the CPU. Sampling and training code gathers the entries it
needs with :func:`gather` and casts them to the data's dtype and device there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SCHEDULES = ("linear", "cosine", "sigmoid")
"""The schedule names :func:`get_schedule` accepts (and the trainer offers)."""

LEGACY_SCHEDULES = ("linear-unscaled",)
"""Accepted for loading old checkpoints only: ``linear-unscaled`` is DDPM's 1e-4 .. 0.02 at any T,
what the course used before it scaled the linear betas by 1000 / T."""

MAX_BETA = 0.999
"""Improved DDPM clips betas here so that alpha_bar never reaches exactly zero."""


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule: ``timesteps`` betas evenly spaced from ``beta_start`` to ``beta_end``.

    Returns a float64 tensor of shape ``[timesteps]``, values in ``[beta_start, beta_end]``.
    """
    _check_timesteps(timesteps)
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def scaled_linear_betas(timesteps: int, max_beta: float = MAX_BETA) -> torch.Tensor:
    """The ``linear`` schedule for any T: DDPM's end points times ``1000 / T`` (Improved DDPM code).

    The product of the alphas then stays about the same as DDPM's at T = 1000 (alpha_bar_T
    ~ 4e-5), so x_T is pure noise for every T. Betas above ``max_beta`` (only for T <= 20)
    are capped. Float64 ``[timesteps]``.
    """
    _check_timesteps(timesteps)
    scale = 1000.0 / timesteps
    return linear_betas(timesteps, 1e-4 * scale, 0.02 * scale).clamp(max=max_beta)


def cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Improved DDPM's (unnormalised) ``f(u) = cos(((u + s) / (1 + s)) * pi/2)^2`` for u in [0, 1]."""
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = MAX_BETA) -> torch.Tensor:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    ``beta_t = min(1 - alpha_bar(t+1) / alpha_bar(t), max_beta)`` evaluated on the grid
    ``u = t / timesteps``. Returns float64 ``[timesteps]`` with values in ``(0, max_beta]``.
    """
    _check_timesteps(timesteps)
    u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = cosine_alpha_bar(u, s)
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def sigmoid_alpha_bar(
    u: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0
) -> torch.Tensor:
    """Chen 2023's sigmoid alpha_bar: 1 at ``u = 0`` falling smoothly to 0 at ``u = 1``."""
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    v = torch.sigmoid((u * (end - start) + start) / tau)
    return (v_end - v) / (v_end - v_start)


def sigmoid_betas(
    timesteps: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = MAX_BETA,
) -> torch.Tensor:
    """Sigmoid schedule on alpha_bar (Jabri et al. 2022; Chen 2023, Algorithm 1).

    Returns float64 ``[timesteps]`` with values in ``(0, max_beta]``.
    """
    _check_timesteps(timesteps)
    u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = sigmoid_alpha_bar(u, start, end, tau)
    return (1 - f[1:] / f[:-1]).clamp(min=0.0, max=max_beta)


@dataclass(frozen=True)
class NoiseSchedule:
    """A variance schedule and every quantity derived from it.

    All tensors are float64, shape ``[T]`` where ``T = timesteps``, indexed by
    ``t = 0 .. T-1`` (``betas[t]`` is the paper's beta_{t+1}).

    Attributes:
        name: which schedule this is (``"linear"``, ``"cosine"``, ``"sigmoid"`` or ``"custom"``).
        betas: beta_t, the variance added at step t, in (0, 1).
        alphas: alpha_t = 1 - beta_t.
        alphas_cumprod: alpha_bar_t = prod_{s<=t} alpha_s, falling from ~1 to ~0 (DDPM eq. 4).
        alphas_cumprod_prev: alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (no noise before step 0).
        posterior_variance: beta-tilde_t, the variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 7).
        posterior_mean_coef1: coefficient of x_0 in the posterior mean (DDPM eq. 7).
        posterior_mean_coef2: coefficient of x_t in the posterior mean (DDPM eq. 7).
    """

    name: str
    betas: torch.Tensor
    alphas: torch.Tensor = field(init=False)
    alphas_cumprod: torch.Tensor = field(init=False)
    alphas_cumprod_prev: torch.Tensor = field(init=False)
    posterior_variance: torch.Tensor = field(init=False)
    posterior_mean_coef1: torch.Tensor = field(init=False)
    posterior_mean_coef2: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie strictly between 0 and 1")
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        # frozen dataclass: object.__setattr__ is the documented way to fill derived fields
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)
        object.__setattr__(self, "alphas_cumprod_prev", prev)
        object.__setattr__(self, "posterior_variance", betas * (1.0 - prev) / (1.0 - alphas_cumprod))
        object.__setattr__(
            self, "posterior_mean_coef1", betas * prev.sqrt() / (1.0 - alphas_cumprod)
        )
        object.__setattr__(
            self, "posterior_mean_coef2", (1.0 - prev) * alphas.sqrt() / (1.0 - alphas_cumprod)
        )

    @property
    def timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return self.betas.numel()

    def __len__(self) -> int:
        return self.timesteps

    def __repr__(self) -> str:
        ab = self.alphas_cumprod
        return (
            f"NoiseSchedule(name={self.name!r}, timesteps={self.timesteps}, "
            f"alpha_bar[0]={ab[0].item():.5f}, alpha_bar[T-1]={ab[-1].item():.2e})"
        )

    @property
    def sqrt_alphas_cumprod(self) -> torch.Tensor:
        """sqrt(alpha_bar_t): how much of x_0 is left in x_t (the signal scale)."""
        return self.alphas_cumprod.sqrt()

    @property
    def sqrt_one_minus_alphas_cumprod(self) -> torch.Tensor:
        """sqrt(1 - alpha_bar_t): the standard deviation of the noise in x_t."""
        return (1.0 - self.alphas_cumprod).sqrt()

    @property
    def posterior_log_variance_clipped(self) -> torch.Tensor:
        """log beta-tilde_t, with the t = 0 entry (which is 0) replaced by the t = 1 entry.

        The posterior variance at the first step is exactly zero; its log would be -inf,
        so (as in the DDPM reference code) the next value stands in for it.
        """
        var = self.posterior_variance
        if var.numel() == 1:
            return torch.log(self.betas)
        return torch.log(torch.cat([var[1:2], var[1:]]))

    def snr(self, t: torch.Tensor | int | None = None) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) (VDM eq. 5).

        With ``t=None`` returns all T values; otherwise the values at integer timesteps
        ``t`` (any shape), as float64 on the CPU.
        """
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        if t is None:
            return snr
        return snr[self._index(t)]

    def log_snr(self, t: torch.Tensor | int | None = None) -> torch.Tensor:
        """Natural log of :meth:`snr`; falls from about +9 to about -10 for T = 1000."""
        return torch.log(self.snr(t))

    def _index(self, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t)
        check_timesteps(t, self.timesteps)
        return t.long().cpu()


def get_schedule(name: str, timesteps: int = 1000) -> NoiseSchedule:
    """Build a named schedule with ``timesteps`` steps.

    Args:
        name: ``"linear"`` (DDPM), ``"cosine"`` (Improved DDPM) or ``"sigmoid"`` (Chen 2023).
        timesteps: T, a positive integer (1000 in the papers).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or T < 1.
    """
    if not isinstance(name, str):
        raise ValueError(f"schedule name must be a string, one of {', '.join(SCHEDULES)}")
    key = name.strip().lower()
    builders = {"linear": scaled_linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas,
                "linear-unscaled": linear_betas}
    if key not in builders:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return NoiseSchedule(key, builders[key](timesteps))


def gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pick ``values[t]`` for each item of a batch and shape it to broadcast against ``like``.

    Args:
        values: a per-timestep table, shape ``[T]`` (e.g. ``schedule.alphas_cumprod``).
        t: integer timesteps, shape ``[B]``.
        like: the batch the result will multiply, shape ``[B, ...]``.

    Returns:
        Shape ``[B, 1, ..., 1]`` (as many trailing ones as ``like`` has extra dims), on
        ``like``'s device and in ``like``'s dtype.

    The table is cast to ``like``'s dtype on the CPU before it moves: Apple's MPS has no
    float64, and a float64 table would be rounded to that dtype at the end anyway.
    """
    table = values.detach().to(dtype=like.dtype)
    out = table.to(t.device)[t.long()]
    out = out.reshape(t.shape[0], *([1] * (like.ndim - 1)))
    return out.to(device=like.device)


def check_timesteps(t: torch.Tensor, timesteps: int) -> None:
    """Raise a clear ``ValueError`` unless ``t`` holds integers in ``[0, timesteps)``."""
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"timesteps t must be an integer tensor (torch.long), got {t.dtype}")
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= timesteps:
        raise ValueError(
            f"timestep out of range: got values in [{lo}, {hi}], but t must lie in "
            f"[0, {timesteps - 1}] for a schedule with {timesteps} steps"
        )


def _check_timesteps(timesteps: int) -> None:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")


def first_t_below(schedule: NoiseSchedule, level: float) -> int:
    """The first timestep t with alpha_bar_t < ``level``; ``schedule.timesteps`` if there is none.

    ``first_t_below(s, 0.5)`` is where signal and noise have equal variance (SNR = 1).
    """
    below = (schedule.alphas_cumprod < level).nonzero()
    return int(below[0]) if len(below) else schedule.timesteps
