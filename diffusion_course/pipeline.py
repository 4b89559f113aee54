"""A trained model ready to generate: network + diffusion setup + sampler, in one place.

A checkpoint holds the network's weights and the :class:`~diffusion_course.diffusion.DiffusionConfig`
it was trained with (schedule, T, prediction target, variance, conditioning). This module puts them
together with a sampler from :mod:`diffusion_course.sampling` (as a diffusers pipeline joins a
UNet and a scheduler). It imports no training code, so generating never needs the trainer::

    pipe = DiffusionPipeline.from_checkpoint("runs/fmnist/checkpoint.pt")
    images = pipe.generate(64, sampler="dpm-solver++", steps=20, seed=0)   # [64, 1, 28, 28] in [-1, 1]

Large requests are drawn in batches; the noise of each batch comes from one generator seeded
once, so the same seed and batch size give the same images.

A text-conditioned model (:mod:`~diffusion_course.text_model`) takes prompts, optionally with
classifier-free guidance (:mod:`~diffusion_course.guidance`)::

    images = pipe.generate(8, prompt="a photo of an ankle boot", guidance=3.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model
from .diffusion import DiffusionConfig
from .sampling import sample


@dataclass
class DiffusionPipeline:
    """``model`` (in eval mode, on ``device``) with the ``diffusion`` setup it was trained with.

    ``image_shape`` is ``(C, H, W)`` of the training images; ``checkpoint`` the whole checkpoint
    dictionary it came from, if any (its ``config`` and ``data_stats`` describe the run).
    """

    model: nn.Module
    diffusion: DiffusionConfig
    image_shape: tuple[int, int, int]
    device: torch.device
    checkpoint: dict | None = None

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: torch.device | str = "cpu", ema: bool = True
    ) -> DiffusionPipeline:
        """Load a training checkpoint (its EMA weights by default). Raises
        :class:`~diffusion_course.checkpoint.CheckpointError` for a file that is not one."""
        model, diffusion, state = load_model(path, ema=ema, map_location="cpu")
        cfg = model.config
        stats = state.get("data_stats") or {}
        size = int(stats.get("image_size") or cfg.image_size)
        shape = (int(stats.get("channels") or cfg.in_channels), size, size)
        device = torch.device(device)
        return cls(model.to(device), diffusion, shape, device, state)

    @property
    def schedule(self):
        return self.diffusion.noise_schedule()

    def denoiser(self, class_labels: torch.Tensor | None = None):
        """The network as the samplers call it, ``(x_t, t) -> output``, with any conditioning bound."""
        if class_labels is None:
            return self.model

        def conditioned(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.model(x, t, class_labels=class_labels[: x.shape[0]])

        return conditioned

    @property
    def takes_prompts(self) -> bool:
        """Whether the model is text-conditioned (reads prompts)."""
        return self.diffusion.conditioning == "text" and hasattr(self.model, "tokenize")

    def prompt_tokens(self, prompt: str | Sequence[str], count: int) -> torch.Tensor:
        """Token ids ``[count, L]`` on the pipeline's device: image ``i`` gets ``prompt[i % len(prompt)]``.

        Raises ValueError for a model that takes no prompts, an empty prompt, or one longer than
        the text encoder reads.
        """
        if not self.takes_prompts:
            what = "class-conditional" if self.diffusion.conditioning == "class" else "unconditional"
            raise ValueError(f"this model is {what}, not text-conditioned: it takes no prompt")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("a prompt must be non-empty text, e.g. 'a photo of an ankle boot' (for unconditional "
                             "samples give no prompt)")
        ids = self.model.tokenize(prompts)
        rows = torch.arange(count) % len(prompts)
        return ids[rows].to(self.device)

    def text_denoiser(self, tokens: torch.Tensor, guidance: float | None = None):
        """The text model bound to ``tokens [B, L]`` as ``(x_t, t) -> output``; with ``guidance`` = w,
        classifier-free guidance towards them, the empty caption being the null condition."""
        if guidance is None:
            def conditioned(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.model(x, t, tokens=tokens[: x.shape[0]])

            return conditioned
        from .guidance import ClassifierFreeGuidance

        return ClassifierFreeGuidance(self.model, {"tokens": tokens}, self.model.null_condition(1, self.device),
                                      guidance, variance_type=self.diffusion.variance)

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
        prompt: str | Sequence[str] | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """``count`` images ``[count, C, H, W]`` in [-1, 1], on the CPU, drawn ``batch_size`` at a time.

        ``prompt`` (text-conditioned models): one prompt for every image, or a list used in turn;
        ``guidance``: the classifier-free guidance scale w for the prompt (None: the plain
        conditional model). A text model without a prompt draws from its unconditional model.
        """
        if count < 1 or batch_size < 1:
            raise ValueError(f"count and batch_size must be positive, got {count} and {batch_size}")
        tokens = None if prompt is None else self.prompt_tokens(prompt, count)
        if guidance is not None and tokens is None:
            raise ValueError("guidance needs a prompt to guide towards")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        schedule = self.schedule
        out = []
        bar = None
        if progress and count > batch_size:
            from tqdm.auto import tqdm

            bar = tqdm(total=count, desc="images", unit="img")
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            model = self.denoiser() if tokens is None else self.text_denoiser(tokens[start : start + n], guidance)
            images = sample(
                model, schedule, (n, *self.image_shape), sampler=sampler, steps=steps, eta=eta,
                spacing=spacing, generator=generator, prediction_type=self.diffusion.prediction,
                variance_type=self.diffusion.variance, callback=callback,
                progress=progress and bar is None, device=self.device,
            )
            out.append(images.cpu())
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        return torch.cat(out)


__all__ = ["DiffusionPipeline"]
