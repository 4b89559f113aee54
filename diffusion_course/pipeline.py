"""A trained model ready to generate: network + diffusion setup + sampler, in one place.

A checkpoint holds the network's weights and the :class:`~diffusion_course.diffusion.DiffusionConfig`
it was trained with (schedule, T, prediction target, variance, conditioning). This module puts them
together with a sampler from :mod:`diffusion_course.sampling` (as a diffusers pipeline joins a
UNet and a scheduler). It imports no training code, so generating never needs the trainer::

    pipe = DiffusionPipeline.from_checkpoint("runs/fmnist/checkpoint.pt")
    images = pipe.generate(64, sampler="dpm-solver++", steps=20, seed=0)   # [64, 1, 28, 28] in [-1, 1]

Large requests are drawn in batches; the noise of each batch comes from one generator seeded
once, so the same seed and batch size give the same images.

A latent diffusion checkpoint (``DiffusionConfig.latent``) carries its autoencoder: the pipeline
samples latents without clipping them and decodes them to images (:mod:`diffusion_course.latent`),
so callers get images either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .checkpoint import load_model
from .diffusion import DiffusionConfig
from .sampling import sample

if TYPE_CHECKING:
    from .latent import LatentSpace


@dataclass
class DiffusionPipeline:
    """``model`` (in eval mode, on ``device``) with the ``diffusion`` setup it was trained with.

    ``image_shape`` is ``(C, H, W)`` of the training images; ``checkpoint`` the whole checkpoint
    dictionary it came from, if any (its ``config`` and ``data_stats`` describe the run);
    ``latent`` the :class:`~diffusion_course.latent.LatentSpace` that decodes a latent model's samples.
    """

    model: nn.Module
    diffusion: DiffusionConfig
    image_shape: tuple[int, int, int]
    device: torch.device
    checkpoint: dict | None = None
    latent: LatentSpace | None = None

    def __post_init__(self) -> None:
        if (self.diffusion.latent is None) != (self.latent is None):
            raise ValueError("a latent diffusion model needs its LatentSpace (latent=) and a pixel model none")

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: torch.device | str = "cpu", ema: bool = True
    ) -> DiffusionPipeline:
        """Load a training checkpoint (its EMA weights by default). Raises
        :class:`~diffusion_course.checkpoint.CheckpointError` for a file that is not one."""
        model, diffusion, state = load_model(path, ema=ema, map_location="cpu")
        device = torch.device(device)
        if diffusion.latent is not None:
            from .latent import LatentSpace

            space = LatentSpace.from_checkpoint(state, where=str(path)).to(device)
            return cls(model.to(device), diffusion, diffusion.latent.image_shape, device, state, space)
        cfg = model.config
        stats = state.get("data_stats") or {}
        size = int(stats.get("image_size") or cfg.image_size)
        shape = (int(stats.get("channels") or cfg.in_channels), size, size)
        return cls(model.to(device), diffusion, shape, device, state)

    @property
    def schedule(self):
        return self.diffusion.noise_schedule()

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of what the sampler draws: the images, or a latent model's latents."""
        return self.diffusion.latent.shape if self.diffusion.latent is not None else self.image_shape

    def denoiser(self, class_labels: torch.Tensor | None = None):
        """The network as the samplers call it, ``(x_t, t) -> output``, with any conditioning bound."""
        if class_labels is None:
            return self.model

        def conditioned(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.model(x, t, class_labels=class_labels[: x.shape[0]])

        return conditioned

    @torch.no_grad()
    def generate(
        self,
        count: int,
        *,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float = 0.0,
        spacing: str = "trailing",
        seed: int = 0,
        batch_size: int = 256,
        progress: bool = False,
        callback=None,
        decode: bool = True,
    ) -> torch.Tensor:
        """``count`` images ``[count, C, H, W]`` in [-1, 1], on the CPU, drawn ``batch_size`` at a time.

        A latent model's samples are decoded to images, unless ``decode=False`` (then: the scaled
        latents ``[count, c, h, w]``; a ``callback`` always sees latents)."""
        if count < 1 or batch_size < 1:
            raise ValueError(f"count and batch_size must be positive, got {count} and {batch_size}")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        schedule = self.schedule
        out = []
        bar = None
        if progress and count > batch_size:
            from tqdm.auto import tqdm

            bar = tqdm(total=count, desc="images", unit="img")
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            images = sample(
                self.denoiser(), schedule, (n, *self.sample_shape), sampler=sampler, steps=steps, eta=eta,
                spacing=spacing, generator=generator, prediction_type=self.diffusion.prediction,
                variance_type=self.diffusion.variance, clip_x0=self.diffusion.clip_x0, callback=callback,
                progress=progress and bar is None, device=self.device,
            )
            if self.latent is not None and decode:
                images = self.latent.decode(images)
            out.append(images.cpu())
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        return torch.cat(out)


__all__ = ["DiffusionPipeline"]
