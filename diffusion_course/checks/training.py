"""Checks for Phase 3: the training step, the EMA update and gradient accumulation.

Each check runs the learner's function and a reference on identical copies of a small
network (same weights, same optimizer state, same random numbers) and compares the
weights afterwards, so any difference is the learner's, not chance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import schedules
from ..diffusion import q_sample
from ._core import CheckResult, _call

# ---------------------------------------------------------------------------
# References: what the exercises ask for, written plainly
# ---------------------------------------------------------------------------


def reference_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x0: torch.Tensor,
                         schedule: schedules.NoiseSchedule, generator: torch.Generator) -> float:
    """DDPM Algorithm 1, one iteration: t ~ U{0..T-1}, eps ~ N(0, I), MSE(eps_theta(x_t, t), eps).

    Random numbers are drawn from ``generator`` in this order: t first, then the noise.
    """
    t = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    loss = F.mse_loss(model(q_sample(x0, t, noise, schedule), t), noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def reference_ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, parameter by parameter, in place."""
    for p_ema, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        p_ema.mul_(decay).add_(p, alpha=1 - decay)


def reference_accumulated_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor,
                               loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], micro_batches: int) -> float:
    """One optimizer step on ``batch`` computed as ``micro_batches`` equal chunks (loss / chunks each)."""
    optimizer.zero_grad()
    total = 0.0
    for chunk in batch.chunk(micro_batches):
        loss = loss_fn(model, chunk) / micro_batches
        loss.backward()
        total += loss.item()
    optimizer.step()
    return total


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


def _pair(seed: int = 0, lr: float = 1e-2):
    torch.manual_seed(seed)
    model = TinyDenoiser()
    twin = copy.deepcopy(model)
    return (model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)), \
        (twin, torch.optim.SGD(twin.parameters(), lr=lr, momentum=0.9))


def _same_weights(a: nn.Module, b: nn.Module, tol: float = 1e-6) -> bool:
    return all(torch.allclose(p, q, atol=tol, rtol=tol) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _batch(seed: int = 1, n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------
# Exercise 1: the training step
# ---------------------------------------------------------------------------


def check_train_step(fn: Callable) -> CheckResult:
    """Check ``fn(model, optimizer, x0, schedule, generator) -> float`` (DDPM Algorithm 1)."""
    result = CheckResult("train_step")
    schedule = schedules.get_schedule("linear", 1000)
    (model, opt), (ref, ref_opt) = _pair()
    x0 = _batch()
    losses, ref_losses = [], []
    for step in range(2):
        loss = _call(result, fn, model, opt, x0, schedule, torch.Generator().manual_seed(10 + step))
        if result.problems:
            return result.report()
        ref_losses.append(reference_train_step(ref, ref_opt, x0, schedule, torch.Generator().manual_seed(10 + step)))
        if isinstance(loss, torch.Tensor):
            result.problems.append("return the loss as a Python float (loss.item()), so no graph is kept alive.")
            return result.report()
        if not isinstance(loss, float):
            result.problems.append(f"return the loss as a float, got {type(loss).__name__}.")
            return result.report()
        losses.append(loss)
        if step == 0 and abs(loss - ref_losses[0]) > 1e-5:
            result.problems.append(_diagnose_loss(loss, x0, schedule))
            return result.report()
        if step == 0 and not _same_weights(model, ref):
            result.problems.append("the loss is right but the weights after the step are not: call "
                                   "optimizer.zero_grad(), loss.backward(), optimizer.step() once each.")
            return result.report()
    if not _same_weights(model, ref):
        result.problems.append("the first step is right but the second is not: zero the gradients every step "
                               "(optimizer.zero_grad()), or they add up across steps.")
    return result.report()


def _diagnose_loss(loss: float, x0: torch.Tensor, schedule) -> str:
    torch.manual_seed(0)
    probe = TinyDenoiser()
    g = torch.Generator().manual_seed(10)
    t = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        x_t = q_sample(x0, t, noise, schedule)
        pred = probe(x_t, t)
        candidates = {
            "the target is the noise eps, not the clean image x0.": F.mse_loss(pred, x0).item(),
            "the model must see the noisy x_t = q_sample(x0, t, noise, schedule), not x0.":
                F.mse_loss(probe(x0, t), noise).item(),
        }
        g2 = torch.Generator().manual_seed(10)
        noise_first = torch.randn(x0.shape, generator=g2)
        t_second = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=g2)
        candidates["draw t first, then the noise, both from `generator` (the order changes the random numbers)."] = \
            F.mse_loss(probe(q_sample(x0, t_second, noise_first, schedule), t_second), noise_first).item()
    for message, value in candidates.items():
        if abs(value - loss) < 1e-5:
            return message
    return ("the loss differs from MSE(model(x_t, t), noise) with t and noise drawn from `generator`: use "
            "torch.randint(0, T, (B,), generator=generator) and torch.randn(x0.shape, generator=generator).")


# ---------------------------------------------------------------------------
# Exercise 2: the EMA update
# ---------------------------------------------------------------------------


def check_ema_update(fn: Callable) -> CheckResult:
    """Check ``fn(ema_model, model, decay)``: an in-place exponential moving average of the weights."""
    result = CheckResult("ema_update")
    torch.manual_seed(0)
    model, ema = TinyDenoiser(), TinyDenoiser()
    before = copy.deepcopy(ema)
    expected, swapped = copy.deepcopy(ema), copy.deepcopy(ema)
    reference_ema_update(expected, model, 0.9)
    reference_ema_update(swapped, model, 0.1)
    out = _call(result, fn, ema, model, 0.9)
    if result.problems:
        return result.report()
    if out is not None and not isinstance(out, nn.Module):
        result.problems.append("update the EMA model in place and return nothing.")
    elif _same_weights(ema, expected):
        if any(p.grad_fn is not None for p in ema.parameters()):
            result.problems.append("wrap the update in torch.no_grad(): the EMA must not build a graph.")
    elif _same_weights(ema, before):
        result.problems.append("the EMA weights did not change: update them in place (p_ema.mul_(...).add_(...) "
                               "or p_ema.copy_(...)); assigning to a loop variable changes nothing.")
    elif _same_weights(ema, swapped):
        result.problems.append("decay and 1 - decay are swapped: keep `decay` of the old EMA weights and add "
                               "(1 - decay) of the model's.")
    elif _same_weights(ema, model):
        result.problems.append("the EMA weights were replaced by the model's: blend them, don't copy.")
    else:
        result.problems.append("the EMA weights should become decay * ema + (1 - decay) * model.")
    return result.report()


# ---------------------------------------------------------------------------
# Exercise 3: gradient accumulation
# ---------------------------------------------------------------------------


def _noise_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    t = torch.full((x.shape[0],), 100)
    return F.mse_loss(model(x, t), -x)


def check_accumulated_step(fn: Callable) -> CheckResult:
    """Check ``fn(model, optimizer, batch, loss_fn, micro_batches) -> float``: equal to one big-batch step."""
    result = CheckResult("accumulated_step")
    (model, opt), (ref, ref_opt) = _pair(seed=2)
    (big, big_opt), _ = _pair(seed=2)
    batch = _batch(seed=3, n=12)
    loss = _call(result, fn, model, opt, batch, _noise_loss, 4)
    if result.problems:
        return result.report()
    ref_loss = reference_accumulated_step(ref, ref_opt, batch, _noise_loss, 4)
    big_opt.zero_grad()
    _noise_loss(big, batch).backward()
    big_opt.step()
    if not isinstance(loss, float):
        result.problems.append(f"return the loss as a Python float, got {type(loss).__name__}.")
    elif abs(loss - ref_loss) > 1e-5:
        if abs(loss - 4 * ref_loss) < 1e-4:
            result.problems.append("divide each micro-batch loss by the number of micro-batches: the gradients "
                                   "(and the returned loss) come out 4x too large.")
        else:
            result.problems.append(f"the returned loss {loss:.5f} should be the big batch's mean loss "
                                   f"{ref_loss:.5f} (sum of loss / micro_batches).")
    if not result.problems and not _same_weights(model, ref, 1e-5):
        (scaled, scaled_opt), _ = _pair(seed=2)
        scaled_opt.zero_grad()
        for chunk in batch.chunk(4):
            _noise_loss(scaled, chunk).backward()
        scaled_opt.step()
        if _same_weights(model, scaled, 1e-5):
            result.problems.append("divide each micro-batch loss by the number of micro-batches before backward().")
        else:
            result.problems.append("the weights differ from one optimizer step on the whole batch: zero the "
                                   "gradients once, call backward() per micro-batch, then optimizer.step() once.")
    if not result.problems and not _same_weights(model, big, 1e-5):
        result.problems.append("the step does not match a single big-batch step (check how the batch is split).")
    return result.report()
