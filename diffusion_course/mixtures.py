"""Gaussian mixtures: data for which every quantity of a diffusion model has a closed form.

Images have no formula for their density, so nothing a network learns about them can be
checked exactly. A mixture of isotropic Gaussians can: it stays a mixture of Gaussians under
the forward process, and its density, its score and the posterior of the clean point are
all closed forms. That makes it the course's ground truth for small experiments:

- the true reverse step of the forward process (is it Gaussian? only for small beta), and
- the score and Tweedie's denoiser that the toy model of :mod:`~diffusion_course.toy2d`
  learns, compared with the exact ones.

The mixture is ``p(x) = sum_k w_k N(x; m_k, s_k^2 I)`` in ``D`` dimensions. Noising it with
``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` (``a`` = alpha-bar, DDPM eq. 4) gives

    p_t(x) = sum_k w_k N(x; sqrt(a) m_k, (a s_k^2 + 1 - a) I)                          (1)

because a linear map of a Gaussian plus independent Gaussian noise is Gaussian. Given
``x_t``, Bayes' rule within component k (two Gaussians: complete the square) gives

    x_0 | x_t, k  ~  N( m_k + sqrt(a) s_k^2 (x_t - sqrt(a) m_k) / (a s_k^2 + 1 - a),
                        s_k^2 (1 - a) / (a s_k^2 + 1 - a) I )                          (2)

and the components are weighted by their responsibilities ``r_k(x_t)`` under (1). One
step of the forward process, ``x_t = sqrt(1 - beta) x_{t-1} + sqrt(beta) eps``, is the
same algebra with ``a = 1 - beta``, so (2) is also the *true reverse step*
``q(x_{t-1} | x_t)`` of a mixture marginal (Sohl-Dickstein et al. 2015, sec. 2.2 on why it
is nearly Gaussian only when beta is small).

All parameters are float64 on the CPU; functions of points compute in float64 and return
the dtype of their input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    """``sum_k w_k N(m_k, s_k^2 I)``: K isotropic Gaussian components in D dimensions.

    Attributes:
        means: ``[K, D]`` component means ``m_k``.
        stds: ``[K]`` component standard deviations ``s_k > 0``.
        weights: ``[K]`` mixture weights ``w_k > 0``, normalised here to sum to 1.

    Any sequence or tensor is accepted for each; a 1-D ``means`` is read as K points in one
    dimension.
    """

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        means = torch.as_tensor(self.means, dtype=torch.float64).detach().cpu()
        if means.ndim == 1:
            means = means[:, None]
        stds = torch.as_tensor(self.stds, dtype=torch.float64).detach().cpu().reshape(-1)
        weights = torch.as_tensor(self.weights, dtype=torch.float64).detach().cpu().reshape(-1)
        k = means.shape[0]
        if means.ndim != 2 or k == 0:
            raise ValueError(f"means must have shape [K, D] with K >= 1, got {tuple(means.shape)}")
        if stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(
                f"stds and weights need one value per component ({k}), got {tuple(stds.shape)} and "
                f"{tuple(weights.shape)}"
            )
        if not bool((stds > 0).all()) or not bool((weights > 0).all()):
            raise ValueError("every std and every weight must be positive")
        # frozen dataclass: object.__setattr__ is the documented way to normalise fields
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)
        object.__setattr__(self, "weights", weights / weights.sum())

    @property
    def dim(self) -> int:
        """D, the dimension of a point."""
        return self.means.shape[1]

    @property
    def components(self) -> int:
        """K, the number of components."""
        return self.means.shape[0]

    # -- sampling and moments --------------------------------------------------

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``n`` points ``[n, D]``: pick a component by weight, then add its Gaussian noise."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * eps).to(dtype)

    def mean(self) -> torch.Tensor:
        """``E[x] = sum_k w_k m_k``, shape ``[D]``."""
        return self.weights @ self.means

    def variance(self) -> torch.Tensor:
        """Per-dimension variance ``sum_k w_k (s_k^2 + m_k^2) - E[x]^2``, shape ``[D]``."""
        second = self.weights @ (self.stds[:, None] ** 2 + self.means**2)
        return second - self.mean() ** 2

    # -- densities and scores --------------------------------------------------

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """``log w_k + log N(x; m_k, s_k^2 I)`` for every point and component, ``[N, K]``."""
        x = _points(x, self.dim)
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        var = self.stds**2
        return self.weights.log() - 0.5 * self.dim * torch.log(2 * math.pi * var) - sq / (2 * var)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` for points ``x`` ``[N, D]``, shape ``[N]``."""
        return torch.logsumexp(self._log_joint(x), dim=1).to(_out_dtype(x))

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``log w_k + log N(x; m_k, s_k^2 I)``, ``[N, K]``: the logits of the exact classifier
        ``p(component k | x)`` (their softmax is :meth:`responsibilities`). Differentiable in ``x``
        and finite far from every component, where the responsibilities underflow to 0."""
        return self._log_joint(x).to(_out_dtype(x))

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """``r_k(x) = p(component k | x)``, ``[N, K]``, rows summing to 1."""
        return torch.softmax(self._log_joint(x), dim=1).to(_out_dtype(x))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The score ``grad_x log p(x) = sum_k r_k(x) (m_k - x) / s_k^2``, shape ``[N, D]``."""
        xd = _points(x, self.dim)
        r = torch.softmax(self._log_joint(xd), dim=1)
        pull = (self.means[None] - xd[:, None, :]) / (self.stds**2)[None, :, None]
        return (r[:, :, None] * pull).sum(1).to(_out_dtype(x))

    # -- the forward process and its inverse ------------------------------------

    def noised(self, alpha_bar: float) -> GaussianMixture:
        """The law of ``sqrt(a) x_0 + sqrt(1 - a) eps`` for ``x_0`` from this mixture, eq. (1)."""
        a = _alpha(alpha_bar)
        return GaussianMixture(
            math.sqrt(a) * self.means, torch.sqrt(a * self.stds**2 + (1 - a)), self.weights
        )

    def posterior(self, x_t: torch.Tensor, alpha_bar: float) -> GaussianMixture:
        """The exact law of ``x_0`` given one noisy point ``x_t`` ``[D]``, eq. (2): a mixture.

        With ``alpha_bar = 1 - beta`` and this mixture as the marginal of ``x_{t-1}``, this is
        the true reverse step ``q(x_{t-1} | x_t)`` of one forward step with variance ``beta``.
        """
        a = _alpha(alpha_bar)
        if a >= 1.0:
            raise ValueError("alpha_bar must be below 1 for a posterior: at alpha_bar = 1, x_t is x_0 itself")
        xt = _points(torch.as_tensor(x_t, dtype=torch.float64).reshape(1, -1), self.dim)
        var = self.stds**2
        denom = a * var + (1 - a)
        means = self.means + (math.sqrt(a) * var / denom)[:, None] * (xt - math.sqrt(a) * self.means)
        stds = torch.sqrt(var * (1 - a) / denom)
        weights = self.noised(a).responsibilities(xt)[0]
        return GaussianMixture(means, stds, weights.clamp(min=1e-300))

    def posterior_mean(self, x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """``E[x_0 | x_t]`` for points ``x_t`` ``[N, D]``, from eq. (2) (not from the score).

        Tweedie's formula (:func:`~diffusion_course.score.tweedie_x0`) must give the same
        values from :meth:`score` of :meth:`noised`: the tests hold one against the other.
        """
        a = _alpha(alpha_bar)
        xt = _points(x_t, self.dim)
        var = self.stds**2
        gain = math.sqrt(a) * var / (a * var + (1 - a))  # [K]
        per_k = self.means[None] + gain[None, :, None] * (xt[:, None, :] - math.sqrt(a) * self.means[None])
        r = torch.softmax(self.noised(a)._log_joint(xt), dim=1)
        return (r[:, :, None] * per_k).sum(1).to(_out_dtype(x_t))


def ring(modes: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """``modes`` equal Gaussians evenly spaced on a circle: the classic 2-D toy data set."""
    if not isinstance(modes, int) or modes < 1:
        raise ValueError(f"modes must be a positive integer, got {modes!r}")
    angle = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(means, torch.full((modes,), float(std)), torch.ones(modes))


def _alpha(alpha_bar) -> float:
    a = float(alpha_bar)
    if not 0.0 < a <= 1.0:
        raise ValueError(f"alpha_bar must lie in (0, 1], got {a}")
    return a


def _points(x, dim: int) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"points must have shape [N, {dim}], got {tuple(x.shape)}")
    return x.cpu().to(torch.float64)


def _out_dtype(x) -> torch.dtype:
    x = torch.as_tensor(x)
    return x.dtype if x.is_floating_point() else torch.float64


__all__ = ["GaussianMixture", "ring"]
