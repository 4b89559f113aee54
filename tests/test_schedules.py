"""Variance schedules: values against diffusers and the papers, derived quantities, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_course import schedules
from diffusion_course.schedules import NoiseSchedule, check_timesteps, gather, get_schedule


@pytest.fixture(scope="module")
def diffusers():
    """The numeric reference, for the tests that compare with it (the others run without it)."""
    return pytest.importorskip("diffusers")


@pytest.mark.parametrize(("ours", "theirs"), [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
@pytest.mark.parametrize("timesteps", [1000, 250])
def test_matches_diffusers_ddpm_scheduler(diffusers, ours, theirs, timesteps):
    s = get_schedule(ours, timesteps)
    # diffusers keeps DDPM's linear end points for every T; ours scales them by 1000/T (Improved DDPM)
    scale = {"beta_start": 1e-4 * 1000 / timesteps, "beta_end": 0.02 * 1000 / timesteps} if ours == "linear" else {}
    ref = diffusers.DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=theirs, **scale)
    assert torch.allclose(s.betas, ref.betas.double(), atol=1e-6, rtol=0)
    assert torch.allclose(s.alphas, ref.alphas.double(), atol=1e-6, rtol=0)
    assert torch.allclose(s.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)


def test_linear_endpoints_scale_with_T_so_x_T_is_pure_noise():
    for T in (25, 50, 100, 1000, 4000):
        b = get_schedule("linear", T).betas
        scale = 1000 / T
        assert b[0].item() == pytest.approx(1e-4 * scale) and b[-1].item() == pytest.approx(0.02 * scale)
        assert torch.allclose(b.diff(), torch.full((T - 1,), (0.02 - 1e-4) * scale / (T - 1), dtype=torch.float64))
        # unscaled, T = 100 would end at alpha_bar = 0.36; scaled, every T ends near DDPM's 4e-5
        assert get_schedule("linear", T).alphas_cumprod[-1].item() < 1e-4
    assert schedules.linear_betas(100)[-1].item() == pytest.approx(0.02)  # the raw formula is DDPM's
    tiny = get_schedule("linear", 10).betas  # 0.02 * 100 > 1: capped, still a valid schedule
    assert tiny.max().item() == pytest.approx(schedules.MAX_BETA) and bool((tiny < 1).all())


def test_cosine_follows_improved_ddpm_eq17_and_clips():
    T, s = 1000, 0.008
    sched = get_schedule("cosine", T)
    t = torch.arange(T, dtype=torch.float64)
    f = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = f(t + 1) / f(torch.zeros(1, dtype=torch.float64))
    unclipped = sched.betas < 0.999
    assert torch.allclose(sched.alphas_cumprod[unclipped], expected[unclipped], rtol=1e-10)
    assert sched.betas.max().item() == pytest.approx(0.999)


def test_sigmoid_is_chen_2023_alpha_bar(diffusers):
    T = 1000
    sched = get_schedule("sigmoid", T)
    u = (torch.arange(T, dtype=torch.float64) + 1) / T
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = (sig(3.0) - torch.sigmoid(u * 6 - 3)) / (sig(3.0) - sig(-3.0))
    ok = sched.betas < 0.999
    assert torch.allclose(sched.alphas_cumprod[ok], expected.double()[ok], rtol=1e-6, atol=1e-12)
    # it is *not* diffusers' beta-space "sigmoid": document the difference by testing it
    theirs = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="sigmoid")
    assert not torch.allclose(sched.betas, theirs.betas.double(), atol=1e-3)


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_schedule_invariants(name):
    s = get_schedule(name, 1000)
    for tensor in (s.betas, s.alphas, s.alphas_cumprod, s.posterior_variance):
        assert tensor.dtype == torch.float64 and tensor.shape == (1000,)
    assert ((s.betas > 0) & (s.betas < 1)).all()
    assert (s.alphas_cumprod.diff() < 0).all(), "alpha_bar must decrease strictly"
    assert s.alphas_cumprod[0] > 0.99 and s.alphas_cumprod[-1] < 1e-3
    assert s.alphas_cumprod_prev[0] == 1.0
    assert torch.equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert s.posterior_variance[0] == 0.0
    assert torch.isfinite(s.posterior_log_variance_clipped).all()
    assert len(s) == s.timesteps == 1000
    assert name in repr(s)


def test_posterior_quantities_match_diffusers_variance(diffusers):
    s = get_schedule("linear", 1000)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small")
    for t in (1, 10, 500, 999):
        assert s.posterior_variance[t].item() == pytest.approx(ref._get_variance(t).item(), rel=1e-3)


def test_snr_and_log_snr():
    s = get_schedule("cosine", 1000)
    ab = s.alphas_cumprod
    assert torch.allclose(s.snr(), ab / (1 - ab))
    t = torch.tensor([0, 10, 999])
    assert torch.allclose(s.snr(t), (ab / (1 - ab))[t])
    assert s.snr(5).shape == ()
    assert torch.allclose(s.log_snr(t), torch.log(s.snr(t)))
    assert (s.log_snr().diff() < 0).all()


def test_cosine_keeps_more_signal_than_linear():
    lin, cos = get_schedule("linear", 1000), get_schedule("cosine", 1000)
    assert (cos.alphas_cumprod < 0.01).sum() < (lin.alphas_cumprod < 0.01).sum()
    assert cos.alphas_cumprod[500] > lin.alphas_cumprod[500]


def test_gather_shapes_dtype_and_device():
    s = get_schedule("linear", 100)
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    t = torch.tensor([0, 50, 99])
    out = gather(s.alphas_cumprod, t, x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert torch.allclose(out.flatten().double(), s.alphas_cumprod[t], atol=1e-7)
    assert gather(s.betas, t, torch.zeros(3, 5)).shape == (3, 1)


def test_gather_never_moves_a_float64_table_off_the_cpu(monkeypatch):
    """Apple's MPS has no float64: the table is cast on the CPU before it moves (tested here on
    the ``meta`` device, with a ``Tensor.to`` that refuses float64 anywhere but the CPU)."""
    real_to = torch.Tensor.to

    def to_like_mps(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if out.dtype == torch.float64 and out.device.type != "cpu":
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64")
        return out

    monkeypatch.setattr(torch.Tensor, "to", to_like_mps)
    with pytest.raises(TypeError, match="float64"):  # the guard works
        torch.zeros(2, dtype=torch.float64).to("meta")
    s = get_schedule("linear", 100)
    t = torch.tensor([0, 50, 99], device="meta")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = gather(s.alphas_cumprod, t, torch.zeros(3, 2, 4, 4, device="meta", dtype=dtype))
        assert out.device.type == "meta" and out.dtype == dtype and out.shape == (3, 1, 1, 1)
    # timesteps on the CPU and images on the device (how samplers call it) work too
    out = gather(s.betas, torch.tensor([1, 2, 3]), torch.zeros(3, 1, device="meta"))
    assert out.device.type == "meta" and out.dtype == torch.float32


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown schedule 'quadratic'.*linear, cosine, sigmoid"):
        get_schedule("quadratic", 1000)
    with pytest.raises(ValueError, match="schedule name must be a string"):
        get_schedule(3, 1000)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "1000"])
def test_bad_timesteps(bad):
    with pytest.raises(ValueError, match="timesteps must be a positive integer"):
        get_schedule("linear", bad)


def test_names_are_case_insensitive():
    assert torch.equal(get_schedule(" Cosine ", 10).betas, get_schedule("cosine", 10).betas)


def test_check_timesteps_messages():
    with pytest.raises(ValueError, match=r"out of range.*\[0, 999\]"):
        check_timesteps(torch.tensor([0, 1000]), 1000)
    with pytest.raises(ValueError, match=r"out of range"):
        check_timesteps(torch.tensor([-1]), 1000)
    with pytest.raises(ValueError, match="integer tensor"):
        check_timesteps(torch.tensor([1.0]), 1000)
    with pytest.raises(ValueError, match="out of range"):
        get_schedule("linear", 10).snr(10)


def test_custom_schedule_validation():
    s = NoiseSchedule("custom", torch.full((5,), 0.1))
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.9**5)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        NoiseSchedule("custom", torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        NoiseSchedule("custom", torch.zeros(2, 2) + 0.1)


def test_first_t_below():
    s = get_schedule("linear", 1000)
    t = schedules.first_t_below(s, 0.5)
    assert s.alphas_cumprod[t] < 0.5 <= s.alphas_cumprod[t - 1]
    assert schedules.first_t_below(s, 0.0) == 1000
    assert schedules.first_t_below(s, 1.0) == 0
    # SNR crosses 1 exactly where alpha_bar crosses 1/2
    assert s.snr(t) < 1 <= s.snr(t - 1)
