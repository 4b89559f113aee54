"""Phase 4 checks: they pass right answers written in several ways and name each typical mistake.

Every answer here is written in the test (the right ones never call the package's step functions),
so a check that compared the learner with itself, or with nothing, would fail these tests.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_course import checks, sampling

# ---------------------------------------------------------------------------
# The DDPM step
# ---------------------------------------------------------------------------


def _ddpm(eps, x_t, t, schedule, noise, variance_type="fixed_small", *, clip=True, noise_at_end=False,
          var=None, coef1=None, coef2=None, std_power=0.5, sign=1.0, x0_clipped_out=True, own_noise=False):
    """A DDPM step written from the formulas, with switches for the mistakes."""
    ab, ab_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t]
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    raw = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    x0 = raw.clamp(-1, 1) if clip else raw
    c1 = ab_prev.sqrt() * beta / (1 - ab) if coef1 is None else coef1(ab, ab_prev, beta, alpha)
    c2 = alpha.sqrt() * (1 - ab_prev) / (1 - ab) if coef2 is None else coef2(ab, ab_prev, beta, alpha)
    mean = c1 * x0 + c2 * x_t
    out_x0 = x0 if x0_clipped_out else raw
    if t == 0 and not noise_at_end:
        return mean, out_x0
    if var is not None:
        variance = var(ab, ab_prev, beta)
    else:
        variance = (1 - ab_prev) / (1 - ab) * beta if variance_type == "fixed_small" else beta
    z = torch.randn(noise.shape, generator=torch.Generator().manual_seed(123)) if own_noise else noise
    return mean + sign * variance**std_power * z, out_x0


def test_ddpm_step_right_answers():
    assert checks.check_ddpm_step(_ddpm)

    def with_eq11_when_nothing_clipped(eps, x_t, t, schedule, noise, variance_type="fixed_small"):
        # the right answer in float64, the mean through x0 (eq. 11 needs the clipped x0 to agree)
        out = _ddpm(eps.double(), x_t.double(), t, schedule, noise.double(), variance_type)
        return out[0], out[1]

    assert checks.check_ddpm_step(with_eq11_when_nothing_clipped)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(clip=False), "not clipped"),
        (dict(x0_clipped_out=False), "not clipped"),
        (dict(noise_at_end=True), "last step"),
        (dict(var=lambda ab, ab_prev, beta: (1 - ab) / (1 - ab) * beta), "alpha_bar_{t-1}"),
        (dict(var=lambda ab, ab_prev, beta: (1 - ab_prev) / (1 - ab) * beta), "fixed_large"),
        (dict(std_power=1.0), "standard deviation"),
        (dict(coef1=lambda ab, ab_prev, beta, alpha: ab.sqrt() * beta / (1 - ab)), "coefficient of x0_hat"),
        (dict(coef2=lambda ab, ab_prev, beta, alpha: alpha.sqrt()), "coefficient of x_t"),
        (dict(coef1=lambda ab, ab_prev, beta, alpha: alpha.sqrt() * (1 - ab_prev) / (1 - ab),
              coef2=lambda ab, ab_prev, beta, alpha: ab_prev.sqrt() * beta / (1 - ab)), "swapped"),
        (dict(std_power=0.5, sign=0.0), "no noise was added"),
        (dict(sign=-1.0), "sign"),
        (dict(own_noise=True), "ignores the `noise` argument"),
    ],
)
def test_ddpm_step_mistakes_are_named(kwargs, message):
    def answer(eps, x_t, t, schedule, noise, variance_type="fixed_small"):
        return _ddpm(eps, x_t, t, schedule, noise, variance_type, **kwargs)

    result = checks.check_ddpm_step(answer)
    assert not result and message in " ".join(result.problems), result.problems


def test_ddpm_step_unclipped_mean_with_clipped_x0_is_named():
    def answer(eps, x_t, t, schedule, noise, variance_type="fixed_small"):
        x_prev, _ = _ddpm(eps, x_t, t, schedule, noise, variance_type, clip=False)
        return x_prev, _ddpm(eps, x_t, t, schedule, noise, variance_type)[1]

    result = checks.check_ddpm_step(answer)
    assert not result and "unclipped x0 estimate" in result.problems[0]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda eps, x_t, t, s, noise, v="fixed_small": _ddpm(eps, x_t, t, s, noise, v)[0], "not one tensor"),
        (lambda eps, x_t, t, s, noise, v="fixed_small": [1.0, 2.0], "x_prev should be a torch.Tensor"),
        (lambda eps, x_t, t, s, noise, v="fixed_small": (x_t[0], x_t), "shape of x_t"),
        (lambda eps, x_t, t, s, noise, v="fixed_small": sampling.ddpm_step(eps, x_t, t, s, noise, variance_type=v),
         "the package's own"),
    ],
)
def test_ddpm_step_wrong_forms(answer, message):
    result = checks.check_ddpm_step(answer)
    assert not result and message in result.problems[0], result.problems


# ---------------------------------------------------------------------------
# Respaced betas
# ---------------------------------------------------------------------------


def _respace(ab, ts):
    tau = ts.sort().values
    kept = ab[tau]
    return 1 - kept / torch.cat([torch.ones(1, dtype=kept.dtype), kept[:-1]])


def test_respace_betas_right_answers():
    assert checks.check_respace_betas(_respace)

    def by_cumulative_logs(ab, ts):  # log(1 - beta_i) = log alpha_bar_{tau_i} - log alpha_bar_{tau_{i-1}}
        logs = ab[ts.sort().values].log()
        return -torch.expm1(torch.diff(logs, prepend=torch.zeros(1, dtype=logs.dtype)))

    assert checks.check_respace_betas(by_cumulative_logs)


def _original(ab, ts):
    prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    return (1 - ab / prev)[ts.sort().values]


def _first_wrong(ab, ts):
    out = _respace(ab, ts)
    out[0] = _original(ab, ts)[0]
    return out


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (_original, "original betas"),
        (lambda ab, ts: _respace(ab, ts).flip(0), "ascending"),
        (_first_wrong, "alpha_bar = 1"),
        (lambda ab, ts: 1 - 1 / (1 - _respace(ab, ts)), "upside down"),
        (lambda ab, ts: 1 - (1 - _respace(ab, ts)).sqrt(), "square roots"),
        (lambda ab, ts: _respace(ab, ts)[1:], "one beta per visited step"),
        (lambda ab, ts: (_respace(ab, ts) * 1e6).long(), "floating-point"),
        (lambda ab, ts: _respace(ab, ts).tolist(), "torch.Tensor"),
        (lambda ab, ts: _respace(ab, ts) * 2, "(0, 1)"),
        (lambda ab, ts: _respace(ab, ts) * 0.999, "expected"),
        (lambda ab, ts: sampling.respace_betas(ab, ts), "the package's own"),
        (lambda ab, ts: sampling.respace_schedule(sampling.respace_schedule.__globals__["NoiseSchedule"](
            "x", _original(ab, torch.arange(len(ab)))), ts).betas, "the package's own"),
    ],
)
def test_respace_betas_mistakes_are_named(answer, message):
    result = checks.check_respace_betas(answer)
    assert not result and message in " ".join(result.problems), result.problems


# ---------------------------------------------------------------------------
# The DDIM step
# ---------------------------------------------------------------------------


def _ddim(eps, x_t, t, t_prev, schedule, noise, eta, *, sigma_fn=None, direction_sign=-1.0, noise_scale=None,
          signal_at_t=False, direction_at_t=False, end_value=1.0, clip=False):
    ab_t = schedule.alphas_cumprod[t].item()
    ab_prev = schedule.alphas_cumprod[t_prev].item() if t_prev >= 0 else end_value
    x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    if clip:
        x0 = x0.clamp(-1, 1)
    if sigma_fn is None:
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    else:
        sigma = sigma_fn(ab_t, ab_prev, eta)
    scale = sigma if noise_scale is None else noise_scale(sigma)
    signal = math.sqrt(ab_t if signal_at_t else ab_prev) * x0
    direction = math.sqrt((1 - (ab_t if direction_at_t else ab_prev)) + direction_sign * sigma**2) * eps
    return signal + direction + scale * noise, x0


def test_ddim_step_right_answers():
    assert checks.check_ddim_step(_ddim)

    def float64_tensors(eps, x_t, t, t_prev, schedule, noise, eta):
        ab = schedule.alphas_cumprod
        ab_t, ab_prev = ab[t], (ab[t_prev] if t_prev >= 0 else torch.ones((), dtype=ab.dtype))
        x0 = (x_t.double() - (1 - ab_t).sqrt() * eps.double()) / ab_t.sqrt()
        sigma = eta * ((1 - ab_prev) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_prev).sqrt()
        return ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps + sigma * noise, x0

    assert checks.check_ddim_step(float64_tensors)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(direction_sign=1.0), "minus sigma_t^2"),
        (dict(noise_scale=lambda s: -s), "wrong sign"),
        (dict(noise_scale=lambda s: s**2), "not sigma_t^2"),
        (dict(noise_scale=lambda s: 0.0), "no noise was added"),
        (dict(sigma_fn=lambda ab_t, ab_prev, eta: 0.0), "deterministic step"),
        (dict(sigma_fn=lambda ab_t, ab_prev, eta: eta * math.sqrt(1 - ab_t / ab_prev)), "two factors"),
        (dict(signal_at_t=True), "sqrt(alpha_bar_prev)"),
        (dict(direction_at_t=True), "direction term uses alpha_bar_t"),
        (dict(clip=True), "no clamp"),
        (dict(noise_scale=lambda s: s * 1.01), "largest difference"),
    ],
)
def test_ddim_step_mistakes_are_named(kwargs, message):
    def answer(eps, x_t, t, t_prev, schedule, noise, eta):
        return _ddim(eps, x_t, t, t_prev, schedule, noise, eta, **kwargs)

    result = checks.check_ddim_step(answer)
    assert not result and message in " ".join(result.problems), result.problems


def test_ddim_step_clean_end_read_from_the_last_table_entry_is_named():
    def python_index(eps, x_t, t, t_prev, schedule, noise, eta):  # alphas_cumprod[-1] for t_prev = -1
        if t_prev >= 0 or eta > 0:
            return _ddim(eps, x_t, t, t_prev, schedule, noise, eta)
        return _ddim(eps, x_t, t, t_prev, schedule, noise, 0.0, end_value=schedule.alphas_cumprod[-1].item(),
                     sigma_fn=lambda *args: 0.0)

    def math_domain_error(eps, x_t, t, t_prev, schedule, noise, eta):  # math.sqrt of a negative number
        return _ddim(eps, x_t, t, t_prev, schedule, noise, eta, end_value=schedule.alphas_cumprod[-1].item())

    def as_tensors(eps, x_t, t, t_prev, schedule, noise, eta):  # the same mistake with tensors: NaN
        ab_t, ab_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[t_prev]
        x0 = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        return ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps + sigma * noise, x0

    for answer in (python_index, as_tensors, math_domain_error):
        result = checks.check_ddim_step(answer)
        assert not result and "alpha_bar = 1" in result.problems[0], result.problems


def test_ddim_step_fresh_noise_and_delegation_are_named():
    def fresh(eps, x_t, t, t_prev, schedule, noise, eta):
        other = torch.randn(noise.shape, generator=torch.Generator().manual_seed(5))
        return _ddim(eps, x_t, t, t_prev, schedule, other, eta)

    result = checks.check_ddim_step(fresh)
    assert not result and "ignores the `noise` argument" in result.problems[0], result.problems
    result = checks.check_ddim_step(
        lambda eps, x_t, t, t_prev, s, noise, eta: sampling.ddim_step(eps, x_t, t, t_prev, s, noise, eta=eta,
                                                                      clip_x0=False))
    assert not result and "the package's own" in result.problems[0]


# ---------------------------------------------------------------------------
# FID from features
# ---------------------------------------------------------------------------


def _fid(a, b, *, correction=1, trace_term=True, mean_term=True, root="eig", factor=2.0, sqrt_at_end=False):
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T, correction=correction), torch.cov(b.T, correction=correction)
    if root == "eig":
        tr = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    elif root == "elementwise-product":
        tr = torch.sqrt(s1 @ s2).diagonal().nan_to_num(0.0).sum()
    else:  # "sqrt-of-trace"
        tr = torch.sqrt((s1 @ s2).trace())
    value = 0.0
    if mean_term:
        value = value + (mu1 - mu2).square().sum()
    if trace_term:
        value = value + s1.trace() + s2.trace() - factor * tr
    value = float(value)
    return math.sqrt(value) if sqrt_at_end else value


def test_fid_right_answers():
    assert checks.check_fid_from_features(_fid)
    assert checks.check_fid_from_features(lambda a, b: torch.tensor(_fid(a, b)))  # a 0-d tensor is fine
    assert checks.check_fid_from_features(lambda a, b: _fid(a.float(), b.float()))  # float32 in, float64 inside


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(trace_term=False), "trace term"),
        (dict(mean_term=False), "mean term"),
        (dict(root="sqrt-of-trace"), "not the square root of the trace"),
        (dict(factor=1.0), "factor 2"),
        (dict(sqrt_at_end=True), "squared distance"),
        (dict(correction=0), "N - 1"),
        (dict(factor=2.5), "expected"),
    ],
)
def test_fid_mistakes_are_named(kwargs, message):
    result = checks.check_fid_from_features(lambda a, b: _fid(a, b, **kwargs))
    assert not result and message in " ".join(result.problems), result.problems


def test_fid_matrix_roots_done_element_wise_are_named():
    def elementwise_of_product(a, b):
        s1, s2 = torch.cov(a.T), torch.cov(b.T)
        return float((a.mean(0) - b.mean(0)).square().sum() + s1.trace() + s2.trace()
                     - 2 * torch.sqrt((s1 @ s2).diagonal().clamp(min=0)).sum())

    def elementwise_product(a, b):
        s1, s2 = torch.cov(a.T), torch.cov(b.T)
        return float((a.mean(0) - b.mean(0)).square().sum() + s1.trace() + s2.trace() - 2 * torch.sqrt(s1 * s2).trace())

    for answer in (elementwise_of_product, elementwise_product):
        result = checks.check_fid_from_features(answer)
        assert not result and "matrix square root" in result.problems[0], result.problems


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda a, b: None, "returned None"),
        (lambda a, b: "3.2", "as a float"),
        (lambda a, b: complex(_fid(a, b), 1e-9), "complex"),
        (lambda a, b: torch.tensor(complex(_fid(a, b), 0.0)), "complex"),
        (lambda a, b: torch.zeros(2), "one number"),
        (lambda a, b: float("nan"), "NaN"),
    ],
)
def test_fid_wrong_return_values(answer, message):
    result = checks.check_fid_from_features(answer)
    assert not result and message in result.problems[0], result.problems


def test_fid_calling_the_package_is_named():
    from diffusion_course import metrics

    for answer in (metrics.fid_from_features,
                   lambda a, b: metrics.frechet_distance(*metrics.feature_statistics(a),
                                                         *metrics.feature_statistics(b)),
                   lambda a, b: metrics.fid_with_bias(a, b).fid):
        result = checks.check_fid_from_features(answer)
        assert not result and "the package's own" in result.problems[0], result.problems


def test_every_phase_4_check_reports_instead_of_raising(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    def broken(*args, **kwargs):
        return undefined_name  # noqa: F821

    phase4 = (checks.check_ddpm_step, checks.check_respace_betas, checks.check_ddim_step,
              checks.check_fid_from_features)
    for check in phase4:
        result = check(stub)
        assert not result and "not implemented yet" in result.problems[0]
        result = check(broken)
        assert not result and "raised NameError" in result.problems[0]
    assert capsys.readouterr().out.count("❌") == 2 * len(phase4)
