"""The denoising U-Net: the network that looks at a noisy image x_t and its timestep t.

A diffusion model trains one network ``eps_theta(x_t, t)`` to predict the noise that was
mixed into an image (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", DDPM,
eq. 14). DDPM's network is a U-Net (Ronneberger et al. 2015) in the style of PixelCNN++
(Salimans et al. 2017), and this module builds it from five pieces, in reading order:

1. :func:`timestep_embedding` and :class:`TimeEmbedding` -- the integer t becomes a vector
   of sines and cosines (Vaswani et al. 2017, sec. 3.5), then a small MLP (DDPM appendix B).
2. :class:`ResBlock` -- GroupNorm, SiLU, 3x3 convolution, twice, with the time embedding
   added in between (DDPM appendix B), or used as a per-channel scale and shift
   ("scale-shift", Nichol & Dhariwal 2021, "Improved DDPM", sec. 3 / Dhariwal & Nichol
   2021, "Diffusion Models Beat GANs", sec. 3, "adaptive group normalisation").
3. :class:`AttentionBlock` and :class:`CrossAttentionBlock` -- multi-head self-attention
   over the pixels of a feature map, and attention from pixels to a context sequence
   (Rombach et al. 2022, "Latent Diffusion", sec. 3.3), both through
   :func:`torch.nn.functional.scaled_dot_product_attention`.
4. :class:`Downsample` and :class:`Upsample` -- halve / double the resolution.
5. :class:`UNet` -- the encoder-decoder with skip connections that ties them together,
   configured by a :class:`UNetConfig`; :data:`PRESETS` holds named configurations.

Conventions. Images are ``[B, C, H, W]`` floats, typically in [-1, 1]. Timesteps ``t``
are ``[B]`` integers ``0 .. T-1`` (as in :mod:`diffusion_course.schedules`) or floats
(continuous time works too). Every residual branch ends in a zero-initialised layer, as in
DDPM's reference code, so each block starts as the identity; the final output
convolution is zero-initialised too, so an untrained U-Net predicts exactly 0.

Sizes: a U-Net with L levels halves the image L-1 times, so H and W must be divisible by
``2 ** (L-1)``: 28x28 MNIST works with three levels (28 -> 14 -> 7), 32x32 with up to six.
Memory format: the model also runs in ``torch.channels_last``; convert both the model and
the input with ``.to(memory_format=torch.channels_last)``. Nothing here allocates large
tensors at import time, so ``from diffusion_course.unet import UNet`` is quick.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "PRESETS",
    "AttentionBlock",
    "CrossAttentionBlock",
    "Downsample",
    "ResBlock",
    "TimeEmbedding",
    "UNet",
    "UNetBlock",
    "UNetConfig",
    "Upsample",
    "conv_receptive_field",
    "count_parameters",
    "example_inputs",
    "forward_flops",
    "get_config",
    "timestep_embedding",
]


# ---------------------------------------------------------------------------------------
# 1. Time embedding
# ---------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps, the Transformer's position encoding applied to t.

    Convention (DDPM's ``get_timestep_embedding``, taken from tensor2tensor): the output is
    ``cat[sin(t * f), cos(t * f)]`` -- **sines first, then cosines** -- with ``dim // 2``
    frequencies spaced geometrically from 1 down to ``1 / max_period``:

        f_i = max_period ** (-i / (dim/2 - 1)),    i = 0 .. dim/2 - 1

    This equals diffusers' ``get_timestep_embedding(t, dim, flip_sin_to_cos=False,
    downscale_freq_shift=1, max_period=max_period)``. (diffusers' ``UNet2DModel`` default
    flips to ``cat[cos, sin]`` with ``f_i = max_period ** (-i / (dim/2))``; both work, they
    are just different fixed features.) Low frequencies tell far-apart timesteps apart,
    high frequencies neighbouring ones.

    Args:
        t: timesteps ``[B]``, integer or float (a 0-d tensor is treated as ``[1]``).
        dim: embedding size, even and at least 2.
        max_period: the slowest wave's period, in units of t.

    Returns:
        float32 tensor ``[B, dim]`` with values in [-1, 1], on ``t``'s device.
    """
    if not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even integer >= 2 (sin and cos halves), got {dim!r}")
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1:
        raise ValueError(f"t must have shape [B] (one timestep per image), got shape {tuple(t.shape)}")
    half = dim // 2
    # float32 throughout (MPS has no float64); for t near 1000 the last digits of sin/cos
    # depend on the order of operations, which here is the same as diffusers'
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeEmbedding(nn.Module):
    """t -> sinusoidal features of size ``dim`` -> Linear -> SiLU -> Linear (DDPM appendix B).

    Input ``t`` ``[B]`` (integer or float); output ``[B, embed_dim]``, *before* any
    activation: each :class:`ResBlock` applies its own SiLU and projection.
    """

    def __init__(self, dim: int, embed_dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.max_period = max_period
        self.linear_1 = nn.Linear(dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.dim, self.max_period).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


# ---------------------------------------------------------------------------------------
# 2. Residual block
# ---------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding (DDPM appendix B; Wide ResNet style).

        h = conv1(SiLU(GroupNorm(x)))
        e = Linear(SiLU(temb))                                  # one projection per block
        default:      h = GroupNorm(h + e)
        scale_shift:  h = GroupNorm(h) * (1 + scale) + shift    # e = [scale, shift]
        out = skip(x) + conv2(Dropout(SiLU(h)))

    ``skip`` is a 1x1 convolution when the channel count changes, else the identity, and
    ``conv2`` starts at zero so the block starts as ``skip(x)``.

    Shapes: ``x [B, in_channels, H, W]``, ``temb [B, time_dim]`` -> ``[B, out_channels, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        dropout: float = 0.0,
        scale_shift: bool = False,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_channels * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.time_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


# ---------------------------------------------------------------------------------------
# 3. Attention
# ---------------------------------------------------------------------------------------


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C] (a free view when x is channels_last)."""
    return x.flatten(2).transpose(1, 2)


def _to_image(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, H*W, C] -> [B, C, H, W] in the same memory format as ``like``."""
    b, c, h, w = like.shape
    image = tokens.transpose(1, 2).reshape(b, c, h, w)  # a channels_last view
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return image
    return image.contiguous()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Multi-head attention on token sequences: q [B, N, C], k and v [B, L, C] -> [B, N, C]."""
    b, n, c = q.shape

    def heads(x: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, heads, L, C/heads]
        return x.unflatten(2, (num_heads, c // num_heads)).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # softmax(q k^T / sqrt(d)) v
    return out.transpose(1, 2).reshape(b, n, c)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W pixels of a feature map, with a residual.

        out = x + proj(MHA(q, k, v)),    [q, k, v] = W_qkv GroupNorm(x)

    As in DDPM (which used one head at 16x16) every pixel attends to every other pixel;
    the projections act on channels only (DDPM's "NIN" layers). ``proj`` starts at zero.
    Cost grows with (H*W)^2, which is why U-Nets put attention at low resolutions only.

    Shapes: ``x [B, C, H, W]`` -> ``[B, C, H, W]``; ``C`` must be divisible by ``num_heads``.
    """

    def __init__(self, channels: int, num_heads: int = 1, norm_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(_to_tokens(self.norm(x))).chunk(3, dim=2)
        return x + _to_image(self.proj(_attend(q, k, v, self.num_heads)), like=x)


class CrossAttentionBlock(nn.Module):
    """Multi-head cross-attention: pixels (queries) attend to a context sequence (keys, values).

        out = x + proj(MHA(W_q GroupNorm(x), W_k c, W_v c))

    This is how Latent Diffusion (Rombach et al. 2022, sec. 3.3) conditions a U-Net on text
    or any other sequence ``c``. ``proj`` starts at zero, so the block starts as the identity.

    Shapes: ``x [B, C, H, W]``, ``context [B, L, context_dim]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int = 1, norm_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self.q(_to_tokens(self.norm(x)))
        k, v = self.kv(context).chunk(2, dim=2)
        return x + _to_image(self.proj(_attend(q, k, v, self.num_heads)), like=x)


# ---------------------------------------------------------------------------------------
# 4. Resolution changes
# ---------------------------------------------------------------------------------------


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution: ``[B, C, H, W] -> [B, C, H/2, W/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 convolution to smooth it.

    ``[B, C, H, W] -> [B, out_channels, 2H, 2W]`` (``out_channels`` defaults to ``C``). A
    transposed convolution would do it in one layer but tends to leave checkerboard
    artefacts (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").
    """

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias, so the residual branch it ends starts switched off."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ---------------------------------------------------------------------------------------
# 5. The U-Net
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines a :class:`UNet`. Print it to see the architecture in one line.

    The defaults are DDPM's CIFAR-10 network (Ho et al. 2020, appendix B), so
    ``UNetConfig() == PRESETS["ddpm-cifar10"]``; :func:`get_config` starts from a preset instead.

    Attributes:
        image_size: side of the (square) training images. It must be divisible by
            ``2 ** (len(channel_mults) - 1)``, the total downsampling factor, and it decides
            where attention goes. The built model runs on any H, W divisible by that factor.
        in_channels, out_channels: image channels in and predicted channels out (1 or 3).
        base_channels: width of the first level; level ``i`` has
            ``base_channels * channel_mults[i]`` channels.
        channel_mults: one multiplier per resolution level; ``len(channel_mults) - 1``
            downsamplings (DDPM CIFAR-10: ``(1, 2, 2, 2)``, i.e. 32 -> 16 -> 8 -> 4).
        num_res_blocks: residual blocks per level on the way down (the way up has one more,
            as in DDPM, to consume the extra skip connection from each downsampling).
        attention_resolutions: feature-map sides at which self-attention follows each
            residual block, e.g. ``(16,)``; each must be one of ``level_resolutions``. The middle
            block (lowest resolution) always has one self-attention layer, as in DDPM, so ``()``
            means "attention only there".
        dropout: dropout probability inside every residual block (DDPM CIFAR-10: 0.1).
        num_heads: attention heads; every width that gets attention must be divisible by it.
        scale_shift: condition GroupNorm on t as ``* (1 + scale) + shift`` instead of adding
            the embedding (Improved DDPM); doubles each block's time projection.
        num_classes: build a class-label embedding added to the time embedding (for
            class-conditional models and classifier-free guidance). Labels are
            ``0 .. num_classes - 1``; label ``num_classes`` is the extra learned "no class"
            label, which is also what ``class_labels=None`` means.
        context_dim: build a cross-attention layer after every self-attention layer,
            attending to a ``[B, L, context_dim]`` context sequence (e.g. text embeddings).
        grad_checkpoint: recompute each block's activations in the backward pass
            (:func:`torch.utils.checkpoint.checkpoint`) instead of storing them: much less
            memory for one extra forward pass per step; the same outputs and gradients.
        norm_groups: GroupNorm groups (32 in DDPM); must divide every width.
        lean_upsample: let each :class:`Upsample` convolution go straight to the next level's
            (smaller) width instead of keeping its own. That convolution runs at the larger
            resolution, so this saves FLOPs where they are most expensive. DDPM keeps widths
            (False); the CPU-oriented ``small`` preset uses True.
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    scale_shift: bool = False
    num_classes: int | None = None
    context_dim: int | None = None
    grad_checkpoint: bool = False
    norm_groups: int = 32
    lean_upsample: bool = False

    def __post_init__(self) -> None:
        # lists are accepted for convenience but stored as tuples, so configs stay hashable
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        _check_config(self)

    @property
    def downsample_factor(self) -> int:
        """How much the U-Net shrinks an image at its lowest level: ``2 ** (levels - 1)``."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Feature-map side at each level for ``image_size`` inputs, e.g. ``(28, 14, 7)``."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mults)))

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding MLP: ``4 * base_channels``, as in DDPM."""
        return 4 * self.base_channels


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_config(c: UNetConfig) -> None:
    for name in ("image_size", "in_channels", "out_channels", "base_channels", "num_res_blocks", "num_heads",
                 "norm_groups"):
        if not _positive_int(getattr(c, name)):
            raise ValueError(f"{name} must be a positive integer, got {getattr(c, name)!r}")
    if not c.channel_mults or not all(_positive_int(m) for m in c.channel_mults):
        raise ValueError(f"channel_mults must be a non-empty tuple of positive integers, got {c.channel_mults!r}")
    if not all(_positive_int(r) for r in c.attention_resolutions):
        raise ValueError(f"attention_resolutions must be positive integers, got {c.attention_resolutions!r}")
    for name in ("num_classes", "context_dim"):
        value = getattr(c, name)
        if value is not None and not _positive_int(value):
            raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
    if not isinstance(c.dropout, (int, float)) or not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {c.dropout!r}")
    factor = c.downsample_factor
    if c.image_size % factor:
        lower, upper = c.image_size // factor * factor, (c.image_size // factor + 1) * factor
        nearby = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"image_size {c.image_size} is not divisible by {factor} = 2**(len(channel_mults)-1) for "
            f"channel_mults={c.channel_mults}; use a multiple of {factor} (e.g. {nearby}) or fewer channel_mults"
        )
    widths = {c.base_channels * m for m in c.channel_mults}
    bad = sorted(w for w in widths if w % c.norm_groups)
    if bad:
        raise ValueError(f"channel widths {bad} are not divisible by norm_groups={c.norm_groups}; "
                         "change base_channels or norm_groups")
    levels = c.level_resolutions
    stray = sorted(set(c.attention_resolutions) - set(levels))
    if stray:
        raise ValueError(f"attention_resolutions {tuple(stray)} match no level of a {c.image_size}x{c.image_size} "
                         f"U-Net; choose from its levels {levels} (or () for attention in the middle only)")
    widths_at = dict(zip(levels, (c.base_channels * m for m in c.channel_mults), strict=True))
    attn_widths = {widths_at[r] for r in c.attention_resolutions}
    attn_widths.add(c.base_channels * c.channel_mults[-1])  # the middle block
    bad = sorted(w for w in attn_widths if w % c.num_heads)
    if bad:
        raise ValueError(f"attention widths {bad} are not divisible by num_heads={c.num_heads}; change num_heads")


class UNetBlock(nn.Module):
    """A ResBlock, optionally followed by self-attention and cross-attention: the unit the U-Net stacks.

    ``forward(x, temb, context=None)``; cross-attention is skipped when ``context`` is None.
    """

    def __init__(self, res: ResBlock, attn: AttentionBlock | None = None,
                 cross: CrossAttentionBlock | None = None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn
        self.cross = cross

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.res(x, temb)
        if self.attn is not None:
            h = self.attn(h)
        if self.cross is not None and context is not None:
            h = self.cross(h, context)
        return h


class UNet(nn.Module):
    """DDPM's denoising U-Net, configurable by a :class:`UNetConfig` (Ho et al. 2020, appendix B).

    Layout, for ``num_res_blocks`` = N::

        x -> conv_in
          -> each level, top down:   N x (ResBlock [+ attention]), then Downsample (not after the last)
          -> middle:                 ResBlock + attention + ResBlock
          -> each level, bottom up:  N+1 x (concatenate a skip, ResBlock [+ attention]), then Upsample
                                     (not after the top level)
          -> GroupNorm -> SiLU -> conv_out

    Every output of the way down (including conv_in's) is kept and concatenated to the
    input of one residual block on the way up: these skip connections hand fine detail
    straight to the decoder. ``conv_out`` starts at zero.

    Conditioning hooks (both optional): with ``config.num_classes`` a class embedding is
    added to the time embedding; with ``config.context_dim`` every self-attention is
    followed by cross-attention on ``context``.

    Example:
        >>> model = UNet.from_preset("small", image_size=28, in_channels=1, out_channels=1)
        >>> model(torch.randn(8, 1, 28, 28), torch.randint(0, 1000, (8,))).shape
        torch.Size([8, 1, 28, 28])
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ValueError(f"UNet needs a UNetConfig (e.g. get_config('small')), got {type(config).__name__}")
        self.config = c = config
        temb_dim = c.time_embed_dim
        widths = [c.base_channels * m for m in c.channel_mults]

        def block(cin: int, cout: int, attention: bool) -> UNetBlock:
            return UNetBlock(
                ResBlock(cin, cout, temb_dim, c.dropout, c.scale_shift, c.norm_groups),
                AttentionBlock(cout, c.num_heads, c.norm_groups) if attention else None,
                CrossAttentionBlock(cout, c.context_dim, c.num_heads, c.norm_groups)
                if attention and c.context_dim else None,
            )

        self.time_embed = TimeEmbedding(c.base_channels, temb_dim)
        self.class_embed = nn.Embedding(c.num_classes + 1, temb_dim) if c.num_classes else None
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)

        # way down: remember the width of every feature map that becomes a skip connection
        self.down = nn.ModuleList()
        skips, ch, res = [c.base_channels], c.base_channels, c.image_size
        for level, width in enumerate(widths):
            for _ in range(c.num_res_blocks):
                self.down.append(block(ch, width, res in c.attention_resolutions))
                ch = width
                skips.append(ch)
            if level < len(widths) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                res //= 2

        # middle: ResBlock + self-attention + ResBlock, as in DDPM
        self.mid = nn.ModuleList([block(ch, ch, attention=True), block(ch, ch, attention=False)])

        # way up: one more block per level than on the way down, each eating one skip
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(c.num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), width, res in c.attention_resolutions))
                ch = width
            if level > 0:
                out = widths[level - 1] if c.lean_upsample else ch
                self.up.append(Upsample(ch, out))
                ch = out
                res *= 2

        self.norm_out = nn.GroupNorm(c.norm_groups, ch)
        self.conv_out = _zero(nn.Conv2d(ch, c.out_channels, 3, padding=1))

    @classmethod
    def from_config_dict(cls, values: dict) -> UNet:
        """Rebuild from a config stored as plain data in a checkpoint (lists become tuples)."""
        return cls(UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> UNet:
        """Build the U-Net of a named preset, e.g. ``UNet.from_preset("small", image_size=28)``."""
        return cls(get_config(name, **overrides))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int | float,
        class_labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from a noisy batch.

        Args:
            x: noisy images ``[B, in_channels, H, W]``, H and W divisible by
                ``config.downsample_factor``.
            t: timesteps ``[B]`` (integer or float); a Python number or 0-d tensor is used for
                the whole batch.
            class_labels: ``[B]`` integers in ``0 .. num_classes`` (``num_classes`` = "no
                class"); None means "no class" for every image. Needs ``config.num_classes``.
            context: ``[B, L, context_dim]`` sequence for cross-attention; None skips the
                cross-attention layers. Needs ``config.context_dim``.

        Returns:
            ``[B, out_channels, H, W]`` in x's dtype and memory format (e.g. the predicted noise).
        """
        t = self._check_inputs(x, t, class_labels, context)
        temb = self.time_embed(t)
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full_like(t, self.config.num_classes, dtype=torch.long)
            temb = temb + self.class_embed(class_labels.to(t.device))

        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, temb, context)
            hs.append(h)
        for layer in self.mid:
            h = self._run(layer, h, temb, context)
        for layer in self.up:
            if isinstance(layer, UNetBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layer, h, temb, context)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _run(self, layer: nn.Module, h: torch.Tensor, temb: torch.Tensor,
             context: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(layer, UNetBlock):
            return layer(h)  # Downsample / Upsample
        if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
            # store only the block's inputs; recompute its insides during backward (same RNG for dropout)
            return checkpoint(layer, h, temb, context, use_reentrant=False)
        return layer(h, temb, context)

    def _check_inputs(self, x, t, class_labels, context) -> torch.Tensor:
        """Raise a one-line ValueError for any malformed input; return t as a [B] tensor on x's device."""
        c = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            what = f"shape {tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a float tensor [B, C, H, W], got {what}")
        b, ch, height, width = x.shape
        if ch != c.in_channels:
            raise ValueError(f"x has {ch} channels but this U-Net expects in_channels={c.in_channels}; "
                             f"rebuild it with in_channels={ch} or fix the input")
        f = c.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not divisible by {f} = 2**(len(channel_mults)-1); "
                             f"resize or pad the images (e.g. to {c.image_size}x{c.image_size})")
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, device=x.device)
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer or float timesteps, got {t.dtype}")
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must have shape [B] = [{b}] (one timestep per image), got {tuple(t.shape)}")
        t = t.to(x.device)
        if class_labels is not None:
            if c.num_classes is None:
                raise ValueError("class_labels were given but this U-Net has no class embedding; "
                                 "build it with num_classes=...")
            if not isinstance(class_labels, torch.Tensor) or class_labels.shape != (b,) \
                    or class_labels.is_floating_point() or class_labels.dtype == torch.bool:
                what = f"{class_labels.dtype} {tuple(class_labels.shape)}" if isinstance(class_labels, torch.Tensor) \
                    else type(class_labels).__name__
                raise ValueError(f"class_labels must be an integer tensor of shape [{b}], got {what}")
            # checking values needs them on the host: skip on accelerators (a sync every step)
            # and under torch.compile (a graph break)
            if class_labels.device.type == "cpu" and class_labels.numel() and not _compiling() and \
                    not 0 <= int(class_labels.min()) <= int(class_labels.max()) <= c.num_classes:
                raise ValueError(f"class_labels must lie in 0..{c.num_classes} ({c.num_classes} = no class), "
                                 f"got values in {int(class_labels.min())}..{int(class_labels.max())}")
        if context is not None:
            if c.context_dim is None:
                raise ValueError("context was given but this U-Net has no cross-attention; "
                                 "build it with context_dim=...")
            if not isinstance(context, torch.Tensor) or context.ndim != 3 or context.shape[0] != b \
                    or context.shape[2] != c.context_dim:
                what = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
                raise ValueError(f"context must have shape [B={b}, L, context_dim={c.context_dim}], got {what}")
        return t


# ---------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------

PRESETS: dict[str, UNetConfig] = {
    # 0.27 M parameters: the CPU recipe's network (training.CPU_RECIPE; at a 15-minute budget its
    # extra updates beat small's capacity, benchmarks/ablations.py), and the model of tests and CI.
    "tiny": UNetConfig(
        image_size=32, in_channels=3, out_channels=3, base_channels=16, channel_mults=(1, 2, 2),
        num_res_blocks=1, attention_resolutions=(), dropout=0.0, num_heads=2, scale_shift=False,
        norm_groups=8,
    ),
    # A larger CPU model for 28x28 (MNIST) and 32x32 (CIFAR-10), for longer runs. Lean for the CPU: a
    # parameter at 28x28 costs 16x the FLOPs of one at 7x7, so it is narrow where the maps
    # are big (16 channels) and wide where they are small (96); upsampling convolutions go
    # straight to the narrower width; one attention layer, in the middle at 7x7 / 8x8; no
    # dropout. benchmarks/unet_throughput.py has the measurements behind these choices.
    "small": UNetConfig(
        image_size=32, in_channels=3, out_channels=3, base_channels=16, channel_mults=(1, 2, 6),
        num_res_blocks=2, attention_resolutions=(), dropout=0.0, num_heads=4, scale_shift=False,
        norm_groups=8, lean_upsample=True,
    ),
    # DDPM's CIFAR-10 network (Ho et al. 2020, appendix B): 35.7 M parameters.
    "ddpm-cifar10": UNetConfig(
        image_size=32, in_channels=3, out_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2),
        num_res_blocks=2, attention_resolutions=(16,), dropout=0.1, num_heads=1, scale_shift=False,
        norm_groups=32,
    ),
}
"""Named configurations; ``print(PRESETS["small"])`` shows one. Use :func:`get_config`."""


def get_config(name: str, **overrides) -> UNetConfig:
    """Return preset ``name`` with some fields replaced, e.g. ``get_config("small", in_channels=1)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; choose one of: {', '.join(PRESETS)}")
    valid = {f.name for f in fields(UNetConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown UNetConfig field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(valid))}")
    return replace(PRESETS[name], **overrides)


# ---------------------------------------------------------------------------------------
# Measuring a model
# ---------------------------------------------------------------------------------------


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def conv_receptive_field(layers: Iterable[nn.Conv2d | tuple[int, int]]) -> int:
    """Side of the square of input pixels that can reach one output pixel of a chain of convolutions.

    Each layer is an ``nn.Conv2d`` (square kernels) or a ``(kernel, stride)`` pair, in the
    order the signal passes through them. With ``j`` the distance, in input pixels, between
    neighbouring positions of the current feature map (the product of the strides so far),
    a layer with kernel ``k`` widens the field by ``(k - 1) * j`` (Araujo et al. 2019,
    "Computing Receptive Fields of Convolutional Neural Networks", Distill):

        r_0 = 1, j_0 = 1;    r_l = r_{l-1} + (k_l - 1) * j_{l-1},    j_l = j_{l-1} * s_l

    so six 3x3 convolutions see 13x13 pixels, and one 3x3 convolution after two stride-2
    layers spans 3 cells of 4 pixels. A dilated kernel counts as ``dilation * (k - 1) + 1``.
    Residual paths and 1x1 convolutions add nothing; attention (every pixel sees every
    pixel) is not a convolution and makes the field global. This is the *theoretical*
    field: :func:`diffusion_course.viz.receptive_field` measures how much each pixel
    actually contributes, which is concentrated near the centre (Luo et al. 2016).

    Returns:
        ``r``, the side in input pixels (it may exceed the image, whose padding fills the rest).
    """
    r, jump = 1, 1
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            if layer.kernel_size[0] != layer.kernel_size[1] or layer.stride[0] != layer.stride[1]:
                raise ValueError(f"conv_receptive_field needs square kernels and strides, got {layer}")
            kernel = layer.dilation[0] * (layer.kernel_size[0] - 1) + 1
            stride = layer.stride[0]
        else:
            kernel, stride = layer
        if not (_positive_int(kernel) and _positive_int(stride)):
            raise ValueError(f"each layer must be an nn.Conv2d or a (kernel, stride) pair of positive integers, "
                             f"got {layer!r}")
        r += (kernel - 1) * jump
        jump *= stride
    return r


def example_inputs(model: UNet, batch: int = 1, image_size: int | None = None,
                   context_length: int = 16) -> dict[str, torch.Tensor | None]:
    """Random inputs for one forward pass of ``model``, on its device and in its dtype:
    ``{"x": [batch, C, side, side], "t": [batch] zeros, "class_labels": [batch] zeros or None,
    "context": [batch, context_length, context_dim] or None}``, ready for ``model(**inputs)``.

    ``image_size`` overrides the config's side. Used to count FLOPs, where only shapes matter.
    """
    c = model.config
    p = next(model.parameters())
    side = image_size or c.image_size
    return {
        "x": torch.randn(batch, c.in_channels, side, side, device=p.device, dtype=p.dtype),
        "t": torch.zeros(batch, dtype=torch.long, device=p.device),
        "class_labels": torch.zeros(batch, dtype=torch.long, device=p.device) if c.num_classes else None,
        "context": torch.randn(batch, context_length, c.context_dim, device=p.device, dtype=p.dtype)
        if c.context_dim else None,
    }


def forward_flops(model: UNet, batch: int = 1, image_size: int | None = None, context_length: int = 16) -> int:
    """Floating-point operations of one forward pass, counted by ``torch.utils.flop_counter``.

    Runs the model once on random inputs of ``batch`` images of ``model.config``'s shape
    (``image_size`` overrides the side; :func:`example_inputs`). The counter counts a multiply-add as 2 FLOPs and
    covers convolutions and matrix products (the vast majority of the work; normalisation
    and activations are not counted). Attention is run with the "math" backend while
    counting, because the fused CPU attention kernel is not registered with the counter.
    A training step costs about 3x the forward FLOPs (forward + two backward products).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    inputs = example_inputs(model, batch, image_size, context_length)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()
