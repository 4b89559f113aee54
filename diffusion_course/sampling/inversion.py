"""Running deterministic DDIM backwards (image -> noise), and interpolating between noises.

With eta = 0, DDIM maps each ``x_T`` to one image: it is an Euler discretisation of an ODE (DDIM
sec. 4.3, eqs. 13-14), and an ODE can be run the other way (DDIM sec. 5.4 encodes images so).
The step from ``t_prev`` (less noisy) up to ``t`` is DDIM's step with the two ends swapped::

    eps_hat = eps_theta(x_prev, t)                      (the model at the target timestep)
    x0_hat  = (x_prev - sqrt(1 - alpha_bar_prev) eps_hat) / sqrt(alpha_bar_prev)
    x_t     = sqrt(alpha_bar_t) x0_hat + sqrt(1 - alpha_bar_t) eps_hat

Sampling evaluates ``eps_theta(x_t, t)``; inversion cannot (``x_t`` is what it computes), so it uses
the sample it has: the same approximation as diffusers' ``DDIMInverseScheduler``. The round trip
image -> ``x_T`` -> image is then exact up to how much ``eps_theta`` changes over one step, which
shrinks with more steps. (Image editing builds on it, e.g. Mokady et al. 2023, null-text inversion.)

Because eta = 0 sampling is a fixed function of ``x_T``, a path between two noises gives a smooth
path between two images. Noises from N(0, I) in d dimensions all lie near the sphere of radius
sqrt(d), and a straight line between two of them cuts through the inside (its midpoint has norm
~sqrt(d / 2), noise the model never saw), so DDIM sec. 5.3 interpolates along the sphere with
slerp (Shoemake 1985).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..diffusion import to_x0_and_eps
from ..schedules import NoiseSchedule
from .base import alpha_bar_at
from .ddim import DDIMSampler


def ddim_inversion_step(
    eps_hat: torch.Tensor,
    x_prev: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """One DDIM (eta = 0) step backwards, ``x_{t_prev} -> x_t``: DDIM eq. 12 solved for the noisier end.

    Args:
        eps_hat: the noise estimate to step with, ``[B, C, H, W]`` (the model's at ``(x_prev, t)``, or
            at a guess of ``x_t`` when refining).
        x_prev: the current, less noisy sample; at ``t_prev = -1`` it is the clean image.
        t, t_prev: the target timestep and the current one (``-1``: alpha_bar = 1), ``t_prev < t``.
        schedule: the schedule the model was trained with.

    Returns:
        ``x_t = sqrt(alpha_bar_t) x0_hat + sqrt(1 - alpha_bar_t) eps_hat`` with
        ``x0_hat = (x_prev - sqrt(1 - alpha_bar_prev) eps_hat) / sqrt(alpha_bar_prev)``; shape of ``x_prev``.
    """
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must lie in [-1, t) for t = {t}, got {t_prev}")
    alpha_bar_t, alpha_bar_prev = alpha_bar_at(schedule, t), alpha_bar_at(schedule, t_prev)
    x0_hat = (x_prev - math.sqrt(1.0 - alpha_bar_prev) * eps_hat) / math.sqrt(alpha_bar_prev)
    return math.sqrt(alpha_bar_t) * x0_hat + math.sqrt(1.0 - alpha_bar_t) * eps_hat


def ddim_invert(
    model,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    *,
    steps: int = 50,
    spacing: str = "trailing",
    prediction_type: str = "eps",
    variance_type: str = "fixed_small",
    refine: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Encode images ``x0 [B, C, H, W]`` into the noise ``x_T`` that DDIM (eta = 0) turns back into them.

    Visits the timesteps of ``sample(sampler="ddim", steps=steps, spacing=spacing)`` in reverse, so
    ``sample(..., x_T=ddim_invert(...), clip_x0=False)`` gives ``x0`` back. Plain inversion
    (``refine=0``, one model call per step) is off by an error that shrinks like ``1 / steps``.
    ``refine=k`` re-evaluates the model ``k`` more times per step at the current guess of ``x_t``
    (a fixed-point iteration, as in Pan et al. 2023, "Effective Real Image Editing with Accelerated
    Iterative Diffusion Inversion"): at the fixed point the sampler's step from ``x_t`` lands exactly
    on ``x_prev``, so 2-3 iterations make the round trip nearly exact for well-behaved models.

    A schedule whose last alpha_bar is ~0 (cosine: 6e-8 at T = 200) spoils the round trip: the first
    sampling step forms ``x0_hat = (x_T - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)``, which
    multiplies any error of the model (or of the inversion) by ``1 / sqrt(alpha_bar_{T-1})``.

    Returns ``x_T`` shaped like ``x0``, on its device. The model is called as in :func:`sample`.
    """
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 2:
        raise ValueError("x0 must be a floating-point batch of images [B, C, H, W]")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be an integer >= 0 (fixed-point iterations per step), got {refine!r}")
    sampler = DDIMSampler(schedule, prediction_type=prediction_type, variance_type=variance_type, clip_x0=False)
    pairs = sampler.set_timesteps(steps, spacing)[::-1]  # least noisy first
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc="inverting (ddim)", leave=False)

    def eps_at(x: torch.Tensor, t: int) -> torch.Tensor:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        prediction, _ = sampler.checked_prediction(model(x, t_batch), x)
        return to_x0_and_eps(prediction, x, t_batch, schedule, prediction_type)[1]

    with torch.inference_mode():
        x = x0
        for t, t_prev in pairs:
            x_t = ddim_inversion_step(eps_at(x, t), x, t, t_prev, schedule)
            for _ in range(refine):
                x_t = ddim_inversion_step(eps_at(x_t, t), x, t, t_prev, schedule)
            x = x_t
    return x.clone()


def slerp(z0: torch.Tensor, z1: torch.Tensor, weights: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation between two noise tensors (Shoemake 1985; DDIM sec. 5.3).

    ``slerp = sin((1 - w) theta) / sin(theta) z0 + sin(w theta) / sin(theta) z1`` with ``theta`` the
    angle between ``z0`` and ``z1`` as flat vectors; falls back to the straight line when they are
    (nearly) parallel. ``w = 0`` gives ``z0``, ``w = 1`` gives ``z1``, and for equal norms every
    point keeps that norm.

    Args:
        z0, z1: tensors of the same shape (e.g. one noise image ``[C, H, W]`` each).
        weights: a float, or a 1-D sequence/tensor of K floats (usually in [0, 1]).

    Returns:
        ``z0``'s shape for a float; ``[K, *z0.shape]`` for K weights (a batch to pass as ``x_T``).
    """
    if not isinstance(z0, torch.Tensor) or not isinstance(z1, torch.Tensor) or z0.shape != z1.shape:
        raise ValueError("z0 and z1 must be tensors of the same shape")
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim > 1:
        raise ValueError(f"weights must be a number or a 1-D sequence, got shape {tuple(w.shape)}")
    a, b = z0.detach().double().flatten(), z1.detach().double().flatten()
    norms = a.norm() * b.norm()
    if norms == 0:
        raise ValueError("slerp needs two non-zero tensors (the angle between them is undefined)")
    theta = torch.arccos((a @ b / norms).clamp(-1.0, 1.0))
    if torch.sin(theta) < 1e-6:
        c0, c1 = 1.0 - w, w  # (nearly) parallel: the arc is the line
    else:
        c0, c1 = torch.sin((1.0 - w) * theta) / torch.sin(theta), torch.sin(w * theta) / torch.sin(theta)
    c0 = c0.reshape(*w.shape, *([1] * a.ndim))
    c1 = c1.reshape(*w.shape, *([1] * a.ndim))
    out = c0 * a + c1 * b
    return out.reshape(*w.shape, *z0.shape).to(dtype=z0.dtype, device=z0.device)


__all__ = ["ddim_inversion_step", "ddim_invert", "slerp"]
