"""Losses: L_simple, min-SNR weights, the VLB pieces and the diffusion objective, against references."""

from __future__ import annotations

import math

import pytest
import reference_losses as reference
import torch
import torch.nn.functional as F

from diffusion_course.diffusion import DiffusionConfig, q_sample
from diffusion_course.losses import (
    HYBRID_LAMBDA,
    DiffusionObjective,
    ObjectiveOutput,
    ddpm_loss,
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    loss_per_timestep,
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


def _on_the_8bit_grid(x: torch.Tensor) -> torch.Tensor:
    return torch.round((x + 1) * 127.5) / 127.5 - 1


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
    diffusers = pytest.importorskip("diffusers")
    x0, noise, t = _batch()
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").get_velocity(x0, noise, t)
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


def test_vlb_terms_match_an_independent_computation_at_every_t_including_the_decoder(schedule):
    g = torch.Generator().manual_seed(7)
    x0 = _on_the_8bit_grid(torch.rand(5, 2, 3, 3, generator=g) * 2 - 1)
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0  # the two stretched outer bins of the decoder
    t = torch.tensor([0, 1, 3, 300, 999])
    x_t = q_sample(x0, t, torch.randn(x0.shape, generator=g), schedule)
    model_mean = x0 + 0.01 * torch.randn(x0.shape, generator=g)  # a decent but imperfect model
    model_log_var = torch.log(torch.full((5, 1, 1, 1), 1e-4)) + 0.5 * torch.randn(5, 1, 1, 1, generator=g)
    ours = vlb_terms(model_mean, model_log_var, x0, x_t, t, schedule)
    ref = reference.terms_bits(model_mean, model_log_var, x0, x_t, t, schedule)
    assert ours.shape == (5,) and ours[0] > 0
    assert torch.allclose(ours.double(), ref, rtol=1e-4, atol=1e-6)


def test_vlb_terms_vanish_for_the_true_posterior(schedule):
    """A model that knows x0 and uses beta-tilde_t has KL 0 for t >= 1 (posterior from eqs. 6-7 written out)."""
    x0, noise, t = _batch(2)
    x_t = q_sample(x0, t, noise, schedule)
    ab = torch.cumprod(1 - schedule.betas, 0)[t].view(-1, 1, 1, 1)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - schedule.betas, 0)[:-1]])[t]
    ab_prev, b = ab_prev.view(-1, 1, 1, 1), schedule.betas[t].view(-1, 1, 1, 1)
    mean = ((ab_prev.sqrt() * b * x0 + (1 - b).sqrt() * (1 - ab_prev) * x_t) / (1 - ab)).float()
    log_var = ((1 - ab_prev) / (1 - ab) * b).log().float()
    terms = vlb_terms(mean[1:], log_var[1:], x0[1:], x_t[1:], t[1:], schedule)
    assert torch.allclose(terms, torch.zeros(5), atol=1e-4)
    assert vlb_terms(mean[1:], log_var[1:] + 0.1, x0[1:], x_t[1:], t[1:], schedule).min() > 1e-4


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


# --- the hybrid and vlb losses ------------------------------------------------------------------


def _learned_variance_batch(seed):
    x0, noise, t = _batch(seed)
    x0 = _on_the_8bit_grid(x0)
    x_t = q_sample(x0, t, noise, get_schedule("linear", 1000))
    g = torch.Generator().manual_seed(seed + 100)
    # eps channels near the true noise (so the decoder term at t = 0 stays in range), v in [-1, 1]
    eps = noise + 0.3 * torch.randn(noise.shape, generator=g)
    out = torch.cat([eps, torch.rand(noise.shape, generator=g) * 2 - 1], 1)
    return x0, noise, t, x_t, out.requires_grad_(True)


def test_hybrid_loss_value_and_stop_gradient_on_the_mean(schedule):
    x0, noise, t, x_t, out = _learned_variance_batch(4)
    hybrid = diffusion_loss(out, x0, x_t, noise, t, schedule, loss_type="hybrid")
    # L_simple + lambda * T * L_t, each part computed independently (lambda * T = 1 here)
    mse = ((out.detach()[:, :2] - noise) ** 2).mean(dim=(1, 2, 3)).double()
    bound = reference.bound_bits(out.detach(), x0, x_t, t, schedule)
    assert torch.allclose(hybrid.per_example.double(), mse + HYBRID_LAMBDA * 1000 * bound, rtol=1e-4)
    assert torch.allclose(hybrid.vlb.double(), bound, rtol=1e-4) and torch.allclose(hybrid.mse.double(), mse)
    hybrid.loss.backward()
    grad_mean, grad_var = out.grad.chunk(2, dim=1)
    # the mean channels get exactly the gradient of L_simple ...
    eps = out.detach()[:, :2].requires_grad_(True)
    F.mse_loss(eps, noise).backward()
    assert torch.allclose(grad_mean, eps.grad, atol=1e-7)
    # ... and the variance channels that of the bound (lambda * T * mean over the batch)
    v_ref = out.detach().double().requires_grad_(True)
    (HYBRID_LAMBDA * 1000 * reference.bound_bits(v_ref, x0, x_t, t, schedule).mean()).backward()
    expected = v_ref.grad[:, 2:].float()
    assert torch.allclose(grad_var, expected, rtol=1e-3, atol=1e-6 * expected.abs().max().item())


def test_vlb_loss_trains_the_mean_too(schedule):
    """``vlb``: T * L_t alone, with gradients into both halves (no stop-gradient on the mean)."""
    x0, noise, t, x_t, out = _learned_variance_batch(5)
    loss = diffusion_loss(out, x0, x_t, noise, t, schedule, loss_type="vlb")
    ref_out = out.detach().double().requires_grad_(True)
    ref = 1000 * reference.bound_bits(ref_out, x0, x_t, t, schedule)
    assert torch.allclose(loss.per_example.double(), ref.detach(), rtol=1e-4)
    loss.loss.backward()
    ref.mean().backward()
    expected = ref_out.grad.float()
    assert torch.allclose(out.grad, expected, rtol=1e-3, atol=1e-6 * expected.abs().max().item())
    assert expected[:, :2].abs().max() > 0.1  # the mean gets a real share of the gradient


def test_a_learned_variance_needs_the_hybrid_or_vlb_loss(schedule):
    x0, noise, t, x_t, out = _learned_variance_batch(6)
    with pytest.raises(ValueError, match="the hybrid loss trains a learned variance"):
        diffusion_loss(out[:, :2], x0, x_t, noise, t, schedule, loss_type="hybrid", variance_type="fixed_small")


def test_loss_errors_are_clear(schedule):
    x0, noise, t = _batch()
    with pytest.raises(ValueError, match="unknown loss type 'l1'"):
        diffusion_loss(noise, x0, x0, noise, t, schedule, loss_type="l1")
    with pytest.raises(ValueError, match="must output 2\\*C channels"):
        diffusion_loss(torch.randn(6, 3, 4, 4), x0, x0, noise, t, schedule, loss_type="hybrid")
    with pytest.raises(ValueError, match="does not match the images"):
        diffusion_loss(torch.randn(6, 1, 4, 4), x0, x0, noise, t, schedule)


# --- the objective the training loop calls ------------------------------------------------------


class _Spy(torch.nn.Module):
    """A denoiser that records what it is given: ``x_t [B, C, H, W]``, ``t [B]`` and keyword arguments."""

    def __init__(self, out_channels: int = 1) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.out_channels = out_channels
        self.calls = []

    def forward(self, x, t, **kwargs):
        self.calls.append({"x": x, "t": t, **kwargs})
        return self.scale * x.repeat(1, self.out_channels // x.shape[1], 1, 1)


def _images(n=8, seed=0):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_objective_is_algorithm_1_with_t_then_noise_from_the_generator():
    objective = DiffusionObjective(DiffusionConfig(timesteps=50))
    model, x0 = _Spy(), _images()
    out = objective(model, x0, torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(3))
    assert isinstance(out, ObjectiveOutput) and out.loss.shape == () and out.logs == {} and out.feedback == {}
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 50, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    s = get_schedule("linear", 50)
    x_t = s.alphas_cumprod[t].sqrt().float().view(-1, 1, 1, 1) * x0 + (1 - s.alphas_cumprod[t]).sqrt().float().view(
        -1, 1, 1, 1) * noise
    assert torch.equal(model.calls[0]["t"], t) and torch.allclose(model.calls[0]["x"], x_t, atol=1e-6)
    assert out.loss.item() == pytest.approx(F.mse_loss(x_t, noise).item(), rel=1e-5)
    assert ddpm_loss(model, x0, t, noise, s).item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_an_unconditional_objective_ignores_the_labels():
    objective = DiffusionObjective(DiffusionConfig(timesteps=50), cond_drop=0.5)
    model, x0 = _Spy(), _images()
    a = objective(model, x0, torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(1))
    b = objective(model, x0, torch.arange(8), torch.Generator().manual_seed(1))
    c = objective(model, x0, None, torch.Generator().manual_seed(1))
    assert a.loss.item() == b.loss.item() == c.loss.item()
    assert all(set(call) == {"x", "t"} for call in model.calls)  # no class_labels reach the network


def test_a_class_conditional_objective_drops_labels_with_probability_cond_drop():
    config = DiffusionConfig(timesteps=50, conditioning="class", num_classes=10)
    objective = DiffusionObjective(config, cond_drop=0.25)
    labels = torch.arange(20_000) % 10
    dropped = objective.drop_labels(labels, torch.Generator().manual_seed(0))
    null = dropped == 10  # the "no class" label is num_classes
    assert abs(null.float().mean().item() - 0.25) < 0.01
    assert torch.equal(dropped[~null], labels[~null])
    # the generator decides
    assert torch.equal(dropped, objective.drop_labels(labels, torch.Generator().manual_seed(0)))
    assert not torch.equal(dropped, objective.drop_labels(labels, torch.Generator().manual_seed(1)))
    assert torch.equal(DiffusionObjective(config).drop_labels(labels, torch.Generator()), labels)  # cond_drop = 0
    # in a training batch: t, noise, then the drops, all from the one generator; the network gets the labels
    model, x0 = _Spy(), _images()
    objective(model, x0, torch.arange(8), torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    torch.randint(0, 50, (8,), generator=g), torch.randn(x0.shape, generator=g)
    expected = torch.where(torch.rand(8, generator=g) < 0.25, torch.full((8,), 10), torch.arange(8))
    assert torch.equal(model.calls[0]["class_labels"], expected)


def test_the_objective_refuses_settings_that_do_not_go_together():
    learned = DiffusionConfig(variance="learned")
    DiffusionObjective(learned, loss="vlb", timestep_sampler="importance")  # the one allowed pairing
    for kwargs, config, match in [
        (dict(loss="hybrid", timestep_sampler="importance"), learned,
         "importance sampling of t is for the 'vlb' loss .*with 'hybrid' its weights would rescale L_simple too"),
        (dict(loss="simple", timestep_sampler="importance"), DiffusionConfig(),
         "importance sampling of t is for the 'vlb' loss"),
        (dict(loss="hybrid"), DiffusionConfig(),
         "loss 'hybrid' learns the variance: use DiffusionConfig\\(variance='learned'\\)"),
        (dict(loss="simple"), learned, "a learned variance is trained by the bound"),
        (dict(cond_drop=1.0), DiffusionConfig(), "cond_drop must be in \\[0, 1\\), got 1.0"),
        (dict(min_snr=0.0), DiffusionConfig(), "min-SNR gamma must be positive"),
        (dict(), DiffusionConfig(conditioning="text"), "text conditioning needs captions=CaptionSampler"),
        (dict(captions=lambda labels, generator: labels), DiffusionConfig(), "only text conditioning takes them"),
        (dict(loss="l2"), DiffusionConfig(), "unknown loss type 'l2'"),
    ]:
        with pytest.raises(ValueError, match=match):
            DiffusionObjective(config, **kwargs)


def test_the_vlb_objective_feeds_the_importance_sampler_and_keeps_its_state():
    objective = DiffusionObjective(DiffusionConfig(timesteps=4, variance="learned"), loss="vlb",
                                   timestep_sampler="importance")
    out = objective(_Spy(out_channels=2), _images(), None, torch.Generator().manual_seed(0))
    assert set(out.logs) == {"mse", "vlb"} and set(out.feedback) == {"t", "vlb"}
    objective.update(out.feedback)
    assert int(objective.timesteps.counts.sum()) == 8
    other = DiffusionObjective(objective.diffusion, loss="vlb", timestep_sampler="importance")
    other.load_state_dict(objective.state_dict())
    assert torch.equal(other.timesteps.losses, objective.timesteps.losses)
    assert objective.records() == {"diffusion_config": objective.diffusion.to_dict()}


def test_preview_takes_at_most_T_steps():
    """TrainConfig's default of 100 preview steps must work for a run with T < 100."""
    objective = DiffusionObjective(DiffusionConfig(timesteps=20))
    model = _Spy()
    images = objective.preview(model, (2, 1, 4, 4), torch.Generator().manual_seed(0), steps=100)
    assert images.shape == (2, 1, 4, 4) and len(model.calls) == 20
    objective.preview(model, (2, 1, 4, 4), torch.Generator().manual_seed(0), steps=5)
    assert len(model.calls) == 25


def test_loss_per_timestep_uses_the_same_noise_at_every_t():
    s = get_schedule("linear", 100)
    model, x0 = _Spy(), _images(6)
    model.train()
    losses = loss_per_timestep(model, x0, s, [0, 50, 99], seed=3, batch_size=4)
    assert list(losses) == [0, 50, 99] and model.training  # training mode is put back
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    for t_value, value in losses.items():
        t = torch.full((6,), t_value)
        x_t = q_sample(x0, t, noise, s)  # the spy predicts x_t itself
        assert value == pytest.approx(((x_t - noise) ** 2).mean().item(), rel=1e-5)

