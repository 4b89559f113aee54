"""Gaussian mixtures (the closed forms), the score view of a denoiser, and the 2-D toy diffusion."""

from __future__ import annotations

import math
import tempfile

import pytest
import torch

from diffusion_course import mixtures, score, toy2d
from diffusion_course.diffusion import predict_x0_from_eps, q_sample
from diffusion_course.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def three_blobs():
    return mixtures.GaussianMixture([[0.5, 0.0], [-0.4, 0.3], [0.0, -0.7]], [0.1, 0.2, 0.15], [1.0, 2.0, 1.0])


# -- the mixture's closed forms ---------------------------------------------------------


def test_mixture_normalises_and_validates():
    m = mixtures.GaussianMixture([-1.0, 1.0], [0.5, 0.5], [1, 3])
    assert m.dim == 1 and m.components == 2
    assert torch.allclose(m.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    with pytest.raises(ValueError, match="one value per component"):
        mixtures.GaussianMixture([[0.0, 0.0]], [0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="positive"):
        mixtures.GaussianMixture([[0.0]], [0.0], [1.0])
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        mixtures.ring().score(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\]"):
        mixtures.ring().noised(0.0)


def test_log_prob_matches_torch_distributions(three_blobs):
    x = torch.randn(50, 2, dtype=torch.float64)
    components = torch.distributions.Independent(
        torch.distributions.Normal(three_blobs.means, three_blobs.stds[:, None].expand(-1, 2)), 1)
    reference = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(three_blobs.weights), components)
    assert torch.allclose(three_blobs.log_prob(x), reference.log_prob(x), atol=1e-10)


def test_score_is_the_gradient_of_log_prob(three_blobs):
    x = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(three_blobs.log_prob(x).sum(), x)
    assert torch.allclose(three_blobs.score(x.detach()), grad, atol=1e-9)
    assert three_blobs.score(x.detach().float()).dtype == torch.float32


def test_class_logits_give_the_responsibilities_and_stay_finite_far_away(three_blobs):
    x = torch.tensor([[0.1, 0.2], [0.5, 0.0], [40.0, -30.0]])
    logits = three_blobs.class_logits(x)
    assert logits.shape == (3, 3) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert torch.allclose(logits[:2].softmax(dim=1), three_blobs.responsibilities(x[:2]), atol=1e-6)
    assert (three_blobs.responsibilities(x[2:]) == 0).any()  # the probabilities underflow ...
    far = x[2:].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(three_blobs.class_logits(far).log_softmax(dim=1)[0, 0], far)
    assert torch.isfinite(grad).all()  # ... their logits do not: a classifier's gradient stays usable


def test_samples_and_moments_agree(three_blobs):
    x = three_blobs.sample(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.shape == (200_000, 2)
    assert torch.allclose(x.mean(0), three_blobs.mean(), atol=5e-3)
    assert torch.allclose(x.var(0), three_blobs.variance(), atol=5e-3)


def test_noised_is_the_law_of_q_sample(three_blobs):
    s = get_schedule("cosine", 1000)
    t = 400
    x0 = three_blobs.sample(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_t = q_sample(x0, torch.full((x0.shape[0],), t), noise, s)
    p_t = three_blobs.noised(s.alphas_cumprod[t].item())
    assert torch.allclose(x_t.mean(0), p_t.mean(), atol=5e-3)
    assert torch.allclose(x_t.var(0), p_t.variance(), atol=5e-3)


def test_posterior_mean_of_one_gaussian_is_the_textbook_formula():
    mu, sigma, a = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.4, 0.6
    g = mixtures.GaussianMixture(mu[None], [sigma], [1.0])
    x_t = torch.randn(10, 2, dtype=torch.float64)
    # Gaussian conditioning: E[x0 | x_t] = mu + Cov(x0, x_t) / Var(x_t) (x_t - E[x_t])
    expected = mu + math.sqrt(a) * sigma**2 / (a * sigma**2 + 1 - a) * (x_t - math.sqrt(a) * mu)
    assert torch.allclose(g.posterior_mean(x_t, a), expected, atol=1e-12)


@pytest.mark.parametrize("alpha_bar", [0.95, 0.5, 0.05])
def test_tweedie_with_the_exact_score_is_the_posterior_mean(three_blobs, alpha_bar):
    s = get_schedule("linear", 1000)
    t = int((s.alphas_cumprod - alpha_bar).abs().argmin())
    a = s.alphas_cumprod[t].item()
    x_t = three_blobs.noised(a).sample(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tt = torch.full((64,), t)
    via_score = score.tweedie_x0(x_t, tt, three_blobs.noised(a).score(x_t), s)
    assert torch.allclose(via_score, three_blobs.posterior_mean(x_t, a), atol=1e-9)


def test_posterior_is_bayes_rule_on_a_grid():
    """One forward step x = sqrt(1 - beta) x_prev + sqrt(beta) eps, inverted numerically and in closed form."""
    prior = mixtures.GaussianMixture([-1.0, 1.0], [0.5, 0.5], [0.5, 0.5])
    grid = torch.linspace(-4, 4, 4001, dtype=torch.float64)
    for beta, x_t in [(0.02, 0.0), (0.5, 0.0), (0.5, 1.3)]:
        likelihood = torch.exp(-((x_t - math.sqrt(1 - beta) * grid) ** 2) / (2 * beta))
        numeric = prior.log_prob(grid[:, None]).exp() * likelihood
        numeric = numeric / (numeric.sum() * (grid[1] - grid[0]))
        exact = prior.posterior(torch.tensor([x_t]), 1 - beta).log_prob(grid[:, None]).exp()
        assert torch.allclose(exact, numeric, atol=1e-6), beta
    with pytest.raises(ValueError, match="below 1"):
        prior.posterior(torch.tensor([0.0]), 1.0)


def test_reverse_step_is_gaussian_only_for_small_beta():
    """The moment-matched Gaussian fits the true reverse step for beta = 0.001, not for beta = 0.5."""
    prior = mixtures.GaussianMixture([-1.0, 1.0], [0.5, 0.5], [0.5, 0.5])

    def gap(beta):
        post = prior.posterior(torch.tensor([0.0]), 1 - beta)
        mu, var = post.mean(), post.variance()
        xs = torch.linspace(-4, 4, 8001, dtype=torch.float64) * var.sqrt() + mu
        gauss = torch.exp(-((xs - mu) ** 2) / (2 * var)) / torch.sqrt(2 * math.pi * var)
        return 0.5 * ((post.log_prob(xs[:, None]).exp() - gauss).abs().sum() * (xs[1] - xs[0])).item()

    assert gap(0.001) < 1e-3 < 0.05 < gap(0.5)


def test_ring():
    r = mixtures.ring(4, radius=2.0, std=0.1)
    assert torch.allclose(r.means, torch.tensor([[2.0, 0], [0, 2.0], [-2.0, 0], [0, -2.0]], dtype=torch.float64),
                          atol=1e-12)
    assert torch.allclose(r.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="modes"):
        mixtures.ring(0)


# -- score <-> eps <-> Tweedie -------------------------------------------------------------


def test_score_eps_round_trip_and_tweedie_is_predict_x0_from_eps():
    s = get_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    sc = score.score_from_eps(eps, t, s)
    assert torch.allclose(score.eps_from_score(sc, t, s), eps, atol=1e-6)
    assert torch.allclose(score.tweedie_x0(x_t, t, sc, s), predict_x0_from_eps(x_t, t, eps, s), rtol=1e-5, atol=1e-5)
    assert torch.allclose(sc[2], -eps[2] / math.sqrt(1 - s.alphas_cumprod[500].item()), atol=1e-6)


# -- the toy model and its training -------------------------------------------------------


def test_toy_denoiser_shapes_and_zero_start():
    model = toy2d.ToyDenoiser(hidden=16, depth=2)
    out = model(torch.randn(7, 2), torch.randint(0, 1000, (7,)))
    assert out.shape == (7, 2) and torch.equal(out, torch.zeros(7, 2))
    with pytest.raises(ValueError, match=r"points \[B, 2\]"):
        model(torch.randn(7, 1, 2), torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden"):
        toy2d.ToyDenoiser(hidden=0)


def test_train_toy_learns_the_score(tmp_path):
    data = mixtures.ring(8, radius=0.8, std=0.08)
    run = toy2d.train_toy(data, steps=300, points=4096, log_every=50, out=tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint.pt").exists()  # the course's Trainer ran, and saved
    assert [step for step, _ in run.losses] == [50, 100, 150, 200, 250, 300]
    first, last = run.losses[0][1], run.losses[-1][1]
    assert last < 0.75 * first, run.losses  # the denoising loss drops

    # at a middle t the learned Tweedie estimate is far closer to the exact E[x0 | x_t] than an
    # untrained model's (whose eps = 0 gives x_t / sqrt(alpha_bar))
    s, t = run.schedule, 500
    a = s.alphas_cumprod[t].item()
    x_t = data.noised(a).sample(512, generator=torch.Generator().manual_seed(5))
    exact = data.posterior_mean(x_t, a)
    _, learned = toy2d.denoise(run.model, x_t, t, s)
    _, untrained = toy2d.denoise(toy2d.ToyDenoiser(), x_t, t, s)
    err_learned = (learned - exact).norm(dim=1).mean()
    err_untrained = (untrained - exact).norm(dim=1).mean()
    assert err_learned < 0.3 * err_untrained, (err_learned, err_untrained)


def test_train_toy_rejects_bad_data(tmp_path):
    with pytest.raises(ValueError, match="GaussianMixture or a float tensor"):
        toy2d.train_toy(torch.zeros(10, dtype=torch.long), steps=1, out=tmp_path)


def test_train_toy_without_a_folder_leaves_nothing_behind(tmp_path, monkeypatch):
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where TemporaryDirectory creates folders
    monkeypatch.chdir(cwd)
    torch.set_num_threads(2)  # the module fixture's 1 is restored after the module
    run = toy2d.train_toy(torch.randn(512, 2), steps=3, log_every=1, hidden=8)
    assert [step for step, _ in run.losses] == [1, 2, 3] and not run.model.training
    # (torch may keep a compiler cache of its own there; only our run folder must go)
    assert not list(scratch.glob("toy2d-*")), "the temporary run folder must be deleted"
    assert list(cwd.iterdir()) == [], "nothing may be written next to the notebook"
    assert torch.get_num_threads() == 2, "the thread count must be restored"


def test_denoise_accepts_one_t_or_a_vector():
    s = get_schedule("linear", 100)
    model = toy2d.ToyDenoiser(hidden=8, depth=1).train()
    x = torch.randn(3, 2)
    sc1, x0_1 = toy2d.denoise(model, x, 40, s)
    sc2, x0_2 = toy2d.denoise(model, x, torch.full((3,), 40), s)
    assert torch.equal(sc1, sc2) and torch.equal(x0_1, x0_2) and model.training  # mode restored
