"""Instant-feedback checks: they pass correct code and name the typical mistakes in words."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_course import checks, diffusion


def _per_image(values, t, like):
    return values[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def test_not_implemented_is_reported_not_raised(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    forward_checks = (checks.check_cosine_schedule, checks.check_log_snr, checks.check_q_sample,
                      checks.check_q_sample_fixed, checks.check_q_posterior)
    for check in forward_checks:
        result = check(stub)
        assert not result and "not implemented yet" in result.problems[0]
    assert capsys.readouterr().out.count("❌") == len(forward_checks)


def test_learner_exception_is_described():
    def broken(schedule):
        return torch.log(schedule.alphas_cumprod) + undefined_name  # noqa: F821

    result = checks.check_log_snr(broken)
    assert "raised NameError" in result.problems[0] and "undefined_name" in result.problems[0]


def _log_snr_right(s):
    ab = s.alphas_cumprod
    return torch.log(ab) - torch.log1p(-ab)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda s: _log_snr_right(s).exp(), "SNR itself"),
        (lambda s: torch.log10(s.alphas_cumprod / (1 - s.alphas_cumprod)), "not log10"),
        (lambda s: torch.log((1 - s.alphas_cumprod) / s.alphas_cumprod), "upside down"),
        (lambda s: torch.log(s.alphas_cumprod.sqrt() / (1 - s.alphas_cumprod).sqrt()), "ratio of variances"),
        (lambda s: torch.log(s.alphas / (1 - s.alphas)), "cumulative product"),
        (lambda s: torch.log(s.alphas_cumprod), "divides by the noise variance"),
        (lambda s: torch.log(s.alphas_cumprod_prev / (1 - s.alphas_cumprod_prev)), "off by one"),
        (lambda s: torch.log(s.alphas_cumprod.float() / (1 - s.alphas_cumprod.float())), "float64"),
        (lambda s: _log_snr_right(s)[1:], "one value per timestep"),
        (lambda s: (_log_snr_right(s) > 0).long(), "floating-point"),
        (lambda s: _log_snr_right(s).tolist(), "torch.Tensor"),
        (lambda s: _log_snr_right(s) + (torch.arange(s.timesteps) == 500), "at t=500"),
        (lambda s: s.log_snr(), "the package's own"),
        (lambda s: torch.log(s.snr()), "the package's own"),
    ],
)
def test_log_snr_mistakes(fn, message):
    result = checks.check_log_snr(fn)
    assert not result and message in " ".join(result.problems), result.problems


@pytest.mark.parametrize("fn", [_log_snr_right, lambda s: torch.special.logit(s.alphas_cumprod),
                                lambda s: torch.log(s.alphas_cumprod / (1 - s.alphas_cumprod))])
def test_log_snr_right_answers(fn):
    assert checks.check_log_snr(fn)


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


def _colleague(index_shift=-1, noise_power=1.0, fixed_view=True):
    """The find-the-bug exercise's q_sample with any of its three bugs switched on or off."""

    def fn(x0, t, noise, schedule):
        ab = schedule.alphas_cumprod[t + index_shift]
        shape = (-1, 1, 1, 1) if fixed_view else (-1, *([1] * (x0.ndim - 1)))
        ab = ab.view(shape).to(x0.dtype)
        return ab.sqrt() * x0 + (1 - ab) ** noise_power * noise

    return fn


def test_q_sample_fixed_passes_only_with_every_bug_fixed():
    assert checks.check_q_sample_fixed(_colleague(0, 0.5, False))
    assert checks.check_q_sample_fixed(lambda x0, t, n, s: _colleague(0, 0.5, False)(x0.double(), t, n, s))
    assert not checks.check_q_sample_fixed(diffusion.q_sample)  # the package's own earns nothing


@pytest.mark.parametrize(
    ("bugs", "messages"),
    [
        ({}, ["wraps around", "square root is the standard deviation"]),  # as handed over: 3 bugs, 2 on images
        ({"index_shift": 0}, ["square root is the standard deviation"]),
        ({"noise_power": 0.5}, ["wraps around"]),
        ({"index_shift": 0, "noise_power": 0.5}, ["x0.ndim"]),  # right on images, broken on points
        ({"fixed_view": False, "noise_power": 0.5}, ["wraps around"]),
        ({"fixed_view": False, "index_shift": 0}, ["standard deviation"]),
    ],
)
def test_q_sample_fixed_names_every_remaining_bug(bugs, messages):
    result = checks.check_q_sample_fixed(_colleague(**bugs))
    assert not result
    for message in messages:
        assert message in " ".join(result.problems), result.problems
    assert len(result.problems) == len(messages), result.problems


def test_q_sample_fixed_clamped_index_is_still_off_by_one():
    def clamped(x0, t, noise, s):
        ab = s.alphas_cumprod[(t - 1).clamp(min=0)].reshape(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    result = checks.check_q_sample_fixed(clamped)
    assert not result and "not t - 1" in result.problems[0] and "wraps" not in result.problems[0]


def test_q_sample_fixed_reports_a_crash_on_points():
    def images_only(x0, t, noise, s):
        b, c, h, w = x0.shape
        ab = s.alphas_cumprod[t].view(b, 1, 1, 1).to(x0.dtype)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    result = checks.check_q_sample_fixed(images_only)
    assert not result and "raised" in result.problems[0] and "x0.ndim" in result.problems[1]


# --- a right answer written independently of the package, paired with a wrong one -----------------


def _cosine_by_hand(T, s=0.008):
    f = [math.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2 for i in range(T + 1)]
    return torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)], dtype=torch.float64)


def _alpha_bars(schedule, t):
    """alpha_bar_t and alpha_bar_{t-1} as Python floats, from the betas alone."""
    betas = schedule.betas.tolist()
    return math.prod(1 - b for b in betas[: t + 1]), math.prod(1 - b for b in betas[:t])


def _q_sample_by_hand(x0, t, noise, schedule):
    out = torch.empty_like(x0)
    for i, ti in enumerate(t.tolist()):
        ab, _ = _alpha_bars(schedule, ti)
        out[i] = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i]
    return out


def _q_posterior_by_hand(x0, x_t, t, schedule):
    mean, var = torch.empty_like(x0), torch.empty(x0.shape[0], *[1] * (x0.ndim - 1), dtype=x0.dtype)
    for i, ti in enumerate(t.tolist()):
        ab, ab_prev = _alpha_bars(schedule, ti)
        beta = schedule.betas[ti].item()
        mean[i] = math.sqrt(ab_prev) * beta / (1 - ab) * x0[i] + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x_t[i]
        var[i] = (1 - ab_prev) / (1 - ab) * beta
    return mean, var


CASES = {
    "cosine": (checks.check_cosine_schedule, _cosine_by_hand, lambda T, s=0.008: _cosine_variant(T, s, offset=False),
               "offset s is missing"),
    "q_sample": (checks.check_q_sample, _q_sample_by_hand,
                 _q_sample_variant(lambda s: s.alphas_cumprod, lambda s: 1 - s.alphas_cumprod), "wrong scale"),
    "q_posterior": (checks.check_q_posterior, _q_posterior_by_hand,
                    lambda x0, x_t, t, s: (x_t, _q_posterior_by_hand(x0, x_t, t, s)[1]), "the mean differs"),
}


@pytest.mark.parametrize("name", CASES)
def test_a_check_passes_a_right_answer_and_rejects_a_wrong_one(capsys, name):
    check, by_hand, wrong, message = CASES[name]
    assert check(by_hand)  # right, and written here rather than taken from the package
    result = check(wrong)
    assert not result and message in " ".join(result.problems), result.problems
    out = capsys.readouterr().out
    assert out.count("✅") == 1 and out.count("❌") == 1
