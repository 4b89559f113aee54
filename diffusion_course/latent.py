"""Diffusion in the latent space of an autoencoder (Rombach et al. 2022, "Latent Diffusion", sec. 3).

The recipe, in the order it runs:

1. **Train the autoencoder once** per dataset (:func:`course_autoencoder`, with the course's one
   training loop and :class:`~diffusion_course.autoencoder.VAEObjective`) and cache it under
   ``data/autoencoders/`` with a fingerprint of the images and the recipe, as the metrics
   classifier is cached.
2. **Measure the latents' scale.** The KL weight is tiny, so nothing fixes the latents' overall
   variance; the forward process, though, assumes data of roughly unit scale (it mixes the data
   with unit-variance noise). So every latent is multiplied by ``scaling_factor = 1 / std`` of the
   encoded training latents (:func:`latent_scaling_factor`): Stable Diffusion's 0.18215 was found
   the same way, on a batch of its training images.
3. **Encode the dataset once** (:func:`dataset_latents`, cached too): the posterior *means*, scaled.
   Using the mean rather than a sample makes the latents a fixed dataset that the existing
   :class:`~diffusion_course.batching.BatchStream` streams like images. The posterior's std is
   small next to the spread of the means and shrinks with training (on 6,000 Fashion-MNIST
   images: 0.17 against 1.2 after 140 steps, 0.04 against 1.3 after 370), so the diffusion model
   sees the centres of the posteriors rather than a slightly blurred cloud around them.
4. **Train diffusion on latents**: the same objective and loop, wrapped by :class:`LatentObjective`,
   which records in the checkpoint what a sampler needs -- the :class:`~diffusion_course.diffusion.LatentConfig`
   in the ``DiffusionConfig`` and the autoencoder's weights themselves, so a checkpoint is
   self-contained: it samples on a machine that never saw the cache.
5. **Sample latents, decode for display** (:class:`LatentSpace.decode`): samplers run with
   ``clip_x0=False`` (scaled latents are not confined to [-1, 1]), then ``D(z / scaling_factor)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .autoencoder import (
    Autoencoder,
    AutoencoderRecipe,
    autoencoder_from_state,
    autoencoder_state,
    fingerprint,
    load_autoencoder,
    reconstruction_error,
    save_autoencoder,
    train_autoencoder,
)
from .diffusion import LatentConfig
from .runtime import note


class AutoencoderUnavailable(RuntimeError):
    """No cached autoencoder fits the data and training one was not allowed."""


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """``1 / std`` of ``latents [N, c, h, w]`` (over all values): multiplied by it, they have unit std."""
    if not isinstance(latents, torch.Tensor) or latents.ndim < 2 or latents.numel() < 2:
        raise ValueError("latent_scaling_factor needs a tensor of at least two latents")
    std = latents.detach().double().std().item()
    if not std > 0 or std != std or std == float("inf"):
        raise ValueError(f"the latents' std is {std}; cannot scale them (did the autoencoder train?)")
    return 1.0 / std


@torch.no_grad()
def encode_images(autoencoder: Autoencoder, images: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
    """The posterior means ``mean(E(x))`` of ``images [N, C, S, S]``, unscaled, float32 on the CPU."""
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    parts = [autoencoder.encode(images[i : i + batch_size].to(device).float()).mean.float().cpu()
             for i in range(0, images.shape[0], batch_size)]
    return torch.cat(parts)


@dataclass
class LatentSpace:
    """An autoencoder with the scale of its latents: images <-> the latents diffusion works on.

    ``encode(x) = scaling_factor * mean(E(x))`` and ``decode(z) = D(z / scaling_factor)`` clamped
    to [-1, 1]. ``key`` names the cached autoencoder (dataset and fingerprint).
    """

    autoencoder: Autoencoder
    scaling_factor: float
    key: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(c, h, w)`` of one latent."""
        return self.autoencoder.config.latent_shape

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.autoencoder.config.image_shape

    def to(self, device: torch.device | str) -> LatentSpace:
        self.autoencoder.to(device)
        return self

    def encode(self, images: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
        """Scaled latents ``[N, c, h, w]`` (float32, CPU) of images ``[N, C, S, S]`` in [-1, 1]."""
        return encode_images(self.autoencoder, images, batch_size=batch_size) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
        """Images ``[N, C, S, S]`` in [-1, 1] from scaled latents, on the latents' device."""
        self.autoencoder.eval()
        device = next(self.autoencoder.parameters()).device
        parts = [self.autoencoder.decode(latents[i : i + batch_size].to(device).float() / self.scaling_factor)
                 for i in range(0, latents.shape[0], batch_size)]
        return torch.cat(parts).clamp(-1.0, 1.0).to(latents.device)

    def config(self) -> LatentConfig:
        """What a :class:`~diffusion_course.diffusion.DiffusionConfig` records about this space."""
        return LatentConfig(shape=self.shape, image_shape=self.image_shape,
                            scaling_factor=self.scaling_factor, autoencoder=self.key)

    def state(self) -> dict:
        """Plain data with the weights, for a diffusion checkpoint's ``"autoencoder"`` entry."""
        return autoencoder_state(self.autoencoder, key=self.key, scaling_factor=self.scaling_factor)

    @classmethod
    def from_checkpoint(cls, state: dict, where: str = "the checkpoint") -> LatentSpace:
        """The latent space a latent diffusion checkpoint carries (its ``"autoencoder"`` entry)."""
        from .checkpoint import CheckpointError

        entry = state.get("autoencoder")
        if entry is None:
            raise CheckpointError(f"{where} is a latent diffusion model but holds no autoencoder weights")
        model = autoencoder_from_state(entry, where=where)
        return cls(model, float(entry["scaling_factor"]), str(entry.get("key", "")))


# ---------------------------------------------------------------------------
# Trained once per dataset, kept under data/autoencoders with a fingerprint
# ---------------------------------------------------------------------------


def cache_dir(root: Path | str | None = None) -> Path:
    """``root``, or ``data/autoencoders`` under the data root (:func:`~diffusion_course.data.default_data_root`)."""
    from .data import default_data_root

    return Path(root) if root is not None else default_data_root() / "autoencoders"


def autoencoder_key(images: torch.Tensor, labels: torch.Tensor | None, recipe: AutoencoderRecipe) -> str:
    """``vae-<dataset>-<fingerprint>``: names the cached autoencoder of these images and recipe
    (its file is ``cache_dir(root) / f"{key}.pt"``)."""
    return f"vae-{recipe.dataset}-{fingerprint(images, labels, recipe)}"


def course_autoencoder(
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: AutoencoderRecipe | None = None,
    *,
    root: Path | str | None = None,
    device: torch.device | str = "cpu",
    train: bool = True,
    progress: bool = True,
) -> LatentSpace:
    """The autoencoder of ``images`` (and its latent scale), from the cache or trained now.

    The cache file ``vae-<dataset>-<fingerprint>.pt`` is keyed by a hash of the images, labels
    and recipe, so changed data or settings never reuse a stale autoencoder. Training also
    encodes the images once, computes the scaling factor from them and caches those latents.
    """
    recipe = recipe or AutoencoderRecipe()
    key = autoencoder_key(images, labels, recipe)
    path = cache_dir(root) / f"{key}.pt"
    if path.is_file():
        model, state = load_autoencoder(path)
        return LatentSpace(model.to(device), float(state["scaling_factor"]), key)
    if not train:
        raise AutoencoderUnavailable(f"no trained autoencoder for these images at {path}; train it once first")
    note(f"training the {recipe.dataset} autoencoder once ({recipe.epochs:g} epochs; cached in {path.parent}) ...")
    model = train_autoencoder(images, labels, recipe, out=path.parent / f"run-{key}", device=device, progress=progress)
    latents = encode_images(model, images)
    scale = latent_scaling_factor(latents)
    space = LatentSpace(model, scale, key)
    _save_latents(latents * scale, space, _latents_path(space, images, labels, root))
    errors = reconstruction_error(model, images[: min(2000, images.shape[0])])
    save_autoencoder(model, path, key=key, scaling_factor=scale, train_reconstruction=errors)
    note(f"{recipe.dataset} autoencoder: latents {tuple(model.config.latent_shape)}, scaling factor {scale:.4f}, "
         f"training-image PSNR {errors['psnr']:.1f} dB")
    return space


def dataset_latents(
    space: LatentSpace, images: torch.Tensor, labels: torch.Tensor | None = None, *, root: Path | str | None = None
) -> torch.Tensor:
    """``space.encode(images)``, computed once and cached next to the autoencoder (float32, CPU)."""
    from .checkpoint import load_checkpoint

    path = _latents_path(space, images, labels, root)
    if path.is_file():
        state = load_checkpoint(path)
        if state.get("scaling_factor") == space.scaling_factor:
            return state["latents"]
    latents = space.encode(images)
    _save_latents(latents, space, path)
    return latents


def _latents_path(space: LatentSpace, images: torch.Tensor, labels, root) -> Path:
    return cache_dir(root) / f"latents-{space.key or 'unnamed'}-{fingerprint(images, labels, None)}.pt"


def _save_latents(latents: torch.Tensor, space: LatentSpace, path: Path) -> None:
    from .checkpoint import save_checkpoint

    save_checkpoint({"latents": latents.contiguous(), "scaling_factor": space.scaling_factor,
                     "autoencoder": space.key}, path)


# ---------------------------------------------------------------------------
# Training diffusion on latents
# ---------------------------------------------------------------------------


class LatentObjective:
    """A diffusion objective whose ``x0`` are scaled latents; wraps any diffusion objective.

    Training is unchanged (the loop hands it latents instead of images). What changes is what
    goes into the checkpoint -- the ``DiffusionConfig`` gains its ``latent`` entry and the
    autoencoder's weights come along as ``"autoencoder"`` -- and the preview, which decodes.
    """

    def __init__(self, inner, space: LatentSpace) -> None:
        self.inner = inner
        self.space = space
        inner.diffusion = replace(inner.diffusion, latent=space.config())
        self.diffusion = inner.diffusion

    def __call__(self, model, x0: torch.Tensor, cond, generator: torch.Generator):
        return self.inner(model, x0, cond, generator)

    def update(self, feedback: dict) -> None:
        self.inner.update(feedback)

    def records(self) -> dict:
        return {**self.inner.records(), "autoencoder": self.space.state()}

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    @torch.no_grad()
    def preview(self, model, shape: tuple[int, ...], generator: torch.Generator, steps: int | None = None):
        """Latents sampled by the wrapped objective's preview (unclipped), decoded to images."""
        latents = self.inner.preview(model, shape, generator, steps=steps)
        return self.space.to(latents.device).decode(latents)


def latent_training_data(config, source, stats: dict, *, state: dict | None = None, device="cpu", info=None,
                         progress: bool = True):
    """Turn a run's training images into latents: ``(source, stats, space)`` for the Trainer.

    ``config`` is the run's :class:`~diffusion_course.training.TrainConfig`; ``source`` and
    ``stats`` come from :func:`~diffusion_course.batching.load_training_data`. A resumed run
    (``state``) uses the autoencoder stored in its checkpoint, so its latents cannot change. Under
    torchrun, rank 0 trains and encodes while the others wait, then read the cache.
    """
    if not isinstance(source, tuple):
        raise ValueError("--latent needs a dataset that fits in memory (the latents are computed once); "
                         "use --limit or a smaller --image-size")
    images, labels = source
    recipe = AutoencoderRecipe(dataset=config.dataset, epochs=config.vae_epochs, seed=config.seed)
    distributed = info is not None and info.enabled
    if distributed and not info.is_main:
        import torch.distributed as dist

        dist.barrier()  # rank 0 fills the cache first
    if state is not None:
        space = LatentSpace.from_checkpoint(state).to(device)
    else:
        main = not distributed or info.is_main
        space = course_autoencoder(images, labels, recipe, device=device, train=main, progress=progress)
    latents = dataset_latents(space, images, labels)
    if distributed and info.is_main:
        import torch.distributed as dist

        dist.barrier()
    stats = {**stats, "latent": {"shape": list(space.shape), "scaling_factor": space.scaling_factor,
                                 "autoencoder": space.key, "std": float(latents.std())}}
    return (latents.to(images.device), labels), stats, space


__all__ = [
    "AutoencoderUnavailable",
    "LatentObjective",
    "LatentSpace",
    "autoencoder_key",
    "cache_dir",
    "course_autoencoder",
    "dataset_latents",
    "encode_images",
    "latent_scaling_factor",
    "latent_training_data",
]
