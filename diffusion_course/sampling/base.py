"""The step protocol every sampler follows: ``set_timesteps`` once, then ``step`` per model call.

This is diffusers' scheduler idea in this package's style. A sampler knows the schedule and the
model's setup (what it predicts, whether it outputs variance channels), but never calls the
model; the loop (:func:`~diffusion_course.sampling.loop.sample`) does::

    sampler.set_timesteps(steps, spacing)           # the visited (t, t_prev) pairs
    for i, (t, t_prev) in enumerate(sampler.pairs):
        output = model(x, t)                         # t: the ORIGINAL timestep, as in training
        x, x0_hat = sampler.step(output, i, x, noise)

``t_prev`` is the next, less noisy step; after the last visited step it is ``-1``, which stands for
``alpha_bar = 1``: the clean image (diffusers' ``set_alpha_to_one=True``). ``noise`` is a standard
normal tensor shaped like ``x`` when :meth:`Sampler.needs_noise` says so, else ``None``: the
randomness is always explicit, so a step can be replayed and graded.

The variance type comes from the caller (a checkpoint's ``DiffusionConfig.variance``), never from
guessing at channel counts: a ``learned`` model outputs ``2C`` channels, the prediction and then the
variance values; DDIM and DPM-Solver use only the prediction.
"""

from __future__ import annotations

import torch

from ..diffusion import PREDICTION_TYPES, VARIANCE_TYPES, split_output
from ..schedules import NoiseSchedule
from ..validation import check_choice
from .spacing import spaced_timesteps


def alpha_bar_at(schedule: NoiseSchedule, t: int) -> float:
    """``alpha_bar_t`` as a Python float (float64), with ``alpha_bar_{-1} = 1``: the clean image."""
    return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])


class Sampler:
    """Base class of the samplers: the visited timesteps and the shared checks.

    Args:
        schedule: the schedule the model was trained with (all T steps; never a respaced one).
        prediction_type: what the model predicts: ``eps``, ``x0`` or ``v``.
        variance_type: ``fixed_small``, ``fixed_large`` or ``learned`` (the model then outputs 2C
            channels).
        clip_x0: clamp each x0 estimate to [-1, 1] (right for images; turn off for latents).

    Subclasses implement :meth:`step` and, if they add noise, :meth:`needs_noise`.
    """

    name = "base"

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        prediction_type: str = "eps",
        variance_type: str = "fixed_small",
        clip_x0: bool = True,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a NoiseSchedule (e.g. get_schedule('linear', 1000)), got {schedule!r}")
        check_choice("prediction type", prediction_type, PREDICTION_TYPES)
        check_choice("variance type", variance_type, VARIANCE_TYPES)
        if not isinstance(clip_x0, bool):
            raise ValueError(f"clip_x0 must be True or False, got {clip_x0!r}")
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.variance_type = variance_type
        self.clip_x0 = clip_x0
        self.timesteps = torch.empty(0, dtype=torch.long)
        self.pairs: list[tuple[int, int]] = []
        """``[(t, t_prev), ...]``, one per step, noisiest first; the last ``t_prev`` is ``-1`` (alpha_bar = 1)."""
        self.reset()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(T={self.schedule.timesteps}, steps={len(self.timesteps)}, "
            f"prediction_type={self.prediction_type!r}, variance_type={self.variance_type!r}, clip_x0={self.clip_x0})"
        )

    def set_timesteps(self, steps: int, spacing: str = "trailing", start: int | None = None) -> list[tuple[int, int]]:
        """Choose the ``steps`` visited timesteps (see :mod:`.spacing`) and return the ``(t, t_prev)`` pairs.

        ``start``: run only the part of the chain below an intermediate timestep, spacing the steps
        over ``[0, start]`` instead of ``[0, T-1]`` (SDEdit and inpainting start from a noised image;
        :mod:`.editing`). ``steps`` must then be at most ``start + 1``.
        """
        span = self.schedule.timesteps
        if start is not None:
            if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < span:
                raise ValueError(f"start must be a timestep in [0, {span - 1}], got {start!r}")
            span = start + 1
            if isinstance(steps, int) and not isinstance(steps, bool) and steps > span:
                raise ValueError(f"steps must be at most {span} to start at t = {start} (one model call per "
                                 f"visited timestep), got {steps}")
        self.timesteps = spaced_timesteps(span, steps, spacing)
        ts = self.timesteps.tolist()
        self.pairs = list(zip(ts, ts[1:] + [-1], strict=True))
        self.reset()
        return self.pairs

    def reset(self) -> None:
        """Forget what a previous run left behind (multistep samplers remember earlier predictions)."""

    def needs_noise(self, i: int) -> bool:
        """Whether step ``i`` adds noise (then :meth:`step` needs a ``noise`` tensor)."""
        return False

    def step(
        self, model_output: torch.Tensor, i: int, x_t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``i`` from ``x_t`` (at ``pairs[i][0]``) to ``x_prev`` (at ``pairs[i][1]``).

        Args:
            model_output: ``model(x_t, t)``, ``[B, C, H, W]`` (``[B, 2C, H, W]`` for a learned variance).
            i: the step's index in :attr:`pairs`, counting from 0 (the noisiest).
            x_t: the current sample ``[B, C, H, W]``.
            noise: standard normal, shaped like ``x_t``, when :meth:`needs_noise` is true.

        Returns:
            ``(x_prev, x0_hat)``, both shaped like ``x_t``.
        """
        raise NotImplementedError

    def checked_prediction(
        self, model_output: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check the model's output against ``x_t``; return ``(prediction, variance values or None)``.

        Both halves are ``[B, C, H, W]`` in ``x_t``'s dtype; the variance values exist only for
        ``variance_type="learned"``.
        """
        learned = self.variance_type == "learned"
        channels = x_t.shape[1]
        expected = 2 * channels if learned else channels
        if model_output.ndim != x_t.ndim or model_output.shape[1] != expected:
            got = model_output.shape[1] if model_output.ndim > 1 else "no"
            raise ValueError(
                f"the model returned {got} channels for {channels}-channel images; "
                f"expected {expected} for variance type {self.variance_type!r}"
            )
        if model_output.shape[0] != x_t.shape[0] or model_output.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"the model returned shape {tuple(model_output.shape)} for x_t of shape {tuple(x_t.shape)}; "
                "it must keep the batch size and the image size"
            )
        return split_output(model_output.to(x_t.dtype), learned)

    # -- helpers for subclasses ---------------------------------------------------------------

    def _pair(self, i: int) -> tuple[int, int]:
        pairs = self.pairs
        if not pairs:
            raise ValueError("call set_timesteps(steps) before step()")
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(pairs):
            raise ValueError(f"step index i must be an integer in [0, {len(pairs) - 1}], got {i!r}")
        return pairs[i]

    @staticmethod
    def _check_noise(noise: torch.Tensor | None, x_t: torch.Tensor, i: int) -> torch.Tensor:
        if noise is None or not isinstance(noise, torch.Tensor) or noise.shape != x_t.shape:
            got = "None" if noise is None else tuple(getattr(noise, "shape", ()))
            raise ValueError(f"step {i} adds noise: pass noise of shape {tuple(x_t.shape)} (got {got})")
        return noise.to(x_t)


__all__ = ["Sampler", "alpha_bar_at"]
