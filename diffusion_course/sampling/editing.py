"""Editing real images with any trained model and any sampler: SDEdit and RePaint inpainting.

Neither method trains anything; both only change where the reverse process starts or what it
is told along the way, through the step protocol of :mod:`.base`.

**SDEdit** (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic
Differential Equations", sec. 3). Noise a real image part of the way, ``x_{t0} = q_sample(x, t0)``,
then run the reverse process from ``t0`` down to 0, optionally with a new condition (a guided
model). Small ``t0`` keeps the image (colours, layout) and only cleans details; large ``t0`` keeps
only the coarse layout; ``t0 = 1`` (all of T) forgets the image entirely. ``t0`` is written as a
fraction of T here, as in the paper (its ``t0`` is in [0, 1]); diffusers calls it ``strength``.

**RePaint** (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
Models", eq. 8-9 and Algorithm 1). To fill a hole, sample as usual but after each step overwrite
the known pixels with the original image noised to the new timestep::

    x_{t-1} = m * q_sample(x_known, t-1) + (1 - m) * x_{t-1}^{sampled}

The two halves are noised independently, so at first they do not fit together. *Resampling*
repairs that: after ``jump`` steps, noise the result back up by the same ``jump`` steps with the
forward process, ``q(x_t | x_s) = N(sqrt(ab_t / ab_s) x_s, (1 - ab_t / ab_s) I)``, and redo them;
each block of steps runs ``resample`` times (the paper's ``r``, with jump length ``j``; it used
r = 10, j = 10 with 250 steps). At the last step the known pixels are the original's, exactly.

Randomness, in order, from ``generator``: SDEdit draws the noise of ``q_sample`` (shaped like the
image), then the sampler's own draws. RePaint draws ``x_T``, then per step the sampler's noise (if
any) and the noise of the known region, and per jump back the forward noise.
"""

from __future__ import annotations

import torch

from ..diffusion import q_sample
from ..schedules import NoiseSchedule
from .base import alpha_bar_at
from .loop import Callback, Model, _check_generator, _sampling_device, make_sampler, sample
from .spacing import spaced_timesteps


def sdedit_start(t0: float, timesteps: int, steps: int, spacing: str = "trailing") -> tuple[int, int]:
    """Where SDEdit starts for ``t0`` in [0, 1]: ``(k, steps)``, the number of forward steps
    ``k = round(t0 * T)`` (the chain then runs over timesteps ``0 .. k-1``) and the model calls,
    ``min(steps, k)``. ``k = 0`` means no editing at all."""
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not 0.0 <= t0 <= 1.0:
        raise ValueError(f"t0 must be a fraction of T in [0, 1] (0: keep the image, 1: ignore it), got {t0!r}")
    k = round(t0 * timesteps)
    return k, min(steps, k)


def sdedit(
    model: Model,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    t0: float = 0.5,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    prediction_type: str = "eps",
    variance_type: str = "fixed_small",
    clip_x0: bool = True,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """SDEdit: ``images`` ``[B, C, H, W]`` in [-1, 1] noised to ``t0`` and denoised by ``model``.

    Args:
        model: a callable ``(x_t, t) -> output`` carrying the new condition if any (e.g.
            :func:`~diffusion_course.guidance.class_guidance`).
        t0: how far to noise, a fraction of T in [0, 1]: ``k = round(t0 T)`` forward steps, so
            ``x = q_sample(images, t_first)`` at the first timestep the sampler visits in ``[0, k-1]``
            (``k-1`` itself with ``trailing`` or ``linspace`` spacing). ``t0 = 0`` returns the images
            unchanged (no model call); ``t0 = 1`` starts from pure noise, exactly :func:`~.loop.sample`
            with the same generator.
        steps: model calls over the shortened chain, at most ``k`` (larger values are reduced to ``k``).
        The rest: as in :func:`~.loop.sample`.

    Returns:
        The edited images, shaped like ``images``.
    """
    images = _check_images(images)
    k, steps = sdedit_start(t0, schedule.timesteps, steps)
    if k == 0:
        return images.clone()
    device = _sampling_device(model, None, images, generator)
    _check_generator(generator, device)
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    if k == schedule.timesteps:
        x = noise  # the image is forgotten: ordinary sampling, drawn as sample() draws x_T
    else:
        t_first = int(spaced_timesteps(k, steps, spacing)[0])
        x = q_sample(images, torch.full((images.shape[0],), t_first, device=images.device), noise, schedule)
    return sample(
        model, schedule, images.shape, sampler=sampler, steps=steps, eta=eta, spacing=spacing, generator=generator,
        x_T=x, prediction_type=prediction_type, variance_type=variance_type, clip_x0=clip_x0, callback=callback,
        progress=progress, start=k - 1,
    )


def inpaint(
    model: Model,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    mask: torch.Tensor,
    *,
    sampler: str = "ddpm",
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
    resample: int = 1,
    jump: int = 1,
    generator: torch.Generator | None = None,
    prediction_type: str = "eps",
    variance_type: str = "fixed_small",
    clip_x0: bool = True,
    callback: Callback | None = None,
) -> torch.Tensor:
    """RePaint inpainting: fill the pixels of ``images`` where ``mask`` is 0, keep those where it is 1.

    Args:
        model: a callable ``(x_t, t) -> output`` (conditioned or guided as you like).
        images: ``[B, C, H, W]`` in [-1, 1]; the values under the hole are ignored.
        mask: 1 where the image is KNOWN and kept, 0 where it is generated (RePaint's ``m``); shape
            ``[B or 1, C or 1, H, W]``, values in [0, 1] (soft edges blend).
        sampler, steps, eta, spacing: any Phase-4 sampler (:data:`~.loop.SAMPLERS`); RePaint used DDPM.
        resample: how often each block of steps runs (``r``; 1: no resampling). Each extra run costs
            the block's model calls again.
        jump: steps per block, then noised back up by as many (``j``).
        callback: ``callback(i, t, x_t, x0_hat)`` after every step, repeats included.

    Returns:
        ``[B, C, H, W]``; where ``mask == 1`` it equals ``images`` exactly.
    """
    images = _check_images(images)
    mask = _check_mask(mask, images)
    for name, value in (("resample", resample), ("jump", jump)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    stepper = make_sampler(sampler, schedule, eta=eta, prediction_type=prediction_type,
                           variance_type=variance_type, clip_x0=clip_x0)
    pairs = stepper.set_timesteps(steps, spacing)
    device = _sampling_device(model, None, images, generator)
    _check_generator(generator, device)

    def randn() -> torch.Tensor:
        return torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)

    def known_at(t: int) -> torch.Tensor:
        """The known image noised to timestep t (the clean image itself at t = -1)."""
        if t < 0:
            return images
        return q_sample(images, torch.full((images.shape[0],), t, device=images.device), randn(), schedule)

    with torch.inference_mode():
        x = randn()
        for first in range(0, len(pairs), jump):
            block = range(first, min(first + jump, len(pairs)))
            for repeat in range(resample):
                # the sampler's memory (DPM-Solver's last prediction) as it was before the block
                saved = dict(vars(stepper))
                for i in block:
                    t, t_prev = pairs[i]
                    output = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
                    noise = randn() if stepper.needs_noise(i) else None
                    x_sampled, x0_hat = stepper.step(output, i, x, noise)
                    x = mask * known_at(t_prev) + (1 - mask) * x_sampled
                    if callback is not None:
                        callback(i, t, x, x0_hat)
                if repeat < resample - 1:
                    # back up from the block's end to its start with the forward process
                    ratio = alpha_bar_at(schedule, pairs[block[0]][0]) / alpha_bar_at(schedule, pairs[block[-1]][1])
                    x = ratio**0.5 * x + (1 - ratio) ** 0.5 * randn()
                    vars(stepper).update(saved)
    return x.clone()


def _check_images(images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim < 3:
        raise ValueError("images must be a float tensor [B, C, H, W] in [-1, 1]")
    return images


def _check_mask(mask: object, images: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise ValueError("mask must be a tensor: 1 where the image is kept, 0 where it is generated")
    mask = mask.to(device=images.device, dtype=images.dtype)
    try:
        torch.broadcast_shapes(mask.shape, images.shape)
    except RuntimeError as err:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(images.shape)}; "
                         "use [B or 1, C or 1, H, W]") from err
    if mask.ndim != images.ndim or mask.min() < 0 or mask.max() > 1:
        raise ValueError("mask must be [B or 1, C or 1, H, W] with values in [0, 1] (1: keep, 0: generate)")
    return mask


__all__ = ["inpaint", "sdedit", "sdedit_start"]
