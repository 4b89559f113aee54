"""Instant-feedback checks: they pass correct code and name the typical mistakes in words."""

from __future__ import annotations

import pytest
import torch

from diffusion_course import checks, schedules


def _per_image(values, t, like):
    return values[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def test_not_implemented_is_reported_not_raised(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    for check in (checks.check_linear_schedule, checks.check_cosine_schedule, checks.check_q_sample,
                  checks.check_q_posterior):
        result = check(stub)
        assert not result and "not implemented yet" in result.problems[0]
    assert capsys.readouterr().out.count("❌") == 4


def test_learner_exception_is_described():
    def broken(T):
        return torch.linspace(1e-4, 0.02, T) + undefined_name  # noqa: F821

    result = checks.check_linear_schedule(broken)
    assert "raised NameError" in result.problems[0] and "undefined_name" in result.problems[0]


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda T: torch.linspace(1e-4, 0.02, T), "float64"),
        (lambda T: torch.linspace(1e-3, 0.02, T, dtype=torch.float64), "first beta should be 1e-4"),
        (lambda T: torch.linspace(1e-4, 0.02, T + 1, dtype=torch.float64), "should have shape"),
        (lambda T: [0.1] * T, "torch.Tensor"),
    ],
)
def test_linear_schedule_mistakes(fn, message):
    result = checks.check_linear_schedule(fn)
    assert not result and message in result.problems[0]


def _cosine_variant(T, s=0.008, clip=0.999, offset=True, square=True, shift=0):
    u = (torch.arange(T + 1, dtype=torch.float64) + shift) / T
    arg = ((u + s) / (1 + s) if offset else u) * torch.pi / 2
    f = torch.cos(arg) ** (2 if square else 1)
    b = 1 - f[1:] / f[:-1]
    return b.clamp(max=clip) if clip else b


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip": None}, "clip betas at 0.999"),
        ({"clip": 0.99}, "clip at max=0.999"),
        ({"offset": False}, "offset s is missing"),
        ({"square": False}, "squared"),
    ],
)
def test_cosine_schedule_mistakes(kwargs, message):
    result = checks.check_cosine_schedule(lambda T, s=0.008: _cosine_variant(T, s, **kwargs))
    assert not result and message in result.problems[0], result.problems


def test_cosine_off_by_one():
    def shifted(T, s=0.008):
        ref = _cosine_variant(T, s)
        return torch.cat([ref[1:], ref[-1:]])

    result = checks.check_cosine_schedule(shifted)
    assert not result and "off by one" in result.problems[0]


def _q_sample_variant(signal, noise_coef, shift=0, first_t=False):
    def fn(x0, t, noise, schedule):
        tt = (t + shift).clamp(0, schedule.timesteps - 1)
        if first_t:
            tt = tt[:1].expand_as(tt)
        return _per_image(signal(schedule), tt, x0) * x0 + _per_image(noise_coef(schedule), tt, x0) * noise

    return fn


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (_q_sample_variant(lambda s: s.alphas_cumprod, lambda s: 1 - s.alphas_cumprod), "wrong scale"),
        (_q_sample_variant(lambda s: s.alphas_cumprod.sqrt(), lambda s: 1 - s.alphas_cumprod), "standard deviation"),
        (_q_sample_variant(lambda s: (1 - s.alphas_cumprod).sqrt(), lambda s: s.alphas_cumprod.sqrt()), "swapped"),
        (_q_sample_variant(lambda s: s.alphas.sqrt(), lambda s: s.betas.sqrt()), "cumulative product"),
        (_q_sample_variant(lambda s: s.alphas_cumprod.sqrt(), lambda s: (1 - s.alphas_cumprod).sqrt(), shift=1),
         "off by one"),
        (_q_sample_variant(lambda s: s.alphas_cumprod.sqrt(), lambda s: (1 - s.alphas_cumprod).sqrt(), shift=-1),
         "not t - 1"),
        (_q_sample_variant(lambda s: s.alphas_cumprod.sqrt(), lambda s: (1 - s.alphas_cumprod).sqrt(),
                           first_t=True), "its own timestep"),
        (lambda x0, t, noise, s: _q_sample_variant(lambda s: s.alphas_cumprod.sqrt(),
                                                   lambda s: (1 - s.alphas_cumprod).sqrt())(
            x0, t, torch.randn_like(x0), s), "ignores the `noise`"),
        (lambda x0, t, noise, s: x0.flatten(1), "reshape the per-sample coefficients"),
    ],
)
def test_q_sample_mistakes(fn, message):
    result = checks.check_q_sample(fn)
    assert not result and message in result.problems[0], result.problems


def _posterior(x0, x_t, t, s):
    """An independent q(x_{t-1} | x_t, x_0) (DDPM eq. 7), not the package's."""
    c1 = _per_image(s.alphas_cumprod_prev.sqrt() * s.betas / (1 - s.alphas_cumprod), t, x0)
    c2 = _per_image(s.alphas.sqrt() * (1 - s.alphas_cumprod_prev) / (1 - s.alphas_cumprod), t, x0)
    var = _per_image((1 - s.alphas_cumprod_prev) / (1 - s.alphas_cumprod) * s.betas, t, x0)
    return c1 * x0 + c2 * x_t, var


def test_q_posterior_mistakes():
    def swapped(x0, x_t, t, s):
        mean, var = _posterior(x0, x_t, t, s)
        c1, c2 = _per_image(s.posterior_mean_coef1, t, x0), _per_image(s.posterior_mean_coef2, t, x0)
        return c2 * x0 + c1 * x_t, var

    def wrong_prev(x0, x_t, t, s):
        mean, _ = _posterior(x0, x_t, t, s)
        return mean, _per_image(s.betas, t, x0)  # (1 - ab)/(1 - ab) * beta

    def not_pair(x0, x_t, t, s):
        return x0

    def bad_var_shape(x0, x_t, t, s):
        mean, var = _posterior(x0, x_t, t, s)
        return mean, var.reshape(1, -1)

    cases = [(swapped, "swapped"), (wrong_prev, "alpha_bar_{t-1}"), (not_pair, "pair"),
             (bad_var_shape, "must broadcast")]
    for fn, message in cases:
        result = checks.check_q_posterior(fn)
        assert not result and message in " ".join(result.problems), (fn.__name__, result.problems)


def test_check_result_displays_nothing_extra():
    r = checks.CheckResult("x")
    assert r._ipython_display_() is None and bool(r) and r.passed


def test_first_t_below_check():
    assert checks.check_first_t_below(lambda s, level: int((s.alphas_cumprod >= level).sum()))
    assert not checks.check_first_t_below(schedules.first_t_below)  # the package's own earns nothing
    as_tensor = checks.check_first_t_below(lambda s, level: (s.alphas_cumprod < level).nonzero()[0])
    assert not as_tensor and "Python int" in as_tensor.problems[0]
    off = checks.check_first_t_below(lambda s, level: int((s.alphas_cumprod >= level).sum()) - 1)
    assert not off and "off by one" in off.problems[0]
