"""An exponential moving average (EMA) of a network's weights.

Diffusion models are sampled with an average of recent weights rather than the latest
ones (DDPM, appendix B, uses a decay of 0.9999): the average smooths out the noise of
stochastic gradient steps and gives visibly cleaner samples. After each optimizer step::

    theta_ema <- d * theta_ema + (1 - d) * theta

With ``d = 0.9999`` the average remembers about 10,000 steps, so early in training it
would be dominated by the random initial weights. A warm-up fixes that: the decay actually
used at update ``n`` (counting from 0) is ``min(decay, (1 + n) / (10 + n))``, which starts at
0.1 and approaches ``decay`` (the schedule of TensorFlow's ExponentialMovingAverage with
``num_updates``).

The copy is kept in float32 whatever the training precision, on the model's device, and
is always in eval mode; buffers (e.g. normalisation statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


class EMA:
    """Keeps ``self.module``, an fp32, eval-mode copy of a model holding averaged weights.

    Args:
        model: the model being trained (wrappers such as DDP or torch.compile are unwrapped).
        decay: the long-run decay ``d`` in (0, 1); 0.9999 in DDPM.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at update ``n`` (recommended).

    Use ``ema.update(model)`` after every optimizer step and ``ema.module`` to sample.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay} (0.9999 is typical)")
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(unwrap_model(model)).float().eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights by one step."""
        d = self.current_decay()
        source = unwrap_model(model)
        ema_params = list(self.module.parameters())
        params = [p.detach().float() for p in source.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("the EMA copy and the model have different parameters")
        # lerp(a, b, w) = a + w (b - a) = d a + (1 - d) b for w = 1 - d
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for ema_buf, buf in zip(self.module.buffers(), source.buffers(), strict=True):
            ema_buf.copy_(buf)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the averaged ones."""
        unwrap_model(model).load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict:
        """Plain, ``weights_only``-loadable state: decay, warm-up flag, update count, weights."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "weights": self.module.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["weights"])
        self.module.float()


__all__ = ["EMA", "unwrap_model"]
