"""Checks for Phase 3: the KL between two Gaussians, x0 from a noise prediction, the training
step and the EMA update.

Every check compares the learner's function with the package's own version, the one the
training loop itself runs: :func:`~diffusion_course.losses.normal_kl` (the variational bound's
terms), :func:`~diffusion_course.diffusion.predict_x0_from_eps` (every sampler's x0 estimate),
:func:`~diffusion_course.losses.ddpm_loss` (the :class:`~diffusion_course.losses.DiffusionObjective`
of the :class:`~diffusion_course.trainer.Trainer` at given t and noise) and
:func:`~diffusion_course.ema.ema_update` (what :class:`~diffusion_course.ema.EMA` calls after every
optimizer step). The training step gets ``t`` and the noise as arguments, so nothing depends on
the order in which an answer draws random numbers. Networks are compared on identical copies
(same weights, same optimizer state), so any difference is the answer's, not chance.
The graded tests of notebook 03 make the same comparisons with :func:`~._core.assert_close`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import diffusion, ema, losses, schedules
from ..diffusion import q_sample
from ._core import CheckResult, _call, _close, _is_tensor

KL_TOL = 1e-5
X0_TOL = 1e-4  # at t = T-1, x0 = (x_t - sigma eps) / 0.006: float32 rounding of x_t is amplified 150-fold
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-6


# ---------------------------------------------------------------------------
# A small stand-in for the U-Net: fast, and it takes (x, t)
# ---------------------------------------------------------------------------


class TinyDenoiser(nn.Module):
    """Two convolutions and a time bias: ``x [B, 1, H, W], t [B] -> [B, 1, H, W]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 1, 3, padding=1)
        self.time = nn.Linear(1, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) + self.time(t.float()[:, None] / 1000)[:, :, None, None]
        return self.conv2(F.silu(h))


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` as one detached vector (to compare two networks' weights)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def _twins(seed: int = 0, lr: float = 0.05):
    """Two identical TinyDenoisers, each with its own SGD-with-momentum optimizer."""
    torch.manual_seed(seed)
    model = TinyDenoiser()
    twin = copy.deepcopy(model)
    return (model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)), \
        (twin, torch.optim.SGD(twin.parameters(), lr=lr, momentum=0.9))


def _gather(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return table[t].float().view(-1, 1, 1, 1)


# ---------------------------------------------------------------------------
# Exercise 1: the KL divergence between two Gaussians
# ---------------------------------------------------------------------------


def _kl_inputs(seed: int = 0):
    """Means ``[3, 2, 4, 4]`` and log-variances, one per image ``[3, 1, 1, 1]`` and one per pixel."""
    g = torch.Generator().manual_seed(seed)
    mean1 = torch.randn(3, 2, 4, 4, generator=g)
    logvar1 = torch.randn(3, 1, 1, 1, generator=g)
    mean2 = torch.randn(3, 2, 4, 4, generator=g)
    logvar2 = torch.randn(3, 2, 4, 4, generator=g) * 0.5
    return mean1, logvar1, mean2, logvar2


def check_gaussian_kl(fn: Callable) -> CheckResult:
    """Check ``fn(mean1, logvar1, mean2, logvar2)``: KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element."""
    result = CheckResult("gaussian_kl")
    m1, lv1, m2, lv2 = _kl_inputs()
    out = _call(result, fn, m1, lv1, m2, lv2, forbidden=[losses.normal_kl])
    if out is None or not _is_tensor(result, out, "gaussian_kl(...)"):
        return result.report()
    ref = losses.normal_kl(m1, lv1, m2, lv2)
    if out.shape != ref.shape:
        result.problems.append(
            f"one KL per element: with means {tuple(m1.shape)}, log-variances {tuple(lv1.shape)} and "
            f"{tuple(lv2.shape)} the result should broadcast to {tuple(ref.shape)}, got {tuple(out.shape)} "
            "(do not sum or average it)."
        )
        return result.report()
    if _close(out, ref, KL_TOL):
        same = _call(result, fn, m1, lv2, m1, lv2)  # a Gaussian and itself: the KL is exactly 0
        if same is not None and not _close(same, torch.zeros_like(same), KL_TOL):
            result.problems.append("the KL of a Gaussian from itself must be 0.")
        return result.report()
    result.problems.append(_diagnose_kl(out, m1, lv1, m2, lv2))
    return result.report()


def _diagnose_kl(out, m1, lv1, m2, lv2) -> str:
    sq = (m1 - m2) ** 2
    candidates = {
        "the variance ratio is inverted: the trace term is sigma1^2 / sigma2^2 = exp(logvar1 - logvar2).":
            0.5 * (lv2 - lv1 + torch.exp(lv2 - lv1) + sq * torch.exp(-lv2) - 1),
        "the log term is upside down: it is log(sigma2 / sigma1) = (logvar2 - logvar1) / 2, not "
        "(logvar1 - logvar2) / 2.":
            0.5 * (lv1 - lv2 + torch.exp(lv1 - lv2) + sq * torch.exp(-lv2) - 1),
        "the squared mean difference is divided by the wrong variance: by sigma2^2 (the second "
        "Gaussian's, exp(logvar2)), not sigma1^2.":
            0.5 * (lv2 - lv1 + torch.exp(lv1 - lv2) + sq * torch.exp(-lv1) - 1),
        "the KL is not symmetric: you computed KL(N2 || N1); the first Gaussian is the one the "
        "expectation is taken under.":
            0.5 * (lv1 - lv2 + torch.exp(lv2 - lv1) + sq * torch.exp(-lv1) - 1),
        "logvar is log sigma^2, so sigma1^2 / sigma2^2 = exp(logvar1 - logvar2), without a factor 1/2.":
            0.5 * (lv2 - lv1 + torch.exp(0.5 * (lv1 - lv2)) + sq * torch.exp(-lv2) - 1),
        "the factor 1/2 in front of the bracket is missing (your values are twice the KL).":
            lv2 - lv1 + torch.exp(lv1 - lv2) + sq * torch.exp(-lv2) - 1,
        "the -1 inside the bracket is missing (your values are 1/2 too large, so a Gaussian's KL "
        "from itself would not be 0).":
            0.5 * (lv2 - lv1 + torch.exp(lv1 - lv2) + sq * torch.exp(-lv2)),
    }
    for message, value in candidates.items():
        if out.shape == value.shape and _close(out, value, KL_TOL):
            return message
    worst = (out.double() - losses.normal_kl(m1, lv1, m2, lv2).double()).abs().max().item()
    return ("the values differ from 0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2) + "
            f"(mean1 - mean2)^2 exp(-logvar2) - 1) (largest difference {worst:.3g}).")


# ---------------------------------------------------------------------------
# Exercise 2: x0 from a noise prediction
# ---------------------------------------------------------------------------


def _x0_cases():
    """(x_t, t, eps, schedule) twice: the true noise of a real x_t, then a noise estimate that is off."""
    g = torch.Generator().manual_seed(3)
    linear = schedules.get_schedule("linear", 1000)
    x0 = torch.rand(4, 1, 6, 6, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 10, 400, 999])
    first = (q_sample(x0, t, eps, linear), t, eps, linear)
    cosine = schedules.get_schedule("cosine", 50)
    t2 = torch.tensor([3, 25, 49, 1])
    x_t = q_sample(x0, t2, eps, cosine)
    second = (x_t, t2, eps + 0.3 * torch.randn(x0.shape, generator=g), cosine)
    return first, second


def check_predict_x0(fn: Callable) -> CheckResult:
    """Check ``fn(x_t, t, eps, schedule) -> x0_hat``: DDPM eq. 4 solved for x0."""
    result = CheckResult("predict_x0")
    for x_t, t, eps, schedule in _x0_cases():
        out = _call(result, fn, x_t, t, eps, schedule, forbidden=[diffusion.predict_x0_from_eps])
        if result.problems and "must match the size of tensor" in result.problems[-1]:
            result.problems[-1] = ("the coefficients do not broadcast against the images: t holds one timestep "
                                   "per image, so alpha_bar_t has shape [B]; reshape it to [B, 1, 1, 1] "
                                   f"(.view(-1, 1, 1, 1)). PyTorch said: {result.problems[-1]}")
            return result.report()
        if out is None or not _is_tensor(result, out, "predict_x0(...)"):
            return result.report()
        if out.shape != x_t.shape:
            result.problems.append(
                f"x0_hat must have the shape of x_t {tuple(x_t.shape)}, got {tuple(out.shape)}: reshape the "
                "per-image coefficients to [B, 1, 1, 1] so they broadcast over each image."
            )
            return result.report()
        ref = diffusion.predict_x0_from_eps(x_t, t, eps, schedule)
        if not _close(out, ref, X0_TOL):
            result.problems.append(_diagnose_x0(out, x_t, t, eps, schedule))
            return result.report()
    return result.report()


def _diagnose_x0(out, x_t, t, eps, schedule) -> str:
    ab = schedule.alphas_cumprod
    a, a_prev, alpha = _gather(ab, t), _gather(schedule.alphas_cumprod_prev, t), _gather(schedule.alphas, t)
    candidates = {
        "square roots are missing: x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, so subtract "
        "sqrt(1 - alpha_bar_t) eps and divide by sqrt(alpha_bar_t).": [
            (x_t - (1 - a) * eps) / a, (x_t - (1 - a).sqrt() * eps) / a, (x_t - (1 - a) * eps) / a.sqrt()],
        "subtract the noise, do not add it: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).": [
            (x_t + (1 - a).sqrt() * eps) / a.sqrt()],
        "solve for x0: divide by sqrt(alpha_bar_t), do not multiply.": [
            (x_t - (1 - a).sqrt() * eps) * a.sqrt(), a.sqrt() * x_t - (1 - a).sqrt() * eps],
        "use alpha_bar_t (schedule.alphas_cumprod), the product of all alphas up to t, not alpha_t.": [
            (x_t - (1 - alpha).sqrt() * eps) / alpha.sqrt()],
        "index alpha_bar at t, not t - 1 (schedule.alphas_cumprod, not alphas_cumprod_prev).": [
            (x_t - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()],
    }
    for message, values in candidates.items():
        if any(_close(out, v, X0_TOL) for v in values):
            return message
    return ("x0_hat should be (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), with alpha_bar_t of "
            "each image's own t.")


# ---------------------------------------------------------------------------
# Exercise 3: the training step
# ---------------------------------------------------------------------------

_OWN_LOSS = (losses.ddpm_loss, losses.DiffusionObjective.loss_at, losses.DiffusionObjective.__call__)


def check_train_step(fn: Callable) -> CheckResult:
    """Check ``fn(model, optimizer, x0, t, noise, schedule) -> float``: one step of DDPM Algorithm 1
    for the given timesteps and noise, compared with :func:`~diffusion_course.losses.ddpm_loss`."""
    result = CheckResult("train_step")
    schedule = schedules.get_schedule("linear", 1000)
    (model, opt), (ref, ref_opt) = _twins()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
    for step in range(2):
        t = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        before = copy.deepcopy(model)
        loss = _call(result, fn, model, opt, x0, t, noise, schedule, forbidden=_OWN_LOSS)
        if result.problems:
            if "Input type (double)" in result.problems[-1] or "expected scalar type Double" in result.problems[-1]:
                result.problems[-1] = ("the network got float64 input: the schedule's tables are float64, so "
                                       "x_t built from them by hand is float64 too; cast the coefficients with "
                                       ".float() (or use q_sample) before calling the model.")
            return result.report()
        expected = losses.ddpm_loss(ref, x0, t, noise, schedule)
        ref_opt.zero_grad()
        expected.backward()
        ref_opt.step()
        if isinstance(loss, torch.Tensor):
            result.problems.append("return the loss as a Python float (loss.item()), so no graph is kept alive.")
            return result.report()
        if not isinstance(loss, float):
            result.problems.append(f"return the loss as a float (loss.item()), got {type(loss).__name__}.")
            return result.report()
        if not _close(torch.tensor(loss), expected.detach(), LOSS_TOL):
            result.problems.append(_diagnose_loss(loss, before, x0, t, noise, schedule))
            return result.report()
        if not _close(flat_parameters(model), flat_parameters(ref), WEIGHT_TOL):
            if step == 1:
                result.problems.append("the first step is right but the second is not: zero the gradients every "
                                       "step (optimizer.zero_grad()), or they add up across steps.")
            elif _close(flat_parameters(model), flat_parameters(before), 0.0):
                result.problems.append("the loss is right but the weights did not move: call "
                                       "optimizer.zero_grad(), then loss.backward(), then optimizer.step().")
            else:
                result.problems.append("the loss is right but the weights after the step are not: call "
                                       "optimizer.zero_grad(), loss.backward() and optimizer.step() once each.")
            return result.report()
    return result.report()


@torch.no_grad()
def _diagnose_loss(loss: float, model: nn.Module, x0, t, noise, schedule) -> str:
    x_t = q_sample(x0, t, noise, schedule)
    pred = model(x_t, t)
    candidates = {
        "the target is the noise eps, not the clean image x0 (DDPM predicts the noise).": F.mse_loss(pred, x0),
        "the model must see the noisy x_t = q_sample(x0, t, noise, schedule), not the clean x0.":
            F.mse_loss(model(x0, t), noise),
        "the model must see the noisy x_t, not the noise itself.": F.mse_loss(model(noise, t), noise),
        "average the squared error over pixels and images (F.mse_loss's default), do not sum it.":
            F.mse_loss(pred, noise, reduction="sum"),
        "the model must see the timesteps t it is given (every image its own t).":
            F.mse_loss(model(x_t, torch.zeros_like(t)), noise),
    }
    for message, value in candidates.items():
        if abs(value.item() - loss) <= LOSS_TOL * (1 + abs(value.item())):
            return message
    expected = losses.ddpm_loss(model, x0, t, noise, schedule).item()
    return (f"the loss {loss:.5f} should be {expected:.5f}: the mean squared error between "
            "model(x_t, t) and the noise, with x_t = q_sample(x0, t, noise, schedule).")


# ---------------------------------------------------------------------------
# Exercise 4: the EMA update
# ---------------------------------------------------------------------------

_IN_PLACE_ON_A_LEAF = "leaf Variable that requires grad is being used in an in-place operation"


def check_ema_update(fn: Callable) -> CheckResult:
    """Check ``fn(ema_model, model, decay)``: an in-place exponential moving average of the weights,
    compared with :func:`~diffusion_course.ema.ema_update`."""
    result = CheckResult("ema_update")
    torch.manual_seed(0)
    model = TinyDenoiser()
    ema_model = TinyDenoiser()  # its parameters require grad, as those of a copied model do
    for decay in (0.9, 0.99):
        before = copy.deepcopy(ema_model)
        expected, swapped = copy.deepcopy(ema_model), copy.deepcopy(ema_model)
        ema.ema_update(expected, model, decay)
        ema.ema_update(swapped, model, 1 - decay)
        out = _call(result, fn, ema_model, model, decay, forbidden=[ema.ema_update, ema.EMA.update])
        if result.problems:
            if _IN_PLACE_ON_A_LEAF in result.problems[-1]:
                result.problems[-1] = (
                    "PyTorch refused to change a parameter in place while it records operations for "
                    "gradients (\"a leaf Variable that requires grad is being used in an in-place "
                    "operation\"): put the update inside `with torch.no_grad():`; the average is "
                    "bookkeeping, not part of any graph."
                )
            return result.report()
        got = flat_parameters(ema_model)
        if out is not None and not isinstance(out, nn.Module):
            result.problems.append("update the EMA model in place and return nothing.")
        elif _close(got, flat_parameters(expected), WEIGHT_TOL):
            continue
        elif _close(got, flat_parameters(before), 0.0):
            result.problems.append("the EMA weights did not change: update each parameter in place (an in-place "
                                   "method such as .copy_(...) or .mul_(...)); `p_ema = ...` only rebinds a name.")
        elif _close(got, flat_parameters(swapped), WEIGHT_TOL):
            result.problems.append("decay and 1 - decay are swapped: keep `decay` of the old EMA weights and add "
                                   "(1 - decay) of the model's.")
        elif _close(got, flat_parameters(model), WEIGHT_TOL):
            result.problems.append("the EMA weights were replaced by the model's: blend them, don't copy.")
        elif decay != 0.9:
            result.problems.append("right for decay 0.9 but not for 0.99: use the `decay` argument, "
                                   "not a fixed number.")
        else:
            result.problems.append("the EMA weights should become decay * ema + (1 - decay) * model.")
        return result.report()
    return result.report()


__all__ = [
    "TinyDenoiser",
    "check_ema_update",
    "check_gaussian_kl",
    "check_predict_x0",
    "check_train_step",
    "flat_parameters",
]
