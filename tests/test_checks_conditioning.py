"""Phase 5 checks: they pass right answers written in several ways and name each typical mistake.

Every answer here is written in the test (the right ones never call the package's functions), so a
check that compared the learner with itself, or with nothing, would fail these tests. The graded
tests' comparisons (``assert_labels``, ``assert_close`` of ``as_number``) must accept and reject the
same answers as the checks: the last tests hold them against each other.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_course import checks, conditioning, guidance, latent, unet
from diffusion_course.checks.conditioning import (
    SCALE_TOL,
    as_number,
    drop_inputs,
    guide_inputs,
    scale_inputs,
)
from diffusion_course.checks.unet import randomise_weights

# ---------------------------------------------------------------------------
# Label dropout
# ---------------------------------------------------------------------------


def _drop(labels, u, p, null):
    return torch.where(u < p, torch.full_like(labels, null), labels)


def _in_place(labels, u, p, null):
    labels[u < p] = null
    return labels


def test_drop_labels_right_answers():
    assert checks.check_drop_labels(_drop)
    assert checks.check_drop_labels(lambda labels, u, p, null: labels.masked_fill(u < p, null))

    def a_loop_in_int32(labels, u, p, null):
        out = [null if float(ui) < p else int(li) for li, ui in zip(labels, u, strict=True)]
        return torch.tensor(out, dtype=torch.int32)

    assert checks.check_drop_labels(a_loop_in_int32)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda labels, u, p, null: torch.where(u >= p, torch.full_like(labels, null), labels), "1 - p"),
        (lambda labels, u, p, null: torch.where(u > 1 - p, torch.full_like(labels, null), labels), "u > 1 - p"),
        (lambda labels, u, p, null: torch.where(u < p, torch.zeros_like(labels), labels), "real class"),
        (lambda labels, u, p, null: torch.where(u < p, torch.full_like(labels, 10), labels), "instead of null_label"),
        (_in_place, "changed the labels it was given"),
        (lambda labels, u, p, null: labels.clone(), "nothing was dropped"),
        (lambda labels, u, p, null: torch.full_like(labels, null), "whole batch"),
        (lambda labels, u, p, null: torch.full_like(labels, null) if u[0] < p else labels, "own draw"),
        (lambda labels, u, p, null: _drop(labels, torch.rand(u.shape, generator=torch.Generator().manual_seed(9)),
                                          p, null), "do not follow u"),
        (lambda labels, u, p, null: _drop(labels, u, p, null).float(), "integers"),
        (lambda labels, u, p, null: u < p, "integers"),
        (lambda labels, u, p, null: labels[u >= p], "fewer labels"),
        (lambda labels, u, p, null: _drop(labels, u, p, null).tolist(), "torch.Tensor"),
        (lambda labels, u, p, null: conditioning.drop_labels(labels, u, p, null), "the package's own"),
        (lambda labels, u, p, null: conditioning.drop_to_null(labels, p, None), "the package's own"),
    ],
)
def test_drop_labels_mistakes_are_named(answer, message):
    result = checks.check_drop_labels(answer)
    assert not result and message in " ".join(result.problems), result.problems


# ---------------------------------------------------------------------------
# The guidance mixture
# ---------------------------------------------------------------------------


def _guide(cond, uncond, w, learned=False, *, mix=None, variance="cond"):
    mix = mix or (lambda c, u, w: u + w * (c - u))
    if not learned:
        return mix(cond, uncond, w)
    (c, c_var), (u, u_var) = cond.chunk(2, dim=1), uncond.chunk(2, dim=1)
    var = {"cond": c_var, "uncond": u_var, "mixed": mix(c_var, u_var, w)}[variance]
    return torch.cat([mix(c, u, w), var], dim=1)


def test_guide_right_answers():
    assert checks.check_guide(_guide)
    assert checks.check_guide(lambda c, u, w, learned=False: _guide(c.double(), u.double(), w, learned,
                                                                     mix=lambda c, u, w: (1 - w) * u + w * c))

    def with_lerp(cond, uncond, w, learned_variance=False):
        half = cond.shape[1] // 2 if learned_variance else cond.shape[1]
        return torch.cat([torch.lerp(uncond[:, :half], cond[:, :half], w), cond[:, half:]], dim=1)

    assert checks.check_guide(with_lerp)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda c, u, w, lv=False: _guide(c, u, w, lv, mix=lambda c, u, w: (1 + w) * c - w * u), "1 + w"),
        (lambda c, u, w, lv=False: _guide(c, u, w, lv, mix=lambda c, u, w: c + w * (u - c)), "swapped"),
        (lambda c, u, w, lv=False: _guide(c, u, w, lv, mix=lambda c, u, w: w * (c - u)), "starting point"),
        (lambda c, u, w, lv=False: _guide(c, u, w, lv, mix=lambda c, u, w: u + w * c), "difference is missing"),
        (lambda c, u, w, lv=False: u + w * (c - u), "variance channels (the second half) were mixed"),
        (lambda c, u, w, lv=False: _guide(c, u, w, lv, variance="uncond"), "conditional branch's"),
        (lambda c, u, w, lv=False: _guide(c, u, w, lv)[:, : c.shape[1] // 2] if lv else _guide(c, u, w),
         "return all"),
        (lambda c, u, w, lv=False: _guide(c, u, w, lv) * 1.01, "largest difference"),
        (lambda c, u, w, lv=False: (c - u).long(), "floating-point"),
        (lambda c, u, w, lv=False: guidance.guide(c, u, w, lv), "the package's own"),
    ],
)
def test_guide_mistakes_are_named(answer, message):
    result = checks.check_guide(answer)
    assert not result and message in " ".join(result.problems), result.problems


def test_guide_is_right_at_the_two_ends():  # the convention: w = 1 is the conditional output, w = 0 the unconditional
    cond, uncond = guide_inputs(0, learned=False)
    assert torch.allclose(guidance.guide(cond, uncond, 1.0), cond, atol=1e-6)
    assert torch.equal(guidance.guide(cond, uncond, 0.0), uncond)


# ---------------------------------------------------------------------------
# The cross-attention block
# ---------------------------------------------------------------------------


class _Layers(nn.Module):
    def __init__(self, channels, context_dim, num_heads=1, norm_groups=8):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)


def _block(*, softmax_dim=-1, scale="d", heads=None, residual=True, kv_from_x=False, norm=True, sdpa=False):
    class Block(_Layers):
        def forward(self, x, context):
            b, c, h, w = x.shape
            n = self.num_heads if heads is None else heads
            d = c // n
            q = self.q((self.norm(x) if norm else x).flatten(2).transpose(1, 2))
            source = self.norm(x).flatten(2).transpose(1, 2) if kv_from_x else context
            k, v = self.kv(source).chunk(2, dim=-1)
            q, k, v = (z.reshape(b, z.shape[1], n, d).transpose(1, 2) for z in (q, k, v))
            if sdpa:
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                factor = {"d": 1 / math.sqrt(d), "C": 1 / math.sqrt(c), "none": 1.0}[scale]
                out = (q @ k.transpose(-2, -1) * factor).softmax(dim=softmax_dim) @ v
            out = self.proj(out.transpose(1, 2).reshape(b, h * w, c)).transpose(1, 2).reshape(b, c, h, w)
            return x + out if residual else out

    return Block


def test_cross_attention_right_answers():
    assert checks.check_cross_attention_block(_block())
    assert checks.check_cross_attention_block(_block(sdpa=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(softmax_dim=-2), "wrong axis"),
        (dict(scale="none"), "not scaled"),
        (dict(scale="C"), "sqrt(C)"),
        (dict(heads=1), "right for one head"),
        (dict(residual=False), "residual connection is missing"),
        (dict(kv_from_x=True), "keys and values were computed from the image"),
        (dict(norm=False), "unnormalised image"),
    ],
)
def test_cross_attention_mistakes_are_named(kwargs, message):
    result = checks.check_cross_attention_block(_block(**kwargs))
    assert not result and message in " ".join(result.problems), result.problems


def test_cross_attention_wrong_forms():
    class WrongShape(_Layers):
        def forward(self, x, context):
            return context

    class Swapped(_Layers):  # queries from the context: one output per token, not per pixel
        def forward(self, x, context):
            return self.q(context)

    class NewLayers(nn.Module):
        def __init__(self, channels, context_dim, num_heads=1, norm_groups=8):
            super().__init__()
            self.attn = nn.MultiheadAttention(channels, num_heads, kdim=context_dim, vdim=context_dim)

        def forward(self, x, context):
            return x

    class Delegates(_Layers):
        def forward(self, x, context):
            return unet.CrossAttentionBlock.forward(self, x, context)

    for cls, message in [(WrongShape, "the image's shape"), (Swapped, "the image's shape"),
                         (NewLayers, "keep the given __init__"), (Delegates, "the package's own")]:
        result = checks.check_cross_attention_block(cls)
        assert not result and message in " ".join(result.problems), (cls.__name__, result.problems)


# ---------------------------------------------------------------------------
# The latent scaling factor
# ---------------------------------------------------------------------------


def test_latent_scaling_factor_right_answers():
    assert checks.check_latent_scaling_factor(lambda z: 1 / z.std())
    assert checks.check_latent_scaling_factor(lambda z: float(1 / z.double().std(correction=0)))
    assert checks.check_latent_scaling_factor(lambda z: 1 / np.std(z.numpy()))
    assert checks.check_latent_scaling_factor(lambda z: (z - z.mean()).pow(2).mean().rsqrt())


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda z: z.std(), "the std itself"),
        (lambda z: 1 / z.var(), "1 / variance"),
        (lambda z: 1 / z.pow(2).mean().sqrt(), "root mean square"),
        (lambda z: 1 / z.abs().mean(), "mean(|z|)"),
        (lambda z: 1 / z.std(dim=(0, 2, 3)).mean(), "per-channel stds"),
        (lambda z: 1 / z.std(dim=(1, 2, 3)).mean(), "per-latent stds"),
        (lambda z: -1 / z.std(), "positive"),
        (lambda z: 1 / z.std(dim=(0, 2, 3)), "per channel"),
        (lambda z: 1 / z.flatten(1).std(dim=1), "per latent"),
        (lambda z: 1.01 / z.std(), "expected 1 / std"),
        (lambda z: None, "one number"),
        (lambda z: "0.2", "one number"),
        (lambda z: latent.latent_scaling_factor(z), "the package's own"),
    ],
)
def test_latent_scaling_factor_mistakes_are_named(answer, message):
    result = checks.check_latent_scaling_factor(answer)
    assert not result and message in " ".join(result.problems), result.problems


def test_the_package_factor_gives_unit_std():
    z = scale_inputs(0, (64, 4, 8, 8), (2.0, -0.5, 1.5, 3.0), (3.0, 5.0, 4.0, 6.0))
    assert abs((z * latent.latent_scaling_factor(z)).std().item() - 1) < 1e-5


# ---------------------------------------------------------------------------
# Checks and graded tests agree; checks never raise
# ---------------------------------------------------------------------------


def _graded_drop(fn) -> bool:
    """The graded cell of the exercise, visible and hidden cases (without the own-work test)."""
    cases = [(100, 32, 0.2, 10), (101, 50, 0.5, -1), (102, 50, 0.9, 10), (103, 50, 0.0, 10), (104, 50, 0.3, 5)]
    for seed, batch, p, null in cases:
        labels, u = drop_inputs(seed, batch=batch)
        given = labels.clone()
        try:
            checks.assert_labels(fn(given, u, p, null), conditioning.drop_labels(labels, u, p, null))
            assert torch.equal(given, labels)
        except AssertionError:
            return False
    return True


def _graded_scale(fn) -> bool:
    """The graded cell of the exercise, visible and hidden cases (without the own-work test)."""
    cases = [(300, (64, 4, 8, 8), (1.0, -2.0, 0.5, 2.5), (4.0, 6.0, 5.0, 3.0)),
             (301, (128, 2, 8, 8), (0.3, -0.1), (0.15, 0.25)),
             (302, (16, 4, 16, 16), (0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0))]
    for seed, shape, means, stds in cases:
        z = scale_inputs(seed, shape, means, stds)
        try:
            checks.assert_close(as_number(fn(z)), torch.tensor(latent.latent_scaling_factor(z), dtype=torch.float64),
                                tol=SCALE_TOL)
        except (AssertionError, TypeError, RuntimeError):
            return False
    return True


@pytest.mark.parametrize(
    "fn",
    [_drop, _in_place, lambda labels, u, p, null: _drop(labels, u, p, null).float(),
     lambda labels, u, p, null: _drop(labels, u, p, null).to(torch.int32),
     lambda labels, u, p, null: _drop(labels, u, p, null).bool(), lambda labels, u, p, null: labels[u >= p],
     lambda labels, u, p, null: torch.where(u < p, torch.zeros_like(labels), labels)],
)
def test_drop_check_and_graded_comparison_agree(fn, capsys):
    assert bool(checks.check_drop_labels(fn)) == _graded_drop(fn)


@pytest.mark.parametrize(
    "fn",
    [lambda z: 1 / z.std(), lambda z: 1 / z.double().std(), lambda z: (1 / z.std()).half(),
     lambda z: 1 / np.std(z.numpy()), lambda z: 1 / z.std(dim=(0, 2, 3)), lambda z: z.std(), lambda z: None,
     lambda z: [1 / z.std().item()], lambda z: 1 / z.pow(2).mean().sqrt()],
)
def test_scale_check_and_graded_comparison_agree(fn, capsys):
    assert bool(checks.check_latent_scaling_factor(fn)) == _graded_scale(fn)


def test_assert_labels_accepts_any_integer_dtype_and_names_the_problem():
    expected = torch.tensor([1, 10, 3])
    checks.assert_labels(expected.to(torch.int32), expected)
    for actual, message in [(expected.float(), "integers"), (expected.bool(), "integers"), (expected[:2], "shape"),
                            (torch.tensor([1, 2, 3]), "differ"), ([1, 10, 3], "torch.Tensor")]:
        with pytest.raises(AssertionError, match=message):
            checks.assert_labels(actual, expected)


def test_the_cross_attention_demo_weights_differ_from_zero_init():  # the checks randomise the zero-initialised proj
    block = randomise_weights(unet.CrossAttentionBlock(8, 6, norm_groups=4))
    x = torch.randn(1, 8, 2, 2)
    assert not torch.allclose(block(x, torch.randn(1, 3, 6)), x)


class _Stub(_Layers):
    def forward(self, x, context):
        raise NotImplementedError()


def _stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize(("check", "answer"), [(checks.check_drop_labels, _stub), (checks.check_guide, _stub),
                                               (checks.check_cross_attention_block, _Stub),
                                               (checks.check_latent_scaling_factor, _stub)])
def test_an_untouched_answer_is_reported_not_raised(check, answer, capsys):
    result = check(answer)
    assert not result and "not implemented yet" in result.problems[0]
    assert "❌" in capsys.readouterr().out
