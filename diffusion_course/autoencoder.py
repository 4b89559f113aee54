"""A small convolutional VAE: the autoencoder of latent diffusion.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", sec. 3) splits image generation in two. An autoencoder learns once to compress an
image ``x [C, H, W]`` into a smaller latent ``z [c, H/f, W/f]`` and back; the diffusion model
then learns the distribution of latents, which is much cheaper: the U-Net works on ``f^2``
times fewer positions. The paper calls this "perceptual compression" (the autoencoder keeps
what the eye needs, drops imperceptible detail) followed by "semantic compression" (diffusion).

The autoencoder is KL-regularised (the paper's "KL-reg." variant, sec. 3.1 and appendix G), a
variational autoencoder (Kingma & Welling 2014) with a very small KL weight:

- the encoder ``E`` maps an image to a mean and a log-variance per latent value, a diagonal
  Gaussian ``q(z | x) = N(mu(x), sigma(x)^2)`` (:class:`DiagonalGaussian`);
- training draws ``z = mu + sigma * eps`` (the reparameterisation trick, so gradients reach
  the encoder) and the decoder ``D`` reconstructs ``x_hat = D(z)``;
- the loss (:class:`VAEObjective`) is, per image,
  ``sum |x - x_hat|  +  beta * KL(q(z | x) || N(0, I))`` divided by the number of pixels.

Why **L1** for the reconstruction: a squared error is the log-likelihood of a Gaussian decoder
and is minimised by the *mean* of the plausible images, which is blurry; L1 (a Laplace
decoder) is minimised by their median and keeps edges sharper. It is also the pixel term of the
paper's autoencoder loss (which adds a perceptual LPIPS loss and a patch GAN; both need
pretrained networks or an adversarial game, so the course leaves them out and accepts a
little blur). ``reconstruction="mse"`` is there for comparison.

Why a **small beta** (default 1e-4): the KL term only has to keep the latent space tame
(roughly centred, no arbitrarily large values, no holes) so that diffusion can model it;
a large beta (beta = 1 is the plain VAE) squeezes information out of the latents and blurs the
reconstructions. The paper uses 1e-6 on sums of the same kind with much larger images. In a
short test (3 epochs on 6,000 Fashion-MNIST images) beta = 1e-6, 1e-4 and 1e-2 gave the same
test PSNR, 18.0 dB; 1e-2 gave the most centred latents. The latents' overall scale is
arbitrary, which is why diffusion works on latents divided by their standard deviation
(:func:`diffusion_course.latent.latent_scaling_factor`).

Training (:class:`AutoencoderRecipe`): 5 epochs, AdamW at 1e-3 by the course's loop. On 6,000
Fashion-MNIST images, 8 epochs (370 steps) reach 21.5 dB test PSNR and the loss is still
falling; the default recipe on all 60,000 images takes 2,300 steps.

Sizes. The encoder halves the resolution ``len(channel_mults) - 1`` times (``f = 4`` for
Fashion-MNIST). The U-Net that models the latents halves them again (the ``tiny`` and
``small`` presets twice), so the latent side must be divisible by 4: images are padded
(edge pixels repeated) to ``padded_size``, a multiple of ``f * latent_multiple``, and the
decoder crops its output back. A 28x28 grey image becomes a ``4 x 8 x 8`` latent
(28 -> pad 32 -> 16 -> 8): 256 numbers instead of 784, at 64 positions instead of 784.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .losses import ObjectiveOutput
from .unet import Downsample, Upsample
from .validation import check_choice, check_int, check_non_negative

RECONSTRUCTION_LOSSES = ("l1", "mse")
DEFAULT_KL_WEIGHT = 1e-4
AUTOENCODER_FORMAT = "diffusion-course/autoencoder"


@dataclass(frozen=True)
class AutoencoderConfig:
    """The shape of an :class:`Autoencoder`.

    Attributes:
        image_size, in_channels: the (square) images it encodes, e.g. 28 and 1.
        latent_channels: values per latent position (4, as Stable Diffusion).
        base_channels, channel_mults: level ``i`` has ``base_channels * channel_mults[i]``
            channels; the encoder downsamples between levels, so ``f = 2 ** (len(channel_mults) - 1)``.
        num_res_blocks: residual blocks per level.
        norm_groups: GroupNorm groups; must divide every width.
        latent_multiple: the latent side is a multiple of this (4 fits the U-Net presets
            ``tiny`` and ``small``; 8 would fit ``ddpm-cifar10``).
    """

    image_size: int = 28
    in_channels: int = 1
    latent_channels: int = 4
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    norm_groups: int = 8
    latent_multiple: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        for name in ("image_size", "in_channels", "latent_channels", "base_channels", "num_res_blocks",
                     "norm_groups", "latent_multiple"):
            check_int(name, getattr(self, name))
        if not self.channel_mults or not all(isinstance(m, int) and m > 0 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be positive integers, got {self.channel_mults!r}")
        bad = sorted({self.base_channels * m for m in self.channel_mults if self.base_channels * m % self.norm_groups})
        if bad:
            raise ValueError(f"autoencoder widths {bad} are not divisible by norm_groups={self.norm_groups}")

    @property
    def downsample_factor(self) -> int:
        """``f``: how much the encoder shrinks each side."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def padded_size(self) -> int:
        """The side images are padded to: the next multiple of ``f * latent_multiple``."""
        unit = self.downsample_factor * self.latent_multiple
        return math.ceil(self.image_size / unit) * unit

    @property
    def latent_size(self) -> int:
        return self.padded_size // self.downsample_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(latent_channels, latent_size, latent_size)``, e.g. ``(4, 8, 8)`` for 28x28 images."""
        return (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


PRESETS: dict[str, dict] = {
    "mnist": dict(base_channels=16, channel_mults=(1, 2, 4)),
    "fashion-mnist": dict(base_channels=16, channel_mults=(1, 2, 4)),
    "cifar10": dict(base_channels=32, channel_mults=(1, 2), latent_multiple=4),
    "folder": dict(base_channels=32, channel_mults=(1, 2), latent_multiple=4),
}
"""Per dataset. 28x28 grey: ``f = 4``, latents ``4 x 8 x 8`` (padded from 28 to 32). 32x32 colour
holds more detail per pixel, so ``f = 2``, latents ``4 x 16 x 16`` (3072 values become 1024): at
``f = 4`` a 256-value latent would have to carry a 3072-value image."""


def autoencoder_config(dataset: str, channels: int, image_size: int, **overrides) -> AutoencoderConfig:
    """The :data:`PRESETS` entry of ``dataset`` for ``channels`` x ``image_size``^2 images."""
    valid = {f.name for f in fields(AutoencoderConfig)} - {"image_size", "in_channels"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown autoencoder setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    settings = {**PRESETS.get(dataset, PRESETS["folder"]), **overrides}
    return AutoencoderConfig(image_size=image_size, in_channels=channels, **settings)


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


class DiagonalGaussian:
    """``q(z | x) = N(mean, exp(log_var))`` per latent value; ``mean``, ``log_var``: ``[B, c, h, w]``.

    The log-variance is clamped to [-30, 20] (as in the paper's code) so that ``exp`` stays finite.
    """

    def __init__(self, mean: torch.Tensor, log_var: torch.Tensor) -> None:
        self.mean = mean
        self.log_var = log_var.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.log_var)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std * eps`` (the reparameterisation trick: differentiable in mean and std)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """``KL(q || N(0, I))`` per example, summed over the latent values: ``[B]`` nats.

        ``0.5 * sum(mean^2 + var - 1 - log var)`` (Kingma & Welling 2014, appendix B).
        """
        terms = self.mean.float() ** 2 + self.log_var.float().exp() - 1.0 - self.log_var.float()
        return 0.5 * terms.flatten(1).sum(dim=1)


class _ResBlock(nn.Module):
    """GroupNorm, SiLU, conv, twice, plus a skip: the U-Net's block without the time input."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            nn.GroupNorm(groups, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Autoencoder(nn.Module):
    """Images ``[B, C, S, S]`` in [-1, 1] <-> latents ``[B, c, S'/f, S'/f]`` (``S'``: the padded side).

    - :meth:`encode` -> :class:`DiagonalGaussian` (use ``.mean`` for a deterministic latent);
    - :meth:`decode` -> images ``[B, C, S, S]``, unbounded (clamp to [-1, 1] for display);
    - ``forward(x, generator)`` -> ``(x_hat, mean, log_var)`` with a sampled latent: what the
      training objective calls (through any DDP / compile wrapper).
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = c = config
        widths = [c.base_channels * m for m in c.channel_mults]
        g = c.norm_groups
        enc: list[nn.Module] = [nn.Conv2d(c.in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for i, w in enumerate(widths):
            for _ in range(c.num_res_blocks):
                enc.append(_ResBlock(ch, w, g))
                ch = w
            if i < len(widths) - 1:
                enc.append(Downsample(ch))
        enc += [_ResBlock(ch, ch, g), nn.GroupNorm(g, ch), nn.SiLU()]
        enc.append(nn.Conv2d(ch, 2 * c.latent_channels, 3, padding=1))  # mean and log-variance
        self.encoder = nn.Sequential(*enc)

        # the mirror image; each upsampling convolution goes straight to the next (narrower)
        # width, which halves the cost of the decoder's most expensive layers
        dec: list[nn.Module] = [nn.Conv2d(c.latent_channels, ch, 3, padding=1), _ResBlock(ch, ch, g)]
        for i in reversed(range(len(widths))):
            for _ in range(c.num_res_blocks):
                dec.append(_ResBlock(ch, widths[i], g))
                ch = widths[i]
            if i > 0:
                dec.append(Upsample(ch, widths[i - 1]))
                ch = widths[i - 1]
        dec += [nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(ch, c.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: torch.Tensor, shape: tuple[int, int, int], what: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"the autoencoder expects {what} of shape [B, {', '.join(map(str, shape))}], got {got}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """``q(z | x)`` for images ``x [B, C, S, S]`` (padded to the latent grid by repeating edge pixels)."""
        self._check(x, self.config.image_shape, "images")
        pad = self.config.padded_size - self.config.image_size
        if pad:
            x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), mode="replicate")
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, log_var)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, S, S]`` from latents ``z [B, c, h, w]`` (the padding cropped off again)."""
        self._check(z, self.config.latent_shape, "latents")
        x = self.decoder(z)
        pad = self.config.padded_size - self.config.image_size
        if pad:
            lo = pad // 2
            x = x[..., lo : lo + self.config.image_size, lo : lo + self.config.image_size]
        return x

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior.mean, posterior.log_var

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``D(mean(E(x)))`` clamped to [-1, 1]: the deterministic round trip, for display and error."""
        return self.decode(self.encode(x).mean).clamp(-1.0, 1.0)

    @classmethod
    def from_config_dict(cls, values: dict) -> Autoencoder:
        """Rebuild from a config stored as plain data (lists become tuples)."""
        return cls(AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}))


# ---------------------------------------------------------------------------
# The objective the one training loop minimises
# ---------------------------------------------------------------------------


class VAEObjective:
    """``objective(model, x0, labels, generator)``: the VAE loss of one batch, for the
    :class:`~diffusion_course.trainer.Trainer` (labels are ignored).

    ``loss = mean over the batch of (sum_pixels rec(x, x_hat) + kl_weight * KL) / pixels`` with
    ``rec`` = ``|.|`` (``l1``, default) or ``(.)^2`` (``mse``); see the module docstring for both
    choices. Logged per step: ``l1`` and ``mse`` (per pixel) and ``kl`` (nats per latent value).
    ``preview_images`` (else the first batch seen) are what :meth:`preview` reconstructs.
    """

    def __init__(
        self, *, kl_weight: float = DEFAULT_KL_WEIGHT, reconstruction: str = "l1",
        preview_images: torch.Tensor | None = None,
    ) -> None:
        check_non_negative("kl_weight", kl_weight)
        check_choice("reconstruction", reconstruction, RECONSTRUCTION_LOSSES)
        self.kl_weight = float(kl_weight)
        self.reconstruction = reconstruction
        self.preview_images = None if preview_images is None else preview_images.detach().cpu()[:32]

    def __call__(self, model, x0: torch.Tensor, labels, generator: torch.Generator) -> ObjectiveOutput:
        if self.preview_images is None:
            self.preview_images = x0.detach().cpu()[:32].clone()
        x_hat, mean, log_var = model(x0, generator)
        error = x_hat.float() - x0.float()
        l1, se = error.abs().flatten(1), error.pow(2).flatten(1)
        rec = (l1 if self.reconstruction == "l1" else se).sum(dim=1)
        kl = DiagonalGaussian(mean, log_var).kl()
        loss = ((rec + self.kl_weight * kl) / l1.shape[1]).mean()
        logs = {"l1": l1.mean(dim=1).detach(), "mse": se.mean(dim=1).detach(), "kl": (kl / mean[0].numel()).detach()}
        return ObjectiveOutput(loss=loss, logs=logs)

    def update(self, feedback: dict) -> None:
        """Nothing to learn from after a step."""

    def records(self) -> dict:
        return {"autoencoder_objective": {"kl_weight": self.kl_weight, "reconstruction": self.reconstruction}}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @torch.no_grad()
    def preview(self, model, shape: tuple[int, ...], generator: torch.Generator, steps: int | None = None):
        """``shape[0] // 2`` preview images followed by their reconstructions, ``[2 n, C, H, W]``."""
        if self.preview_images is None:
            return None
        n = max(1, min(shape[0] // 2, self.preview_images.shape[0]))
        device = next(model.parameters()).device
        x = self.preview_images[:n].to(device)
        return torch.cat([x, model.reconstruct(x).to(x.dtype)])


# ---------------------------------------------------------------------------
# Training once, saving, loading
# ---------------------------------------------------------------------------


@dataclass
class AutoencoderRecipe:
    """How the course's autoencoder of a dataset is trained (part of its cache key)."""

    dataset: str = "fashion-mnist"
    epochs: float = 5.0
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    kl_weight: float = DEFAULT_KL_WEIGHT
    reconstruction: str = "l1"
    seed: int = 0
    overrides: dict = field(default_factory=dict)


def fingerprint(images: torch.Tensor, labels: torch.Tensor | None = None, recipe=None) -> str:
    """A short sha256 of images (and labels, and a recipe dataclass): a cached autoencoder or set
    of latents is reused only for exactly what it was made from."""
    h = hashlib.sha256()
    h.update(repr(tuple(images.shape)).encode())
    h.update(images.detach().cpu().contiguous().float().numpy().tobytes())
    if labels is not None:
        h.update(labels.detach().cpu().contiguous().long().numpy().tobytes())
    if recipe is not None:
        h.update(repr(sorted(asdict(recipe).items())).encode())
    return h.hexdigest()[:16]


def train_autoencoder(
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: AutoencoderRecipe,
    *,
    out: str | Path,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Autoencoder:
    """Train the autoencoder of ``recipe.dataset`` on ``images [N, C, S, S]`` in [-1, 1] with the
    course's :class:`~diffusion_course.trainer.Trainer` and :class:`VAEObjective`; returns the
    EMA model in eval mode. ``out`` receives the run's checkpoint, metrics and preview grid."""
    from .runtime import seed_everything
    from .trainer import Trainer
    from .training import TrainConfig

    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"train_autoencoder expects images [N, C, H, W], got {tuple(images.shape)}")
    seed_everything(recipe.seed)
    model = Autoencoder(autoencoder_config(recipe.dataset, images.shape[1], images.shape[-1], **recipe.overrides))
    config = TrainConfig(
        dataset=recipe.dataset, batch_size=min(recipe.batch_size, images.shape[0]), lr=recipe.lr,
        epochs=recipe.epochs, warmup_steps=recipe.warmup_steps, ema_decay=0.999, seed=recipe.seed, out=str(out),
        sample_every=0, sample_count=16, checkpoint_every=0, log_every=50, num_workers=0,
        progress=progress, device=torch.device(device).type, hflip="off",
    )
    preview = images[torch.linspace(0, images.shape[0] - 1, min(8, images.shape[0])).long()]
    objective = VAEObjective(kl_weight=recipe.kl_weight, reconstruction=recipe.reconstruction, preview_images=preview)
    trainer = Trainer(config, model, (images, labels), objective=objective, device=device)
    trainer.train()
    trainer.save_preview()
    return trainer.ema.module.eval()


def autoencoder_state(model: Autoencoder, **extra) -> dict:
    """The autoencoder as plain data (format, config, weights on the CPU, and ``extra`` entries)."""
    from .checkpoint import to_plain

    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": AUTOENCODER_FORMAT, "config": to_plain(model.config), "weights": weights, **to_plain(extra)}


def autoencoder_from_state(state: dict, *, where: str = "the file") -> Autoencoder:
    """Rebuild an :class:`Autoencoder` (eval mode) from :func:`autoencoder_state`'s dict."""
    from .checkpoint import CheckpointError

    if not isinstance(state, dict) or state.get("format") != AUTOENCODER_FORMAT:
        raise CheckpointError(f"{where} holds no autoencoder of diffusion-course")
    try:
        model = Autoencoder.from_config_dict(dict(state["config"]))
        model.load_state_dict(state["weights"])
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{where}: the autoencoder weights do not fit its config ({err})") from err
    return model.eval()


def save_autoencoder(model: Autoencoder, path: str | Path, **extra) -> Path:
    """Write the autoencoder (and ``extra`` plain data, e.g. its scaling factor) atomically."""
    from .checkpoint import save_checkpoint

    return save_checkpoint(autoencoder_state(model, **extra), path)


def load_autoencoder(path: str | Path, map_location="cpu") -> tuple[Autoencoder, dict]:
    """Rebuild an autoencoder written by :func:`save_autoencoder`; returns ``(model, state)``."""
    from .checkpoint import load_checkpoint

    state = load_checkpoint(path, map_location=map_location)
    return autoencoder_from_state(state, where=str(path)), state


def reconstruction_error(model: Autoencoder, images: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """How well ``model`` round-trips ``images [N, C, S, S]`` in [-1, 1]: per-pixel ``mse`` and
    ``l1`` of ``reconstruct(x)`` (clamped to [-1, 1]) and ``psnr`` in dB for the peak-to-peak
    range 2 of [-1, 1] images: ``10 log10(2^2 / mse)`` (the same number as for [0, 1] images
    with peak 1)."""
    model.eval()
    device = next(model.parameters()).device
    se = ae = 0.0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device).float()
        err = model.reconstruct(x).float() - x
        se += err.pow(2).sum().item()
        ae += err.abs().sum().item()
    n = images.numel()
    mse = se / n
    psnr = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf
    return {"mse": mse, "l1": ae / n, "psnr": psnr}


__all__ = [
    "AUTOENCODER_FORMAT",
    "DEFAULT_KL_WEIGHT",
    "PRESETS",
    "RECONSTRUCTION_LOSSES",
    "Autoencoder",
    "AutoencoderConfig",
    "AutoencoderRecipe",
    "DiagonalGaussian",
    "VAEObjective",
    "autoencoder_config",
    "autoencoder_from_state",
    "autoencoder_state",
    "fingerprint",
    "load_autoencoder",
    "reconstruction_error",
    "save_autoencoder",
    "train_autoencoder",
]
