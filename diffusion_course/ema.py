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

from .validation import check_ema_decay


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """One EMA step, in place: ``theta_ema <- decay * theta_ema + (1 - decay) * theta``.

    Every parameter of ``ema_model`` moves towards ``model``'s (cast to the EMA's dtype);
    buffers (e.g. normalisation statistics) are copied as they are. No graph is built.
    """
    ema_params = list(ema_model.parameters())
    params = [p.detach().to(q.dtype) for p, q in zip(model.parameters(), ema_params, strict=False)]
    if len(ema_params) != len(list(model.parameters())):
        raise ValueError("the EMA copy and the model have different parameters")
    # lerp(a, b, w) = a + w (b - a) = decay a + (1 - decay) b for w = 1 - decay
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for ema_buf, buf in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_buf.copy_(buf)


class EMA:
    """Keeps ``self.module``, an fp32, eval-mode copy of a model holding averaged weights.

    Args:
        model: the model being trained (wrappers such as DDP or torch.compile are unwrapped).
        decay: the long-run decay ``d`` in (0, 1); 0.9999 in DDPM.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at update ``n`` (recommended).

    Use ``ema.update(model)`` after every optimizer step and ``ema.module`` to sample.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        check_ema_decay(decay)
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

    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights by one step."""
        ema_update(self.module, unwrap_model(model), self.current_decay())
        self.num_updates += 1

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


__all__ = ["EMA", "ema_update", "unwrap_model"]
