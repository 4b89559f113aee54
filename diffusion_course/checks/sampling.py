"""Checks for Phase 4: the DDPM step, respaced betas, the DDIM step with eta, and FID.

Each check runs the learner's function on small inputs (noise and timesteps are arguments, so
the order in which a learner draws random numbers never matters), compares it with the
package's own function (:mod:`diffusion_course.sampling`, :mod:`diffusion_course.metrics`) and,
when they differ, tries the typical mistakes one by one to name the one that was made.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import diffusion, metrics, sampling, schedules
from ._core import CheckResult, _call, _close, _is_tensor

TOL = 1e-5
"""Tolerance of the tensor comparisons (float32 inputs; float64 answers are welcome)."""


def _inputs(seed: int, shape=(4, 1, 6, 6)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, eps, noise)``: x_t wide enough (std 1.2) that some x0 estimates leave [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 1.2, torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _pair(result: CheckResult, out, what: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The learner's ``(x_prev, x0_hat)``, or None after saying what is wrong with it."""
    if isinstance(out, torch.Tensor):
        result.problems.append(f"{what} should return the pair (x_prev, x0_hat), not one tensor.")
        return None
    if not (isinstance(out, tuple | list) and len(out) == 2):
        result.problems.append(f"{what} should return the pair (x_prev, x0_hat), got {type(out).__name__}.")
        return None
    x_prev, x0_hat = out
    if not (_is_tensor(result, x_prev, "x_prev") and _is_tensor(result, x0_hat, "x0_hat")):
        return None
    return x_prev, x0_hat


def _shapes_match(result: CheckResult, x_prev: torch.Tensor, x0_hat: torch.Tensor, like: torch.Tensor) -> bool:
    for name, value in (("x_prev", x_prev), ("x0_hat", x0_hat)):
        if value.shape != like.shape:
            result.problems.append(
                f"{name} should have the shape of x_t {tuple(like.shape)}, got {tuple(value.shape)}.")
            return False
        if not value.is_floating_point():
            result.problems.append(f"{name} should hold floating-point numbers, got {value.dtype}.")
            return False
    return True


def _first_match(out: torch.Tensor, diagnoses) -> str | None:
    for candidate, message in diagnoses:
        if candidate is not None and _close(out, candidate, TOL):
            return message
    return None


def _ignores_noise(out: torch.Tensor, expected: torch.Tensor, noise: torch.Tensor, std: float) -> bool:
    """The answer's random part has the right size but does not follow ``noise``: fresh noise was drawn."""
    if std <= 0:
        return False
    residual = (out.double() - expected.double()) / std
    # out = mean + std * z' against expected = mean + std * noise: the residual is z' - noise,
    # of variance ~2, and uncorrelated with z' (while correlated -1/sqrt(2) with noise)
    own = residual + noise.double()
    corr = torch.nn.functional.cosine_similarity(own.flatten(), noise.double().flatten(), dim=0)
    return corr.abs() < 0.5 and 0.6 < own.std() < 1.4


# ---------------------------------------------------------------------------
# The DDPM step (Algorithm 2 with the posterior mean of eq. 7)
# ---------------------------------------------------------------------------

_DDPM_CASES = (  # (schedule, t, variance type): small t first, where beta-tilde and beta differ most
    ("linear", 10, "fixed_small"),
    ("linear", 1, "fixed_small"),
    ("linear", 0, "fixed_large"),
    ("linear", 0, "fixed_small"),
    ("linear", 500, "fixed_large"),
    ("linear", 999, "fixed_small"),
    ("cosine", 3, "fixed_small"),
    ("cosine", 200, "fixed_large"),
)


def check_ddpm_step(fn: Callable) -> CheckResult:
    """Check ``fn(eps, x_t, t, schedule, noise, variance_type) -> (x_prev, x0_hat)`` (DDPM Algorithm 2)."""
    result = CheckResult("ddpm_step")
    tables = {name: schedules.get_schedule(name, 1000) for name in ("linear", "cosine")}
    for k, (name, t, variance_type) in enumerate(_DDPM_CASES):
        schedule = tables[name]
        x_t, eps, noise = _inputs(k)
        out = _call(result, fn, eps, x_t, t, schedule, noise, variance_type, forbidden=_DDPM_FORBIDDEN)
        if out is None:
            return result.report()
        pair = _pair(result, out, "ddpm_step")
        if pair is None or not _shapes_match(result, *pair, x_t):
            return result.report()
        x_prev, x0_hat = pair
        ref_prev, ref_x0 = sampling.ddpm_step(eps, x_t, t, schedule, noise, variance_type=variance_type)
        where = f"(t = {t}, {name} schedule, {variance_type})"
        if not _close(x0_hat, ref_x0, TOL):
            result.problems.append(_ddpm_x0_problem(x0_hat, x_t, eps, t, schedule) + f" {where}")
            return result.report()
        if not _close(x_prev, ref_prev, TOL):
            problem = _ddpm_step_problem(x_prev, x_t, eps, t, schedule, noise, variance_type)
            result.problems.append(f"{problem} {where}")
            return result.report()
    return result.report()


_DDPM_FORBIDDEN = [sampling.ddpm_step, sampling.DDPMSampler.step, diffusion.p_mean_variance, sampling.ddpm_sample]


def _ddpm_x0_problem(x0_hat, x_t, eps, t, schedule) -> str:
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long)
    unclipped = diffusion.predict_x0_from_eps(x_t, t_batch, eps, schedule)
    if _close(x0_hat, unclipped, TOL):
        return ("x0_hat is not clipped: clamp the estimate to [-1, 1] (x0_hat.clamp(-1, 1)) and use the clipped "
                "one for the mean; far from the data range it pulls every step off course.")
    return ("x0_hat differs from the clipped estimate (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), "
            "clamped to [-1, 1].")


def _ddpm_step_problem(x_prev, x_t, eps, t, schedule, noise, variance_type) -> str:
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long)
    mean, _, x0 = diffusion.p_mean_variance(eps, None, x_t, t_batch, schedule, "eps", clip_x0=True)
    small, large = schedule.posterior_variance[t].item(), schedule.betas[t].item()
    var = small if variance_type == "fixed_small" else large
    std = math.sqrt(var) if t > 0 else 0.0
    ab = schedule.alphas_cumprod[t].item()
    beta, alpha = schedule.betas[t].item(), schedule.alphas[t].item()
    coef1_wrong = math.sqrt(ab) * beta / (1 - ab)
    coef2_wrong = math.sqrt(alpha)  # (1 - alpha_bar_t) sqrt(alpha_t) / (1 - alpha_bar_t)
    coef1, coef2 = schedule.posterior_mean_coef1[t].item(), schedule.posterior_mean_coef2[t].item()
    unclipped = sampling.ddpm_step(eps, x_t, t, schedule, noise, variance_type=variance_type, clip_x0=False)[0]
    large_std = math.sqrt(large if t > 0 else 0.0)
    small_std = math.sqrt(small if t > 0 else 0.0)
    clipped_log_std = math.exp(0.5 * schedule.posterior_log_variance_clipped[t].item())
    last = t == 0
    diagnoses = [
        (unclipped, "the mean uses the unclipped x0 estimate: clamp x0_hat to [-1, 1] first, then form the "
                    "posterior mean from the clipped x0_hat (with eq. 11 written directly there is nothing to clip)."),
        (mean + math.sqrt(large) * noise if last else None,
         "noise was added at the last step (t = 0): return the mean there, the final image gets no noise."),
        (mean + clipped_log_std * noise if last else None,
         "noise was added at the last step (t = 0): return the mean there, the final image gets no noise."),
        (mean + large_std * noise if variance_type == "fixed_small" and not last else None,
         "sigma_t^2 came out as beta_t, but 'fixed_small' means beta_tilde_t = (1 - alpha_bar_{t-1}) / "
         "(1 - alpha_bar_t) * beta_t (written with alpha_bar_t where alpha_bar_{t-1} belongs, it collapses "
         "to beta_t)."),
        (mean + small_std * noise if variance_type == "fixed_large" and not last else None,
         "variance_type='fixed_large' means sigma_t^2 = beta_t (you used beta_tilde_t, the 'fixed_small' choice)."),
        (mean + var * noise if not last else None,
         "the noise is scaled by the variance sigma_t^2: multiply it by the standard deviation "
         "sigma_t = sqrt(variance)."),
        (coef1_wrong * x0 + coef2 * x_t + std * noise,
         "the coefficient of x0_hat uses alpha_bar_t where alpha_bar_{t-1} belongs: it is "
         "sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)."),
        (coef1 * x0 + coef2_wrong * x_t + std * noise,
         "the coefficient of x_t uses alpha_bar_t where alpha_bar_{t-1} belongs: it is "
         "(1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t)."),
        (coef2 * x0 + coef1 * x_t + std * noise,
         "the two mean coefficients are swapped: sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) multiplies x0_hat."),
        (mean, "no noise was added: for t > 0, x_prev = mean + sigma_t * noise."),
        (mean - std * noise if not last else None, "add the noise, + sigma_t * noise (the sign matters for grading)."),
    ]
    found = _first_match(x_prev, diagnoses)
    if found:
        return found
    if _ignores_noise(x_prev, mean + std * noise, noise, std):
        return "the result ignores the `noise` argument: use the noise you are given, do not draw new noise."
    worst = (x_prev.double() - (mean + std * noise).double()).abs().max().item()
    return f"x_prev differs from mean + sigma_t * noise (largest difference {worst:.3g})."


# ---------------------------------------------------------------------------
# Respaced betas (Improved DDPM sec. 4)
# ---------------------------------------------------------------------------

_RESPACE_CASES = (("linear", 10, "trailing"), ("cosine", 25, "leading"), ("linear", 7, "linspace"))


def check_respace_betas(fn: Callable) -> CheckResult:
    """Check ``fn(alphas_cumprod, timesteps) -> betas [S]`` of the chain over the visited steps."""
    result = CheckResult("respace_betas")
    for name, steps, spacing in _RESPACE_CASES:
        ab = schedules.get_schedule(name, 1000).alphas_cumprod
        visited = sampling.spaced_timesteps(1000, steps, spacing)  # descending, as a sampler visits them
        out = _call(result, fn, ab.clone(), visited.clone(), forbidden=_RESPACE_FORBIDDEN)
        if out is None or not _is_tensor(result, out, "respace_betas(...)"):
            return result.report()
        ref = sampling.respace_betas(ab, visited)
        where = f"({name} schedule, {steps} {spacing} steps)"
        if out.shape != ref.shape:
            result.problems.append(
                f"return one beta per visited step: shape ({steps},), got {tuple(out.shape)} {where}.")
            return result.report()
        if not out.is_floating_point():
            result.problems.append(f"the betas should be floating-point numbers, got {out.dtype}.")
            return result.report()
        if _close(out, ref, TOL):
            continue
        result.problems.append(_respace_problem(out, ref, ab, visited) + f" {where}")
        return result.report()
    return result.report()


_RESPACE_FORBIDDEN = [sampling.respace_betas, sampling.respace_schedule]


def _respace_problem(out, ref, ab, visited) -> str:
    tau = visited.sort().values
    original = (1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]]))[tau]
    first_from_original = ref.clone()
    first_from_original[0] = original[0]
    diagnoses = [
        (original, "those are the original betas of the visited steps. A step of the short chain jumps over many "
                   "steps of the long one, so its beta is 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}, the ratio "
                   "of the alpha_bars at two visited steps."),
        (ref.flip(0), "the values are right but in the wrong order: return them in ascending order of t "
                      "(index i stands for the i-th smallest visited step), e.g. sort the timesteps first."),
        (first_from_original, "the first step of the short chain starts at alpha_bar = 1 (the clean image): "
                              "beta_0 = 1 - alpha_bar_{tau_0}, not the original beta at tau_0."),
        (1 - 1 / (1 - ref), "the ratio is upside down: beta_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}, the "
                            "later (smaller) alpha_bar over the earlier one."),
        (1 - (1 - ref).sqrt(), "use the ratio of the alpha_bars themselves, not of their square roots."),
    ]
    found = _first_match(out, diagnoses)
    if found:
        return found
    if not bool(((out > 0) & (out < 1)).all()):
        return "every beta must lie in (0, 1): check which alpha_bar goes over which."
    worst = int((out.double() - ref.double()).abs().argmax())
    return (f"beta[{worst}] is {out[worst].item():.6g}, expected {ref[worst].item():.6g} "
            "(1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}, with alpha_bar_{tau_{-1}} = 1).")


# ---------------------------------------------------------------------------
# The DDIM step with eta (DDIM eqs. 12 and 16)
# ---------------------------------------------------------------------------

_DDIM_CASES = (  # (schedule, t, t_prev, eta)
    ("linear", 500, 400, 0.0),
    ("linear", 500, 400, 1.0),
    ("linear", 300, 250, 0.5),
    ("linear", 99, -1, 0.0),
    ("linear", 99, -1, 0.7),
    ("linear", 20, 10, 0.6),
    ("cosine", 999, 899, 0.3),
)


def check_ddim_step(fn: Callable) -> CheckResult:
    """Check ``fn(eps, x_t, t, t_prev, schedule, noise, eta) -> (x_prev, x0_hat)`` (DDIM eq. 12, no clipping)."""
    result = CheckResult("ddim_step")
    tables = {name: schedules.get_schedule(name, 1000) for name in ("linear", "cosine")}
    for k, (name, t, t_prev, eta) in enumerate(_DDIM_CASES):
        schedule = tables[name]
        x_t, eps, noise = _inputs(10 + k)
        out = _call(result, fn, eps, x_t, t, t_prev, schedule, noise, eta, forbidden=_DDIM_FORBIDDEN)
        if out is None:
            if t_prev == -1 and result.problems and "math domain error" in result.problems[-1]:
                result.problems[-1] += (" at t_prev = -1: that stands for alpha_bar = 1 (the clean image), not "
                                        "alphas_cumprod[-1] (Python's last element, the noisiest step).")
            return result.report()
        pair = _pair(result, out, "ddim_step")
        if pair is None or not _shapes_match(result, *pair, x_t):
            return result.report()
        x_prev, x0_hat = pair
        ref_prev, ref_x0 = sampling.ddim_step(eps, x_t, t, t_prev, schedule, noise, eta=eta, clip_x0=False)
        where = f"(t = {t}, t_prev = {t_prev}, eta = {eta})"
        if not _close(x0_hat, ref_x0, TOL):
            if _close(x0_hat, ref_x0.clamp(-1, 1), TOL):
                message = "x0_hat is clipped, but this exercise asks for the plain estimate (no clamp)."
            else:
                message = "x0_hat should be (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."
            result.problems.append(f"{message} {where}")
            return result.report()
        if not _close(x_prev, ref_prev, TOL):
            result.problems.append(_ddim_problem(x_prev, ref_x0, eps, t, t_prev, schedule, noise, eta) + f" {where}")
            return result.report()
    return result.report()


_DDIM_FORBIDDEN = [sampling.ddim_step, sampling.DDIMSampler.step, sampling.dpm_solver_2m_step]


def _ddim_problem(x_prev, x0, eps, t, t_prev, schedule, noise, eta) -> str:
    ab_t, ab_prev = sampling.alpha_bar_at(schedule, t), sampling.alpha_bar_at(schedule, t_prev)
    sigma = sampling.ddim_sigma(ab_t, ab_prev, eta)

    def step(ab_signal=ab_prev, direction_var=1 - ab_prev - sigma**2, noise_scale=sigma):
        if direction_var < 0 or ab_signal < 0:
            return None
        return math.sqrt(ab_signal) * x0 + math.sqrt(direction_var) * eps + noise_scale * noise

    last_ab = schedule.alphas_cumprod[-1].item()
    wrong_end = None
    if t_prev == -1 and eta == 0:  # alphas_cumprod[-1] is the noisiest alpha_bar, not alpha_bar = 1
        wrong_end = step(last_ab, 1 - last_ab, 0.0)  # (with eta > 0 its sigma is the root of a negative: NaN)
    one_factor = eta * math.sqrt(1 - ab_t / ab_prev)
    diagnoses = [
        (step(noise_scale=-sigma), "the noise term has the wrong sign: x_prev = ... + sigma_t * noise."),
        (step(direction_var=1 - ab_prev + sigma**2),
         "the direction term is sqrt(1 - alpha_bar_prev - sigma_t^2) * eps (minus sigma_t^2: it gives up exactly "
         "the variance that the fresh noise adds), not + sigma_t^2."),
        (wrong_end, "t_prev = -1 stands for alpha_bar = 1 (the clean image), not alphas_cumprod[-1] (Python's last "
                    "element, the noisiest step): use 1.0 when t_prev < 0."),
        (step(noise_scale=sigma**2), "sigma_t multiplies the noise (a standard deviation), not sigma_t^2."),
        (step(noise_scale=0.0) if sigma > 0 else None,
         "no noise was added: with eta > 0 the step adds sigma_t(eta) * noise."),
        (step(noise_scale=0.0, direction_var=1 - ab_prev) if sigma > 0 else None,
         "this is the deterministic step (eta = 0) whatever eta is: sigma_t(eta) must scale with eta."),
        (step(direction_var=1 - ab_prev - one_factor**2, noise_scale=one_factor),
         "sigma_t(eta) has two factors: eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * "
         "sqrt(1 - alpha_bar_t / alpha_bar_prev) (DDIM eq. 16)."),
        (step(ab_signal=ab_t), "x0_hat is scaled by sqrt(alpha_bar_prev), the signal level of the step you land on, "
                               "not by sqrt(alpha_bar_t)."),
        (step(direction_var=1 - ab_t - sigma**2) if 1 - ab_t - sigma**2 >= 0 else None,
         "the direction term uses alpha_bar_t where alpha_bar_prev belongs: sqrt(1 - alpha_bar_prev - sigma_t^2)."),
    ]
    found = _first_match(x_prev, diagnoses)
    if found:
        return found
    if not torch.isfinite(x_prev).all():
        return ("x_prev contains NaN: a square root of a negative number? Check the order of alpha_bar_t and "
                "alpha_bar_prev in sigma_t(eta) and that t_prev = -1 means alpha_bar = 1.")
    expected = step()
    if _ignores_noise(x_prev, expected, noise, sigma):
        return "the result ignores the `noise` argument: use the noise you are given, do not draw new noise."
    worst = (x_prev.double() - expected.double()).abs().max().item()
    return (f"x_prev differs from sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma_t^2) eps + "
            f"sigma_t noise (largest difference {worst:.3g}).")


# ---------------------------------------------------------------------------
# The Fréchet distance of two feature sets (FID; Heusel et al. 2017)
# ---------------------------------------------------------------------------


def _feature_sets(seed: int, n: int, m: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated Gaussian-ish feature sets with different means and covariances, float64."""
    g = torch.Generator().manual_seed(seed)
    mix_a = torch.randn(d, d, generator=g, dtype=torch.float64)
    mix_b = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix_a + 0.5
    b = torch.randn(m, d, generator=g, dtype=torch.float64) @ (0.7 * mix_b) - 0.3
    return a, b


def check_fid_from_features(fn: Callable) -> CheckResult:
    """Check ``fn(a [N, D], b [M, D]) -> float``: the Fréchet distance of Gaussians fitted to two feature sets."""
    result = CheckResult("fid_from_features")
    for seed, n, m, d in ((0, 300, 200, 5), (1, 40, 60, 3), (2, 500, 500, 8)):
        a, b = _feature_sets(seed, n, m, d)
        out = _call(result, fn, a.clone(), b.clone(), forbidden=_FID_FORBIDDEN)
        if out is None and not result.problems:
            result.problems.append("fid_from_features returned None: return the distance as a float.")
        if result.problems:
            return result.report()
        value = _as_number(result, out)
        if value is None:
            return result.report()
        ref = metrics.fid_from_features(a, b)
        if abs(value - ref) <= TOL * (1 + abs(ref)):
            continue
        result.problems.append(_fid_problem(value, a, b, ref) + f" (N = {n}, M = {m}, D = {d})")
        return result.report()
    return result.report()


_FID_FORBIDDEN = [metrics.fid_from_features, metrics.frechet_distance, metrics.feature_statistics,
                  metrics.fid_with_bias, metrics._psd_sqrt]


def _as_number(result: CheckResult, out) -> float | None:
    if isinstance(out, torch.Tensor):
        if out.numel() != 1:
            result.problems.append(f"return one number (the distance), got a tensor of shape {tuple(out.shape)}.")
            return None
        if out.is_complex():
            result.problems.append("the distance came out complex: take the real part of the trace of the square root "
                                   "(round-off makes tiny imaginary parts), or use a symmetric eigen-decomposition.")
            return None
        out = out.item()
    if isinstance(out, complex):
        result.problems.append("the distance came out complex: take the real part (round-off makes tiny "
                               "imaginary parts).")
        return None
    if isinstance(out, bool) or not isinstance(out, int | float):
        result.problems.append(f"return the distance as a float, got {type(out).__name__}.")
        return None
    if not math.isfinite(out):
        result.problems.append("the distance is NaN or infinite: an element-wise square root of S1 S2 (whose entries "
                               "can be negative)? (S1 S2)^{1/2} is a matrix square root, found through eigenvalues.")
        return None
    return float(out)


def _fid_problem(value: float, a: torch.Tensor, b: torch.Tensor, ref: float) -> str:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    mean_term = float((mu1 - mu2).square().sum())
    trace_sqrt = ref - mean_term - float(s1.trace() + s2.trace())  # = -2 Tr (S1 S2)^{1/2}
    traces = float(s1.trace() + s2.trace())
    biased = metrics.frechet_distance(mu1, s1 * (a.shape[0] - 1) / a.shape[0], mu2, s2 * (b.shape[0] - 1) / b.shape[0])
    diagnoses = [
        (mean_term, "the trace term Tr(S1 + S2 - 2 (S1 S2)^{1/2}) is missing: FID compares the spreads of the two "
                    "feature clouds too, not only their means."),
        (ref - mean_term, "the mean term ||mu1 - mu2||^2 is missing."),
        (mean_term + traces - 2 * float(torch.sqrt((s1 @ s2).diagonal().clamp(min=0)).sum()),
         "(S1 S2)^{1/2} is a matrix square root (R with R @ R = S1 @ S2), not the element-wise square root; "
         "its trace is the sum of the square roots of the eigenvalues of S1 S2."),
        (mean_term + traces - 2 * float(torch.sqrt((s1 * s2).diagonal()).sum()),
         "(S1 S2)^{1/2} is the matrix square root of the matrix product S1 @ S2, not of the element-wise product."),
        (mean_term + traces - 2 * math.sqrt(max(float((s1 @ s2).trace()), 0.0)),
         "the trace of the square root is not the square root of the trace: sum the square roots of the "
         "eigenvalues of S1 S2."),
        (mean_term + traces + trace_sqrt / 2, "the cross term is -2 Tr (S1 S2)^{1/2}: the factor 2 is missing."),
        (math.sqrt(ref), "FID is the squared distance d^2 itself: do not take a square root at the end."),
        (biased, "use the unbiased covariance, divided by N - 1 (as torch.cov does), not by N."),
    ]
    for candidate, message in diagnoses:
        if abs(value - candidate) <= TOL * (1 + abs(candidate)):
            return message
    return f"got {value:.6g}, expected {ref:.6g}: d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{{1/2}})."


__all__ = ["check_ddim_step", "check_ddpm_step", "check_fid_from_features", "check_respace_betas"]
