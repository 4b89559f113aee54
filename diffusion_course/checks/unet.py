"""Checks for Phase 2: the time embedding and the U-Net's blocks.

The block exercises give the learner a class whose ``__init__`` already creates the
layers (with the same names as the package's blocks) and ask for ``forward``. The checks
copy random weights from the package's block into the learner's, so the comparison is
exact and independent of initialisation (the package zero-initialises every residual
branch's last layer, which would hide mistakes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import unet
from ._core import CheckResult, _call, _close, _is_tensor


def randomise_weights(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def _copy_weights(result: CheckResult, source: nn.Module, learner: nn.Module) -> bool:
    theirs = learner.state_dict()
    ours = source.state_dict()
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    if missing or extra:
        result.problems.append(
            f"the layers created in __init__ changed (missing {missing[:3]}, unexpected {extra[:3]}): "
            "keep the given __init__ and only write forward."
        )
        return False
    learner.load_state_dict(ours)
    return True


def _construct(result: CheckResult, cls: type, *args, **kwargs):
    try:
        return cls(*args, **kwargs)
    except Exception as err:  # a broken __init__ is a learner's bug like any other
        result.problems.append(f"creating {cls.__name__}(...) raised {type(err).__name__}: {err}")
        return None


# ---------------------------------------------------------------------------
# Exercise 1: sinusoidal time embedding
# ---------------------------------------------------------------------------


def check_timestep_embedding(fn: Callable) -> CheckResult:
    """Check ``fn(t, dim, max_period=10000) -> [B, dim]``: cat[sin(t f), cos(t f)]."""
    result = CheckResult("timestep_embedding")
    t = torch.tensor([0, 1, 10, 500, 999])
    out = _call(result, fn, t, 16)
    if out is None or not _is_tensor(result, out, "timestep_embedding(t, 16)"):
        return result.report()
    if out.shape != (5, 16):
        result.problems.append(f"expected shape [B, dim] = (5, 16), got {tuple(out.shape)}.")
        return result.report()
    ref = unet.timestep_embedding(t, 16)
    # float32 sin/cos of t * f differ by ~t * 1e-7 between equivalent formulas
    if _close(out, ref, 2e-4):
        out2 = _call(result, fn, torch.tensor([3, 7]), 32, 100.0)
        if isinstance(out2, torch.Tensor) and not _close(out2, unet.timestep_embedding(torch.tensor([3, 7]), 32, 100.0),
                                                          2e-4):
            result.problems.append("right for max_period=10000 but not for other values: use the max_period argument.")
        return result.report()
    half = 8
    if _close(out, torch.cat([ref[:, half:], ref[:, :half]], 1), 1e-5):
        result.problems.append("sines first, then cosines: torch.cat([sin, cos], dim=1).")
    elif not torch.allclose(out[0].double(), torch.tensor([0.0] * half + [1.0] * half, dtype=torch.float64),
                            atol=1e-5):
        result.problems.append("at t = 0 every sine must be 0 and every cosine 1: check what multiplies t.")
    else:
        freqs_wrong = torch.exp(-math.log(10000) * torch.arange(half) / half)
        args = t.float()[:, None] * freqs_wrong[None]
        if _close(out, torch.cat([args.sin(), args.cos()], 1), 1e-5):
            result.problems.append("the frequencies should run from 1 down to exactly 1/max_period: divide the "
                                   "exponent by (dim/2 - 1), not dim/2.")
        else:
            result.problems.append("values differ from sin/cos(t * max_period ** (-i / (dim/2 - 1))).")
    return result.report()


# ---------------------------------------------------------------------------
# Exercise 2: residual block with time conditioning
# ---------------------------------------------------------------------------


def check_res_block(cls: type) -> CheckResult:
    """Check a learner's ``ResBlock`` class (given __init__, learner's forward) against the package's."""
    result = CheckResult("ResBlock.forward")
    for cin, cout in ((16, 16), (16, 32)):
        block = _construct(result, cls, cin, cout, time_dim=24, dropout=0.0)
        if block is None:
            return result.report()
        block_ref = unet.ResBlock(cin, cout, 24, dropout=0.0, scale_shift=False, norm_groups=8)
        ref = randomise_weights(block_ref, seed=cin + cout)
        if not _copy_weights(result, ref, block):
            return result.report()
        g = torch.Generator().manual_seed(1)
        x, temb = torch.randn(2, cin, 8, 8, generator=g), torch.randn(2, 24, generator=g)
        out = _call(result, block, x, temb)
        if out is None or not _is_tensor(result, out, "ResBlock(...)(x, temb)"):
            return result.report()
        if out.shape != (2, cout, 8, 8):
            result.problems.append(f"output shape should be [B, out_channels, H, W] = (2, {cout}, 8, 8), "
                                   f"got {tuple(out.shape)}.")
            return result.report()
        with torch.no_grad():
            expected = ref(x, temb)
            if _close(out, expected, 1e-4):
                continue
            h = ref.conv1(F.silu(ref.norm1(x)))
            no_time = ref.skip(x) + ref.conv2(F.silu(ref.norm2(h)))
            no_skip = expected - ref.skip(x)
        if _close(out, no_time, 1e-4):
            result.problems.append("the time embedding has no effect: add time_proj(SiLU(temb)) to h, reshaped to "
                                   "[B, C, 1, 1], before norm2.")
        elif _close(out, no_skip, 1e-4):
            result.problems.append("the residual connection is missing: return skip(x) + h.")
        elif cin != cout and out.shape == expected.shape:
            result.problems.append("wrong when in_channels != out_channels: add self.skip(x), not x itself.")
        else:
            result.problems.append("output differs from skip(x) + conv2(dropout(SiLU(norm2(conv1(SiLU(norm1(x))) + "
                                   "time_proj(SiLU(temb))))))")
        return result.report()
    return result.report()


# ---------------------------------------------------------------------------
# Exercise 3: self-attention block
# ---------------------------------------------------------------------------


def check_attention_block(cls: type) -> CheckResult:
    """Check a learner's ``AttentionBlock`` class (given __init__, learner's forward)."""
    result = CheckResult("AttentionBlock.forward")
    for heads in (1, 4):
        block = _construct(result, cls, 16, num_heads=heads)
        if block is None:
            return result.report()
        ref = randomise_weights(unet.AttentionBlock(16, num_heads=heads, norm_groups=8), seed=heads)
        if not _copy_weights(result, ref, block):
            return result.report()
        x = torch.randn(2, 16, 4, 6, generator=torch.Generator().manual_seed(2))
        out = _call(result, block, x)
        if out is None or not _is_tensor(result, out, "AttentionBlock(...)(x)"):
            return result.report()
        if out.shape != x.shape:
            result.problems.append(f"the output must have the input's shape {tuple(x.shape)}, got {tuple(out.shape)}: "
                                   "turn the tokens [B, H*W, C] back into [B, C, H, W].")
            return result.report()
        with torch.no_grad():
            expected = ref(x)
        if _close(out, expected, 1e-4):
            continue
        with torch.no_grad():
            single = randomise_weights(unet.AttentionBlock(16, num_heads=1, norm_groups=8), seed=heads)
            one_head = single(x)
        if heads > 1 and _close(out, one_head, 1e-4):
            result.problems.append("right for one head, wrong for several: split C into num_heads heads of "
                                   "C // num_heads channels, [B, heads, L, C/heads], before attention.")
        elif _close(out, expected - x, 1e-4):
            result.problems.append("the residual connection is missing: return x + proj(...).")
        else:
            result.problems.append("output differs from x + proj(attention(q, k, v)) with [q, k, v] = "
                                   "qkv(norm(x)) as tokens [B, H*W, C].")
        return result.report()
    return result.report()


# ---------------------------------------------------------------------------
# Exercise 4: a two-level U-Net with a skip connection
# ---------------------------------------------------------------------------


class MiniUNet(nn.Module):
    """The exercise's two-level U-Net, with the reference forward pass.

    conv_in -> down_block -> downsample -> mid_block -> mid_attn -> upsample ->
    concat(skip from down_block) -> up_block -> GroupNorm, SiLU -> conv_out.
    Shapes: ``x [B, C, H, W]`` (H, W even), ``t [B]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int = 1, width: int = 32, time_dim: int = 64) -> None:
        super().__init__()
        self.time_embed = unet.TimeEmbedding(width, time_dim)
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.down_block = unet.ResBlock(width, width, time_dim, norm_groups=8)
        self.downsample = unet.Downsample(width)
        self.mid_block = unet.ResBlock(width, 2 * width, time_dim, norm_groups=8)
        self.mid_attn = unet.AttentionBlock(2 * width, num_heads=2, norm_groups=8)
        self.upsample = unet.Upsample(2 * width)
        self.up_block = unet.ResBlock(2 * width + width, width, time_dim, norm_groups=8)
        self.norm_out = nn.GroupNorm(8, width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_embed(t)
        skip = self.down_block(self.conv_in(x), temb)
        h = self.mid_attn(self.mid_block(self.downsample(skip), temb))
        h = self.up_block(torch.cat([self.upsample(h), skip], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))


def check_mini_unet(cls: type) -> CheckResult:
    """Check a learner's two-level U-Net (given __init__, learner's forward) against :class:`MiniUNet`."""
    result = CheckResult("MiniUNet.forward")
    model = _construct(result, cls)
    if model is None:
        return result.report()
    ref = randomise_weights(MiniUNet(), seed=3)
    if not _copy_weights(result, ref, model):
        return result.report()
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(2, 1, 28, 28, generator=g), torch.tensor([3, 700])
    out = _call(result, model, x, t)
    if out is None or not _is_tensor(result, out, "MiniUNet()(x, t)"):
        return result.report()
    if out.shape != x.shape:
        result.problems.append(f"a U-Net returns an image of the input's shape {tuple(x.shape)}, got "
                               f"{tuple(out.shape)}.")
        return result.report()
    with torch.no_grad():
        expected = ref(x, t)
        other_t = ref(x, torch.tensor([500, 10]))
    if _close(out, expected, 1e-4):
        return result.report()
    out_t = _call(result, model, x, torch.tensor([500, 10]))
    if isinstance(out_t, torch.Tensor) and _close(out_t, out, 1e-6) and not _close(other_t, expected, 1e-6):
        result.problems.append("the output does not depend on t: pass temb = time_embed(t) to every ResBlock.")
    else:
        result.problems.append("output differs from the reference: down_block's output is the skip; after "
                               "upsampling, concatenate [h, skip] on the channel dimension (dim=1) before up_block.")
    return result.report()
