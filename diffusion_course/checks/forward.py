"""Checks for Phase 1: noise schedules and the forward process."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import diffusion, schedules
from ._core import CheckResult, _call, _close, _is_tensor

# ---------------------------------------------------------------------------
# Phase 1: schedules
# ---------------------------------------------------------------------------


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


def check_log_snr(fn: Callable) -> CheckResult:
    """Check ``fn(schedule) -> log SNR`` ``[T]``: ``log(alpha_bar_t / (1 - alpha_bar_t))`` (VDM eq. 5)."""
    result = CheckResult("log_snr")
    for name, T in (("linear", 1000), ("cosine", 1000), ("sigmoid", 50)):
        s = schedules.get_schedule(name, T)
        out = _call(result, fn, s, forbidden=[schedules.NoiseSchedule.snr, schedules.NoiseSchedule.log_snr])
        if out is None or not _is_tensor(result, out, f"log_snr({name} schedule)"):
            return result.report()
        ref = s.log_snr()
        if out.shape != ref.shape:
            result.problems.append(
                f"return one value per timestep: shape ({T},) for a schedule with {T} steps, got {tuple(out.shape)}."
            )
            return result.report()
        if not out.is_floating_point():
            result.problems.append(f"log SNR is a real number: return floating-point values, got {out.dtype}.")
            return result.report()
        if _close(out, ref, 1e-6):
            continue
        ab, alpha = s.alphas_cumprod, s.alphas
        prev = s.alphas_cumprod_prev
        diagnoses = [
            (ref.exp(), "you returned the SNR itself: take its (natural) logarithm."),
            (ref / torch.log(torch.tensor(10.0, dtype=torch.float64)),
             "use the natural logarithm (torch.log), not log10: the course's log SNR is in nats."),
            (-ref, "upside down: SNR is signal over noise, alpha_bar_t / (1 - alpha_bar_t), "
                   "so it is large at t = 0 and small at t = T-1."),
            (ref / 2, "SNR is a ratio of variances, alpha_bar_t / (1 - alpha_bar_t), not of standard "
                      "deviations sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t)."),
            (torch.log(alpha / (1 - alpha)), "you used alpha_t, one step's share; the signal left in x_t is the "
                                             "cumulative product alpha_bar_t (schedule.alphas_cumprod)."),
            (torch.log(ab), "the SNR divides by the noise variance: log(alpha_bar_t / (1 - alpha_bar_t)), not "
                            "log(alpha_bar_t)."),
        ]
        got = out.double()
        for wrong, message in diagnoses:
            if _close(got, wrong, 1e-6):
                result.problems.append(message)
                return result.report()
        if _close(got[1:], torch.log(prev / (1 - prev))[1:], 1e-6):
            result.problems.append("off by one: use alpha_bar_t (schedule.alphas_cumprod), not alpha_bar_{t-1}.")
        elif out.dtype != torch.float64 and _close(got, ref, 1e-2):
            result.problems.append(
                f"compute in float64 (the schedule's dtype; got {out.dtype}): at t = 0, 1 - alpha_bar_t is "
                "1e-4 and float32 keeps only a few of its digits."
            )
        else:
            worst = (got - ref).abs().argmax().item()
            result.problems.append(
                f"for the {name} schedule, log SNR at t={worst} should be {ref[worst].item():.6g}, "
                f"got {got[worst].item():.6g}."
            )
        return result.report()
    return result.report()


# ---------------------------------------------------------------------------
# Phase 1: the forward process
# ---------------------------------------------------------------------------


def _forward_inputs(seed: int = 0, shape: tuple[int, ...] = (4, 1, 8, 8), t: tuple[int, ...] = (0, 10, 400, 999)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(*shape, generator=g) * 2 - 1
    noise = torch.randn(*shape, generator=g)
    return x0, noise, torch.tensor(t)


def _per_item(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


# The ways a q_sample goes wrong, each with what the learner is told. A wrong answer is
# rebuilt from one choice per group, so an answer with two mistakes hears about both.
_SIGNAL = {
    "right": None,
    "variance": "the signal term should be sqrt(alpha_bar_t) * x0: alpha_bar_t is the signal's variance, its "
                "square root scales x0.",
    "swapped": "signal and noise coefficients are swapped: x0 gets sqrt(alpha_bar_t), the noise gets "
               "sqrt(1 - alpha_bar_t).",
    "one step": "you used alpha_t (one step), but the closed form needs alpha_bar_t, the cumulative product "
                "(schedule.alphas_cumprod).",
}
_NOISE = {
    "right": None,
    "variance": "the noise term should be sqrt(1 - alpha_bar_t) * noise: 1 - alpha_bar_t is the variance, its "
                "square root is the standard deviation.",
}
_INDEX = {
    "right": None,
    "t - 1, wrapping": "t indexing is off by one: index the tables with t directly, not t - 1 (t = 0 is the "
                       "first step, betas[0] is the paper's beta_1); at t = 0, index -1 even wraps around to the "
                       "*last* step: pure noise where almost none belongs.",
    "t - 1": "t indexing is off by one: index the tables with t directly, not t - 1.",
    "t + 1": "t indexing is off by one: index the tables with t directly (t = 0 is the first step, betas[0] is "
             "the paper's beta_1).",
    "first t": "every image used the first t: each image in the batch has its own timestep, gather "
               "alpha_bar[t] for the whole vector t.",
}
_BOTH_VARIANCES = ("noise at the wrong scale: use sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), not alpha_bar_t "
                   "and 1 - alpha_bar_t (those are variances, not standard deviations).")


def _q_sample_mistakes(out: torch.Tensor, x0, noise, t, schedule) -> list[str] | None:
    """Name the mistakes of a wrong ``q_sample`` output, or None if no known combination fits."""
    ab, T = schedule.alphas_cumprod, schedule.timesteps
    signal = {"right": ab.sqrt(), "variance": ab, "swapped": (1 - ab).sqrt(), "one step": schedule.alphas.sqrt()}
    indices = {"right": t, "t - 1, wrapping": t - 1, "t - 1": (t - 1).clamp(min=0),
               "t + 1": (t + 1).clamp(max=T - 1), "first t": t[:1].expand_as(t)}
    for index_kind, tt in indices.items():
        for signal_kind, coef in signal.items():
            for noise_kind in _NOISE:
                if signal_kind == "swapped":
                    noise_coef = ab.sqrt()
                elif signal_kind == "one step":
                    noise_coef = schedule.betas.sqrt() if noise_kind == "right" else schedule.betas
                else:
                    noise_coef = (1 - ab).sqrt() if noise_kind == "right" else 1 - ab
                wrong = _per_item(coef, tt, x0) * x0 + _per_item(noise_coef, tt, x0) * noise
                if not _close(out, wrong):
                    continue
                if signal_kind == "variance" and noise_kind == "variance":
                    messages = [_BOTH_VARIANCES]
                else:
                    messages = [m for m in (_SIGNAL[signal_kind], _NOISE[noise_kind] if signal_kind != "swapped"
                                            else None) if m]
                messages += [_INDEX[index_kind]] if _INDEX[index_kind] else []
                if messages:
                    return messages
    return None


def _diagnose_q_sample(result: CheckResult, out, x0, noise, t, schedule) -> None:
    """Compare a ``q_sample`` output with the package's and add the problems found to ``result``."""
    if out.shape != x0.shape:
        result.problems.append(
            f"x_t must have the shape of x0 {tuple(x0.shape)}, got {tuple(out.shape)}: reshape the per-sample "
            f"coefficients to [B{', 1' * (x0.ndim - 1)}] so they broadcast over each item."
        )
        return
    ref = diffusion.q_sample(x0, t, noise, schedule)
    if _close(out, ref):
        return
    mistakes = _q_sample_mistakes(out, x0, noise, t, schedule)
    if mistakes:
        result.problems.extend(mistakes)
        return
    # Right signal, but noise that is not the given one: the residual is noise of the right
    # size that does not correlate with `noise`.
    ab = schedule.alphas_cumprod
    keep = t > 0
    sigma = _per_item((1 - ab).sqrt(), t, x0.double())
    residual = ((out.double() - _per_item(ab.sqrt(), t, x0.double()) * x0.double()) / sigma)[keep]
    corr = torch.nn.functional.cosine_similarity(residual.flatten(), noise[keep].double().flatten(), dim=0)
    if corr.abs() < 0.5 and 0.7 < residual.std() < 1.3:
        result.problems.append(
            "the result ignores the `noise` argument: use the noise you are given, do not draw new noise."
        )
    else:
        result.problems.append(
            "x_t differs from sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise "
            f"(largest difference {(out.double() - ref.double()).abs().max().item():.3g})."
        )


def check_q_sample(fn: Callable) -> CheckResult:
    """Check ``fn(x0, t, noise, schedule) -> x_t`` against DDPM eq. 4."""
    result = CheckResult("q_sample")
    schedule = schedules.get_schedule("linear", 1000)
    x0, noise, t = _forward_inputs()
    out = _call(result, fn, x0, t, noise, schedule, forbidden=[diffusion.q_sample])
    if out is None or not _is_tensor(result, out, "q_sample(...)"):
        return result.report()
    _diagnose_q_sample(result, out, x0, noise, t, schedule)
    return result.report()


def check_q_sample_fixed(fn: Callable) -> CheckResult:
    """Check the repaired colleague's ``q_sample``: images ``[B, C, H, W]`` and points ``[B, 2]``, t = 0 included."""
    result = CheckResult("q_sample_fixed")
    schedule = schedules.get_schedule("cosine", 1000)
    cases = [("images [B, C, H, W]", _forward_inputs(3)),
             ("points [B, 2]", _forward_inputs(4, shape=(5, 2), t=(0, 1, 250, 600, 999)))]
    for what, (x0, noise, t) in cases:
        out = _call(result, fn, x0, t, noise, schedule, forbidden=[diffusion.q_sample])
        if result.problems:
            if x0.ndim == 2 and "raised" in result.problems[-1]:
                result.problems.append("it still works only for images: shape the per-item coefficients from "
                                       "x0.ndim, [B] + [1] * (x0.ndim - 1), not a fixed [B, 1, 1, 1].")
            return result.report()
        if out is None or not _is_tensor(result, out, f"the result for {what}"):
            return result.report()
        if x0.ndim == 2 and out.shape != x0.shape:
            result.problems.append(
                f"for points [B, 2] x_t must have shape {tuple(x0.shape)}, got {tuple(out.shape)}: a fixed "
                "view(-1, 1, 1, 1) broadcasts against [B, 2] into a nonsense shape; build the coefficients' "
                "shape from x0.ndim, [B] + [1] * (x0.ndim - 1)."
            )
            return result.report()
        _diagnose_q_sample(result, out, x0, noise, t, schedule)
        if result.problems:
            return result.report()
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
