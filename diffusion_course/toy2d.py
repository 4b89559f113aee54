"""A diffusion model of 2-D points that trains in seconds on a CPU: the score field, seen.

Every idea of the course fits in two dimensions, where a picture shows *everything* the
network has learned: the data are points from a Gaussian mixture
(:func:`~diffusion_course.mixtures.ring`), the network is a small MLP that reads a noisy
point ``x_t [B, 2]`` and its timestep ``t [B]`` and predicts the noise ``eps [B, 2]``, and
it is trained by the course's own training loop (:class:`~diffusion_course.trainer.Trainer`)
with the course's own objective (:class:`~diffusion_course.losses.DiffusionObjective`, DDPM
Algorithm 1: ``q_sample`` then the MSE of DDPM eq. 14). Nothing here is specific to points
except the network: the loop and the loss never look at the shape of the data.

Because the data are a mixture, the exact score of every noisy marginal is known
(:meth:`~diffusion_course.mixtures.GaussianMixture.score`), so what the network learned can
be compared with the truth, arrow for arrow (:func:`~diffusion_course.viz.plot_score_field`).

Example::

    from diffusion_course import mixtures, toy2d
    data = mixtures.ring()
    run = toy2d.train_toy(data, steps=2000)
    score, x0_hat = toy2d.denoise(run.model, x_t, t, run.schedule)
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .mixtures import GaussianMixture
from .schedules import NoiseSchedule, get_schedule
from .score import score_from_eps, tweedie_x0
from .unet import timestep_embedding


class ToyDenoiser(nn.Module):
    """An MLP ``eps_theta(x_t, t)`` for points: ``[B, D]`` and ``[B]`` -> ``[B, D]``.

    The timestep enters as DDPM's sinusoidal embedding (:func:`~diffusion_course.unet.timestep_embedding`)
    concatenated to the point; ``depth`` hidden layers of ``hidden`` units with SiLU follow.
    The last layer starts at zero, so an untrained model predicts eps = 0 (loss = 1 per
    coordinate), as the U-Net does.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 32) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(time_dim, int) or time_dim < 2 or time_dim % 2:
            raise ValueError(f"time_dim must be an even integer >= 2, got {time_dim!r}")
        self.dim, self.time_dim = dim, time_dim
        layers: list[nn.Module] = [nn.Linear(dim + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        out = nn.Linear(hidden, dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ToyDenoiser expects points [B, {self.dim}], got {tuple(x.shape)}")
        emb = timestep_embedding(t, self.time_dim).to(x.dtype)
        return self.net(torch.cat([x, emb], dim=1))


@dataclass
class ToyRun:
    """A trained toy model: ``model`` (the EMA weights, eval mode), its ``schedule``,
    ``losses`` as ``(step, mean training loss)`` pairs, and the wall-clock ``seconds``."""

    model: ToyDenoiser
    schedule: NoiseSchedule
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def train_toy(
    data: GaussianMixture | torch.Tensor,
    *,
    steps: int = 2000,
    schedule: str = "cosine",
    timesteps: int = 1000,
    points: int = 20_000,
    batch_size: int = 256,
    lr: float = 2e-3,
    hidden: int = 128,
    seed: int = 0,
    out: str | Path | None = None,
    log_every: int = 50,
) -> ToyRun:
    """Train a :class:`ToyDenoiser` on 2-D data with the course's Trainer and diffusion objective.

    Args:
        data: a :class:`~diffusion_course.mixtures.GaussianMixture` (``points`` samples are
            drawn from it with ``seed``) or a tensor of points ``[N, D]``.
        steps: optimizer steps (2000 take well under a minute on a laptop CPU).
        schedule, timesteps: the noise schedule (as in :func:`~diffusion_course.schedules.get_schedule`).
        batch_size, lr: AdamW settings; a short warm-up, gradient clipping at 1 and an EMA of
            decay 0.995 (a short run) are used.
        seed: seeds the data, the weights and the training noise.
        out: the run folder, where the Trainer writes its metrics log and a final checkpoint;
            ``None`` (the default) uses a temporary folder that is deleted afterwards, so a
            notebook leaves no files behind.
        log_every: steps per entry of ``ToyRun.losses``.

    Training runs on the CPU with one thread (restored afterwards): for a 2-D MLP that is the
    fastest setting on any machine.

    Returns a :class:`ToyRun` whose model is the EMA copy, on the CPU, in eval mode.
    """
    from .trainer import Trainer
    from .training import TrainConfig

    if isinstance(data, GaussianMixture):
        x = data.sample(points, generator=torch.Generator().manual_seed(seed))
    elif isinstance(data, torch.Tensor) and data.ndim == 2 and data.is_floating_point():
        x = data.detach().float().cpu()
    else:
        raise ValueError("data must be a GaussianMixture or a float tensor of points [N, D]")
    torch.manual_seed(seed)  # the initial weights
    model = ToyDenoiser(dim=x.shape[1], hidden=hidden)
    labels = torch.zeros(x.shape[0], dtype=torch.long)
    stats = {"toy2d": {"points": x.shape[0], "dim": x.shape[1]}}
    start = time.perf_counter()
    threads = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="toy2d-")) if out is None else out
        config = TrainConfig(
            timesteps=timesteps, schedule=schedule, batch_size=batch_size, lr=lr,
            warmup_steps=min(100, steps // 10), grad_clip=1.0, ema_decay=0.995, max_steps=steps,
            seed=seed, device="cpu", num_workers=0, out=str(folder), log_every=log_every,
            sample_every=0, checkpoint_every=0, progress=False, hflip="off",
        )
        # A model this small gains nothing from threads; on a busy CPU they even cost ~10x (OpenMP spinning).
        torch.set_num_threads(1)
        stack.callback(torch.set_num_threads, threads)
        trainer = Trainer(config, model, (x, labels), device="cpu", data_stats=stats)
        result = trainer.train()
    losses = [(int(r["step"]), float(r["loss"])) for r in result.history]
    ema = trainer.ema.module.eval()
    return ToyRun(ema, get_schedule(schedule, timesteps), losses, time.perf_counter() - start)


@torch.no_grad()
def denoise(
    model: nn.Module, x_t: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """What an eps-predicting model says about noisy points ``x_t [B, D]`` at step ``t``.

    Returns ``(score, x0_hat)``, both ``[B, D]``: the estimated score of the noisy marginal,
    ``-eps / sqrt(1 - alpha_bar_t)``, and Tweedie's denoised guess
    ``(x_t + (1 - alpha_bar_t) score) / sqrt(alpha_bar_t)`` (:mod:`~diffusion_course.score`).
    ``t`` may be one integer for the whole batch or a tensor ``[B]``.
    """
    x_t = x_t.float()
    if not isinstance(t, torch.Tensor) or t.ndim == 0:
        t = torch.full((x_t.shape[0],), int(t), dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        eps = model(x_t, t)
    finally:
        model.train(was_training)
    score = score_from_eps(eps, t, schedule)
    return score, tweedie_x0(x_t, t, score, schedule)


__all__ = ["ToyDenoiser", "ToyRun", "denoise", "train_toy"]
