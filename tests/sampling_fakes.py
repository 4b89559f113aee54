"""Stand-in networks for the sampler tests: deterministic, smooth, cheap, with known answers."""

from __future__ import annotations

import math

import torch

from diffusion_course.schedules import NoiseSchedule


class GaussianData:
    """The exact denoiser for data ``x0 ~ N(mean, std^2 I)``, plus a small smooth wiggle.

    For Gaussian data the best noise prediction is known in closed form,
    ``eps(x_t, t) = sqrt(1 - ab) (x_t - sqrt(ab) mean) / (ab std^2 + 1 - ab)``, so its x0 estimates
    stay bounded like a trained model's (a random function's would explode near t = T). ``wiggle``
    adds ``wiggle * tanh(x)`` to eps, to be less linear than any real solver's best case. The output
    is converted to ``prediction_type``; ``learned=True`` appends variance channels in (-1, 1).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        mean: torch.Tensor,
        std: float = 0.5,
        wiggle: float = 0.05,
        prediction_type: str = "eps",
        learned: bool = False,
    ) -> None:
        self.schedule, self.mean, self.std, self.wiggle = schedule, mean, std, wiggle
        self.prediction_type, self.learned = prediction_type, learned
        self.calls: list[list[int]] = []  # the timesteps of every call

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        self.calls.append(t.tolist())
        ab = self.schedule.alphas_cumprod.to(x.dtype)[t.cpu()].to(x.device).view(-1, *([1] * (x.ndim - 1)))
        mean = self.mean.to(x)
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * mean) / (ab * self.std**2 + 1 - ab) + self.wiggle * torch.tanh(x)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        out = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[self.prediction_type]
        if self.learned:
            out = torch.cat([out, torch.tanh(x + t.view(-1, *([1] * (x.ndim - 1))).to(x) / 500)], dim=1)
        return out

    def exact(self, x_T: torch.Tensor, t_T: int) -> torch.Tensor:
        """Where the probability-flow ODE takes ``x_T`` (at step ``t_T``) for ``wiggle = 0``.

        Along the ODE, ``(x / sqrt(ab) - mean) / sqrt(std^2 + (1 - ab) / ab)`` stays constant.
        """
        ab = float(self.schedule.alphas_cumprod[t_T])
        scaled = (x_T / math.sqrt(ab) - self.mean.to(x_T)) / math.sqrt(self.std**2 + (1 - ab) / ab)
        return self.mean.to(x_T) + self.std * scaled


def pattern(shape=(1, 1, 4, 4)) -> torch.Tensor:
    """A fixed image-like mean in [-0.8, 0.8]."""
    n = math.prod(shape[1:])
    return torch.linspace(-0.8, 0.8, n).view(1, *shape[1:])
