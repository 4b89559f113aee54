"""Fast mode, device resolution and seeding."""

from __future__ import annotations

import pytest
import torch

from diffusion_course import runtime


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, False), ({"DIFFUSION_COURSE_FAST": "1"}, True), ({"DIFFUSION_COURSE_FAST": "no"}, False),
     ({"NBGRADER_EXECUTION": "autograde"}, True)],
)
def test_fast_mode(monkeypatch, env, expected):
    monkeypatch.delenv("DIFFUSION_COURSE_FAST", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert runtime.fast_mode() is expected
    assert runtime.pick("full", "fast") == ("fast" if expected else "full")


def test_get_device():
    assert runtime.get_device("cpu") == torch.device("cpu")
    assert runtime.get_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        runtime.get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available; use --device cpu"):
            runtime.get_device("cuda")


def test_seed_everything_is_reproducible():
    g1 = runtime.seed_everything(7)
    a, ga = torch.rand(3), torch.rand(3, generator=g1)
    g2 = runtime.seed_everything(7)
    assert torch.equal(a, torch.rand(3)) and torch.equal(ga, torch.rand(3, generator=g2))
