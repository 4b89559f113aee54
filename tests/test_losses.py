"""Losses: L_simple, min-SNR weights, the VLB pieces and the diffusion objective, against references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from diffusion_course.diffusion import p_mean_variance, q_sample
from diffusion_course.losses import (
    HYBRID_LAMBDA,
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    min_snr_weights,
    normal_kl,
    simple_loss,
    training_target,
    vlb_terms,
)
from diffusion_course.schedules import get_schedule


@pytest.fixture(scope="module")
def schedule():
    return get_schedule("linear", 1000)


def _batch(seed=0, b=6, c=2, h=4):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, c, h, h, generator=g) * 2 - 1
    noise = torch.randn(b, c, h, h, generator=g)
    t = torch.tensor([0, 1, 10, 250, 600, 999])[:b]
    return x0, noise, t


# --- L_simple and targets ------------------------------------------------------------


def test_simple_loss_is_mse_to_the_noise(schedule):
    x0, noise, t = _batch()
    pred = torch.randn_like(noise)
    x_t = q_sample(x0, t, noise, schedule)
    out = diffusion_loss(pred, x0, x_t, noise, t, schedule)
    assert torch.allclose(out.loss, F.mse_loss(pred, noise), atol=1e-6)
    assert out.per_example.shape == (6,)
    assert torch.allclose(simple_loss(pred, noise), ((pred - noise) ** 2).mean(dim=(1, 2, 3)))


def test_v_target_matches_diffusers_get_velocity(schedule):
    x0, noise, t = _batch()
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").get_velocity(x0, noise, t)
    ours = training_target(x0, noise, t, schedule, "v")
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.equal(training_target(x0, noise, t, schedule, "eps"), noise)
    assert torch.equal(training_target(x0, noise, t, schedule, "x0"), x0)


def test_perfect_prediction_has_zero_loss_for_every_target(schedule):
    x0, noise, t = _batch()
    x_t = q_sample(x0, t, noise, schedule)
    for kind in ("eps", "x0", "v"):
        target = training_target(x0, noise, t, schedule, kind)
        out = diffusion_loss(target, x0, x_t, noise, t, schedule, prediction_type=kind)
        assert out.loss.item() < 1e-10


# --- min-SNR weighting -----------------------------------------------------------------


def test_min_snr_weights_follow_the_formula(schedule):
    t = torch.tensor([0, 50, 200, 500, 999])
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
    clamped = torch.minimum(snr, torch.full_like(snr, 5.0))
    assert torch.allclose(min_snr_weights(t, schedule, "x0"), clamped.float())
    assert torch.allclose(min_snr_weights(t, schedule, "eps"), (clamped / snr).float())
    assert torch.allclose(min_snr_weights(t, schedule, "v"), (clamped / (snr + 1)).float())
    # eps weights: 1 where SNR < gamma (noisy steps), gamma/SNR below 1 on the clean ones
    w = min_snr_weights(t, schedule, "eps")
    assert w[-1].item() == pytest.approx(1.0) and w[0].item() < 1e-3


def test_min_snr_is_the_same_objective_whatever_the_target(schedule):
    """Weighted errors of consistent eps/x0/v predictions must agree (min(SNR, 5) * x0 error)."""
    x0, noise, t = _batch(1)
    t = torch.tensor([5, 100, 300, 500, 800, 990])
    x_t = q_sample(x0, t, noise, schedule)
    x0_hat = x0 + 0.1 * torch.randn_like(x0)  # some imperfect estimate of x0
    ab = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    eps_hat = (x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
    v_hat = ab.sqrt() * eps_hat - (1 - ab).sqrt() * x0_hat
    losses = {}
    for kind, pred in (("x0", x0_hat), ("eps", eps_hat), ("v", v_hat)):
        out = diffusion_loss(pred, x0, x_t, noise, t, schedule, prediction_type=kind, min_snr_gamma=5.0)
        losses[kind] = out.per_example
    assert torch.allclose(losses["eps"], losses["x0"], rtol=1e-3)
    assert torch.allclose(losses["v"], losses["x0"], rtol=1e-3)


def test_min_snr_rejects_bad_gamma(schedule):
    with pytest.raises(ValueError, match="gamma must be positive"):
        min_snr_weights(torch.tensor([1]), schedule, "eps", gamma=0)


# --- VLB pieces ---------------------------------------------------------------------------


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    m1, m2 = torch.randn(50, generator=g), torch.randn(50, generator=g)
    lv1, lv2 = torch.randn(50, generator=g), torch.randn(50, generator=g)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, atol=1e-5)


def _reference_log_likelihood(x: float, mean: float, log_scale: float) -> float:
    """Independent scalar formula with math.erf (DDPM eq. 13 with +-infinity edges)."""
    std = math.exp(log_scale)

    def cdf(z):
        return 0.5 * (1 + math.erf((z - mean) / (std * math.sqrt(2))))

    lo = -math.inf if x < -0.999 else x - 1 / 255
    hi = math.inf if x > 0.999 else x + 1 / 255
    return math.log(max((1.0 if hi == math.inf else cdf(hi)) - (0.0 if lo == -math.inf else cdf(lo)), 1e-12))


def test_discretized_gaussian_matches_an_independent_formula():
    pixels = torch.tensor([0, 1, 77, 128, 200, 254, 255], dtype=torch.float64)
    x = pixels / 127.5 - 1
    mean = torch.tensor([-0.99, -1.0, -0.3, 0.05, 0.6, 1.0, 0.97], dtype=torch.float64)
    log_scale = torch.tensor([-3.0, -2.0, -1.5, -4.0, -2.5, -3.5, -1.0], dtype=torch.float64)
    ours = discretized_gaussian_log_likelihood(x, mean, log_scale)
    ref = torch.tensor([_reference_log_likelihood(*v) for v in zip(x.tolist(), mean.tolist(), log_scale.tolist(),
                                                                       strict=True)], dtype=torch.float64)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_discretized_gaussian_is_a_distribution_over_256_values():
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in ((0.3, -2.0), (-0.95, -4.0), (0.0, 1.0)):
        logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_vlb_terms_are_zero_for_the_true_posterior_and_nll_at_t0(schedule):
    x0 = (torch.randint(0, 256, (4, 1, 3, 3)).float() / 127.5) - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 3, 300, 999])
    x_t = q_sample(x0, t, noise, schedule)
    # a "model" that knows x0 exactly and uses the true posterior variance
    true_eps = noise
    mean, log_var, _ = p_mean_variance(true_eps, None, x_t, t, schedule, "eps")
    terms = vlb_terms(mean, log_var, x0, x_t, t, schedule)
    assert torch.allclose(terms[1:], torch.zeros(3), atol=1e-4)
    # t = 0: the decoder's negative log-likelihood in bits per dimension
    ref = -sum(
        _reference_log_likelihood(x, m, 0.5 * log_var[0].item())
        for x, m in zip(x0[0].flatten().tolist(), mean[0].flatten().tolist(), strict=True)
    ) / (9 * math.log(2))
    assert terms[0].item() == pytest.approx(ref, rel=1e-4)


def test_vlb_kl_equals_the_closed_form_in_bits(schedule):
    x0, noise, t = _batch(3)
    t = torch.tensor([5, 40, 400, 700, 900, 999])
    x_t = q_sample(x0, t, noise, schedule)
    model_mean = x_t * 0.9
    model_log_var = torch.full_like(x_t, -3.0)
    terms = vlb_terms(model_mean, model_log_var, x0, x_t, t, schedule)
    ab, ab_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t]
    beta = schedule.betas[t]
    c1 = (ab_prev.sqrt() * beta / (1 - ab)).float().view(-1, 1, 1, 1)
    c2 = ((1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)).float().view(-1, 1, 1, 1)
    var = ((1 - ab_prev) / (1 - ab) * beta).float().view(-1, 1, 1, 1)
    mu = c1 * x0 + c2 * x_t
    kl = 0.5 * (-3.0 - var.log() + var / math.exp(-3.0) + (mu - model_mean) ** 2 / math.exp(-3.0) - 1)
    assert torch.allclose(terms, kl.mean(dim=(1, 2, 3)) / math.log(2), rtol=1e-4)


# --- the hybrid loss ------------------------------------------------------------------------


def test_hybrid_loss_value_and_stop_gradient_on_the_mean(schedule):
    x0, noise, t = _batch(4)
    x_t = q_sample(x0, t, noise, schedule)
    out = torch.randn(6, 4, 4, 4, requires_grad=True)  # 2C channels: eps and variance values
    hybrid = diffusion_loss(out, x0, x_t, noise, t, schedule, loss_type="hybrid")
    expected = hybrid.mse + HYBRID_LAMBDA * 1000 * hybrid.vlb
    assert torch.allclose(hybrid.per_example, expected)
    hybrid.loss.backward()
    grad_mean, grad_var = out.grad.chunk(2, dim=1)
    # the mean channels get exactly the gradient of L_simple ...
    eps = out.detach()[:, :2].requires_grad_(True)
    F.mse_loss(eps, noise).backward()
    assert torch.allclose(grad_mean, eps.grad, atol=1e-7)
    # ... and the variance channels are trained by the bound
    assert grad_var.abs().sum() > 0


def test_vlb_loss_trains_the_mean_too(schedule):
    x0, noise, t = _batch(5)
    x_t = q_sample(x0, t, noise, schedule)
    out = torch.randn(6, 4, 4, 4, requires_grad=True)
    diffusion_loss(out, x0, x_t, noise, t, schedule, loss_type="vlb").loss.backward()
    eps = out.detach()[:, :2].requires_grad_(True)
    F.mse_loss(eps, noise).backward()
    assert not torch.allclose(out.grad[:, :2], eps.grad)


def test_loss_errors_are_clear(schedule):
    x0, noise, t = _batch()
    with pytest.raises(ValueError, match="unknown loss type 'l1'"):
        diffusion_loss(noise, x0, x0, noise, t, schedule, loss_type="l1")
    with pytest.raises(ValueError, match="must output 2\\*C channels"):
        diffusion_loss(torch.randn(6, 3, 4, 4), x0, x0, noise, t, schedule, loss_type="hybrid")
    with pytest.raises(ValueError, match="does not match the images"):
        diffusion_loss(torch.randn(6, 1, 4, 4), x0, x0, noise, t, schedule)
