"""A trained model ready to generate: network + diffusion setup + sampler, in one place.

A checkpoint holds the network's weights and the :class:`~diffusion_course.diffusion.DiffusionConfig`
it was trained with (schedule, T, prediction target, variance, conditioning). This module puts them
together with a sampler from :mod:`diffusion_course.sampling` (as a diffusers pipeline joins a
UNet and a scheduler). It imports no training code, so generating never needs the trainer::

    pipe = DiffusionPipeline.from_checkpoint("runs/fmnist/checkpoint.pt")
    images = pipe.generate(64, sampler="dpm-solver++", steps=20, seed=0)   # [64, 1, 28, 28] in [-1, 1]
    boots = pipe.generate(16, class_labels=9, guidance=3.0)                # a class-conditional model
    edited = pipe.edit(images[:8], t0=0.5, class_labels=7)                 # SDEdit towards class 7
    shoes = pipe.generate(8, prompt="a photo of an ankle boot", guidance=3.0)  # a text-conditioned model

A conditional model's condition is bound to the network and guided (classifier-free guidance,
:mod:`~diffusion_course.guidance`) before the sampler sees it, so every sampler works unchanged.
:meth:`DiffusionPipeline.conditions` turns a request into the network's keyword arguments; other
kinds of conditioning extend it (or pass ``cond``/``null_cond`` directly).

Large requests are drawn in batches; the noise of each batch comes from one generator seeded
once, so the same seed and batch size give the same images.

A latent diffusion checkpoint (``DiffusionConfig.latent``) carries its autoencoder: the pipeline
samples latents without clipping them and decodes them to images (:mod:`diffusion_course.latent`),
so callers get images either way.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    # -- conditions ----------------------------------------------------------------------------

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional model (else None)."""
        return self.diffusion.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """The training data's class names (from the checkpoint's data statistics), if recorded."""
        names = ((self.checkpoint or {}).get("data_stats") or {}).get("classes")
        return list(names) if names else None

    def class_labels(self, labels, count: int) -> torch.Tensor:
        """``labels`` (one class id, or one per image) as a long tensor ``[count]``, checked against the model."""
        if self.diffusion.conditioning != "class":
            raise ValueError(f"this model was trained with conditioning {self.diffusion.conditioning!r}; "
                             "it takes no class labels")
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"class labels must be integers, got {labels.dtype}")
        labels = labels.long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(count)
        if labels.numel() != count:
            raise ValueError(f"give one class id, or one per image ({count}), not {labels.numel()}")
        k = self.num_classes
        bad = labels[(labels < 0) | (labels >= k)]
        if bad.numel():
            raise ValueError(f"class id {int(bad[0])} is out of range: this model knows classes 0 to {k - 1}")
        return labels.clone()

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

    def conditions(self, count: int, *, class_labels=None, prompt=None) -> tuple[dict, dict] | None:
        """``(cond, null_cond)`` for ``count`` images: the keyword arguments of the network for the
        conditional and the unconditional branch, tensors with ``count`` (or 1) rows; None when no
        condition is asked for. Class labels give ``{"class_labels": y}`` and the "no class" label;
        a prompt (or a list used in turn) gives ``{"tokens": ids}`` and the empty caption's."""
        if class_labels is not None and prompt is not None:
            raise ValueError("give class labels or a prompt, not both")
        if prompt is not None:
            return {"tokens": self.prompt_tokens(prompt, count)}, self.model.null_condition(1, self.device)
        if class_labels is None:
            return None
        labels = self.class_labels(class_labels, count).to(self.device)
        return {"class_labels": labels}, {"class_labels": torch.tensor([self.num_classes], device=self.device)}

    def denoiser(self, class_labels=None, guidance: float | None = None, *, cond: dict | None = None,
                 null_cond: dict | None = None):
        """The network as the samplers call it, ``(x_t, t) -> output``, with the condition bound and
        classifier-free guidance of scale ``guidance`` (:mod:`~diffusion_course.guidance`; None: 1, the
        plain conditional model). ``cond``/``null_cond``: a ready condition instead of ``class_labels``."""
        from .guidance import ClassifierFreeGuidance, check_guidance_scale

        if guidance is not None:
            guidance = check_guidance_scale(guidance)
        if cond is None and class_labels is not None:
            labels = torch.as_tensor(class_labels).reshape(-1)
            cond, null_cond = self.conditions(labels.numel(), class_labels=labels)
        if cond is None:
            if guidance is not None:
                if self.diffusion.conditioning == "none":
                    raise ValueError("guidance needs a conditional model; this one was trained with conditioning "
                                     "'none'")
                what = "a prompt" if self.diffusion.conditioning == "text" else "class labels"
                raise ValueError(f"guidance needs a condition to steer towards: give {what}")
            return self.model
        if null_cond is None:
            raise ValueError("a condition needs its null condition (the unconditional input) for guidance")
        scale = 1.0 if guidance is None else guidance
        return ClassifierFreeGuidance(self.model, cond, null_cond, scale, variance_type=self.diffusion.variance)

    def _sampling_args(self, sampler: str, steps: int, eta: float, spacing: str) -> dict:
        return dict(sampler=sampler, steps=steps, eta=eta, spacing=spacing, prediction_type=self.diffusion.prediction,
                    variance_type=self.diffusion.variance, clip_x0=self.diffusion.clip_x0)

    # -- generating and editing ----------------------------------------------------------------

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
        class_labels=None,
        prompt: str | Sequence[str] | None = None,
        guidance: float | None = None,
        cond: dict | None = None,
        null_cond: dict | None = None,
        decode: bool = True,
    ) -> torch.Tensor:
        """``count`` images ``[count, C, H, W]`` in [-1, 1], on the CPU, drawn ``batch_size`` at a time.

        ``class_labels``: one class id or one per image (a class-conditional model); ``prompt``: one
        prompt for every image, or a list used in turn (a text-conditioned model; without one it
        draws from its unconditional model); ``guidance``: the
        classifier-free guidance scale w (None or 1: plain conditional; 0: unconditional; 2-5:
        guided). ``cond``/``null_cond``: a ready condition with ``count`` (or 1) rows per tensor, for
        other kinds of conditioning. Raises ValueError (one line) for a class out of range, labels or
        guidance for an unconditional model, a negative scale, a prompt for a model that reads none.

        A latent model's samples are decoded to images, unless ``decode=False`` (then: the scaled
        latents ``[count, c, h, w]``; a ``callback`` always sees latents).
        """
        if count < 1 or batch_size < 1:
            raise ValueError(f"count and batch_size must be positive, got {count} and {batch_size}")
        if cond is None:
            cond, null_cond = self.conditions(count, class_labels=class_labels, prompt=prompt) or (None, None)
        self.denoiser(guidance=guidance, cond=cond, null_cond=null_cond)  # check everything before sampling
        generator = torch.Generator(device=self.device).manual_seed(seed)
        schedule = self.schedule
        out = []
        bar = None
        if progress and count > batch_size:
            from tqdm.auto import tqdm

            bar = tqdm(total=count, desc="images", unit="img")
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            model = self.denoiser(guidance=guidance, cond=_rows(cond, start, n, count),
                                  null_cond=_rows(null_cond, start, n, count))
            images = sample(
                model, schedule, (n, *self.sample_shape), generator=generator, callback=callback,
                progress=progress and bar is None, device=self.device,
                **self._sampling_args(sampler, steps, eta, spacing),
            )
            if self.latent is not None and decode:
                images = self.latent.decode(images)
            out.append(images.cpu())
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        return torch.cat(out)

    @torch.no_grad()
    def edit(
        self, images: torch.Tensor, t0: float = 0.5, *, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
        spacing: str = "trailing", seed: int = 0, class_labels=None, guidance: float | None = None,
    ) -> torch.Tensor:
        """SDEdit (:func:`~diffusion_course.sampling.sdedit`): ``images [B, C, H, W]`` in [-1, 1] noised to
        ``t0`` (a fraction of T) and denoised, towards ``class_labels`` if given. On the CPU.
        A latent model edits the images' latents (encoded, edited, decoded)."""
        from .sampling import sdedit

        cond, null_cond = self.conditions(images.shape[0], class_labels=class_labels) or (None, None)
        model = self.denoiser(guidance=guidance, cond=cond, null_cond=null_cond)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        x = images.to(self.device)
        if self.latent is not None:
            x = self.latent.encode(x)
        out = sdedit(model, self.schedule, x, t0, generator=generator,
                     **self._sampling_args(sampler, steps, eta, spacing))
        if self.latent is not None and t0 > 0:
            out = self.latent.decode(out)
        elif self.latent is not None:
            out = images  # t0 = 0 keeps the images themselves, not their reconstruction
        return out.cpu()

    @torch.no_grad()
    def inpaint(
        self, images: torch.Tensor, mask: torch.Tensor, *, sampler: str = "ddpm", steps: int = 50, eta: float = 0.0,
        spacing: str = "trailing", resample: int = 1, jump: int = 1, seed: int = 0, class_labels=None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """RePaint inpainting (:func:`~diffusion_course.sampling.inpaint`): keep ``images`` where ``mask``
        is 1, generate where it is 0, towards ``class_labels`` if given. On the CPU. Pixel models only."""
        from .sampling import inpaint

        if self.latent is not None:
            raise ValueError("inpainting needs a pixel-space model: a latent model cannot keep pixels exactly "
                             "(a pixel mask has no exact counterpart among the latents)")

        cond, null_cond = self.conditions(images.shape[0], class_labels=class_labels) or (None, None)
        model = self.denoiser(guidance=guidance, cond=cond, null_cond=null_cond)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return inpaint(model, self.schedule, images.to(self.device), mask.to(self.device), resample=resample,
                       jump=jump, generator=generator, **self._sampling_args(sampler, steps, eta, spacing)).cpu()


def _rows(cond: dict | None, start: int, n: int, count: int) -> dict | None:
    """Rows ``start .. start + n`` of every per-image tensor in ``cond`` (tensors of one row are shared)."""
    if cond is None:
        return None
    return {key: value[start : start + n] if value.shape[0] == count and count != 1 else value
            for key, value in cond.items()}


__all__ = ["DiffusionPipeline"]
