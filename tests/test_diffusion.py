"""The forward process, its posterior and the reverse step a network defines: values against diffusers and
independent formulas, statistics, round trips, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_course.diffusion import (
    DiffusionConfig,
    fixed_log_variance,
    learned_log_variance,
    p_mean_variance,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_posterior,
    q_sample,
    split_output,
    to_x0_and_eps,
    velocity,
)
from diffusion_course.schedules import get_schedule


@pytest.fixture(scope="module")
def diffusers():
    """The numeric reference, for the tests that compare with it (the others run without it)."""
    return pytest.importorskip("diffusers")


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    return x0, noise, t


@pytest.mark.parametrize(("ours", "theirs"), [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_q_sample_matches_diffusers_add_noise(diffusers, batch, ours, theirs):
    x0, noise, t = batch
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs)
    out = q_sample(x0, t, noise, get_schedule(ours, 1000))
    assert out.shape == x0.shape and out.dtype == x0.dtype
    assert torch.allclose(out, ref.add_noise(x0, noise, t), atol=1e-5)


def test_q_sample_marginal_statistics():
    s = get_schedule("linear", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000,), 0.5, dtype=torch.float64)
    t = torch.full((200_000,), 300)
    xt = q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64), s)
    ab = s.alphas_cumprod[300]
    assert xt.mean().item() == pytest.approx((ab.sqrt() * 0.5).item(), abs=5e-3)
    assert xt.std().item() == pytest.approx((1 - ab).sqrt().item(), abs=5e-3)


def test_q_sample_draws_noise_when_none_and_is_reproducible(batch):
    x0, _, t = batch
    s = get_schedule("cosine", 1000)
    torch.manual_seed(3)
    a = q_sample(x0, t, None, s)
    torch.manual_seed(3)
    b = q_sample(x0, t, None, s)
    assert torch.equal(a, b)
    assert not torch.allclose(a, q_sample(x0, t, None, s))


def _linear_alpha_bar(t: int, T: int = 1000) -> float:
    """DDPM's alpha_bar_t = prod_{s <= t} (1 - beta_s), betas from 1e-4 to 0.02, written out."""
    return math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / (T - 1)) for i in range(t + 1))


def _assert_endpoints(q_sample_fn, x0, noise):
    """x_0 keeps sqrt(1 - alpha_bar_0) = 0.01 of the noise, x_{T-1} keeps sqrt(alpha_bar) ~ 0.006 of x0."""
    s = get_schedule("linear", 1000)
    for t in (0, 999):
        ab = _linear_alpha_bar(t)
        out = q_sample_fn(x0, torch.full((4,), t), noise, s)
        # the small coefficient of each end is what tells sqrt(alpha_bar) from alpha_bar
        assert torch.allclose(out - math.sqrt(ab) * x0, math.sqrt(1 - ab) * noise, atol=1e-5), t
        assert torch.allclose(out - math.sqrt(1 - ab) * noise, math.sqrt(ab) * x0, atol=1e-5), t


def test_q_sample_endpoints(batch):
    x0, noise, _ = batch
    _assert_endpoints(q_sample, x0, noise)


def test_q_sample_endpoint_check_rejects_alpha_bar_instead_of_its_square_root(batch):
    x0, noise, _ = batch

    def without_square_roots(x0, t, noise, s):
        ab = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return ab * x0 + (1 - ab) * noise

    with pytest.raises(AssertionError):
        _assert_endpoints(without_square_roots, x0, noise)


def test_q_posterior_matches_diffusers_step_mean(diffusers, batch):
    """diffusers' DDPM step with the true eps (clip off) samples from the exact posterior."""
    x0, noise, t = batch
    s = get_schedule("linear", 1000)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type="fixed_small")
    ref.set_timesteps(1000)
    x_t = q_sample(x0, t, noise, s)
    mean, var = q_posterior(x0, x_t, t, s)
    for i, ti in enumerate(t.tolist()):
        step = ref.step(noise[i : i + 1], ti, x_t[i : i + 1], generator=torch.Generator().manual_seed(0))
        # with the same generator, the sample is mean + std * z; recover z from t=999 etc. by comparing means:
        z = torch.randn(x0[i : i + 1].shape, generator=torch.Generator().manual_seed(0))
        expected = mean[i : i + 1] + (var[i].sqrt() * z if ti > 0 else 0)
        assert torch.allclose(step.prev_sample, expected, atol=1e-4)
    assert var.shape == (4, 1, 1, 1)


def test_q_posterior_at_t0_is_x0_and_zero_variance(batch):
    x0, noise, _ = batch
    s = get_schedule("linear", 1000)
    t = torch.zeros(4, dtype=torch.long)
    mean, var = q_posterior(x0, q_sample(x0, t, noise, s), t, s)
    assert torch.allclose(mean, x0, atol=1e-6)
    assert torch.all(var == 0)


def test_q_posterior_is_bayes_of_the_two_gaussians():
    """Monte-Carlo: x_{t-1} ~ q(.|x0), then x_t ~ q(x_t|x_{t-1}); regress to get E[x_{t-1}|x_t, x0]."""
    s = get_schedule("linear", 100)
    t = 40
    g = torch.Generator().manual_seed(0)
    n = 400_000
    x0 = torch.full((n,), 0.3, dtype=torch.float64)
    ab_prev = s.alphas_cumprod[t - 1]
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    x_t = s.alphas[t].sqrt() * x_prev + s.betas[t].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    # linear regression of x_prev on x_t gives the posterior mean coefficients and variance
    cov = torch.cov(torch.stack([x_prev, x_t]))
    slope = cov[0, 1] / cov[1, 1]
    resid_var = cov[0, 0] - slope * cov[0, 1]
    assert slope.item() == pytest.approx(s.posterior_mean_coef2[t].item(), rel=1e-2)
    assert resid_var.item() == pytest.approx(s.posterior_variance[t].item(), rel=2e-2)
    tt = torch.tensor([t])
    mean, _ = q_posterior(torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64), tt, s)
    intercept = x_prev.mean() - slope * x_t.mean()
    assert mean.item() == pytest.approx(intercept.item(), abs=5e-3)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_prediction_conversions_round_trip(batch, name):
    x0, noise, t = batch
    s = get_schedule(name, 1000)
    t = t.clamp(max=990)  # avoid alpha_bar ~ 0 where x0 from eps is ill-conditioned
    x_t = q_sample(x0, t, noise, s)
    assert torch.allclose(predict_x0_from_eps(x_t, t, noise, s), x0, atol=1e-3)
    assert torch.allclose(predict_eps_from_x0(x_t, t, x0, s), noise, atol=1e-3)
    v = velocity(x0, noise, t, s)
    assert torch.allclose(predict_x0_from_v(x_t, t, v, s), x0, atol=1e-5)
    assert torch.allclose(predict_eps_from_v(x_t, t, v, s), noise, atol=1e-5)
    for kind, pred in (("eps", noise), ("x0", x0), ("v", v)):
        x0_hat, eps_hat = to_x0_and_eps(pred, x_t, t, s, kind)
        assert torch.allclose(x0_hat, x0, atol=1e-3) and torch.allclose(eps_hat, noise, atol=1e-3)


def test_velocity_matches_diffusers(diffusers, batch):
    x0, noise, t = batch
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ours = velocity(x0, noise, t, get_schedule("linear", 1000))
    assert torch.allclose(ours, ref.get_velocity(x0, noise, t), atol=1e-5)


def test_unknown_prediction_type(batch):
    x0, noise, t = batch
    with pytest.raises(ValueError, match="unknown prediction type 'score'.*eps, x0, v"):
        to_x0_and_eps(noise, x0, t, get_schedule("linear", 1000), "score")


def test_bad_inputs_have_clear_messages(batch):
    x0, noise, t = batch
    s = get_schedule("linear", 1000)
    with pytest.raises(ValueError, match="out of range"):
        q_sample(x0, torch.tensor([0, 1, 2, 1000]), noise, s)
    with pytest.raises(ValueError, match="integer tensor"):
        q_sample(x0, t.float(), noise, s)
    with pytest.raises(ValueError, match="floating-point"):
        q_sample((x0 * 100).long(), t, noise, s)
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        q_sample(x0, t[:2], noise, s)
    with pytest.raises(ValueError, match="t must be a tensor"):
        q_sample(x0, [0, 1, 2, 3], noise, s)
    with pytest.raises(ValueError, match="noise must have the shape of x0"):
        q_sample(x0, t, noise[:, :1], s)
    with pytest.raises(ValueError, match="x_t must have the shape of x0"):
        q_posterior(x0, x0[:, :1], t, s)


# --- the reverse step p(x_{t-1} | x_t) a network defines -------------------------------------


def test_p_mean_variance_is_ddpm_eq11_with_the_fixed_variances():
    s = get_schedule("linear", 1000)
    g = torch.Generator().manual_seed(4)
    x_t, eps = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    t = torch.tensor([0, 1, 300, 999])
    beta, ab = s.betas[t].view(-1, 1, 1, 1), s.alphas_cumprod[t].view(-1, 1, 1, 1)
    # DDPM eq. 11, written directly from the betas: mu = (x_t - beta / sqrt(1 - ab) eps) / sqrt(1 - beta)
    mu = ((x_t.double() - beta / (1 - ab).sqrt() * eps.double()) / (1 - beta).sqrt()).float()
    tilde = (1 - s.alphas_cumprod_prev[t]) / (1 - ab.flatten()) * s.betas[t]
    tilde_1 = (1 - s.alphas_cumprod[0]) / (1 - s.alphas_cumprod[1]) * s.betas[1]
    small = torch.where(t == 0, tilde_1, tilde).log().float().view(-1, 1, 1, 1)
    large = torch.where(t == 0, tilde_1, s.betas[t]).log().float().view(-1, 1, 1, 1)
    for kind, expected_log_var in (("fixed_small", small), ("fixed_large", large)):
        mean, log_var, x0_hat = p_mean_variance(eps, None, x_t, t, s, "eps", variance_type=kind)
        assert torch.allclose(mean, mu, atol=1e-4, rtol=1e-4), kind
        assert log_var.shape == (4, 1, 1, 1) and torch.allclose(log_var, expected_log_var, atol=1e-5), kind
        assert torch.allclose(x0_hat, predict_x0_from_eps(x_t, t, eps, s))


def test_p_mean_variance_gives_one_mean_whatever_the_target_and_clips_x0():
    s = get_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(5)
    x0_hat = torch.rand(3, 1, 4, 4, generator=g) * 4 - 2  # partly outside [-1, 1]
    noise = torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([2, 200, 800])
    x_t = q_sample(x0_hat, t, noise, s)
    means = {
        kind: p_mean_variance(pred, None, x_t, t, s, kind)[0]
        for kind, pred in (("x0", x0_hat), ("eps", noise), ("v", velocity(x0_hat, noise, t, s)))
    }
    assert torch.allclose(means["eps"], means["x0"], atol=1e-4) and torch.allclose(means["v"], means["x0"], atol=1e-4)
    mean, _, clipped = p_mean_variance(x0_hat, None, x_t, t, s, "x0", clip_x0=True)
    assert torch.equal(clipped, x0_hat.clamp(-1, 1))
    assert torch.allclose(mean, q_posterior(x0_hat.clamp(-1, 1), x_t, t, s)[0])


def test_p_mean_variance_with_a_learned_variance():
    s = get_schedule("linear", 100)
    g = torch.Generator().manual_seed(6)
    x_t, eps, v = (torch.randn(2, 1, 2, 2, generator=g) for _ in range(3))
    t = torch.tensor([0, 50])
    mean, log_var, _ = p_mean_variance(eps, v, x_t, t, s, "eps", variance_type="learned")
    assert torch.allclose(log_var, learned_log_variance(v, t, s)) and log_var.shape == v.shape
    assert torch.allclose(mean, p_mean_variance(eps, None, x_t, t, s, "eps")[0])
    with pytest.raises(ValueError, match="variance_type 'learned' needs the model's variance channels"):
        p_mean_variance(eps, None, x_t, t, s, "eps", variance_type="learned")
    with pytest.raises(ValueError, match="unknown fixed variance type 'huge'"):
        p_mean_variance(eps, None, x_t, t, s, "eps", variance_type="huge")


def test_split_output():
    out = torch.arange(2 * 4 * 2 * 2.0).view(2, 4, 2, 2)
    pred, var = split_output(out, True)
    assert torch.equal(pred, out[:, :2]) and torch.equal(var, out[:, 2:])
    assert split_output(out, False) == (out, None)
    with pytest.raises(ValueError, match="must output 2\\*C channels, got 3"):
        split_output(out[:, :3], True)


def test_learned_log_variance_interpolates_and_matches_diffusers(diffusers):
    schedule = get_schedule("linear", 1000)
    t = torch.tensor([1, 10, 500, 999])
    ones = torch.ones(4, 1, 1, 1)
    beta_log = schedule.betas[t].log().float().view(-1, 1, 1, 1)
    tilde_log = schedule.posterior_variance[t].log().float().view(-1, 1, 1, 1)
    assert torch.allclose(learned_log_variance(ones, t, schedule), beta_log, atol=1e-5)
    assert torch.allclose(learned_log_variance(-ones, t, schedule), tilde_log, atol=1e-5)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")
    v = torch.tensor([0.3])
    for ti in t.tolist():
        ref = sched._get_variance(ti, predicted_variance=v)
        ours = learned_log_variance(v.view(1, 1, 1, 1), torch.tensor([ti]), schedule)
        # diffusers works in float32, where 1 - alpha_bar loses ~1e-4 relative at small t
        assert ours.item() == pytest.approx(ref.item(), abs=1e-3)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_fixed_large_is_diffusers_fixed_large_from_t_1(diffusers, name):
    """diffusers' ``fixed_large`` is beta_t for every t; ours swaps beta_0 for beta-tilde_1 (Improved DDPM's code)."""
    s = get_schedule(name, 1000)
    theirs = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[name]
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, variance_type="fixed_large")
    t = torch.tensor([0, 1, 2, 10, 500, 998, 999])
    ours = fixed_log_variance("fixed_large", t, s, torch.zeros(7, 1)).flatten()
    expected = torch.stack([ref._get_variance(int(ti)).log() for ti in t[1:]])
    assert torch.allclose(ours[1:], expected.float(), rtol=1e-4, atol=1e-4)
    assert ours[0].item() == pytest.approx(math.log(s.posterior_variance[1].item()), rel=1e-6)
    small = fixed_log_variance("fixed_small", t, s, torch.zeros(7, 1)).flatten()
    assert bool((small[1:] < ours[1:]).all())  # beta-tilde_t < beta_t: the two bracket the true variance


# --- the record of a diffusion setup ----------------------------------------------------------


def test_diffusion_config_round_trips_and_refuses_bad_values():
    config = DiffusionConfig(schedule="cosine", timesteps=50, prediction="v", variance="learned",
                             conditioning="class", num_classes=10)
    assert DiffusionConfig.from_dict(config.to_dict()) == config
    assert config.output_channels(3) == 6 and DiffusionConfig().output_channels(3) == 3
    assert torch.equal(config.noise_schedule().betas, get_schedule("cosine", 50).betas)
    for bad, match in [
        (dict(schedule="quadratic"), "unknown schedule 'quadratic'; choose one of: linear, cosine, sigmoid"),
        (dict(timesteps=1), "timesteps must be an integer >= 2, got 1"),
        (dict(prediction="score"), "unknown prediction 'score'"),
        (dict(variance="huge"), "unknown variance 'huge'"),
        (dict(conditioning="class"), "num_classes must be an integer >= 2, got None"),
        (dict(num_classes=10), "num_classes is only for conditioning='class'"),
    ]:
        with pytest.raises(ValueError, match=match):
            DiffusionConfig(**bad)
    with pytest.raises(ValueError, match="unknown DiffusionConfig field\\(s\\): steps"):
        DiffusionConfig.from_dict({"steps": 3})
