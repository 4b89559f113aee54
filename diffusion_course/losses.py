"""Training objectives: what the network is asked to predict, and how wrong it was.

DDPM (Ho et al. 2020) trains with a plain mean squared error between the true noise and
the predicted one, ``L_simple`` (DDPM eq. 14). It ignores the weights of the variational
bound and yields the best pictures. Improved DDPM (Nichol & Dhariwal 2021) adds two things:

- a *learned variance*: the network emits a second set of channels ``v`` in [-1, 1] that
  interpolates, in log space, between the two natural choices beta_t and beta-tilde_t
  (Improved DDPM eq. 15), and
- the *hybrid* objective ``L_hybrid = L_simple + lambda * L_vlb`` with ``lambda = 0.001``
  (Improved DDPM eq. 16), where the variational bound ``L_vlb`` trains only the variance
  (a stop-gradient on the mean keeps ``L_simple`` in charge of it).

The bound is a sum over timesteps (DDPM eq. 5, Improved DDPM eqs. 4-6)::

    L_vlb = L_0 + L_1 + ... + L_{T-1} + L_T
    L_{t-1} = KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) )    for t >= 1
    L_0     = -log p(x_0 | x_1)                                    (a discretised Gaussian)

and is reported in *bits per dimension*: nats divided by ``ln 2`` and averaged over pixels.
One training example draws a single ``t``, so ``T * L_t`` is an unbiased estimate of the sum.

Two optional refinements live here as well:

- min-SNR loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
  Weighting Strategy"): clamp the per-timestep weight at ``gamma = 5`` so that easy, almost
  noise-free timesteps stop dominating the gradient, and
- importance sampling of timesteps for the bound (Improved DDPM sec. 3.3): draw ``t`` with
  probability proportional to ``sqrt(E[L_t^2])``, estimated from a short history per ``t``.

Shapes: images ``[B, C, H, W]`` in [-1, 1], timesteps ``[B]`` integers in ``[0, T-1]``.
Losses come back per example, shape ``[B]``, so callers can weight and average them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .conditioning import NULL_LABEL, drop_labels
from .diffusion import (
    PREDICTION_TYPES,
    DiffusionConfig,
    p_mean_variance,
    q_posterior,
    q_sample,
    split_output,
    velocity,
)
from .schedules import NoiseSchedule, gather
from .timesteps import make_timestep_sampler
from .validation import check_choice, check_min_snr_gamma

LOSS_TYPES = ("simple", "hybrid", "vlb")
"""``simple``: DDPM's MSE. ``hybrid``: MSE + lambda * VLB with learned variance. ``vlb``: the bound alone."""

HYBRID_LAMBDA = 0.001
"""Improved DDPM's weight of the bound in the hybrid objective (sec. 3.1)."""

MIN_SNR_GAMMA = 5.0
"""Hang et al. 2023's recommended clamp for min-SNR weighting."""


def variance_for_loss(loss_type: str) -> str:
    """The reverse variance a ``loss_type`` implies: the bound-based losses learn it
    (Improved DDPM sec. 3.1), ``simple`` keeps DDPM's fixed beta-tilde. This is the one place
    that decides it; the result is recorded in the checkpoint's :class:`DiffusionConfig`."""
    _check_loss_type(loss_type)
    return "learned" if loss_type in ("hybrid", "vlb") else "fixed_small"


# ---------------------------------------------------------------------------
# L_simple
# ---------------------------------------------------------------------------


def training_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str = "eps",
) -> torch.Tensor:
    """What the network should output for ``x_t = q_sample(x0, t, noise)``.

    ``eps`` -> the noise (DDPM eq. 14); ``x0`` -> the clean image; ``v`` ->
    ``sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`` (Salimans & Ho 2022, sec. 4).
    Same shape as ``x0``.
    """
    _check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return noise
    if prediction_type == "x0":
        return x0
    return velocity(x0, noise, t, schedule)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Average over every dimension but the first: ``[B, ...] -> [B]``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def simple_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DDPM's ``L_simple``: the squared error per example, averaged over pixels. ``[B]``.

    For ``eps`` prediction this is ``|| eps - eps_theta(x_t, t) ||^2`` (DDPM eq. 14) divided
    by the number of pixels, i.e. ``F.mse_loss(prediction, target)`` once averaged over B.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must match"
        )
    return mean_flat((prediction.float() - target.float()) ** 2)


def min_snr_weights(
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str = "eps",
    gamma: float = MIN_SNR_GAMMA,
) -> torch.Tensor:
    """Per-example loss weights of min-SNR-gamma (Hang et al. 2023).

    The paper's weight on the *x0* error is ``min(SNR_t, gamma)``. Predicting another target
    rescales the error: an eps error is ``SNR_t`` times smaller than the x0 error it implies,
    a v error ``SNR_t + 1`` times smaller. So the weights applied to the MSE of each target are

    - ``x0``:  ``min(SNR, gamma)``
    - ``eps``: ``min(SNR, gamma) / SNR``
    - ``v``:   ``min(SNR, gamma) / (SNR + 1)``

    Returns float32 ``[B]`` on ``t``'s device.
    """
    _check_prediction_type(prediction_type)
    check_min_snr_gamma(gamma)
    snr = schedule.snr(t.cpu())
    clamped = snr.clamp(max=gamma)
    if prediction_type == "x0":
        w = clamped
    elif prediction_type == "eps":
        w = clamped / snr
    else:
        w = clamped / (snr + 1)
    return w.to(device=t.device, dtype=torch.float32)


# ---------------------------------------------------------------------------
# The variational bound, with a learned variance (Improved DDPM sec. 3.1)
# ---------------------------------------------------------------------------


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ) per element, in nats.

    The closed form for two diagonal Gaussians:
    ``0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1)``.
    All arguments broadcast against each other.
    """
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood, in nats per element, of 8-bit images under a discretised Gaussian.

    DDPM's decoder ``p(x_0 | x_1)`` (DDPM eq. 13): the pixel values of ``x`` in [-1, 1] are
    the centres of 256 bins of width ``2/255``; the probability of a bin is the Gaussian
    mass over it, with the two outermost bins stretched to -inf and +inf.

    Args:
        x: images ``[B, ...]`` with values on the 8-bit grid in [-1, 1].
        mean: the decoder means, shaped like ``x``.
        log_scale: log standard deviations, broadcastable to ``x``.

    The exact normal CDF (``torch.special.ndtr``/``log_ndtr``) is used; the log of each bin
    mass is floored at ``log(1e-12)`` so a confident wrong guess stays finite.
    """
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centred + 1.0 / 255.0)
    lower = inv_std * (centred - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X < upper edge): the lowest bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X > lower edge): the highest bin
    mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    log_mid = torch.log(mass)
    floor = math.log(1e-12)
    return torch.where(
        x < -0.999,
        log_cdf_upper.clamp(min=floor),
        torch.where(x > 0.999, log_sf_lower.clamp(min=floor), log_mid),
    )


def vlb_terms(
    model_mean: torch.Tensor,
    model_log_variance: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """The bound's term for each example's own ``t``, in bits per dimension, ``[B]``.

    For ``t >= 1`` it is ``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || N(model_mean, exp(model_log_variance)))``
    (DDPM eq. 5); for ``t = 0`` it is the decoder's ``L_0 = -log p(x0 | x_1)``
    (:func:`discretized_gaussian_log_likelihood`). Both are averaged over pixels and
    divided by ``ln 2``.
    """
    true_mean, _ = q_posterior(x0, x_t, t, schedule)
    true_log_var = gather(schedule.posterior_log_variance_clipped, t, x0)
    kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_variance)) / math.log(2)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    nll = mean_flat(nll) / math.log(2)
    return torch.where(t == 0, nll, kl)


# ---------------------------------------------------------------------------
# The full training loss for one batch
# ---------------------------------------------------------------------------


@dataclass
class LossOutput:
    """One batch's loss. ``loss`` is the scalar to back-propagate; the rest are ``[B]``
    per-example values for logging and for the importance sampler (detached)."""

    loss: torch.Tensor
    per_example: torch.Tensor
    mse: torch.Tensor
    vlb: torch.Tensor | None


def diffusion_loss(
    output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    prediction_type: str = "eps",
    loss_type: str = "simple",
    min_snr_gamma: float | None = None,
    weights: torch.Tensor | None = None,
    vlb_lambda: float = HYBRID_LAMBDA,
    variance_type: str | None = None,
) -> LossOutput:
    """The loss of a network output ``output = model(x_t, t)`` for ``x_t = q_sample(x0, t, noise)``.

    Args:
        output: ``[B, C, H, W]``, or ``[B, 2C, H, W]`` for ``hybrid``/``vlb`` (the second half
            is the variance interpolation of Improved DDPM eq. 15). Cast to float32 here, so a
            bf16/fp16 forward pass still gets an fp32 loss.
        x0, x_t, noise: ``[B, C, H, W]``.
        t: integer timesteps ``[B]``.
        prediction_type: ``eps``, ``x0`` or ``v``.
        loss_type: ``simple`` (DDPM eq. 14), ``hybrid`` (``L_simple + lambda * T * L_t``,
            Improved DDPM eq. 16, with a stop-gradient on the mean inside the bound) or
            ``vlb`` (``T * L_t`` alone, gradients to mean and variance).
        min_snr_gamma: if given, weight the MSE by :func:`min_snr_weights`.
        weights: optional per-example weights ``[B]`` (importance sampling's ``1 / (T p_t)``).
        vlb_lambda: lambda of the hybrid loss.
        variance_type: the model's reverse variance (a :class:`DiffusionConfig`'s ``variance``);
            ``None`` means :func:`variance_for_loss` of ``loss_type``.

    ``T * L_t`` is used because one sampled term stands in for the whole sum over t; for
    T = 1000 and lambda = 0.001 the bound's weight is exactly 1 per term, as in the paper's code.
    """
    _check_loss_type(loss_type)
    _check_prediction_type(prediction_type)
    variance_type = variance_for_loss(loss_type) if variance_type is None else variance_type
    if loss_type == "hybrid" and variance_type != "learned":
        raise ValueError("the hybrid loss trains a learned variance; use loss 'simple' for a fixed variance")
    output = output.float()
    pred, var_values = split_output(output, variance_type == "learned")
    if pred.shape != x0.shape:
        raise ValueError(
            f"the model output {tuple(pred.shape)} does not match the images {tuple(x0.shape)}"
        )
    target = training_target(x0, noise, t, schedule, prediction_type)
    mse = simple_loss(pred, target)
    if min_snr_gamma is not None:
        mse = mse * min_snr_weights(t, schedule, prediction_type, min_snr_gamma)

    vlb = None
    if loss_type == "simple":
        per_example = mse
    else:
        # hybrid: the bound may only move the variance; L_simple owns the mean
        mean_input = pred.detach() if loss_type == "hybrid" else pred
        mean, log_var, _ = p_mean_variance(
            mean_input, var_values, x_t, t, schedule, prediction_type, variance_type=variance_type
        )
        vlb = vlb_terms(mean, log_var, x0, x_t, t, schedule)
        scaled = vlb * schedule.timesteps
        per_example = mse + vlb_lambda * scaled if loss_type == "hybrid" else scaled
    weighted = per_example if weights is None else per_example * weights
    return LossOutput(
        loss=weighted.mean(),
        per_example=per_example.detach(),
        mse=mse.detach(),
        vlb=None if vlb is None else vlb.detach(),
    )


def _check_loss_type(loss_type: str) -> None:
    check_choice("loss type", loss_type, LOSS_TYPES)


def _check_prediction_type(prediction_type: str) -> None:
    check_choice("prediction type", prediction_type, PREDICTION_TYPES)


# ---------------------------------------------------------------------------
# DDPM Algorithm 1 as a small object the training loop calls
# ---------------------------------------------------------------------------


@dataclass
class ObjectiveOutput:
    """What an objective returns for one batch.

    Attributes:
        loss: the scalar to back-propagate (a mean over the batch).
        logs: detached ``[B]`` values to average into the metrics log (e.g. ``mse``, ``vlb``).
        feedback: detached ``[B]`` tensors the objective learns from after the optimizer step
            (the loop gathers them over all processes and passes them to ``objective.update``).
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    feedback: dict[str, torch.Tensor] = field(default_factory=dict)


def ddpm_loss(
    model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """DDPM's ``L_simple`` for given timesteps and noise (Algorithm 1, line 5; eq. 14), a scalar.

    ``|| eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t) ||^2``, averaged
    over pixels and the batch. ``x0``, ``noise``: ``[B, C, H, W]``; ``t``: ``[B]`` integers.
    This is :class:`DiffusionObjective` with its defaults, evaluated at the given ``t`` and ``noise``.
    """
    objective = DiffusionObjective(DiffusionConfig(timesteps=schedule.timesteps), schedule=schedule)
    return objective.loss_at(model, x0, t, noise).loss.mean()


class DiffusionObjective:
    """DDPM Algorithm 1 (Ho et al. 2020) for one batch: draw t and eps, noise x0, score the network.

    ``objective(model, x0, cond, generator)`` draws ``t`` from the timestep sampler, then
    ``eps ~ N(0, I)`` (in that order, from ``generator``), forms ``x_t = q_sample(x0, t, eps)``
    and returns the per-example loss of ``model(x_t, t)`` (:func:`diffusion_loss`). The
    training loop calls it without knowing what it computes, which is how the same loop also
    trains a classifier or an autoencoder.

    Args:
        diffusion: the :class:`DiffusionConfig` (schedule, T, prediction target, variance,
            conditioning); saved in every checkpoint.
        loss: ``simple``, ``hybrid`` or ``vlb`` (:data:`LOSS_TYPES`); must agree with
            ``diffusion.variance`` (:func:`variance_for_loss`).
        min_snr: min-SNR-gamma weighting of the MSE (None: off).
        timestep_sampler: ``uniform`` or ``importance`` (Improved DDPM sec. 3.3; only with ``vlb``).
        cond_drop: for a class-conditional model, the probability of replacing a label with the
            "no class" label, so that the same network also learns the unconditional model
            (classifier-free guidance, Ho & Salimans 2022); for a text-conditioned one, of
            replacing the caption with the empty caption.
        schedule: a prebuilt schedule (default: ``diffusion.noise_schedule()``).
        captions: for text conditioning, the :class:`~diffusion_course.conditioning.CaptionSampler`
            that turns the batch's labels into token ids of randomly phrased captions.
    """

    def __init__(
        self,
        diffusion: DiffusionConfig,
        *,
        loss: str = "simple",
        min_snr: float | None = None,
        timestep_sampler: str = "uniform",
        cond_drop: float = 0.0,
        schedule: NoiseSchedule | None = None,
        captions=None,
    ) -> None:
        _check_loss_type(loss)
        if variance_for_loss(loss) == "learned" and diffusion.variance != "learned":
            raise ValueError(f"loss {loss!r} learns the variance: use DiffusionConfig(variance='learned')")
        if loss == "simple" and diffusion.variance == "learned":
            raise ValueError("a learned variance is trained by the bound: use loss 'hybrid' or 'vlb'")
        if timestep_sampler == "importance" and loss != "vlb":
            raise ValueError(
                "importance sampling of t is for the 'vlb' loss (Improved DDPM sec. 3.3); with "
                f"{loss!r} its weights would rescale L_simple too; use the uniform timestep sampler"
            )
        if min_snr is not None:
            check_min_snr_gamma(min_snr)
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop} (0.1 is typical)")
        if (diffusion.conditioning == "text") != (captions is not None):
            raise ValueError("text conditioning needs captions=CaptionSampler(...) (labels -> captions -> token "
                             "ids), and only text conditioning takes them")
        self.diffusion = diffusion
        self.loss = loss
        self.min_snr = min_snr
        self.cond_drop = cond_drop
        self.captions = captions
        self.schedule = schedule if schedule is not None else diffusion.noise_schedule()
        self.timesteps = make_timestep_sampler(timestep_sampler, diffusion.timesteps)

    def __call__(self, model, x0: torch.Tensor, cond, generator: torch.Generator) -> ObjectiveOutput:
        """One batch of Algorithm 1. ``x0``: ``[B, C, H, W]`` in [-1, 1]; ``cond``: the batch's
        labels (used only by a conditional model); ``generator``: on ``x0``'s device."""
        t, weights = self.timesteps.sample(x0.shape[0], generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        cond = self.drop_labels(cond, generator)
        if self.captions is not None and cond is not None:  # text: labels -> captions -> token ids
            cond = self.captions(cond, generator)
        out = self.loss_at(model, x0, t, noise, cond, weights=weights)
        logs = {} if out.vlb is None else {"mse": out.mse, "vlb": out.vlb}
        feedback = {} if out.vlb is None else {"t": t, "vlb": out.vlb}
        return ObjectiveOutput(loss=out.loss, logs=logs, feedback=feedback)

    def loss_at(
        self, model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond=None,
        weights: torch.Tensor | None = None,
    ) -> LossOutput:
        """The loss for given ``t [B]`` and ``noise [B, C, H, W]`` (no random draws)."""
        x_t = q_sample(x0, t, noise, self.schedule)
        output = model(x_t, t, **self.model_inputs(cond))
        return diffusion_loss(
            output, x0, x_t, noise, t, self.schedule,
            prediction_type=self.diffusion.prediction, loss_type=self.loss, min_snr_gamma=self.min_snr,
            variance_type=self.diffusion.variance, weights=weights,
        )

    def model_inputs(self, cond) -> dict:
        """The keyword arguments that carry ``cond`` into the network (none when unconditional)."""
        if self.diffusion.conditioning == "class" and cond is not None:
            return {"class_labels": cond}
        if self.diffusion.conditioning == "text" and cond is not None:
            return {"tokens": cond}
        return {}

    def drop_labels(self, labels, generator: torch.Generator):
        """Replace each label by the "no class" label ``num_classes`` (text: ``NULL_LABEL``, the
        empty caption) with probability ``cond_drop``: :func:`~diffusion_course.conditioning.drop_labels`
        with one ``torch.rand(B)`` from ``generator``."""
        if self.diffusion.conditioning == "none" or labels is None or self.cond_drop == 0:
            return labels
        u = torch.rand(labels.shape[0], generator=generator, device=labels.device)
        null = self.diffusion.num_classes if self.diffusion.conditioning == "class" else NULL_LABEL
        return drop_labels(labels, u, self.cond_drop, null)

    def update(self, feedback: dict[str, torch.Tensor]) -> None:
        """After the optimizer step: let the timestep sampler learn from the bound's terms."""
        if feedback:
            self.timesteps.update(feedback["t"], feedback["vlb"])

    def records(self) -> dict:
        """Plain data to keep in checkpoints: the diffusion setup a sampler will need."""
        return {"diffusion_config": self.diffusion.to_dict()}

    def state_dict(self) -> dict:
        return {"timestep_sampler": self.timesteps.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.timesteps.load_state_dict(state["timestep_sampler"])

    @property
    def preview_nrow(self) -> int | None:
        """Images per row of a preview grid: one column per class for a class-conditional model
        (its previews draw the classes in turn), else None (a square grid)."""
        return self.diffusion.num_classes if self.diffusion.conditioning == "class" else None

    @torch.no_grad()
    def preview(self, model, shape: tuple[int, ...], generator: torch.Generator, steps: int | None = None):
        """Images ``shape = [B, C, H, W]`` in [-1, 1] from ``model``: what it has learned so far.

        DDPM ancestral sampling with ``min(steps, T)`` respaced steps (None: all T), so a run's
        preview setting works for any T. A class-conditional model draws the classes
        ``0, 1, 2, ...`` in turn, so a grid shows every class; a text-conditioned one gets the
        first caption of each class in turn. A latent model's samples are latents, neither
        clipped nor clamped (``DiffusionConfig.clip_x0``); its wrapper decodes them.
        """
        from .sampling import sample

        steps = self.schedule.timesteps if steps is None else min(steps, self.schedule.timesteps)
        labels = None
        if self.diffusion.conditioning == "class":
            labels = torch.arange(shape[0], device=generator.device) % self.diffusion.num_classes
        if self.captions is not None:
            labels = self.captions.first_captions(torch.arange(shape[0], device=generator.device)
                                                  % self.captions.num_classes)

        def denoiser(x, t):
            return model(x, t, **self.model_inputs(labels))

        clip = self.diffusion.clip_x0
        x = sample(  # = ddpm_sample, without its final clamp for latents
            denoiser, self.schedule, shape, sampler="ddpm", steps=steps, spacing="linspace", generator=generator,
            prediction_type=self.diffusion.prediction, variance_type=self.diffusion.variance, clip_x0=clip,
            device=generator.device,
        )
        return x.clamp(-1.0, 1.0) if clip else x


@torch.no_grad()
def loss_per_timestep(
    model, images: torch.Tensor, schedule: NoiseSchedule, timesteps, *, seed: int = 0,
    batch_size: int = 128, prediction_type: str = "eps",
) -> dict[int, float]:
    """Held-out MSE of the network's prediction at each ``t`` in ``timesteps``, with fixed noise.

    The same noise (drawn once from ``seed``) is used at every ``t``, so two models or two
    checkpoints are compared on identical inputs. ``images``: ``[N, C, H, W]`` in [-1, 1], on the
    model's device. Returns ``{t: mean MSE}``; the curve falls steeply with t (small t: the noise
    is a tiny perturbation that is hard to tell from texture; large t: predicting the noise is easy).
    """
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    gen = torch.Generator(device=images.device).manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen, device=images.device)
    out = {}
    for t_value in timesteps:
        total = 0.0
        for start in range(0, images.shape[0], batch_size):
            x0, eps = images[start : start + batch_size], noise[start : start + batch_size]
            t = torch.full((x0.shape[0],), int(t_value), dtype=torch.long, device=images.device)
            pred = model(q_sample(x0, t, eps, schedule), t).float()
            target = training_target(x0, eps, t, schedule, prediction_type)
            total += mean_flat((pred[:, : x0.shape[1]] - target) ** 2).sum().item()
        out[int(t_value)] = total / images.shape[0]
    if was_training:
        model.train()
    return out

__all__ = [
    "HYBRID_LAMBDA",
    "LOSS_TYPES",
    "MIN_SNR_GAMMA",
    "DiffusionObjective",
    "LossOutput",
    "ObjectiveOutput",
    "ddpm_loss",
    "diffusion_loss",
    "discretized_gaussian_log_likelihood",
    "loss_per_timestep",
    "mean_flat",
    "min_snr_weights",
    "normal_kl",
    "simple_loss",
    "training_target",
    "variance_for_loss",
    "vlb_terms",
]
