"""Checks for Phase 2: the time embedding, the U-Net's blocks, and the U-Net's skip stack.

The block exercises give the learner a class whose ``__init__`` already creates the
layers (with the same names as the package's blocks) and ask for ``forward``; the U-Net
exercise subclasses the package's :class:`~diffusion_course.unet.UNet` and asks for its
``forward``. The checks copy random weights from the package's block into the learner's,
so the comparison is exact and independent of initialisation (the package
zero-initialises every residual branch's last layer, which would hide mistakes). The
expected values always come from the package's own classes; a mistake is named by
comparing with the package's layers put together the wrong way (or, for attention, the
package's block with its weights changed so that it makes the mistake).
"""

from __future__ import annotations

import copy
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


def _raised(result: CheckResult) -> bool:
    """True when the last problem recorded is an exception of the learner's code."""
    return bool(result.problems) and result.problems[-1].startswith("your function raised")


# ---------------------------------------------------------------------------
# Exercise 1: sinusoidal time embedding
# ---------------------------------------------------------------------------


def check_timestep_embedding(fn: Callable) -> CheckResult:
    """Check ``fn(t, dim, max_period=10000) -> [B, dim]``: cat[sin(t f), cos(t f)], any float dtype."""
    result = CheckResult("timestep_embedding")
    forbidden = [unet.timestep_embedding]
    t = torch.tensor([0, 1, 10, 500, 999])
    out = _call(result, fn, t, 16, forbidden=forbidden)
    if out is None or not _is_tensor(result, out, "timestep_embedding(t, 16)"):
        return result.report()
    if out.shape != (5, 16):
        result.problems.append(f"expected shape [B, dim] = (5, 16), got {tuple(out.shape)}.")
        return result.report()
    if not out.is_floating_point():
        result.problems.append(f"return floating-point numbers, got {out.dtype}.")
        return result.report()
    ref = unet.timestep_embedding(t, 16)
    # float32 sin/cos of t * f differ by ~t * 1e-7 between equivalent formulas
    if _close(out, ref, 2e-4):
        t2 = torch.tensor([3, 7])
        out2 = _call(result, fn, t2, 32, 100.0, forbidden=forbidden)
        if isinstance(out2, torch.Tensor) and not _close(out2, unet.timestep_embedding(t2, 32, 100.0), 2e-4):
            result.problems.append("right for max_period=10000 but not for other values: use the max_period argument.")
        return result.report()
    half = 8
    if _close(out, torch.cat([ref[:, half:], ref[:, :half]], 1), 2e-4):
        result.problems.append("sines first, then cosines: torch.cat([sin, cos], dim=1).")
    elif not torch.allclose(out[0].double(), torch.tensor([0.0] * half + [1.0] * half, dtype=torch.float64),
                            atol=1e-5):
        result.problems.append("at t = 0 every sine must be 0 and every cosine 1: check what multiplies t.")
    else:
        freqs_wrong = torch.exp(-math.log(10000) * torch.arange(half) / half)
        args = t.float()[:, None] * freqs_wrong[None]
        if _close(out, torch.cat([args.sin(), args.cos()], 1), 2e-4):
            result.problems.append("the frequencies should run from 1 down to exactly 1/max_period: divide the "
                                   "exponent by (dim/2 - 1), not dim/2.")
        else:
            result.problems.append("values differ from sin/cos(t * max_period ** (-i / (dim/2 - 1))).")
    return result.report()


# ---------------------------------------------------------------------------
# Exercise 2: residual block with time conditioning
# ---------------------------------------------------------------------------


def _res_block_mistakes(ref: unet.ResBlock, x: torch.Tensor, temb: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    """The package block's layers put together in the usual wrong ways, each with its explanation."""
    h = ref.conv1(F.silu(ref.norm1(x)))
    e = ref.time_proj(F.silu(temb))[:, :, None, None]
    e_raw = ref.time_proj(temb)[:, :, None, None]

    def finish(h):  # the second half of the block (dropout is 0 in the check)
        return ref.conv2(F.silu(h))

    skip = ref.skip(x)
    return [
        (skip + finish(ref.norm2(h)), "the time embedding has no effect: add time_proj(SiLU(temb)) to h, reshaped "
                                      "to [B, C, 1, 1], before norm2."),
        (skip + finish(ref.norm2(h)) + e, "the time embedding was added after the second convolution: add it in "
                                          "between, to conv1's output before norm2, so conv2 can use it."),
        (skip + finish(ref.norm2(h) + e), "the time embedding was added after norm2: add it before (norm2(h + e)), "
                                          "so the normalisation sees it."),
        (skip + finish(ref.norm2(h + e_raw)), "apply SiLU to temb before time_proj: time_proj(F.silu(temb))."),
        (finish(ref.norm2(h + e)), "the residual connection is missing: return skip(x) + h."),
    ]


def check_res_block(cls: type) -> CheckResult:
    """Check a learner's ``ResBlock`` class (given __init__, learner's forward) against the package's."""
    result = CheckResult("ResBlock.forward")
    for cin, cout in ((16, 16), (16, 32)):
        block = _construct(result, cls, cin, cout, time_dim=24, dropout=0.0)
        if block is None:
            return result.report()
        ref = randomise_weights(unet.ResBlock(cin, cout, 24, dropout=0.0, scale_shift=False, norm_groups=8),
                                seed=cin + cout)
        if not _copy_weights(result, ref, block):
            return result.report()
        g = torch.Generator().manual_seed(1)
        x, temb = torch.randn(2, cin, 8, 8, generator=g), torch.randn(2, 24, generator=g)
        with torch.no_grad():
            out = _call(result, block, x, temb, forbidden=[unet.ResBlock.forward])
        if out is None and cin != cout and _raised(result):
            result.problems.append("it works when in_channels == out_channels but not otherwise: the residual path "
                                   "must change the channel count too, so add self.skip(x), not x itself.")
        if out is None or not _is_tensor(result, out, "ResBlock(...)(x, temb)"):
            return result.report()
        if out.shape != (2, cout, 8, 8):
            result.problems.append(f"output shape should be [B, out_channels, H, W] = (2, {cout}, 8, 8), "
                                   f"got {tuple(out.shape)}.")
            return result.report()
        with torch.no_grad():
            expected = ref(x, temb)
            mistakes = _res_block_mistakes(ref, x, temb)
        if _close(out, expected, 1e-4):
            continue
        named = next((why for wrong, why in mistakes if _close(out, wrong, 1e-4)), None)
        result.problems.append(named or "output differs from skip(x) + conv2(dropout(SiLU(norm2(conv1(SiLU(norm1(x))) "
                                        "+ time_proj(SiLU(temb))))))")
        return result.report()
    return result.report()


# ---------------------------------------------------------------------------
# Exercise 3: self-attention block
# ---------------------------------------------------------------------------


def _scaled_queries(block: unet.AttentionBlock, factor: float) -> unet.AttentionBlock:
    """A copy of ``block`` whose queries are multiplied by ``factor``: the package's block making a
    mistake in the score scale (q k^T / sqrt(d) with q * factor)."""
    twin = copy.deepcopy(block)
    c = twin.proj.in_features
    with torch.no_grad():
        twin.qkv.weight[:c] *= factor
        twin.qkv.bias[:c] *= factor
    return twin


def check_attention_block(cls: type) -> CheckResult:
    """Check a learner's ``AttentionBlock`` class (given __init__, learner's forward)."""
    result = CheckResult("AttentionBlock.forward")
    channels = 16
    for heads in (1, 4):
        block = _construct(result, cls, channels, num_heads=heads)
        if block is None:
            return result.report()
        ref = randomise_weights(unet.AttentionBlock(channels, num_heads=heads, norm_groups=8), seed=heads)
        if not _copy_weights(result, ref, block):
            return result.report()
        x = torch.randn(2, channels, 4, 6, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            out = _call(result, block, x, forbidden=[unet.AttentionBlock.forward, unet._attend])
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
            one_head = unet.AttentionBlock(channels, num_heads=1, norm_groups=8)
            one_head.load_state_dict(ref.state_dict())
            d = channels // heads
            mistakes = [
                (_scaled_queries(ref, math.sqrt(d))(x),
                 "the scores are not scaled: divide q k^T by sqrt(d), d = C / num_heads channels per head, before "
                 "the softmax (F.scaled_dot_product_attention does it for you)."),
                (_scaled_queries(ref, 1 / math.sqrt(heads))(x) if heads > 1 else None,
                 "the scores are divided by sqrt(C): divide by sqrt(d) with d = C / num_heads, the channels of one "
                 "head."),
                (one_head(x) if heads > 1 else None,
                 "right for one head, wrong for several: split C into num_heads heads of C // num_heads channels, "
                 "[B, heads, L, C/heads], before attention."),
                (expected - x, "the residual connection is missing: return x + proj(...)."),
            ]
        named = next((why for wrong, why in mistakes if wrong is not None and _close(out, wrong, 1e-4)), None)
        result.problems.append(named or "output differs from x + proj(attention(q, k, v)) with [q, k, v] = "
                                        "qkv(norm(x)) as tokens [B, H*W, C].")
        return result.report()
    return result.report()


# ---------------------------------------------------------------------------
# Exercise 4: the U-Net's forward pass and its stack of skip connections
# ---------------------------------------------------------------------------


def skip_stack_configs() -> list[unet.UNetConfig]:
    """Small U-Nets for the skip-stack exercise: one level (every skip has the same shape, so a
    wrong order shows in the values), then three levels with attention and lean upsampling."""
    return [
        unet.get_config("tiny", image_size=8, in_channels=1, out_channels=1, base_channels=8, channel_mults=(1,),
                        num_res_blocks=2, num_heads=2, norm_groups=4),
        unet.get_config("tiny", image_size=16, in_channels=2, out_channels=2, base_channels=8,
                        channel_mults=(1, 2, 3), num_res_blocks=2, attention_resolutions=(8,), num_heads=2,
                        norm_groups=4, lean_upsample=True),
    ]


class _SkipTrace:
    """Forward hooks on a U-Net: what the way down produced, and what each block of the way up received."""

    def __init__(self, model: unet.UNet) -> None:
        self.pushed: list[torch.Tensor] = []  # outputs of conv_in and of every layer of the way down
        self.arrived: list[torch.Tensor] = []  # inputs of the way up's blocks, in call order
        self.up_blocks = sum(isinstance(layer, unet.UNetBlock) for layer in model.up)
        self.down_layers = 1 + len(model.down)
        self.handles = [model.conv_in.register_forward_hook(self._push)]
        self.handles += [layer.register_forward_hook(self._push) for layer in model.down]
        self.handles += [layer.register_forward_pre_hook(self._arrive, with_kwargs=True)
                         for layer in model.up if isinstance(layer, unet.UNetBlock)]

    def _push(self, _module, _args, out) -> None:
        self.pushed.append(out.detach())

    def _arrive(self, _module, args, kwargs) -> None:
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if inputs:
            self.arrived.append(inputs[0].detach())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def skips_used(self) -> list[tuple[int, str] | None]:
        """For each up block: (index of the pushed tensor found in its input, "tail" or "head"), or None."""
        found = []
        for x in self.arrived:
            hit = None
            for i, s in enumerate(self.pushed):
                n = s.shape[1]
                if s.shape[0] != x.shape[0] or s.shape[2:] != x.shape[2:] or n >= x.shape[1]:
                    continue
                if torch.equal(x[:, -n:], s):
                    hit = (i, "tail")
                elif torch.equal(x[:, :n], s):
                    hit = (i, "head")
                if hit:
                    break
            found.append(hit)
        return found


def check_unet_forward(cls: type) -> CheckResult:
    """Check a learner's ``forward(x, t)`` of a subclass of the package's ``UNet`` against ``UNet.forward``."""
    result = CheckResult("UNet.forward (the skip stack)")
    for k, config in enumerate(skip_stack_configs()):
        model = _construct(result, cls, config)
        if model is None:
            return result.report()
        ref = randomise_weights(unet.UNet(config), seed=3 + k).eval()
        if not _copy_weights(result, ref, model):
            return result.report()
        model.eval()
        g = torch.Generator().manual_seed(4 + k)
        side = config.image_size
        x, t = torch.randn(2, config.in_channels, side, side, generator=g), torch.tensor([3, 700])
        trace = _SkipTrace(model)
        try:
            with torch.no_grad():
                out = _call(result, model, x, t, forbidden=[unet.UNet.forward])
        finally:
            trace.remove()
        if out is None and _raised(result) and len(trace.pushed) == trace.down_layers \
                and len(trace.arrived) < trace.up_blocks:
            result.problems.append(
                f"it failed on the way up, at block {len(trace.arrived) + 1} of {trace.up_blocks}: a skip and h did "
                "not fit together. Push conv_in's output and the output of every layer of the way down, Downsample "
                "included, then pop the newest one before each block of the way up."
            )
        if out is None or not _is_tensor(result, out, "model(x, t)"):
            return result.report()
        if out.shape != x.shape:
            result.problems.append(f"a U-Net returns an image of the input's shape {tuple(x.shape)}, got "
                                   f"{tuple(out.shape)}: finish with norm_out, SiLU and conv_out.")
            return result.report()
        with torch.no_grad():
            expected = ref(x, t)
        if _close(out, expected, 1e-4):
            continue
        used = trace.skips_used()
        newest_first = list(range(len(trace.pushed) - 1, -1, -1))[: len(used)]
        if any(u is not None and u[1] == "head" for u in used):
            result.problems.append("concatenate in the order torch.cat([h, skip], dim=1): the block's weights "
                                   "expect h's channels first, then the skip's.")
        elif used and all(u is not None for u in used) and [u[0] for u in used] != newest_first:
            result.problems.append("the skips come back in the wrong order: a stack is last in, first out, so the "
                                   "first block of the way up takes the most recent skip (skips.pop()).")
        else:
            result.problems.append("output differs from the package's UNet: temb = time_embed(t); conv_in; the way "
                                   "down, pushing every output; the middle blocks; the way up, popping a skip "
                                   "before each block; then norm_out, SiLU and conv_out.")
        return result.report()
    return result.report()
