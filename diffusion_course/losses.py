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
from dataclasses import dataclass

import torch

from .diffusion import PREDICTION_TYPES, q_posterior, to_x0_and_eps, velocity
from .schedules import NoiseSchedule, gather

LOSS_TYPES = ("simple", "hybrid", "vlb")
"""``simple``: DDPM's MSE. ``hybrid``: MSE + lambda * VLB with learned variance. ``vlb``: the bound alone."""

HYBRID_LAMBDA = 0.001
"""Improved DDPM's weight of the bound in the hybrid objective (sec. 3.1)."""

MIN_SNR_GAMMA = 5.0
"""Hang et al. 2023's recommended clamp for min-SNR weighting."""


def learns_variance(loss_type: str) -> bool:
    """Whether a model trained with ``loss_type`` outputs a variance (``2 C`` output channels)."""
    _check_loss_type(loss_type)
    return loss_type in ("hybrid", "vlb")


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
    if not gamma > 0:
        raise ValueError(f"min-SNR gamma must be positive (the paper uses 5), got {gamma}")
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


def learned_log_variance(
    v: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """Improved DDPM eq. 15: ``log Sigma = u log beta_t + (1 - u) log beta-tilde_t``.

    The network's raw variance output ``v`` (any real values, ideally in [-1, 1]) is mapped
    to ``u = (v + 1) / 2``. beta-tilde_0 is 0, so its log is replaced by beta-tilde_1's, as
    in the paper's code (:attr:`NoiseSchedule.posterior_log_variance_clipped`).
    Shape of ``v``.
    """
    min_log = gather(schedule.posterior_log_variance_clipped, t, v)
    max_log = gather(torch.log(schedule.betas), t, v)
    u = (v + 1.0) / 2.0
    return u * max_log + (1.0 - u) * min_log


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


def split_output(output: torch.Tensor, learned_variance: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a network output ``[B, 2C, ...]`` into (prediction, variance values) when the
    variance is learned; otherwise return ``(output, None)``."""
    if not learned_variance:
        return output, None
    if output.shape[1] % 2:
        raise ValueError(
            f"a learned-variance model must output 2*C channels, got {output.shape[1]}; "
            "build it with out_channels = 2 * in_channels"
        )
    pred, var = output.chunk(2, dim=1)
    return pred, var


def p_mean_variance(
    prediction: torch.Tensor,
    var_values: torch.Tensor | None,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str = "eps",
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reverse step ``p(x_{t-1} | x_t) = N(mean, exp(log_variance))`` a network defines.

    The mean is the true posterior mean with x0 replaced by the network's estimate
    (DDPM eq. 7 and sec. 3.2); ``clip_x0`` clamps that estimate to [-1, 1] first (used
    when sampling, not when training). The variance is learned (Improved DDPM eq. 15) when
    ``var_values`` is given, else DDPM's fixed beta-tilde_t.

    Returns ``(mean, log_variance, x0_hat)``, each shaped like ``x_t`` (the fixed log
    variance is ``[B, 1, ..., 1]``).
    """
    x0_hat, _ = to_x0_and_eps(prediction, x_t, t, schedule, prediction_type)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    mean, _ = q_posterior(x0_hat, x_t, t, schedule)
    if var_values is None:
        log_var = gather(schedule.posterior_log_variance_clipped, t, x_t)
    else:
        log_var = learned_log_variance(var_values, t, schedule)
    return mean, log_var, x0_hat


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

    ``T * L_t`` is used because one sampled term stands in for the whole sum over t; for
    T = 1000 and lambda = 0.001 the bound's weight is exactly 1 per term, as in the paper's code.
    """
    _check_loss_type(loss_type)
    _check_prediction_type(prediction_type)
    output = output.float()
    pred, var_values = split_output(output, learns_variance(loss_type))
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
        mean, log_var, _ = p_mean_variance(mean_input, var_values, x_t, t, schedule, prediction_type)
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


# ---------------------------------------------------------------------------
# Which timesteps to train on
# ---------------------------------------------------------------------------


TIMESTEP_SAMPLERS = ("uniform", "importance")


class UniformSampler:
    """Draw ``t`` uniformly from ``{0, ..., T-1}`` (DDPM Algorithm 1). All weights are 1."""

    def __init__(self, timesteps: int) -> None:
        self.timesteps = timesteps

    def sample(
        self, batch_size: int, *, generator: torch.Generator | None = None, device=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(t [B] long, weights [B] float32)``."""
        t = torch.randint(0, self.timesteps, (batch_size,), generator=generator, device=device)
        return t, torch.ones(batch_size, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""

    def state_dict(self) -> dict:
        return {"kind": "uniform", "timesteps": self.timesteps}

    def load_state_dict(self, state: dict) -> None:
        _check_sampler_state(state, "uniform", self.timesteps)


class ImportanceSampler:
    """Improved DDPM sec. 3.3: ``p_t`` proportional to ``sqrt(E[L_t^2])``.

    A ring buffer keeps the last ``history`` loss values of every ``t``. Until each ``t`` has
    a full history the sampler is uniform; afterwards it draws ``t`` with probability
    ``p_t ~ sqrt(mean(history_t^2))``, mixed with a little uniform mass (``uniform_prob``) so
    no ``t`` is starved, and returns weights ``1 / (T p_t)`` that keep the loss unbiased.
    """

    def __init__(self, timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        self.timesteps = timesteps
        self.history = history
        self.uniform_prob = uniform_prob
        self.losses = torch.zeros(timesteps, history, dtype=torch.float64)
        self.counts = torch.zeros(timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        """True once every t has ``history`` recorded losses."""
        return bool((self.counts >= self.history).all())

    def probabilities(self) -> torch.Tensor:
        """``p_t`` as float64 ``[T]``, summing to 1."""
        if not self.warmed_up():
            return torch.full((self.timesteps,), 1.0 / self.timesteps, dtype=torch.float64)
        p = self.losses.pow(2).mean(dim=1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.timesteps

    def sample(
        self, batch_size: int, *, generator: torch.Generator | None = None, device=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(t [B] long, weights [B] float32)`` with weights ``1 / (T p_t)``."""
        p = self.probabilities()
        probs = p.to(device=device if device is not None else "cpu", dtype=torch.float32)
        t = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.timesteps * p[t.cpu()])
        return t, weights.to(device=t.device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses ``[B]`` for their timesteps ``t [B]`` (in order)."""
        for ti, li in zip(t.cpu().tolist(), losses.detach().double().cpu().tolist(), strict=True):
            if self.counts[ti] >= self.history:
                self.losses[ti, :-1] = self.losses[ti, 1:].clone()
                self.losses[ti, -1] = li
            else:
                self.losses[ti, self.counts[ti]] = li
            self.counts[ti] += 1

    def state_dict(self) -> dict:
        return {
            "kind": "importance",
            "timesteps": self.timesteps,
            "history": self.history,
            "uniform_prob": self.uniform_prob,
            "losses": self.losses.clone(),
            "counts": self.counts.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        _check_sampler_state(state, "importance", self.timesteps)
        self.history = int(state["history"])
        self.uniform_prob = float(state["uniform_prob"])
        self.losses = state["losses"].to(torch.float64).clone()
        self.counts = state["counts"].to(torch.long).clone()


def make_timestep_sampler(name: str, timesteps: int) -> UniformSampler | ImportanceSampler:
    """``"uniform"`` -> :class:`UniformSampler`, ``"importance"`` -> :class:`ImportanceSampler`."""
    if name == "uniform":
        return UniformSampler(timesteps)
    if name == "importance":
        return ImportanceSampler(timesteps)
    raise ValueError(
        f"unknown timestep sampler {name!r}; choose one of: {', '.join(TIMESTEP_SAMPLERS)}"
    )


def _check_sampler_state(state: dict, kind: str, timesteps: int) -> None:
    if state.get("kind") != kind or int(state.get("timesteps", -1)) != timesteps:
        raise ValueError(
            f"timestep sampler state is for {state.get('kind')!r} with T={state.get('timesteps')}, "
            f"but this sampler is {kind!r} with T={timesteps}"
        )


def _check_loss_type(loss_type: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss type {loss_type!r}; choose one of: {', '.join(LOSS_TYPES)}")


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}"
        )


__all__ = [
    "HYBRID_LAMBDA",
    "LOSS_TYPES",
    "MIN_SNR_GAMMA",
    "TIMESTEP_SAMPLERS",
    "ImportanceSampler",
    "LossOutput",
    "UniformSampler",
    "diffusion_loss",
    "discretized_gaussian_log_likelihood",
    "learned_log_variance",
    "learns_variance",
    "make_timestep_sampler",
    "mean_flat",
    "min_snr_weights",
    "normal_kl",
    "p_mean_variance",
    "simple_loss",
    "split_output",
    "training_target",
    "vlb_terms",
]
