"""The one sampling loop: ``sample(model, schedule, shape, sampler=..., steps=...)``.

Every notebook, command line and benchmark samples through :func:`sample`. It builds a sampler
(:data:`SAMPLERS`), draws ``x_T`` (or takes yours), and runs the step protocol of :mod:`.base`:
one model call per visited timestep, with the model called as ``model(x_t, t)`` where ``t`` is a
``[B]`` long tensor of the ORIGINAL training timesteps (also when fewer steps are visited). The
model is any callable, so conditioning and guidance wrap it and every sampler works unchanged.

Randomness, in order: ``x_T = torch.randn(shape, generator=generator, device=device)`` first (when
``x_T`` is not given), then one ``torch.randn`` of the same shape for every step that adds noise
(DDPM: all but the last; DDIM with eta > 0: all but the last; DPM-Solver++: none). The same
generator seed therefore gives the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..schedules import NoiseSchedule
from ..validation import check_choice
from .base import Sampler
from .ddim import DDIMSampler, check_eta
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverSampler
from .spacing import check_steps

SAMPLERS = ("ddim", "ddpm", "dpm-solver++")
"""Sampler names :func:`sample` and :func:`make_sampler` accept; the first is the default."""

_CLASSES = {"ddim": DDIMSampler, "ddpm": DDPMSampler, "dpm-solver++": DPMSolverSampler}

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], object]


def make_sampler(
    name: str,
    schedule: NoiseSchedule,
    *,
    eta: float = 0.0,
    prediction_type: str = "eps",
    variance_type: str = "fixed_small",
    clip_x0: bool = True,
) -> Sampler:
    """Build the sampler called ``name`` (:data:`SAMPLERS`); ``eta`` is only for ``ddim``."""
    check_choice("sampler", name, SAMPLERS)
    check_eta(eta)
    common = dict(prediction_type=prediction_type, variance_type=variance_type, clip_x0=clip_x0)
    if name == "ddim":
        return DDIMSampler(schedule, eta=eta, **common)
    if eta != 0:
        raise ValueError(f"eta is only for ddim; sampler {name!r} has none (got eta={eta!r}): use 'ddim' or eta=0")
    return _CLASSES[name](schedule, **common)


def run_sampler(
    model: Model,
    sampler: Sampler,
    x_T: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``sampler`` (its timesteps already set) from ``x_T``; returns the final x, unclamped.

    ``callback(i, t, x_t, x0_hat)`` is called after every step ``i`` with the step's original
    timestep ``t``, the sample the model saw and the sampler's x0 estimate from it.
    """
    pairs = sampler.pairs
    if not pairs:
        raise ValueError("call sampler.set_timesteps(steps) before running it")
    steps = enumerate(pairs)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=len(pairs), desc=f"sampling ({sampler.name})", leave=False)
    x = x_T
    for i, (t, _) in steps:
        output = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        noise = None
        if sampler.needs_noise(i):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_next, x0_hat = sampler.step(output, i, x, noise)
        if callback is not None:
            callback(i, t, x, x0_hat)
        x = x_next
    return x


def sample(
    model: Model,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    prediction_type: str = "eps",
    variance_type: str = "fixed_small",
    clip_x0: bool = True,
    callback: Callback | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    start: int | None = None,
) -> torch.Tensor:
    """Draw samples ``[B, C, H, W]`` from ``model`` with one of :data:`SAMPLERS`.

    Args:
        model: any callable ``model(x_t, t) -> output``, ``x_t [B, C, H, W]``, ``t [B]`` long (original
            timesteps); the output is ``[B, C, H, W]``, or ``[B, 2C, H, W]`` for ``variance_type="learned"``.
        schedule: the schedule the model was trained with (``DiffusionConfig.noise_schedule()``).
        shape: ``(B, C, H, W)``.
        sampler: ``ddim`` (default), ``ddpm`` or ``dpm-solver++``.
        steps: model calls, in ``[1, T]``; 50 for DDIM, 10-20 for DPM-Solver++, T for exact DDPM.
        eta: DDIM's noise level in [0, 1] (0: deterministic; 1: DDPM-like); only for ``ddim``.
        spacing: which timesteps to visit: ``trailing`` (default), ``leading`` or ``linspace``.
        generator: a ``torch.Generator`` on the sampling device, for reproducible samples.
        x_T: the starting noise, shaped ``shape`` on the sampling device; drawn from ``generator``
            when absent.
        prediction_type, variance_type: the model's ``DiffusionConfig.prediction`` and ``.variance``.
        clip_x0: clamp every x0 estimate to [-1, 1] (images; turn off for latents). Every sampler's last
            step lands on its last x0 estimate (alpha_bar = 1), so the result is then in [-1, 1] too.
        callback: ``callback(i, t, x_t, x0_hat)`` after every step (e.g. a :class:`Trajectory`).
        progress: show a tqdm bar.
        device: where to sample; defaults to ``x_T``'s device, else the model's parameters' (an
            ``nn.Module``), else the generator's, else the CPU.
        start: run only the chain below this intermediate timestep (``steps`` spread over ``[0, start]``,
            :meth:`Sampler.set_timesteps`); ``x_T`` is then required: the sample at the first visited
            timestep (``start`` itself with ``trailing`` or ``linspace`` spacing). SDEdit and
            inpainting (:mod:`.editing`) use it.

    Returns:
        The samples, float, on ``device`` (an ordinary tensor, though computed in inference mode).

    Raises:
        ValueError: one line naming the bad argument (steps outside [1, T], eta outside [0, 1] or
        with a sampler other than ddim, unknown names, x_T of the wrong shape or device, a
        generator on another device, a model output of the wrong shape).
    """
    stepper = make_sampler(
        sampler, schedule, eta=eta, prediction_type=prediction_type, variance_type=variance_type, clip_x0=clip_x0
    )
    stepper.set_timesteps(steps, spacing, start)
    if start is not None and x_T is None:
        raise ValueError(f"start={start} needs x_T, the sample at that timestep (e.g. a noised image, see sdedit)")
    shape = _check_shape(shape)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable as callback(i, t, x_t, x0_hat), got {callback!r}")
    device = _sampling_device(model, device, x_T, generator)
    _check_generator(generator, device)
    with torch.inference_mode():
        if x_T is None:
            x_T = torch.randn(shape, generator=generator, device=device)
        else:
            _check_x_T(x_T, shape, device)
        x = run_sampler(model, stepper, x_T, generator=generator, callback=callback, progress=progress)
    return x.clone()  # outside inference mode: an ordinary tensor the caller may use freely


def ddpm_sample(
    model: Model,
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
    """DDPM ancestral sampling (Algorithm 2), ``[B, C, H, W]`` in [-1, 1]: ``sample(sampler="ddpm")``.

    Kept for existing callers. The differences from :func:`sample`: ``steps=None`` runs all T steps,
    the visited steps are ``linspace``-spaced, ``device`` defaults to the model's, and
    ``variance_type=None`` reads the variance type from the first output's channel count (2C:
    learned, else fixed_small). New code passes ``variance_type`` from the checkpoint's
    :class:`~diffusion_course.diffusion.DiffusionConfig` instead.
    """
    steps = schedule.timesteps if steps is None else steps
    check_steps(steps, schedule.timesteps)
    shape = _check_shape(shape)
    if device is None:
        device = _parameter_device(model) or torch.device("cpu")
    x_T = None
    if variance_type is None:
        with torch.inference_mode():
            x_T = torch.randn(tuple(shape), generator=generator, device=device)
            t_first = torch.full((shape[0],), schedule.timesteps - 1, device=device, dtype=torch.long)
            first = model(x_T, t_first)
        variance_type = "learned" if first.shape[1] == 2 * shape[1] else "fixed_small"
        model = _replay_first_call(model, first)
    return sample(
        model, schedule, shape, sampler="ddpm", steps=steps, spacing="linspace", generator=generator, x_T=x_T,
        prediction_type=prediction_type, variance_type=variance_type, clip_x0=bool(clip_x0),
        progress=progress, device=device,
    ).clamp(-1.0, 1.0)


class Trajectory:
    """A :func:`sample` callback that keeps ``x_t`` and ``x0_hat`` of some images, on the CPU.

    Args:
        images: which images of the batch to keep (an index or slice; default all).
        every: keep steps ``0, every, 2 every, ...`` (1: all; memory grows with steps x images).

    After sampling, ``ts`` holds the kept timesteps and ``xs`` / ``x0s`` the matching tensors
    ``[b, C, H, W]``; :func:`~diffusion_course.viz.reverse_process_strip` and
    :func:`~diffusion_course.viz.animate_samples` draw them.
    """

    def __init__(self, images: int | slice = slice(None), every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.images = slice(images, images + 1) if isinstance(images, int) else images
        self.every = every
        self.ts: list[int] = []
        self.xs: list[torch.Tensor] = []
        self.x0s: list[torch.Tensor] = []

    def __call__(self, i: int, t: int, x_t: torch.Tensor, x0_hat: torch.Tensor) -> None:
        if i % self.every:
            return
        with torch.inference_mode(False):  # keep ordinary tensors, though sample() runs in inference mode
            self.ts.append(int(t))
            self.xs.append(x_t[self.images].detach().float().cpu().clone())
            self.x0s.append(x0_hat[self.images].detach().float().cpu().clone())

    def __len__(self) -> int:
        return len(self.ts)


# -- checks and defaults ------------------------------------------------------------------------


def _parameter_device(model: object) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return None


def _sampling_device(model, device, x_T, generator) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(x_T, torch.Tensor):
        return x_T.device
    # the network's own device beats the generator's: a CPU generator for a CUDA model is a
    # mistake to report, not a reason to run the model on the CPU
    on = _parameter_device(model)
    if on is not None:
        return on
    if isinstance(generator, torch.Generator):
        return generator.device
    return torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_shape(shape: object) -> tuple[int, ...]:
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 2
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    if not ok:
        raise ValueError(f"shape must be (B, C, H, W) with positive integers, got {shape!r}")
    return tuple(shape)


def _check_generator(generator: object, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not _same_device(generator.device, device):
        raise ValueError(
            f"the generator is on {generator.device} but sampling runs on {device}; "
            f"create it there: torch.Generator(device={str(device)!r}).manual_seed(seed)"
        )


def _check_x_T(x_T: object, shape: tuple[int, ...], device: torch.device) -> None:
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
        raise ValueError("x_T must be a floating-point tensor of starting noise, e.g. torch.randn(shape)")
    if tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {shape}; they must agree")
    if not _same_device(x_T.device, device):
        raise ValueError(f"x_T is on {x_T.device} but sampling runs on {device}; move it with x_T.to({str(device)!r})")


def _replay_first_call(model: Model, first_output: torch.Tensor) -> Model:
    """``model``, except that its first call returns ``first_output`` (already computed) again."""
    pending = [first_output]

    def replaying(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return pending.pop() if pending else model(x, t)

    return replaying


__all__ = ["SAMPLERS", "Trajectory", "ddpm_sample", "make_sampler", "run_sampler", "sample"]
