"""sample() and the step protocol: the x_T/generator contract, callbacks, errors, inversion, slerp, pictures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sampling_fakes import GaussianData, pattern

from diffusion_course import viz
from diffusion_course.sampling import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    Trajectory,
    ddim_invert,
    ddim_sigma,
    ddim_step,
    dpm_solver_2m_step,
    make_sampler,
    respace_betas,
    respace_schedule,
    sample,
    slerp,
    spaced_timesteps,
)
from diffusion_course.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (3, 1, 4, 4)
T = 50
SCHEDULE = get_schedule("linear", T)
SETTINGS = [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0), ("dpm-solver++", 0.0)]


def _model(**kw) -> GaussianData:
    return GaussianData(SCHEDULE, pattern(SHAPE), **kw)


def _seed(n: int) -> torch.Generator:
    return torch.Generator().manual_seed(n)


# ---------------------------------------------------------------------------
# The loop's contract
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,eta", SETTINGS)
def test_one_model_call_per_step_with_the_original_timesteps(name, eta):
    model = _model()
    out = sample(model, SCHEDULE, SHAPE, sampler=name, eta=eta, steps=7, spacing="leading", generator=_seed(0))
    visited = spaced_timesteps(T, 7, "leading").tolist()
    assert visited == [42, 35, 28, 21, 14, 7, 0]
    assert model.calls == [[t] * SHAPE[0] for t in visited]
    assert out.shape == SHAPE and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name,eta", SETTINGS)
def test_x_T_is_drawn_first_from_the_generator(name, eta):
    a = sample(_model(), SCHEDULE, SHAPE, sampler=name, eta=eta, steps=10, generator=_seed(1))
    g = _seed(1)
    x_T = torch.randn(SHAPE, generator=g)
    b = sample(_model(), SCHEDULE, SHAPE, sampler=name, eta=eta, steps=10, generator=g, x_T=x_T)
    assert torch.equal(a, b)
    again = sample(_model(), SCHEDULE, SHAPE, sampler=name, eta=eta, steps=10, generator=_seed(1))
    other = sample(_model(), SCHEDULE, SHAPE, sampler=name, eta=eta, steps=10, generator=_seed(2))
    assert torch.equal(a, again) and not torch.allclose(a, other)


def test_only_stochastic_samplers_use_the_generator_after_x_T():
    x_T = torch.randn(SHAPE, generator=_seed(3))
    for name, eta, stochastic in [("ddim", 0.0, False), ("dpm-solver++", 0.0, False), ("ddim", 1.0, True),
                                  ("ddpm", 0.0, True)]:
        a = sample(_model(), SCHEDULE, SHAPE, sampler=name, eta=eta, steps=5, x_T=x_T, generator=_seed(4))
        b = sample(_model(), SCHEDULE, SHAPE, sampler=name, eta=eta, steps=5, x_T=x_T, generator=_seed(5))
        assert torch.equal(a, b) != stochastic, name


@pytest.mark.parametrize("name,eta,draws", [("ddim", 0.0, 0), ("ddim", 0.5, 5), ("ddpm", 0.0, 5),
                                             ("dpm-solver++", 0.0, 0)])
def test_the_generator_advances_by_x_T_and_one_draw_per_noisy_step(name, eta, draws):
    """Six steps: DDPM and DDIM with eta > 0 add noise on all but the last (which lands on alpha_bar = 1)."""
    g = _seed(19)
    sample(_model(), SCHEDULE, SHAPE, sampler=name, eta=eta, steps=6, generator=g)
    expected = _seed(19)
    for _ in range(1 + draws):
        torch.randn(SHAPE, generator=expected)
    assert torch.equal(g.get_state(), expected.get_state())


def test_ddim_with_eta_one_is_the_ddpm_step_on_the_respaced_chain():
    for spacing in ("trailing", "leading"):
        ddim = sample(_model(), SCHEDULE, SHAPE, sampler="ddim", eta=1.0, steps=12, spacing=spacing, generator=_seed(6))
        ddpm = sample(_model(), SCHEDULE, SHAPE, sampler="ddpm", steps=12, spacing=spacing, generator=_seed(6))
        assert (ddim - ddpm).abs().max() < 1e-5


def test_a_single_dpm_solver_step_is_a_single_ddim_step():
    ddim = sample(_model(), SCHEDULE, SHAPE, sampler="ddim", steps=1, generator=_seed(7), clip_x0=False)
    dpm = sample(_model(), SCHEDULE, SHAPE, sampler="dpm-solver++", steps=1, generator=_seed(7), clip_x0=False)
    assert (ddim - dpm).abs().max() < 1e-5


def test_callback_sees_every_step_and_the_last_x0_is_the_result():
    for name, eta in SETTINGS:
        seen = []
        out = sample(_model(), SCHEDULE, SHAPE, sampler=name, eta=eta, steps=6, generator=_seed(8),
                     callback=lambda i, t, x_t, x0, seen=seen: seen.append((i, t, x_t.clone(), x0.clone())))
        assert [s[0] for s in seen] == list(range(6))
        assert [s[1] for s in seen] == spaced_timesteps(T, 6, "trailing").tolist()
        assert torch.equal(seen[0][2], torch.randn(SHAPE, generator=_seed(8)))  # the model saw x_T first
        assert (seen[-1][3] - out).abs().max() < 1e-6, name  # the last step lands on x0_hat (alpha_bar = 1)


def test_trajectory_keeps_every_kth_step_of_the_chosen_images():
    record = Trajectory(images=1, every=3)
    sample(_model(), SCHEDULE, SHAPE, steps=10, generator=_seed(9), callback=record)
    assert record.ts == spaced_timesteps(T, 10, "trailing").tolist()[::3] and len(record) == 4
    assert record.xs[0].shape == (1, 1, 4, 4) and record.x0s[-1].shape == (1, 1, 4, 4)
    assert not record.xs[0].is_inference()  # usable like any tensor after sampling
    assert torch.equal(record.xs[0][0], torch.randn(SHAPE, generator=_seed(9))[1])
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        Trajectory(every=0)


def test_clip_x0_clamps_the_result_and_off_leaves_latents_alone():
    x_T = torch.randn(SHAPE, generator=_seed(10)) * 3
    wide = GaussianData(SCHEDULE, pattern(SHAPE) * 4, std=1.0)  # "latents" far outside [-1, 1]
    clipped = sample(wide, SCHEDULE, SHAPE, x_T=x_T, steps=10)
    free = sample(wide, SCHEDULE, SHAPE, x_T=x_T, steps=10, clip_x0=False)
    assert clipped.abs().max() <= 1 and free.abs().max() > 2


def test_result_is_an_ordinary_tensor_in_the_dtype_of_x_T():
    out = sample(_model(), SCHEDULE, SHAPE, steps=5, x_T=torch.randn(SHAPE, dtype=torch.float64))
    assert out.dtype == torch.float64 and not out.is_inference()
    out += 1  # in-place use outside inference mode is allowed


def test_learned_variance_channels_are_split_off():
    plain, learned = _model(), _model(learned=True)
    for name in ("ddim", "dpm-solver++"):  # they ignore the variance
        a = sample(plain, SCHEDULE, SHAPE, sampler=name, steps=8, generator=_seed(11))
        b = sample(learned, SCHEDULE, SHAPE, sampler=name, steps=8, generator=_seed(11), variance_type="learned")
        assert torch.equal(a, b)
    a = sample(plain, SCHEDULE, SHAPE, sampler="ddpm", steps=8, generator=_seed(11))
    b = sample(learned, SCHEDULE, SHAPE, sampler="ddpm", steps=8, generator=_seed(11), variance_type="learned")
    assert not torch.allclose(a, b)  # DDPM uses it


class _Net(torch.nn.Module):
    """A stand-in network with a parameter, so that its device can be read."""

    def __init__(self):
        super().__init__()
        self.data = GaussianData(SCHEDULE, pattern(SHAPE))
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x, t):
        return self.data(x, t) * self.w


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_device_follows_the_model_and_the_generator_must_be_there_too():
    model = _Net().cuda()
    model.data.mean = model.data.mean.cuda()
    cpu_model = _Net()
    for name, eta in SETTINGS:
        a, b = (sample(model, SCHEDULE, SHAPE, sampler=name, eta=eta, steps=10,
                       generator=torch.Generator(device="cuda").manual_seed(0)) for _ in range(2))
        assert a.device.type == "cuda" and torch.equal(a, b)
        if eta == 0 and name != "ddpm":  # deterministic: the same x_T gives the same images on the CPU
            x_T = torch.randn(SHAPE, generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
            cpu = sample(cpu_model, SCHEDULE, SHAPE, sampler=name, steps=10, x_T=x_T.cpu())
            assert (a.cpu() - cpu).abs().max() < 1e-4, name
    with pytest.raises(ValueError, match="the generator is on cpu but sampling runs on cuda"):
        sample(model, SCHEDULE, SHAPE, generator=torch.Generator())
    assert ddim_invert(model, SCHEDULE, torch.zeros(SHAPE, device="cuda"), steps=5).device.type == "cuda"


def test_dpm_solver_is_second_order_and_ddim_first_order():
    """On Gaussian data the ODE is solvable exactly; halving the step should halve DDIM's error and
    quarter DPM-Solver++(2M)'s (measured at t = 499, which 20, 40 and 80 trailing steps all visit)."""
    schedule = get_schedule("linear", 1000)
    std = 0.6
    model = GaussianData(schedule, pattern(SHAPE).double(), std=std, wiggle=0.0)
    x_T = torch.randn((64, 1, 4, 4), generator=_seed(12), dtype=torch.float64)
    ab = float(schedule.alphas_cumprod[499])
    z = (model.exact(x_T, 999) - model.mean.double()) / std
    exact = math.sqrt(ab) * (model.mean.double() + z * math.sqrt(std**2 + (1 - ab) / ab))
    ratios = {}
    for name in ("ddim", "dpm-solver++"):
        errors = []
        for steps in (20, 40, 80):
            seen = {}
            sample(model, schedule, x_T.shape, sampler=name, steps=steps, x_T=x_T, clip_x0=False,
                   callback=lambda i, t, x, x0, seen=seen: seen.__setitem__(t, x))
            errors.append((seen[499] - exact).pow(2).mean().sqrt().item())
        ratios[name] = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(1.8 < r < 2.2 for r in ratios["ddim"]), ratios
    assert all(r > 3.2 for r in ratios["dpm-solver++"]), ratios


# ---------------------------------------------------------------------------
# Step functions (what the exercises are graded against)
# ---------------------------------------------------------------------------


def test_respace_betas_keep_alpha_bar_at_the_visited_steps():
    schedule = get_schedule("cosine", 1000)
    visited = torch.tensor([999, 0, 500, 250])  # any order
    betas = respace_betas(schedule.alphas_cumprod, visited)
    assert betas.dtype == torch.float64 and betas.shape == (4,)
    assert torch.allclose(torch.cumprod(1 - betas, 0), schedule.alphas_cumprod[[0, 250, 500, 999]], rtol=1e-12)
    assert betas[0] == schedule.betas[0]  # from alpha_bar = 1 to t = 0: the first beta itself
    assert torch.equal(respace_schedule(schedule, visited).betas, betas)


def test_ddim_sigma_is_zero_for_eta_zero_and_the_respaced_posterior_std_for_one():
    ab = SCHEDULE.alphas_cumprod
    chain = respace_schedule(SCHEDULE, torch.tensor([10, 30]))
    assert ddim_sigma(float(ab[30]), float(ab[10]), 0.0) == 0.0
    assert math.isclose(ddim_sigma(float(ab[30]), float(ab[10]), 1.0), float(chain.posterior_variance[1].sqrt()))
    assert ddim_sigma(float(ab[30]), 1.0, 1.0) == 0.0  # the last step, to alpha_bar = 1


def test_ddim_step_follows_eq_12():
    g = _seed(13)
    x_t, eps, noise = (torch.randn(SHAPE, generator=g) for _ in range(3))
    ab_t, ab_prev = float(SCHEDULE.alphas_cumprod[40]), float(SCHEDULE.alphas_cumprod[20])
    sigma = ddim_sigma(ab_t, ab_prev, 0.7)
    x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps + sigma * noise
    ours, x0_hat = ddim_step(eps, x_t, 40, 20, SCHEDULE, noise, eta=0.7, clip_x0=False)
    assert torch.allclose(ours, expected, atol=1e-5) and torch.allclose(x0_hat, x0, atol=1e-5)
    last, x0_last = ddim_step(eps, x_t, 40, -1, SCHEDULE, None, eta=0.7, clip_x0=False)
    assert torch.equal(last, x0_last)  # alpha_bar = 1: the image itself, no noise needed


def test_dpm_solver_2m_step_follows_algorithm_2():
    g = _seed(14)
    x, d_now, d_before = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    ab_before, ab_s, ab_t = 0.2, 0.4, 0.7

    def lam(ab):
        return 0.5 * math.log(ab / (1 - ab))

    h, h_before = lam(ab_t) - lam(ab_s), lam(ab_s) - lam(ab_before)
    r = h_before / h
    d = (1 + 1 / (2 * r)) * d_now - 1 / (2 * r) * d_before
    sig_s, sig_t = math.sqrt(1 - ab_s), math.sqrt(1 - ab_t)
    expected = sig_t / sig_s * x - math.sqrt(ab_t) * (math.exp(-h) - 1) * d
    assert torch.allclose(dpm_solver_2m_step(x, d_now, ab_s, ab_t, d_before, ab_before), expected, atol=1e-12)
    first = sig_t / sig_s * x - math.sqrt(ab_t) * (math.exp(-h) - 1) * d_now  # no history: first order
    assert torch.allclose(dpm_solver_2m_step(x, d_now, ab_s, ab_t), first, atol=1e-12)
    assert torch.equal(dpm_solver_2m_step(x, d_now, ab_s, 1.0), d_now)  # to alpha_bar = 1: x0 itself


@pytest.mark.parametrize("cls", [DDPMSampler, DDIMSampler, DPMSolverSampler])
def test_samplers_describe_their_pairs(cls):
    sampler = cls(SCHEDULE)
    assert sampler.set_timesteps(4, "leading") == [(36, 24), (24, 12), (12, 0), (0, -1)]
    assert "steps=4" in repr(sampler)


# ---------------------------------------------------------------------------
# Bad input: one line, naming the problem, before the model is called
# ---------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(steps=0), r"steps must be an integer in \[1, 50\] \(the model's T\), got 0"),
    (dict(steps=51), r"steps must be an integer in \[1, 50\]"),
    (dict(steps=2.5), r"steps must be an integer"),
    (dict(steps=True), r"steps must be an integer"),
    (dict(eta=-0.1), r"eta must be a number in \[0, 1\]"),
    (dict(eta=1.5), r"eta must be a number in \[0, 1\]"),
    (dict(eta=float("nan")), r"eta must be a number in \[0, 1\]"),
    (dict(sampler="dpm-solver++", eta=0.5), r"eta is only for ddim; sampler 'dpm-solver\+\+' has none"),
    (dict(sampler="ddpm", eta=0.3), r"eta is only for ddim; sampler 'ddpm'"),
    (dict(sampler="euler"), r"unknown sampler 'euler'; choose one of: ddim, ddpm, dpm-solver\+\+"),
    (dict(spacing="uniform"), r"unknown spacing 'uniform'; choose one of: trailing, leading, linspace"),
    (dict(prediction_type="score"), r"unknown prediction type 'score'"),
    (dict(variance_type="learnt"), r"unknown variance type 'learnt'"),
    (dict(clip_x0="yes"), r"clip_x0 must be True or False"),
    (dict(shape=(0, 1, 4, 4)), r"shape must be \(B, C, H, W\) with positive integers"),
    (dict(shape="3x1x4x4"), r"shape must be \(B, C, H, W\)"),
    (dict(x_T=torch.randn(2, 1, 4, 4)), r"x_T has shape \(2, 1, 4, 4\) but shape is \(3, 1, 4, 4\)"),
    (dict(x_T=torch.zeros(SHAPE, dtype=torch.long)), r"x_T must be a floating-point tensor"),
    (dict(x_T=torch.randn(SHAPE), device="meta"), r"x_T is on cpu but sampling runs on meta"),
    (dict(generator=torch.Generator(), device="meta"), r"the generator is on cpu but sampling runs on meta"),
    (dict(generator=1234), r"generator must be a torch.Generator, got int"),
    (dict(callback=5), r"callback must be callable"),
]


@pytest.mark.parametrize("kwargs,message", BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_errors_before_any_model_call(kwargs, message):
    model = _model()
    shape = kwargs.pop("shape", SHAPE)
    with pytest.raises(ValueError, match=message) as info:
        sample(model, SCHEDULE, shape, **kwargs)
    assert "\n" not in str(info.value) and model.calls == []


@pytest.mark.parametrize("channels,variance_type,message", [
    (3, "fixed_small", "the model returned 3 channels for 1-channel images; expected 1 for variance type 'fixed_sm"),
    (1, "learned", "the model returned 1 channels for 1-channel images; expected 2 for variance type 'learned'"),
])
def test_a_model_output_of_the_wrong_shape_is_named(channels, variance_type, message):
    def model(x, t):
        return torch.zeros(x.shape[0], channels, *x.shape[2:])

    for name in SAMPLERS:
        with pytest.raises(ValueError, match=message):
            sample(model, SCHEDULE, SHAPE, sampler=name, steps=3, variance_type=variance_type)
    with pytest.raises(ValueError, match=r"the model returned shape \(3, 1, 2, 2\) for x_t of shape \(3, 1, 4, 4\)"):
        sample(lambda x, t: x[..., :2, :2], SCHEDULE, SHAPE, steps=3)


def test_step_misuse_is_named():
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="call set_timesteps"):
        DDIMSampler(SCHEDULE).step(x, 0, x)
    ddpm = DDPMSampler(SCHEDULE)
    ddpm.set_timesteps(3)
    with pytest.raises(ValueError, match=r"step 0 adds noise: pass noise of shape \(3, 1, 4, 4\) \(got None\)"):
        ddpm.step(x, 0, x)
    with pytest.raises(ValueError, match=r"step index i must be an integer in \[0, 2\], got 3"):
        ddpm.step(x, 3, x)
    dpm = DPMSolverSampler(SCHEDULE)
    dpm.set_timesteps(3)
    with pytest.raises(ValueError, match="DPM-Solver\\+\\+ steps must run in order: step 1 came before step 0"):
        dpm.step(x, 1, x)
    with pytest.raises(ValueError, match=r"t_prev must lie in \[-1, t\)"):
        ddim_step(x, x, 10, 10, SCHEDULE)
    with pytest.raises(ValueError, match=r"noise of shape \(3, 1, 4, 4\) is needed when eta > 0"):
        ddim_step(x, x, 10, 5, SCHEDULE, eta=0.5)
    with pytest.raises(ValueError, match="schedule must be a NoiseSchedule"):
        make_sampler("ddim", "linear")


# ---------------------------------------------------------------------------
# DDIM inversion and slerp
# ---------------------------------------------------------------------------


def test_ddim_inversion_round_trip():
    """image -> x_T -> image. Plain inversion is first order in the step (error halves with twice the
    steps); three fixed-point iterations per step make it exact to float32 rounding."""
    schedule = get_schedule("linear", 1000)
    model = GaussianData(schedule, pattern(SHAPE))
    x0 = (pattern(SHAPE) + 0.3 * torch.randn(SHAPE, generator=_seed(15))).clamp(-1, 1)

    def round_trip(steps, refine=0):
        x_T = ddim_invert(model, schedule, x0, steps=steps, refine=refine)
        back = sample(model, schedule, SHAPE, x_T=x_T, steps=steps, clip_x0=False)
        return (back - x0).abs().max().item(), x_T

    plain_100, x_T = round_trip(100)
    plain_200, _ = round_trip(200)
    refined, _ = round_trip(100, refine=3)
    assert plain_100 < 0.06 and 0.4 < plain_200 / plain_100 < 0.6
    assert refined < 1e-4
    assert 0.5 < x_T.std() < 1.5  # noise-like, not an image
    with pytest.raises(ValueError, match="refine must be an integer >= 0"):
        ddim_invert(model, schedule, x0, refine=-1)


def test_ddim_inversion_calls_the_model_at_the_target_timesteps_least_noisy_first():
    model = _model()
    ddim_invert(model, SCHEDULE, torch.zeros(SHAPE), steps=5, spacing="leading")
    visited = spaced_timesteps(T, 5, "leading").tolist()  # [40, 30, 20, 10, 0]
    assert model.calls == [[t] * SHAPE[0] for t in reversed(visited)]
    model.calls.clear()
    ddim_invert(model, SCHEDULE, torch.zeros(SHAPE), steps=5, spacing="leading", refine=2)
    assert model.calls == [[t] * SHAPE[0] for t in reversed(visited) for _ in range(3)]


@pytest.mark.parametrize("kind", ["x0", "v"])
def test_ddim_inversion_works_for_every_prediction_type(kind):
    schedule = get_schedule("linear", 200)  # not cosine: see ddim_invert's docstring
    model = GaussianData(schedule, pattern(SHAPE), prediction_type=kind)
    x0 = (pattern(SHAPE) + 0.3 * torch.randn(SHAPE, generator=_seed(18))).clamp(-1, 1)
    x_T = ddim_invert(model, schedule, x0, steps=50, refine=3, prediction_type=kind)
    back = sample(model, schedule, SHAPE, x_T=x_T, steps=50, clip_x0=False, prediction_type=kind)
    assert (back - x0).abs().max() < 1e-3


def test_slerp_endpoints_norm_and_batch():
    g = _seed(16)
    z0, z1 = torch.randn(1, 8, 8, generator=g), torch.randn(1, 8, 8, generator=g)
    assert torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-6) and torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-6)
    batch = slerp(z0, z1, torch.linspace(0, 1, 5))
    assert batch.shape == (5, 1, 8, 8) and torch.allclose(batch[2], slerp(z0, z1, 0.5))
    # two orthogonal vectors of equal norm: every slerp point keeps the norm; the straight line's midpoint
    # has 1/sqrt(2) of it
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    norms = slerp(a, b, torch.linspace(0, 1, 7)).norm(dim=1)
    assert torch.allclose(norms, torch.full((7,), 3.0), atol=1e-6)
    assert math.isclose(((a + b) / 2).norm().item(), 3 / math.sqrt(2), rel_tol=1e-6)
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: the straight line
    with pytest.raises(ValueError, match="same shape"):
        slerp(z0, z1[:, :4], 0.5)
    with pytest.raises(ValueError, match="non-zero"):
        slerp(torch.zeros(3), torch.ones(3), 0.5)


# ---------------------------------------------------------------------------
# Pictures of the reverse process
# ---------------------------------------------------------------------------


def _recorded(steps=12):
    record = Trajectory()
    sample(_model(), SCHEDULE, SHAPE, steps=steps, generator=_seed(17), callback=record)
    return record


def test_reverse_process_strip_draws_x_t_over_x0():
    record = _recorded()
    fig = viz.reverse_process_strip(record.xs, record.x0s, record.ts, columns=4)
    assert len(fig.axes) == 8
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles[0] == f"t={record.ts[0]}" and titles[-1] == f"t={record.ts[-1]}"  # first and last always
    assert np.allclose(fig.axes[4].images[0].get_array(), viz.to_display(record.x0s[0][0]), atol=1e-6)
    with pytest.raises(ValueError, match="same non-zero length"):
        viz.reverse_process_strip(record.xs, record.x0s[:-1], record.ts)


def test_animate_samples_embeds_small_jpeg_frames(tmp_path):
    from matplotlib.animation import FuncAnimation

    record = _recorded(steps=5)
    page = viz.animate_samples(record.x0s, record.ts, max_frames=3, size=1.0)
    html = page.data
    assert "<script" in html and html.count("data:image/jpeg") == 3 and len(html) < 100_000
    anim = viz.animate_samples(record.xs, html=False, max_frames=3, size=1.0)
    assert isinstance(anim, FuncAnimation)
    anim.save(tmp_path / "steps.gif", writer="pillow")  # a working animation, no external tools
    assert (tmp_path / "steps.gif").stat().st_size > 0
    with pytest.raises(ValueError, match="ts has 2 entries for 5 frames"):
        viz.animate_samples(record.xs, record.ts[:2])
