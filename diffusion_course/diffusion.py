"""The forward process: turning an image into noise in closed form, and undoing one step.

Chaining DDPM's one-step noising ``q(x_t | x_{t-1})`` gives a closed form for any t at
once (Ho et al. 2020, DDPM eq. 4):

    q(x_t | x_0) = N(x_t; sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)

and, with the reparameterisation trick (Kingma & Welling 2014), a sample is

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,    eps ~ N(0, I).

Given both ends, the step back is Gaussian too (DDPM eqs. 6-7):

    q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I)
    mu_tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
    beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

A network never sees x_0 at sampling time, so it predicts one of three equivalent
targets and the others follow by algebra (the conversions at the end of this file):
the noise ``eps`` (DDPM), the clean image ``x0``, or the velocity
``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`` (Salimans & Ho 2022, sec. 4).

Shapes: images are ``[B, C, H, W]`` (any ``[B, ...]`` works), timesteps ``t`` are
integer tensors of shape ``[B]`` with values in ``[0, T-1]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from .schedules import LEGACY_SCHEDULES, SCHEDULES, NoiseSchedule, check_timesteps, gather, get_schedule

PREDICTION_TYPES = ("eps", "x0", "v")


def _check_batch(x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point tensor (e.g. x.float()), got {kind}")
    if not isinstance(t, torch.Tensor):
        raise ValueError("t must be a tensor of integer timesteps, e.g. torch.tensor([10, 500])")
    if x.ndim < 1 or t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t must have shape [B] matching the batch of {name}: got t {tuple(t.shape)} "
            f"for {name} {tuple(x.shape)}"
        )
    check_timesteps(t, schedule.timesteps)


def q_sample(
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in one step (DDPM eq. 4 with the reparameterisation trick).

    Args:
        x0: clean images ``[B, ...]``, float, typically in [-1, 1].
        t: integer timesteps ``[B]`` in ``[0, T-1]``; each image gets its own t.
        noise: standard normal noise shaped like ``x0``; ``None`` draws fresh noise.
            Pass it explicitly when you need the same noise again (training targets,
            reproducible pictures).
        schedule: the :class:`~diffusion_course.schedules.NoiseSchedule`.

    Returns:
        ``sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise``, shape and dtype of ``x0``.
    """
    _check_batch(x0, t, schedule, "x0")
    if noise is None:
        noise = torch.randn_like(x0)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    signal = gather(schedule.sqrt_alphas_cumprod, t, x0)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0)
    return signal * x0 + sigma * noise


def q_posterior(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7).

    Args:
        x0: clean images ``[B, ...]``.
        x_t: the same images noised to step t, ``[B, ...]``.
        t: integer timesteps ``[B]``; at ``t = 0`` the "previous" image is x0 itself,
            so the mean is x0 and the variance 0.
        schedule: the noise schedule.

    Returns:
        ``(mean, variance)``: ``mean`` shaped like ``x0``; ``variance`` shaped
        ``[B, 1, ..., 1]`` (one number per image, broadcastable against ``x0``).
    """
    _check_batch(x0, t, schedule, "x0")
    if x_t.shape != x0.shape:
        raise ValueError(f"x_t must have the shape of x0 {tuple(x0.shape)}, got {tuple(x_t.shape)}")
    mean = gather(schedule.posterior_mean_coef1, t, x0) * x0 + gather(
        schedule.posterior_mean_coef2, t, x0
    ) * x_t
    variance = gather(schedule.posterior_variance, t, x0)
    return mean, variance


# ---------------------------------------------------------------------------
# Prediction targets: eps, x0 and v are three views of the same (x_t, t) pair.
# ---------------------------------------------------------------------------


def predict_x0_from_eps(
    x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)  (DDPM eq. 4 solved for x0)."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x_t)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return (x_t - sigma * eps) / signal


def predict_eps_from_x0(
    x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x_t)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return (x_t - signal * x0) / sigma


def velocity(
    x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """The v target: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x0)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0)
    return signal * eps - sigma * x0


def predict_x0_from_v(
    x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x_t)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return signal * x_t - sigma * v


def predict_eps_from_v(
    x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
    signal = gather(schedule.sqrt_alphas_cumprod, t, x_t)
    sigma = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return sigma * x_t + signal * v


def to_x0_and_eps(
    prediction: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str = "eps",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output of any prediction type into ``(x0_hat, eps_hat)``."""
    if prediction_type == "eps":
        return predict_x0_from_eps(x_t, t, prediction, schedule), prediction
    if prediction_type == "x0":
        return prediction, predict_eps_from_x0(x_t, t, prediction, schedule)
    if prediction_type == "v":
        return predict_x0_from_v(x_t, t, prediction, schedule), predict_eps_from_v(
            x_t, t, prediction, schedule
        )
    raise ValueError(
        f"unknown prediction type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}"
    )


# ---------------------------------------------------------------------------
# The reverse process a network defines: p(x_{t-1} | x_t) = N(mean, variance)
# ---------------------------------------------------------------------------

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned")
"""How the reverse step's variance is chosen (DDPM sec. 3.2; Improved DDPM sec. 3.1).

``fixed_small``: sigma_t^2 = beta-tilde_t, the posterior variance (the right choice when x_0 is
a single point). ``fixed_large``: sigma_t^2 = beta_t (right when x_0 ~ N(0, I)). The two bracket
the true reverse variance, and DDPM found that both sample equally well. ``learned``: the network
outputs a second set of channels that interpolates between their logs (Improved DDPM eq. 15).
"""


def split_output(output: torch.Tensor, learned_variance: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a network output ``[B, 2C, ...]`` into ``(prediction [B, C, ...], variance values
    [B, C, ...])`` when the variance is learned; otherwise return ``(output, None)``."""
    if not learned_variance:
        return output, None
    if output.shape[1] % 2:
        raise ValueError(
            f"a learned-variance model must output 2*C channels, got {output.shape[1]}; "
            "build it with out_channels = 2 * in_channels"
        )
    pred, var = output.chunk(2, dim=1)
    return pred, var


def learned_log_variance(v: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
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


def fixed_log_variance(
    variance_type: str, t: torch.Tensor, schedule: NoiseSchedule, like: torch.Tensor
) -> torch.Tensor:
    """``log sigma_t^2`` of a fixed reverse variance, shaped ``[B, 1, ..., 1]`` like ``like``.

    ``fixed_small`` gives log beta-tilde_t and ``fixed_large`` log beta_t, each with the t = 0 entry
    replaced by beta-tilde_1 (as in the Improved DDPM code): at t = 0 the sampler adds no noise, and
    the decoder term of the bound then uses a small, finite variance.
    """
    if variance_type == "fixed_small":
        table = schedule.posterior_log_variance_clipped
    elif variance_type == "fixed_large":
        table = torch.log(torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]]))
        if schedule.timesteps == 1:
            table = torch.log(schedule.betas)
    else:
        raise ValueError(f"unknown fixed variance type {variance_type!r}; choose fixed_small or fixed_large")
    return gather(table, t, like)


def p_mean_variance(
    prediction: torch.Tensor,
    var_values: torch.Tensor | None,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str = "eps",
    clip_x0: bool = False,
    variance_type: str = "fixed_small",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reverse step ``p(x_{t-1} | x_t) = N(mean, exp(log_variance))`` a network defines.

    The mean is the true posterior mean (DDPM eq. 7) with x0 replaced by the network's estimate;
    for eps-prediction this is DDPM eq. 11,
    ``mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)``. ``clip_x0`` clamps the
    estimate to [-1, 1] first (used when sampling, not when training). The variance is learned
    (Improved DDPM eq. 15) when ``var_values`` is given, else fixed by ``variance_type``.

    Args:
        prediction: the network's prediction ``[B, C, H, W]`` (eps, x0 or v).
        var_values: the second half of a learned-variance output ``[B, C, H, W]``, or None.
        x_t: ``[B, C, H, W]``; t: integer timesteps ``[B]``.

    Returns ``(mean, log_variance, x0_hat)``, each broadcastable to ``x_t`` (a fixed log
    variance is ``[B, 1, ..., 1]``).
    """
    x0_hat, _ = to_x0_and_eps(prediction, x_t, t, schedule, prediction_type)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    mean, _ = q_posterior(x0_hat, x_t, t, schedule)
    if var_values is not None:
        log_var = learned_log_variance(var_values, t, schedule)
    elif variance_type == "learned":
        raise ValueError("variance_type 'learned' needs the model's variance channels (var_values)")
    else:
        log_var = fixed_log_variance(variance_type, t, schedule, x_t)
    return mean, log_var, x0_hat


# ---------------------------------------------------------------------------
# The record of a diffusion setup: what a sampler needs besides the weights
# ---------------------------------------------------------------------------

CONDITIONINGS = ("none", "class", "text")
"""What a model is conditioned on: nothing, a class label, or a text prompt (Phase 5)."""


@dataclass(frozen=True)
class LatentConfig:
    """Where a latent diffusion model's samples live (Rombach et al. 2022, "Latent Diffusion", sec. 3).

    The network denoises ``z = scaling_factor * mean(E(x))``, the autoencoder's latents scaled to
    unit variance, instead of pixels; an image is ``D(z / scaling_factor)``. The autoencoder's
    weights travel in the same checkpoint (its ``"autoencoder"`` entry), so a latent checkpoint
    samples on any machine (see :mod:`diffusion_course.latent`).

    Attributes:
        shape: ``(c, h, w)`` of the latents the network samples, e.g. ``(4, 8, 8)``.
        image_shape: ``(C, H, W)`` of the decoded images, e.g. ``(1, 28, 28)``.
        scaling_factor: 1 / std of the training latents (Stable Diffusion's is 0.18215).
        autoencoder: the autoencoder's cache key (which VAE, trained on what), for the record.
    """

    shape: tuple[int, int, int]
    image_shape: tuple[int, int, int]
    scaling_factor: float
    autoencoder: str = ""

    def __post_init__(self) -> None:
        from .validation import check_positive

        for name in ("shape", "image_shape"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
            ):
                raise ValueError(f"latent {name} must be three positive integers (C, H, W), got {value!r}")
            object.__setattr__(self, name, tuple(value))
        check_positive("latent scaling_factor", self.scaling_factor)
        object.__setattr__(self, "scaling_factor", float(self.scaling_factor))


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything about a diffusion model except its network: saved in every checkpoint.

    A sampler needs exactly this and the model: the schedule (name and T) to rebuild
    alpha_bar, what the network predicts, how the reverse variance is chosen, and what the
    model is conditioned on. (diffusers saves the same information as a scheduler config
    next to the weights.)

    Attributes:
        schedule: ``linear``, ``cosine`` or ``sigmoid`` (see :mod:`~diffusion_course.schedules`).
        timesteps: T, the number of training diffusion steps.
        prediction: what the network outputs: ``eps``, ``x0`` or ``v``.
        variance: ``fixed_small``, ``fixed_large`` or ``learned`` (:data:`VARIANCE_TYPES`); a
            ``learned`` model outputs ``2 C`` channels.
        conditioning: ``none``, ``class`` or ``text`` (:data:`CONDITIONINGS`).
        num_classes: the number of classes of a class-conditional model (else None).
        latent: for a latent diffusion model, where its samples live and how to decode them
            (:class:`LatentConfig`); None for a model of pixels.
    """

    schedule: str = "linear"
    timesteps: int = 1000
    prediction: str = "eps"
    variance: str = "fixed_small"
    conditioning: str = "none"
    num_classes: int | None = None
    latent: LatentConfig | None = None

    def __post_init__(self) -> None:
        from .validation import check_choice, check_int

        check_choice("schedule", self.schedule, SCHEDULES + LEGACY_SCHEDULES)
        check_int("timesteps", self.timesteps, minimum=2)
        check_choice("prediction", self.prediction, PREDICTION_TYPES)
        check_choice("variance", self.variance, VARIANCE_TYPES)
        check_choice("conditioning", self.conditioning, CONDITIONINGS)
        if self.conditioning == "class":
            check_int("num_classes", self.num_classes, minimum=2)
        elif self.num_classes is not None:
            raise ValueError(f"num_classes is only for conditioning='class', got conditioning={self.conditioning!r}")
        if isinstance(self.latent, dict):
            known = {f.name for f in fields(LatentConfig)}
            if set(self.latent) - known or {"shape", "image_shape", "scaling_factor"} - set(self.latent):
                raise ValueError(f"latent needs the keys shape, image_shape, scaling_factor (and optionally "
                                 f"autoencoder), got {sorted(self.latent)}")
            object.__setattr__(self, "latent", LatentConfig(**self.latent))
        elif self.latent is not None and not isinstance(self.latent, LatentConfig):
            raise ValueError(f"latent must be a LatentConfig, its dict, or None, got {type(self.latent).__name__}")

    @property
    def clip_x0(self) -> bool:
        """Whether samplers clamp their x0 estimates to [-1, 1]: yes for images, never for latents
        (scaled latents have unit variance, so values beyond +-1 are common and meaningful)."""
        return self.latent is None

    @property
    def learns_variance(self) -> bool:
        """Whether the network outputs variance channels too (Improved DDPM sec. 3.1)."""
        return self.variance == "learned"

    def output_channels(self, image_channels: int) -> int:
        """Channels the network must output for ``image_channels``-channel images."""
        return 2 * image_channels if self.learns_variance else image_channels

    def noise_schedule(self) -> NoiseSchedule:
        """The :class:`~diffusion_course.schedules.NoiseSchedule` this setup trains and samples with."""
        return get_schedule(self.schedule, self.timesteps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DiffusionConfig:
        """Rebuild from :meth:`to_dict`'s output; unknown keys are an error. Fields added since
        a dict was written (``latent``) take their defaults."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown DiffusionConfig field(s): {', '.join(unknown)}")
        return cls(**values)
