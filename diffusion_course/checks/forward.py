"""Checks for Phase 1: noise schedules and the forward process."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import diffusion, schedules
from ._core import CheckResult, _call, _close, _is_tensor

# ---------------------------------------------------------------------------
# Phase 1: schedules
# ---------------------------------------------------------------------------


def check_linear_schedule(fn: Callable[[int], torch.Tensor]) -> CheckResult:
    """Check ``fn(timesteps) -> betas``, DDPM's linear schedule from 1e-4 to 0.02."""
    result = CheckResult("linear schedule")
    for T in (1000, 10):
        out = _call(result, fn, T, forbidden=[schedules.linear_betas, schedules.scaled_linear_betas])
        if out is None or not _is_tensor(result, out, f"linear_betas({T})"):
            return result.report()
        ref = schedules.linear_betas(T)
        if out.shape != ref.shape:
            result.problems.append(f"linear_betas({T}) should have shape ({T},), got {tuple(out.shape)}.")
            break
        if out.dtype != torch.float64:
            result.problems.append(
                f"use dtype=torch.float64: small betas lose precision in float32 (got {out.dtype})."
            )
            break
        if not _close(out, ref, 1e-10):
            if abs(out[0].item() - 1e-4) > 1e-9 or abs(out[-1].item() - 0.02) > 1e-9:
                result.problems.append(
                    f"the first beta should be 1e-4 and the last 0.02; got {out[0].item():.3g} and "
                    f"{out[-1].item():.3g}."
                )
            else:
                result.problems.append("the end points are right but the values in between are not evenly spaced.")
            break
    return result.report()


def check_cosine_schedule(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """Check ``fn(timesteps, s=0.008) -> betas``, Improved DDPM's cosine schedule."""
    result = CheckResult("cosine schedule")
    T = 1000
    out = _call(result, fn, T, forbidden=[schedules.cosine_betas])
    if out is None or not _is_tensor(result, out, "cosine_betas(1000)"):
        return result.report()
    ref = schedules.cosine_betas(T)
    if out.shape != ref.shape:
        result.problems.append(f"cosine_betas(1000) should have shape (1000,), got {tuple(out.shape)}.")
        return result.report()
    if _close(out, ref, 1e-8):
        return result.report()
    out = out.double()
    if out.max() > 0.999 + 1e-9:
        result.problems.append(
            f"the largest beta is {out.max().item():.4f}: clip betas at 0.999 (torch.clamp(max=0.999))."
        )
    elif _close(out[:-1], ref[:-1], 1e-8):
        result.problems.append("only the last beta is wrong: clip at max=0.999, not at another value.")
    else:
        u = torch.arange(T + 1, dtype=torch.float64)
        no_offset = (1 - (torch.cos(u[1:] / T * torch.pi / 2) ** 2) / (torch.cos(u[:-1] / T * torch.pi / 2) ** 2))
        squared_missing = 1 - torch.cos((u[1:] / T + 0.008) / 1.008 * torch.pi / 2) / torch.cos(
            (u[:-1] / T + 0.008) / 1.008 * torch.pi / 2
        )
        if _close(out[:-5], no_offset[:-5], 1e-6):
            result.problems.append("the offset s is missing: use cos(((t/T + s) / (1 + s)) * pi/2)^2.")
        elif _close(out[:-5], squared_missing[:-5].clamp(max=0.999), 1e-6):
            result.problems.append("f(t) is cos(...) squared: square the cosine.")
        elif _close(out[1:], ref[:-1], 1e-8) or _close(out[:-1], ref[1:], 1e-8):
            result.problems.append("off by one: betas[t] = 1 - f(t+1)/f(t) for t = 0 .. T-1 (use T+1 grid points).")
        else:
            worst = (out - ref).abs().argmax().item()
            result.problems.append(
                f"values differ from Improved DDPM eq. 17, e.g. at t={worst}: got {out[worst].item():.6g}, "
                f"expected {ref[worst].item():.6g}."
            )
    return result.report()


# ---------------------------------------------------------------------------
# Phase 1: the forward process
# ---------------------------------------------------------------------------


def _forward_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 400, 999])
    return x0, noise, t


def check_q_sample(fn: Callable) -> CheckResult:
    """Check ``fn(x0, t, noise, schedule) -> x_t`` against DDPM eq. 4."""
    result = CheckResult("q_sample")
    schedule = schedules.get_schedule("linear", 1000)
    x0, noise, t = _forward_inputs()
    out = _call(result, fn, x0, t, noise, schedule, forbidden=[diffusion.q_sample])
    if out is None or not _is_tensor(result, out, "q_sample(...)"):
        return result.report()
    if out.shape != x0.shape:
        result.problems.append(
            f"x_t must have the shape of x0 {tuple(x0.shape)}, got {tuple(out.shape)}: reshape the "
            "per-sample coefficients to [B, 1, 1, 1] so they broadcast over each image."
        )
        return result.report()
    ref = diffusion.q_sample(x0, t, noise, schedule)
    if _close(out, ref):
        return result.report()

    ab = schedule.alphas_cumprod

    def candidate(coef_signal, coef_noise, tt=t):
        s = coef_signal[tt].float().view(-1, 1, 1, 1)
        n = coef_noise[tt].float().view(-1, 1, 1, 1)
        return s * x0 + n * noise

    t_next, t_prev = (t + 1).clamp(max=999), (t - 1).clamp(min=0)
    diagnoses = [
        (candidate(ab, 1 - ab), "noise at the wrong scale: use sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), "
         "not alpha_bar_t and 1 - alpha_bar_t (those are variances, not standard deviations)."),
        (candidate(ab.sqrt(), 1 - ab), "the noise term should be sqrt(1 - alpha_bar_t) * noise: 1 - alpha_bar_t "
         "is the variance, its square root is the standard deviation."),
        (candidate((1 - ab).sqrt(), ab.sqrt()), "signal and noise coefficients are swapped: x0 gets "
         "sqrt(alpha_bar_t), the noise gets sqrt(1 - alpha_bar_t)."),
        (candidate(schedule.alphas.sqrt(), schedule.betas.sqrt()), "you used alpha_t (one step), but the "
         "closed form needs alpha_bar_t, the cumulative product (schedule.alphas_cumprod)."),
        (candidate(ab.sqrt(), (1 - ab).sqrt(), t_next), "t indexing is off by one: index the tables with t "
         "directly (t = 0 is the first step, betas[0] is the paper's beta_1)."),
        (candidate(ab.sqrt(), (1 - ab).sqrt(), t_prev), "t indexing is off by one: index the tables with t "
         "directly, not t - 1."),
        (candidate(ab.sqrt(), (1 - ab).sqrt(), t[:1].expand_as(t)), "every image used the first t: each "
         "image in the batch has its own timestep, gather alpha_bar[t] for the whole vector t."),
    ]
    for wrong, message in diagnoses:
        if _close(out, wrong):
            result.problems.append(message)
            return result.report()
    # Right signal, but noise that is not the given one: the residual is noise of the right
    # size that does not correlate with `noise`.
    sigma = (1 - ab[t]).sqrt().float().view(-1, 1, 1, 1)
    residual = (out.double() - (ab[t].sqrt().view(-1, 1, 1, 1) * x0.double()))[1:] / sigma[1:]
    corr = torch.nn.functional.cosine_similarity(residual.flatten(), noise[1:].double().flatten(), dim=0)
    if corr.abs() < 0.5 and 0.7 < residual.std() < 1.3:
        result.problems.append(
            "the result ignores the `noise` argument: use the noise you are given, do not draw new noise."
        )
    else:
        result.problems.append(
            "x_t differs from sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise "
            f"(largest difference {(out.double() - ref.double()).abs().max().item():.3g})."
        )
    return result.report()


def check_q_posterior(fn: Callable) -> CheckResult:
    """Check ``fn(x0, x_t, t, schedule) -> (mean, variance)`` against DDPM eqs. 6-7."""
    result = CheckResult("q_posterior")
    schedule = schedules.get_schedule("linear", 1000)
    x0, noise, t = _forward_inputs(1)
    x_t = diffusion.q_sample(x0, t, noise, schedule)
    out = _call(result, fn, x0, x_t, t, schedule, forbidden=[diffusion.q_posterior])
    if out is None:
        return result.report()
    if not (isinstance(out, tuple | list) and len(out) == 2):
        result.problems.append("return a pair (mean, variance).")
        return result.report()
    mean, var = out
    if not (_is_tensor(result, mean, "mean") and _is_tensor(result, var, "variance")):
        return result.report()
    ref_mean, ref_var = diffusion.q_posterior(x0, x_t, t, schedule)
    if mean.shape != x0.shape:
        result.problems.append(f"the mean must have the shape of x0 {tuple(x0.shape)}, got {tuple(mean.shape)}.")
    try:
        var_b = torch.broadcast_to(var, x0.shape)
    except RuntimeError:
        result.problems.append(
            f"the variance (shape {tuple(var.shape)}) must broadcast against x0 {tuple(x0.shape)}: "
            "use shape [B, 1, 1, 1]."
        )
        return result.report()
    if result.problems:
        return result.report()
    ref_var_b = torch.broadcast_to(ref_var, x0.shape)
    if not _close(var_b, ref_var_b, 1e-6):
        prev_wrong = schedule.betas * (1 - schedule.alphas_cumprod) / (1 - schedule.alphas_cumprod)
        if _close(var_b, torch.broadcast_to(prev_wrong[t].float().view(-1, 1, 1, 1), x0.shape), 1e-6):
            result.problems.append("the variance uses alpha_bar_t where it needs alpha_bar_{t-1}: "
                                   "beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t.")
        elif not torch.allclose(var_b[0].double(), torch.zeros(1, dtype=torch.float64), atol=1e-7):
            result.problems.append("at t = 0 the variance must be 0 (alpha_bar_{-1} = 1: nothing to undo).")
        else:
            result.problems.append("the variance differs from beta_tilde_t (DDPM eq. 7).")
    if not _close(mean, ref_mean, 1e-5):
        c1, c2 = schedule.posterior_mean_coef1, schedule.posterior_mean_coef2
        swapped = c2[t].float().view(-1, 1, 1, 1) * x0 + c1[t].float().view(-1, 1, 1, 1) * x_t
        if _close(mean, swapped, 1e-5):
            result.problems.append("the two mean coefficients are swapped: sqrt(alpha_bar_{t-1}) beta_t / "
                                   "(1 - alpha_bar_t) multiplies x0, the other multiplies x_t.")
        elif _close(mean[0], x0[0], 1e-5):
            result.problems.append("the mean is right at t = 0 but wrong for larger t: check eq. 7's coefficients.")
        else:
            result.problems.append("the mean differs from mu_tilde_t (DDPM eq. 7); at t = 0 it must equal x0.")
    return result.report()


def check_first_t_below(fn: Callable) -> CheckResult:
    """Check ``fn(schedule, level) -> int``: the first t with alpha_bar_t < level."""
    result = CheckResult("first_t_below")
    cases = [("linear", 0.5), ("cosine", 0.5), ("cosine", 0.01), ("linear", 1e-30), ("sigmoid", 1.0)]
    for name, level in cases:
        s = schedules.get_schedule(name, 1000)
        got = _call(result, fn, s, level, forbidden=[schedules.first_t_below])
        if result.problems:
            return result.report()
        below = (s.alphas_cumprod < level).nonzero()
        expected = int(below[0]) if len(below) else s.timesteps
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            result.problems.append("return a plain Python int: wrap the index in int(...).")
            return result.report()
        if not isinstance(got, int):
            result.problems.append(f"return an int, got {type(got).__name__}.")
            return result.report()
        if got != expected:
            if got == expected - 1 or got == expected + 1:
                hint = "off by one: the first t where alpha_bar_t < level, not the last one above it."
            elif expected == s.timesteps:
                hint = "when alpha_bar never drops below the level, return schedule.timesteps."
            else:
                hint = f"for the {name} schedule and level {level} expected t = {expected}, got {got}."
            result.problems.append(hint)
            return result.report()
    return result.report()
