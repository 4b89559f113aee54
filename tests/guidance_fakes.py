"""An exact class-conditional denoiser with a known answer, for the guidance and editing tests.

The data: class ``k`` is the single image ``templates[k]`` (a point mass), the classes equally likely.
Then everything guidance needs is known in closed form, with ``ab = alpha_bar_t``:

- conditional: ``x0_hat = templates[k]``, ``eps = (x_t - sqrt(ab) templates[k]) / sqrt(1 - ab)``;
- unconditional (the null label ``K``): the posterior mean over the classes, with weights
  ``softmax_k(-|x_t - sqrt(ab) templates[k]|^2 / (2 (1 - ab)))``;
- the exact noise-aware classifier: ``log p(k | x_t)`` = the same logits' log-softmax.

So classifier guidance with scale 1 must turn the unconditional eps into the conditional one
(Bayes' rule for scores), and sampling the conditional model must return the template.
"""

from __future__ import annotations

import torch

from diffusion_course.schedules import NoiseSchedule


def _ab(schedule: NoiseSchedule, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return schedule.alphas_cumprod.to(x.dtype)[t.cpu()].to(x.device).view(-1, *([1] * (x.ndim - 1)))


class PointMassClasses:
    """``model(x, t, class_labels=None) -> output`` for point-mass classes (module docstring).

    ``prediction_type``: what it outputs; ``learned=True`` appends variance channels that depend on
    the label (so a test can tell the branches apart). ``calls`` records ``(batch, labels)`` per call.
    """

    def __init__(self, schedule: NoiseSchedule, templates: torch.Tensor, prediction_type: str = "eps",
                 learned: bool = False) -> None:
        self.schedule, self.templates = schedule, templates
        self.num_classes = templates.shape[0]
        self.prediction_type, self.learned = prediction_type, learned
        self.calls: list[tuple[int, list[int] | None]] = []

    def logits(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact classifier of noisy images: ``[B, K]`` log-probabilities up to a constant."""
        ab = _ab(self.schedule, t, x)
        means = ab[:, None].sqrt() * self.templates.to(x)[None]  # [B, K, C, H, W]
        sq = ((x[:, None] - means) ** 2).flatten(2).sum(-1)
        return -sq / (2 * (1 - ab.flatten()[:, None]))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        self.calls.append((x.shape[0], None if class_labels is None else class_labels.tolist()))
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
        class_labels = class_labels.to(x.device)
        ab = _ab(self.schedule, t, x)
        weights = self.logits(x, t).softmax(dim=1)  # [B, K]
        uncond = torch.einsum("bk,kchw->bchw", weights, self.templates.to(x))
        cond = self.templates.to(x)[class_labels.clamp(max=self.num_classes - 1)]
        null = (class_labels == self.num_classes).view(-1, *([1] * (x.ndim - 1)))
        x0 = torch.where(null, uncond, cond)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        out = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[self.prediction_type]
        if self.learned:
            out = torch.cat([out, torch.tanh(x + class_labels.view(-1, 1, 1, 1).to(x) / 4)], dim=1)
        return out


def templates(k: int = 3, shape=(1, 4, 4), seed: int = 0) -> torch.Tensor:
    """``k`` distinct images ``[k, *shape]`` in [-0.9, 0.9]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((k, *shape), generator=gen) * 1.8 - 0.9
