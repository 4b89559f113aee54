"""SDEdit and RePaint inpainting through the Phase-4 samplers, and starting a sampler mid-chain."""

from __future__ import annotations

import pytest
import torch
from guidance_fakes import PointMassClasses, templates
from sampling_fakes import GaussianData, pattern

from diffusion_course.diffusion import q_sample
from diffusion_course.guidance import class_guidance
from diffusion_course.sampling import SAMPLERS, inpaint, make_sampler, sample, sdedit
from diffusion_course.sampling.editing import sdedit_start
from diffusion_course.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = get_schedule("linear", 100)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class _Recorder:
    """Wraps a model; keeps the inputs of every call."""

    def __init__(self, model):
        self.model, self.xs, self.ts = model, [], []

    def __call__(self, x, t):
        self.xs.append(x.clone())
        self.ts.append(int(t[0]))
        return self.model(x, t)


def _images(n=3):
    return (pattern((1, 1, 4, 4)) + 0.1 * torch.randn(n, 1, 4, 4, generator=_gen(5))).clamp(-1, 1)


# ---------------------------------------------------------------------------
# Starting mid-chain
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_sampler_can_start_at_an_intermediate_timestep(name):
    stepper = make_sampler(name, SCHEDULE)
    pairs = stepper.set_timesteps(5, "trailing", start=49)
    assert [t for t, _ in pairs] == [49, 39, 29, 19, 9] and pairs[-1][1] == -1
    assert stepper.set_timesteps(5, "trailing") != pairs  # the whole chain otherwise


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(start=100), r"start must be a timestep in \[0, 99\], got 100"),
        (dict(start=-1), r"start must be a timestep in \[0, 99\]"),
        (dict(start=9, steps=11), "steps must be at most 10 to start at t = 9"),
        (dict(start=50, x_T=None), "start=50 needs x_T"),
    ],
)
def test_bad_starts_are_named(kwargs, message):
    args = dict(steps=5, x_T=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=message):
        sample(lambda x, t: x, SCHEDULE, (1, 1, 4, 4), **{**args, **kwargs})


# ---------------------------------------------------------------------------
# SDEdit
# ---------------------------------------------------------------------------


def test_sdedit_at_t0_zero_returns_the_images_without_calling_the_model():
    images = _images()
    model = _Recorder(GaussianData(SCHEDULE, pattern()))
    assert torch.equal(sdedit(model, SCHEDULE, images, 0.0, generator=_gen()), images)
    assert model.ts == []
    assert sdedit_start(0.004, 100, 50) == (0, 0)  # rounds to no step at all


@pytest.mark.parametrize("name, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0), ("dpm-solver++", 0.0)])
def test_sdedit_at_t0_one_is_ordinary_sampling(name, eta):
    images = _images()
    model = GaussianData(SCHEDULE, pattern())
    edited = sdedit(model, SCHEDULE, images, 1.0, sampler=name, steps=8, eta=eta, generator=_gen(2))
    plain = sample(model, SCHEDULE, images.shape, sampler=name, steps=8, eta=eta, generator=_gen(2))
    assert torch.equal(edited, plain)


@pytest.mark.parametrize("name", SAMPLERS)
def test_sdedit_noises_the_image_to_t0_and_runs_the_rest_of_the_chain(name):
    images = _images()
    model = _Recorder(GaussianData(SCHEDULE, pattern()))
    sdedit(model, SCHEDULE, images, 0.3, sampler=name, steps=50, generator=_gen(1))
    assert model.ts[0] == 29 and len(model.ts) == 30  # k = 30 forward steps; steps reduced to k
    assert model.ts == sorted(model.ts, reverse=True)
    noise = torch.randn(images.shape, generator=_gen(1))  # the first draw
    assert torch.allclose(model.xs[0], q_sample(images, torch.full((3,), 29), noise, SCHEDULE))


def test_sdedit_with_a_small_t0_keeps_the_image_and_with_a_new_class_changes_it():
    tmpl = templates(3)
    model = PointMassClasses(SCHEDULE, tmpl)
    start = tmpl[[0]] + 0.05 * torch.randn(1, 1, 4, 4, generator=_gen(3))  # a noisy picture of class 0
    kept = sdedit(model, SCHEDULE, start, 0.05, steps=5, generator=_gen(0))  # unconditional: the nearest class
    assert torch.allclose(kept, tmpl[[0]], atol=1e-4)
    moved = sdedit(class_guidance(model, 2, 2.0, 3), SCHEDULE, start, 0.6, steps=10, generator=_gen(0))
    assert torch.allclose(moved, tmpl[[2]], atol=1e-4)


def test_sdedit_rejects_a_t0_outside_zero_one():
    with pytest.raises(ValueError, match=r"t0 must be a fraction of T in \[0, 1\]"):
        sdedit(lambda x, t: x, SCHEDULE, _images(), 30)


# ---------------------------------------------------------------------------
# RePaint inpainting
# ---------------------------------------------------------------------------


def _left_known(shape=(1, 1, 4, 4)):
    mask = torch.zeros(shape)
    mask[..., :2] = 1.0
    return mask


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("resample, jump", [(1, 1), (3, 1), (2, 3)])
def test_inpainting_keeps_the_known_pixels_exactly(name, resample, jump):
    images = _images()
    mask = _left_known()
    model = _Recorder(GaussianData(SCHEDULE, pattern()))
    out = inpaint(model, SCHEDULE, images, mask, sampler=name, steps=6, resample=resample, jump=jump, generator=_gen())
    assert torch.equal(out[..., :2], images[..., :2])
    assert not torch.allclose(out[..., 2:], images[..., 2:], atol=1e-2)  # the hole is generated, not copied
    assert len(model.ts) == 6 * resample  # each block runs `resample` times


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("resample", [1, 4])
def test_inpainting_fills_the_hole_with_what_fits_the_known_part(name, resample):
    """Two classes differ in both halves: knowing the left half of class 1 decides the right half."""
    tmpl = templates(2, seed=4)
    model = PointMassClasses(SCHEDULE, tmpl)  # unconditional: the null label
    images = tmpl[[1]].clone()
    images[..., 2:] = 0.0  # the hole's content is ignored
    out = inpaint(model, SCHEDULE, images, _left_known(), sampler=name, steps=10, resample=resample, generator=_gen())
    assert torch.allclose(out, tmpl[[1]], atol=1e-3)


def test_resampling_goes_back_up_the_chain():
    model = _Recorder(GaussianData(SCHEDULE, pattern()))
    inpaint(model, SCHEDULE, _images(), _left_known(), sampler="ddim", steps=4, resample=2, jump=2, generator=_gen())
    assert model.ts == [99, 74, 99, 74, 49, 24, 49, 24]


def test_a_jump_back_is_the_forward_process_from_the_blocks_end_to_its_start():
    """With everything known, x after a step is q_sample(image, t_prev); the jump back must then be
    q(x_t | x_{t_prev}) = N(sqrt(ab_t / ab_prev) x, (1 - ab_t / ab_prev) I), with the documented draws."""
    images = _images()
    model = _Recorder(GaussianData(SCHEDULE, pattern()))
    inpaint(model, SCHEDULE, images, torch.ones(1, 1, 4, 4), sampler="ddim", steps=2, resample=2, generator=_gen(7))
    assert model.ts == [99, 99, 49, 49]
    gen = _gen(7)
    _x_T, z_known, z_back = (torch.randn(images.shape, generator=gen) for _ in range(3))
    ratio = float(SCHEDULE.alphas_cumprod[99] / SCHEDULE.alphas_cumprod[49])
    after_step = q_sample(images, torch.full((3,), 49), z_known, SCHEDULE)
    assert torch.allclose(model.xs[1], ratio**0.5 * after_step + (1 - ratio) ** 0.5 * z_back, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mask=torch.ones(1, 1, 3, 3)), "does not fit images"),
        (dict(mask=torch.full((1, 1, 4, 4), 2.0)), r"values in \[0, 1\]"),
        (dict(mask=[[1]]), "mask must be a tensor"),
        (dict(resample=0), "resample must be an integer >= 1"),
        (dict(jump=1.5), "jump must be an integer >= 1"),
        (dict(images=torch.zeros(4, 4, dtype=torch.long)), "images must be a float tensor"),
    ],
)
def test_bad_inpainting_arguments_are_named(kwargs, message):
    args = dict(images=_images(), mask=_left_known(), steps=3)
    with pytest.raises(ValueError, match=message):
        inpaint(lambda x, t: x, SCHEDULE, **{**args, **kwargs})
