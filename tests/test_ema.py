"""Exponential moving average of weights: the formula, the warm-up, fp32 storage, state round trip."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from diffusion_course.ema import EMA, unwrap_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_warmup_decay_schedule():
    ema = EMA(_model(), decay=0.9)
    seen = []
    for _ in range(200):
        seen.append(ema.current_decay())
        ema.num_updates += 1
    assert seen[0] == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert seen[10] == pytest.approx(11 / 20)
    assert seen == sorted(seen)  # the decay only grows ...
    assert max(seen) == pytest.approx(0.9) and seen[80] == pytest.approx(0.9)  # ... until capped (n = 80)
    assert seen[79] < 0.9
    assert EMA(_model(), decay=0.9, warmup=False).current_decay() == 0.9


def test_update_is_the_exponential_average():
    model = _model()
    ema = EMA(model, decay=0.5, warmup=False)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for e, s in zip(ema.module.parameters(), start, strict=True):
        assert torch.allclose(e, s + 0.5)  # 0.5 * s + 0.5 * (s + 1)
    # with warm-up the first update uses d = 0.1: the average jumps 90% of the way
    model2 = _model()
    ema2 = EMA(model2, decay=0.9999)
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)
    ema2.update(model2)
    for e, s in zip(ema2.module.parameters(), start, strict=True):
        assert torch.allclose(e, s + 0.9)


def test_buffers_are_copied_not_averaged():
    model = _model()
    ema = EMA(model, decay=0.99, warmup=False)
    model.train()
    model(torch.randn(8, 3) * 5)  # moves BatchNorm's running statistics
    ema.update(model)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)


def test_copy_is_fp32_eval_and_frozen_even_for_a_bf16_model():
    model = _model().to(torch.bfloat16)
    ema = EMA(model)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training
    ema.update(model)  # bf16 weights are averaged into the fp32 copy
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())


def test_state_dict_round_trips_through_weights_only_load():
    model = _model()
    ema = EMA(model, decay=0.95)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(0.1)
        ema.update(model)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    restored = EMA(_model(), decay=0.5)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.num_updates == 3 and restored.decay == 0.95
    for a, b in zip(restored.module.parameters(), ema.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unwrap_and_bad_decay():
    model = _model()
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it is called
    assert unwrap_model(compiled) is model
    with pytest.raises(ValueError, match="ema_decay must be in \\[0, 1\\)"):
        EMA(model, decay=1.0)
