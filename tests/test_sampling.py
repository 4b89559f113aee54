"""The legacy DDPM entry point ``ddpm_sample`` (now a wrapper over ``sample``) and respacing.

The step functions against diffusers: tests/test_sampling_diffusers.py; ``sample()``: tests/test_sampling_api.py.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_course.sampling import (
    ddpm_sample,
    ddpm_step,
    respace_schedule,
    respaced_timesteps,
    sample,
    spaced_timesteps,
)
from diffusion_course.schedules import get_schedule
from diffusion_course.viz import save_image_grid

DIFFUSERS_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def _scheduler(kind: str, timesteps: int = 1000, **kw) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=timesteps,
        beta_schedule="linear",
        # our linear schedule scales DDPM's end points by 1000/T (Improved DDPM); diffusers does not
        beta_start=1e-4 * 1000 / timesteps,
        beta_end=0.02 * 1000 / timesteps,
        prediction_type=DIFFUSERS_TYPE[kind],
        variance_type=kw.pop("variance_type", "fixed_small"),
        clip_sample=True,
        **kw,
    )


class _FakeModel(torch.nn.Module):
    """A deterministic stand-in network: a fixed smooth function of (x_t, t)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t):
        return torch.tanh(x * self.w + t.float().view(-1, 1, 1, 1) / 100)


@pytest.mark.parametrize("steps", [None, 10])
def test_full_sampling_loop_matches_diffusers(steps):
    timesteps = 50
    schedule = get_schedule("linear", timesteps)
    model = _FakeModel()
    shape = (2, 1, 4, 4)
    ours = ddpm_sample(model, schedule, shape, generator=torch.Generator().manual_seed(3), steps=steps)

    sched = _scheduler("eps", timesteps, timestep_spacing="linspace")
    sched.set_timesteps(steps or timesteps)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, t.repeat(shape[0])), t, x, generator=g).prev_sample
    assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-4)


def test_samples_are_reproducible_and_in_range():
    schedule = get_schedule("cosine", 20)
    model = _FakeModel()
    a = ddpm_sample(model, schedule, (3, 1, 4, 4), generator=torch.Generator().manual_seed(7))
    b = ddpm_sample(model, schedule, (3, 1, 4, 4), generator=torch.Generator().manual_seed(7))
    c = ddpm_sample(model, schedule, (3, 1, 4, 4), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 1, 4, 4) and a.min() >= -1 and a.max() <= 1


def test_respacing_keeps_alpha_bar_at_the_chosen_steps():
    schedule = get_schedule("linear", 1000)
    order = respaced_timesteps(1000, 5)
    assert order.tolist() == [999, 749, 500, 250, 0]
    respaced = respace_schedule(schedule, order)
    assert torch.allclose(respaced.alphas_cumprod, schedule.alphas_cumprod[order.flip(0)])
    assert torch.equal(respaced_timesteps(1000, None), torch.arange(999, -1, -1))
    with pytest.raises(ValueError, match="steps must be an integer in \\[1, 1000\\]"):
        respaced_timesteps(1000, 0)


def test_ddpm_sample_is_sample_with_ddpm_and_linspace_steps():
    schedule = get_schedule("linear", 40)
    model = _FakeModel()
    for steps in (None, 9):
        legacy = ddpm_sample(model, schedule, (2, 1, 4, 4), generator=torch.Generator().manual_seed(4), steps=steps)
        new = sample(model, schedule, (2, 1, 4, 4), sampler="ddpm", steps=steps or 40, spacing="linspace",
                     generator=torch.Generator().manual_seed(4))
        assert torch.equal(legacy, new)


def test_ddpm_sample_reads_a_learned_variance_from_the_channel_count_once():
    schedule = get_schedule("linear", 30)
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return torch.cat([torch.tanh(0.3 * x), torch.tanh(x + t.view(-1, 1, 1, 1) / 30)], dim=1)

    legacy = ddpm_sample(model, schedule, (2, 1, 4, 4), generator=torch.Generator().manual_seed(5), steps=6)
    assert calls == respaced_timesteps(30, 6).tolist()  # the probing call is reused, not repeated
    learned = sample(model, schedule, (2, 1, 4, 4), sampler="ddpm", steps=6, spacing="linspace",
                     variance_type="learned", generator=torch.Generator().manual_seed(5))
    fixed = sample(lambda x, t: model(x, t)[:, :1], schedule, (2, 1, 4, 4), sampler="ddpm", steps=6,
                   spacing="linspace", generator=torch.Generator().manual_seed(5))
    assert torch.equal(legacy, learned) and not torch.allclose(legacy, fixed)


def test_one_step_visits_the_noisiest_timestep():
    assert respaced_timesteps(1000, 1).tolist() == [999]
    assert spaced_timesteps(1000, 1, "linspace").tolist() == [999]  # diffusers would start at t = 0
    assert spaced_timesteps(1000, 1, "trailing").tolist() == [999]
    assert spaced_timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]


def test_wrong_channel_count_is_a_clear_error():
    schedule = get_schedule("linear", 10)

    def model(x, t):
        return torch.zeros(x.shape[0], 3, *x.shape[2:])

    with pytest.raises(ValueError, match="returned 3 channels for 1-channel images"):
        ddpm_sample(model, schedule, (1, 1, 4, 4), device="cpu")


def test_save_image_grid_writes_a_png(tmp_path):
    from PIL import Image

    path = tmp_path / "grid.png"
    save_image_grid(torch.linspace(-1, 1, 4 * 3 * 8 * 8).view(4, 3, 8, 8), path)
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)


def test_ddpm_step_at_t0_returns_the_clipped_x0_and_needs_no_noise():
    schedule = get_schedule("linear", 1000)
    x_t = torch.linspace(-3, 3, 16).view(1, 1, 4, 4)
    x_prev, x0_hat = ddpm_step(torch.zeros_like(x_t), x_t, 0, schedule, None)
    assert torch.equal(x_prev, x0_hat) and x0_hat.abs().max() == 1.0
    with pytest.raises(ValueError, match=r"noise of shape \(1, 1, 4, 4\) is needed for t > 0"):
        ddpm_step(torch.zeros_like(x_t), x_t, 5, schedule, None)
