"""An independent reference for the variational bound (tests only): the papers' formulas in float64.

Only a schedule's betas come from the package; everything else is written out here from DDPM
(Ho et al. 2020) eqs. 6-7, 11 and 13 and Improved DDPM (Nichol & Dhariwal 2021) eq. 15, with
``torch.distributions`` for the Gaussians, so the tests of ``diffusion_course.losses`` and of the
trainer compare with something that does not share the package's code.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal, kl_divergence


def terms_bits(model_mean, model_log_var, x0, x_t, t, s) -> torch.Tensor:
    """L_{t-1} per example in bits per dimension, from the papers' formulas in float64.

    Only the schedule's betas come from the package; the posterior (DDPM eqs. 6-7), the KL and
    the decoder (DDPM eq. 13: the Gaussian mass of each pixel's bin of width 2/255, the outer
    bins stretched to +-inf) are computed with torch.distributions.
    """
    model_mean, model_log_var, x0, x_t = (v.double() for v in (model_mean, model_log_var, x0, x_t))
    model_log_var = model_log_var.expand_as(x0)
    betas = s.betas
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    terms = []
    for i, ti in enumerate(t.tolist()):
        model = Normal(model_mean[i], (0.5 * model_log_var[i]).exp())
        if ti == 0:
            lo = torch.where(x0[i] < -0.999, -math.inf, x0[i] - 1 / 255)
            hi = torch.where(x0[i] > 0.999, math.inf, x0[i] + 1 / 255)
            nats = -(model.cdf(hi) - model.cdf(lo)).log()
        else:
            b, a_bar, a_bar_prev = betas[ti], ab[ti], ab_prev[ti]
            mean = (a_bar_prev.sqrt() * b * x0[i] + (1 - b).sqrt() * (1 - a_bar_prev) * x_t[i]) / (1 - a_bar)
            posterior = Normal(mean, ((1 - a_bar_prev) / (1 - a_bar) * b).sqrt())
            nats = kl_divergence(posterior, model)
        terms.append(nats.mean() / math.log(2))
    return torch.stack(terms)


def bound_bits(output, x0, x_t, t, s) -> torch.Tensor:
    """The bound's term of a learned-variance eps model's ``output = [eps, v]``: its mean is DDPM
    eq. 11 and its log variance Improved DDPM eq. 15, with beta-tilde_0 replaced by beta-tilde_1."""
    eps, v = output.double().chunk(2, dim=1)
    betas = s.betas
    ab = torch.cumprod(1 - betas, 0)
    tilde = torch.cat([torch.zeros(1, dtype=torch.float64), (1 - ab[:-1]) / (1 - ab[1:]) * betas[1:]])
    tilde[0] = tilde[1]
    b, a_bar = betas[t].view(-1, 1, 1, 1), ab[t].view(-1, 1, 1, 1)
    mean = (x_t.double() - b / (1 - a_bar).sqrt() * eps) / (1 - b).sqrt()
    u = (v + 1) / 2
    log_var = u * b.log() + (1 - u) * tilde[t].log().view(-1, 1, 1, 1)
    return terms_bits(mean, log_var, x0, x_t, t, s)
