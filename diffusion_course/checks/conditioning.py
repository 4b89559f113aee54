"""Checks for Phase 5: label dropout, the classifier-free guidance mixture, a cross-attention block,
and the latent scaling factor.

Each check runs the learner's function on small inputs (the uniform draws of the dropout are an
argument, so the order in which a learner draws random numbers never matters), compares it with the
package's own function (:mod:`diffusion_course.conditioning`, :mod:`diffusion_course.guidance`,
:mod:`diffusion_course.unet`, :mod:`diffusion_course.latent`) and, when they differ, tries the typical
mistakes one by one to name the one that was made.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import conditioning, guidance, latent, unet
from ..losses import DiffusionObjective
from ._core import CheckResult, _call, _close, _is_tensor
from .unet import _construct, _copy_weights, randomise_weights

TOL = 1e-5
"""Tolerance of the tensor comparisons (float32 inputs; float64 answers are welcome)."""


def _first_match(out: torch.Tensor, diagnoses, tol: float = TOL) -> str | None:
    for candidate, message in diagnoses:
        if candidate is not None and candidate.shape == out.shape and _close(out, candidate, tol):
            return message
    return None


# ---------------------------------------------------------------------------
# Exercise 1: label dropout (Ho & Salimans 2022, Algorithm 1)
# ---------------------------------------------------------------------------


def assert_labels(actual, expected: torch.Tensor, name: str = "the labels") -> None:
    """For graded tests of integer results (class labels): the comparison :func:`check_drop_labels`
    makes. Any integer dtype is accepted (not float, not bool); shape and values must be equal."""
    problem = _labels_problem(actual, expected, name)
    if problem:
        raise AssertionError(problem)


def _labels_problem(actual, expected: torch.Tensor, name: str) -> str | None:
    if not isinstance(actual, torch.Tensor):
        return f"{name} should be a torch.Tensor, got {type(actual).__name__}"
    if actual.is_floating_point() or actual.is_complex() or actual.dtype == torch.bool:
        return (f"{name} should stay integers (class ids for the label embedding), got {actual.dtype}: "
                "keep the dtype of the labels")
    if actual.shape != expected.shape:
        return f"{name} should have shape {tuple(expected.shape)}, got {tuple(actual.shape)}"
    if not torch.equal(actual.long().cpu(), expected.long().cpu()):
        wrong = int((actual.long().cpu() != expected.long().cpu()).sum())
        return f"{name} differ from the expected labels in {wrong} of {expected.numel()} places"
    return None


_DROP_CASES = (  # (p, null label): num_classes for a class U-Net, NULL_LABEL (-1) for captions
    (0.3, 10),
    (0.1, 10),
    (0.5, conditioning.NULL_LABEL),
    (0.0, 10),
    (1.0, 10),
)


def drop_inputs(seed: int, batch: int = 40, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [batch], u [batch])``: labels in ``0 .. num_classes - 1`` and uniform draws in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (batch,), generator=g), torch.rand(batch, generator=g)


def check_drop_labels(fn: Callable) -> CheckResult:
    """Check ``fn(labels, u, p, null_label) -> labels`` with ``labels[i]`` replaced where ``u[i] < p``."""
    result = CheckResult("drop_labels")
    for k, (p, null) in enumerate(_DROP_CASES):
        labels, u = drop_inputs(k)
        given = labels.clone()
        out = _call(result, fn, given, u.clone(), p, null, forbidden=_DROP_FORBIDDEN)
        if out is None:
            return result.report()
        if not torch.equal(given, labels):
            result.problems.append(
                "your function changed the labels it was given (e.g. labels[drop] = null_label): the batch's labels "
                "can be a view of the dataset's, which would lose its labels for good. Return a new tensor "
                "(torch.where, or labels.clone() first).")
            return result.report()
        expected = conditioning.drop_labels(labels, u, p, null)
        where = f"(p = {p}, null_label = {null})"
        problem = _labels_problem(out, expected, "the result")
        if problem is None:
            continue
        if not isinstance(out, torch.Tensor):
            result.problems.append(problem + ".")
        elif out.ndim == 1 and out.shape[0] < labels.shape[0]:
            result.problems.append("the result has fewer labels than the batch: replace the dropped labels by "
                                   "null_label, do not remove them (every image of the batch still needs one).")
        elif out.shape == expected.shape and not (out.is_floating_point() or out.dtype == torch.bool):
            result.problems.append(_drop_problem(out.long(), labels, u, p, null) + f" {where}")
        else:
            result.problems.append(problem + ".")
        return result.report()
    return result.report()


_DROP_FORBIDDEN = [conditioning.drop_labels, conditioning.drop_to_null, DiffusionObjective.drop_labels]


def _drop_problem(out, labels, u, p, null) -> str:
    def dropped_where(mask, value=null):
        return torch.where(mask, torch.full_like(labels, value), labels)

    drop = u < p
    if torch.equal(out, dropped_where(u >= p)):
        return ("labels were dropped where u >= p, a fraction 1 - p of them: drop label i where u[i] < p, which "
                "happens with probability p.")
    if torch.equal(out, dropped_where(u > 1 - p)):
        return ("labels were dropped where u > 1 - p: that has probability p too, but the draws decide differently "
                "from the package's; drop label i where u[i] < p.")
    values = out[drop].unique().tolist()
    if len(values) == 1 and torch.equal(out, dropped_where(drop, values[0])):
        if values == [0]:
            return ("dropped labels became 0, which is a real class (T-shirt/top for Fashion-MNIST): use null_label, "
                    "the extra 'no class' label the network learns as its unconditional input.")
        return f"dropped labels became {values[0]} instead of null_label = {null}: use the null_label argument."
    if torch.equal(out, labels) and bool(drop.any()):
        return ("nothing was dropped although some u[i] < p: replace label i by null_label where u[i] < p "
                "(each label has its own draw u[i]).")
    if torch.equal(out, torch.full_like(labels, null)):
        return "the whole batch was dropped at once: each label has its own draw u[i]."
    return ("the dropped labels do not follow u: label i becomes null_label exactly where u[i] < p (use the draws "
            "you are given, do not draw your own).")


# ---------------------------------------------------------------------------
# Exercise 2: the classifier-free guidance mixture
# ---------------------------------------------------------------------------

_GUIDE_CASES = (  # (w, learned variance)
    (3.0, False),
    (7.5, False),
    (0.5, False),
    (1.0, False),
    (0.0, False),
    (3.0, True),
    (1.0, True),
)


def guide_inputs(seed: int, learned: bool, shape=(3, 2, 4, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond_out, uncond_out)``: two network outputs, ``[B, 2C, H, W]`` with a learned variance."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    channels = 2 * c if learned else c
    return torch.randn(b, channels, h, w, generator=g), torch.randn(b, channels, h, w, generator=g)


def check_guide(fn: Callable) -> CheckResult:
    """Check ``fn(cond_out, uncond_out, w, learned_variance=False)``: ``uncond + w (cond - uncond)`` on
    the prediction channels; with a learned variance the conditional branch's variance channels."""
    result = CheckResult("guide")
    for k, (w, learned) in enumerate(_GUIDE_CASES):
        cond, uncond = guide_inputs(k, learned)
        out = _call(result, fn, cond.clone(), uncond.clone(), w, learned, forbidden=_GUIDE_FORBIDDEN)
        if out is None or not _is_tensor(result, out, "guide(...)"):
            return result.report()
        expected = guidance.guide(cond, uncond, w, learned)
        where = f"(w = {w}{', learned variance' if learned else ''})"
        if out.shape != expected.shape:
            if learned and out.shape[1] * 2 == expected.shape[1]:
                result.problems.append(
                    f"with a learned variance, return all {expected.shape[1]} channels: the guided prediction "
                    f"channels, then the conditional branch's variance channels {where}.")
            else:
                result.problems.append(f"the result should have the shape of the outputs {tuple(expected.shape)}, "
                                       f"got {tuple(out.shape)} {where}.")
            return result.report()
        if not out.is_floating_point():
            result.problems.append(f"the result should hold floating-point numbers, got {out.dtype}.")
            return result.report()
        if not _close(out, expected, TOL):
            result.problems.append(_guide_problem(out, cond, uncond, w, learned) + f" {where}")
            return result.report()
    return result.report()


_GUIDE_FORBIDDEN = [guidance.guide, guidance.ClassifierFreeGuidance.__call__]


def _guide_problem(out, cond, uncond, w, learned) -> str:
    c, c_var = cond.chunk(2, dim=1) if learned else (cond, None)
    u, u_var = uncond.chunk(2, dim=1) if learned else (uncond, None)

    def full(mean, var=c_var):
        return mean if var is None else torch.cat([mean, var], dim=1)

    right = u + w * (c - u)
    diagnoses = [
        (full((1 + w) * c - w * u),
         "that is (1 + w) eps_cond - w eps_uncond, Ho & Salimans' way of writing it: their w is this package's "
         "w - 1. Here (as in diffusers' guidance_scale) w = 1 must give the plain conditional model: "
         "eps_uncond + w (eps_cond - eps_uncond)."),
        (full(c + w * (u - c)),
         "the two branches are swapped: this starts from the conditional output and moves towards the "
         "unconditional one. Start from eps_uncond and move towards eps_cond: eps_uncond + w (eps_cond - eps_uncond)."),
        (full(w * (c - u)), "the starting point is missing: eps_uncond + w (eps_cond - eps_uncond)."),
        (full(w * c + u), "the difference is missing: w multiplies (eps_cond - eps_uncond), not eps_cond alone."),
    ]
    if learned:
        diagnoses += [
            (uncond + w * (cond - uncond),
             "the variance channels (the second half) were mixed too: they hold the interpolation between two "
             "variances, which w > 1 would push outside its range. Guide the first half only and keep the "
             "conditional branch's variance channels."),
            (full(right, u_var),
             "the variance channels must be the conditional branch's (the first argument), not the unconditional "
             "one's."),
        ]
    found = _first_match(out, diagnoses)
    if found:
        return found
    if learned:
        first, second = out.chunk(2, dim=1)
        if _close(first, right, TOL):
            return "the prediction channels are right; the variance channels should be cond_out's second half."
        if _close(second, c_var, TOL):
            return ("the variance channels are right; guide the prediction channels (the first half) with "
                    "eps_uncond + w (eps_cond - eps_uncond).")
    worst = (out.double() - full(right).double()).abs().max().item()
    return f"the result differs from eps_uncond + w (eps_cond - eps_uncond) (largest difference {worst:.3g})."


# ---------------------------------------------------------------------------
# Exercise 3: a cross-attention block (Latent Diffusion sec. 3.3)
# ---------------------------------------------------------------------------


def _by_hand(block: unet.CrossAttentionBlock, x: torch.Tensor, context: torch.Tensor, *, heads: int | None = None,
             scale: float | None = None, softmax_dim: int = -1, residual: bool = True, kv_from_x: bool = False,
             norm: bool = True) -> torch.Tensor:
    """The package block's weights put together in a (possibly wrong) way: used to name a mistake only
    (the expected values come from the block's own forward)."""
    b, c, h, w = x.shape
    heads = block.num_heads if heads is None else heads
    d = c // heads
    tokens = (block.norm(x) if norm else x).flatten(2).transpose(1, 2)
    q = block.q(tokens)
    k, v = block.kv(tokens if kv_from_x else context).chunk(2, dim=2)
    q, k, v = (z.unflatten(2, (heads, d)).transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-1, -2) * (1 / math.sqrt(d) if scale is None else scale)
    out = (scores.softmax(dim=softmax_dim) @ v).transpose(1, 2).reshape(b, h * w, c)
    out = block.proj(out).transpose(1, 2).reshape(b, c, h, w)
    return x + out if residual else out


_CROSS_CASES = (  # (channels, context_dim, heads, tokens): context_dim == channels first, so that keys taken
    (16, 16, 1, 5),  # from the image instead of the context still run and can be named
    (16, 12, 4, 7),
    (8, 6, 2, 3),
)


def cross_inputs(seed: int, channels: int, context_dim: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [2, channels, 4, 6], context [2, tokens, context_dim])``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, 4, 6, generator=g), torch.randn(2, tokens, context_dim, generator=g)


def check_cross_attention_block(cls: type) -> CheckResult:
    """Check a learner's ``CrossAttentionBlock`` class (given ``__init__``, learner's ``forward(x, context)``)."""
    result = CheckResult("CrossAttentionBlock.forward")
    for k, (channels, context_dim, heads, length) in enumerate(_CROSS_CASES):
        block = _construct(result, cls, channels, context_dim, num_heads=heads, norm_groups=4)
        if block is None:
            return result.report()
        ref = randomise_weights(unet.CrossAttentionBlock(channels, context_dim, num_heads=heads, norm_groups=4),
                                seed=40 + k)
        if not _copy_weights(result, ref, block):
            return result.report()
        x, context = cross_inputs(k, channels, context_dim, length)
        with torch.no_grad():
            out = _call(result, block, x.clone(), context.clone(), forbidden=_CROSS_FORBIDDEN)
        if out is None:
            if result.problems and "cannot be multiplied" in result.problems[-1]:
                result.problems[-1] += (" self.q takes the image's tokens [B, H*W, C]; self.kv takes the context "
                                        "[B, L, context_dim].")
            return result.report()
        if not _is_tensor(result, out, "CrossAttentionBlock(...)(x, context)"):
            return result.report()
        where = f"(C = {channels}, context_dim = {context_dim}, {heads} head(s), L = {length} tokens)"
        if out.shape != x.shape:
            result.problems.append(
                f"the output must have the image's shape {tuple(x.shape)}, got {tuple(out.shape)}: every pixel asks "
                f"(queries from x), the tokens answer (keys and values from the context) {where}.")
            return result.report()
        with torch.no_grad():
            expected = ref(x, context)
            if _close(out, expected, 1e-4):
                continue
            result.problems.append(_cross_problem(out, ref, x, context, heads) + f" {where}")
        return result.report()
    return result.report()


_CROSS_FORBIDDEN = [unet.CrossAttentionBlock.forward, unet._attend, unet.AttentionBlock.forward]


def _cross_problem(out, ref, x, context, heads) -> str:
    c = x.shape[1]
    d = c // heads
    same_width = context.shape[-1] == c
    mistakes = [
        (_by_hand(ref, x, context, kv_from_x=True) if same_width else None,
         "keys and values were computed from the image: in cross-attention the queries come from the image "
         "(self.q on the normalised pixels) and the keys and values from the context (self.kv(context))."),
        (_by_hand(ref, x, context, softmax_dim=-2),
         "the softmax runs over the wrong axis: each pixel's weights over the L tokens must sum to 1 "
         "(softmax over the last axis of q k^T [B, heads, H*W, L])."),
        (_by_hand(ref, x, context, scale=1.0),
         "the scores are not scaled: divide q k^T by sqrt(d), d = C / num_heads channels per head, before the "
         "softmax (F.scaled_dot_product_attention does it for you)."),
        (_by_hand(ref, x, context, scale=1 / math.sqrt(c)) if heads > 1 else None,
         "the scores are divided by sqrt(C): divide by sqrt(d) with d = C / num_heads, the channels of one head."),
        (_by_hand(ref, x, context, heads=1) if heads > 1 else None,
         "right for one head, wrong for several: split C into num_heads heads of C // num_heads channels, "
         "[B, heads, L, C/heads], for the queries, keys and values."),
        (_by_hand(ref, x, context, residual=False), "the residual connection is missing: return x + proj(...)."),
        (_by_hand(ref, x, context, norm=False),
         "the queries come from the unnormalised image: apply self.norm to x before self.q."),
    ]
    named = next((why for wrong, why in mistakes if wrong is not None and _close(out, wrong, 1e-4)), None)
    return named or (f"the output differs from x + proj(attention(q, k, v)) with q = q(norm(x)) as tokens "
                     f"[B, H*W, C] and k, v = kv(context), {heads} head(s) of d = {d} channels.")


# ---------------------------------------------------------------------------
# Exercise 4: the latent scaling factor (Latent Diffusion sec. 3, "rescale the latents")
# ---------------------------------------------------------------------------

SCALE_TOL = 1e-4
"""Large enough for the std with or without Bessel's correction (N - 1 or N) on the check's 16k values."""

_SCALE_CASES = (  # (latents' shape, per-channel means, per-channel stds)
    ((64, 4, 8, 8), (2.0, -0.5, 1.5, 3.0), (3.0, 5.0, 4.0, 6.0)),
    ((256, 1, 8, 8), (0.4,), (0.2,)),
    ((32, 3, 16, 16), (-1.0, 0.0, 1.0), (1.0, 1.5, 0.8)),
)


def scale_inputs(seed: int, shape, means, stds) -> torch.Tensor:
    """Latents of ``shape`` whose channel ``c`` has mean ``means[c]`` and std ``stds[c]``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g)
    return z * torch.tensor(stds).view(1, -1, 1, 1) + torch.tensor(means).view(1, -1, 1, 1)


def as_number(value) -> torch.Tensor:
    """``value`` (a Python number, a NumPy number or a tensor) as a float64 tensor, as the graded test reads it."""
    return torch.as_tensor(value, dtype=torch.float64)


def check_latent_scaling_factor(fn: Callable) -> CheckResult:
    """Check ``fn(latents [N, c, h, w]) -> 1 / std`` of all the values (one number)."""
    result = CheckResult("latent_scaling_factor")
    for k, (shape, means, stds) in enumerate(_SCALE_CASES):
        z = scale_inputs(k, shape, means, stds)
        out = _call(result, fn, z.clone(), forbidden=_SCALE_FORBIDDEN)
        if out is None and result.problems:
            return result.report()
        try:
            value = as_number(out)
        except (TypeError, ValueError, RuntimeError):
            result.problems.append(f"return one number (a float or a 0-d tensor), got {type(out).__name__}.")
            return result.report()
        expected = torch.tensor(latent.latent_scaling_factor(z), dtype=torch.float64)
        where = f"(latents of shape {tuple(shape)})"
        if value.shape != expected.shape:
            what = {shape[1]: " (per channel)", shape[0]: " (per latent)"}.get(value.numel(), "")
            result.problems.append(
                f"return one number for all the values, got shape {tuple(value.shape)}{what}: every latent value "
                "is multiplied by the same factor, as in Stable Diffusion, so that the channels keep their relative "
                f"sizes {where}.")
            return result.report()
        if not _close(value, expected, SCALE_TOL):
            result.problems.append(_scale_problem(float(value), z) + f" {where}")
            return result.report()
    return result.report()


_SCALE_FORBIDDEN = [latent.latent_scaling_factor]


def _scale_problem(value: float, z: torch.Tensor) -> str:
    zd = z.double()
    std = zd.std().item()
    diagnoses = [
        (std, "that is the std itself: the factor is 1 / std, so that factor * latents has std 1."),
        (1 / std**2, "that is 1 / variance: divide by the standard deviation, not by its square."),
        (1 / zd.pow(2).mean().sqrt().item(),
         "that is 1 / sqrt(mean(z^2)), the root mean square: it counts the latents' mean as spread. Use the "
         "standard deviation around the mean."),
        (1 / zd.abs().mean().item(), "that is 1 / mean(|z|): use the standard deviation."),
        (1 / zd.std(dim=(0, 2, 3)).mean().item(),
         "that is 1 / (the mean of the per-channel stds): it leaves out how far apart the channels' means are. "
         "Take the std of all the values together."),
        (1 / zd.std(dim=(1, 2, 3)).mean().item(),
         "that is 1 / (the mean of the per-latent stds): take the std of all the values of the batch together."),
        (-1 / std, "the factor must be positive: 1 / std."),
    ]
    for candidate, message in diagnoses:
        if abs(value - candidate) <= SCALE_TOL * (1 + abs(candidate)):
            return message
    if not math.isfinite(value):
        return f"got {value}: the factor is 1 / std of all the latent values."
    return f"got {value:.6g}, expected 1 / std = {1 / std:.6g}."


__all__ = [
    "as_number",
    "assert_labels",
    "check_cross_attention_block",
    "check_drop_labels",
    "check_guide",
    "check_latent_scaling_factor",
    "cross_inputs",
    "drop_inputs",
    "guide_inputs",
    "scale_inputs",
]

