"""Every sampler against diffusers, with the same model output and the same noise.

diffusers' schedulers are the numeric reference (a test-only dependency). The options that make
them do what ours do: ``clip_sample`` = ``clip_x0``; DDIM ``set_alpha_to_one=True`` (the last step
goes to alpha_bar = 1) and ``use_clipped_model_output=True`` (eps is re-derived from the clipped
x0); DPM-Solver++(2M) is ``algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
final_sigmas_type="zero"``, and its x0 clipping is ``thresholding=True, sample_max_value=1.0``
(a dynamic threshold that can never exceed 1 is a plain clip). Our linear schedule scales its betas
by 1000/T, and cosine differs in detail from diffusers' ``squaredcos_cap_v2``, so any schedule
other than linear at T = 1000 goes in as ``trained_betas``.

Tolerance 1e-5 unless a test says why not. Where diffusers is the less accurate one (it builds
alpha_bar with a float32 cumprod, so ``1 - alpha_bar`` loses about three digits near t = 0), the
test hands it our float64 alpha_bar table, so that what is compared is the step itself.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from sampling_fakes import GaussianData, pattern

from diffusion_course.sampling import ddpm_step, sample, spaced_timesteps
from diffusion_course.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIFFUSERS_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
DIFFUSERS_VARIANCE = {"fixed_small": "fixed_small", "fixed_large": "fixed_large", "learned": "learned_range"}
SHAPE = (2, 1, 4, 4)
ATOL = 1e-5


def _schedule_kwargs(schedule) -> dict:
    if schedule.name == "linear" and schedule.timesteps == 1000:
        return dict(num_train_timesteps=1000, beta_schedule="linear")
    return dict(num_train_timesteps=schedule.timesteps, trained_betas=schedule.betas.numpy())


def _model(schedule, prediction_type="eps", learned=False) -> GaussianData:
    return GaussianData(schedule, pattern(SHAPE), prediction_type=prediction_type, learned=learned)


def _float64_tables(ref, schedule) -> None:
    """Hand a diffusers scheduler our float64 alpha_bar (its float32 one is coarse near t = 0)."""
    ref.alphas_cumprod, ref.one = schedule.alphas_cumprod, torch.tensor(1.0, dtype=torch.float64)


def _max_diff(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


# ---------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("timesteps,steps", [(1000, 10), (1000, 7), (1000, 50), (1000, 999), (1000, 1000), (50, 7),
                                             (999, 10), (1000, 3), (100, 30)])
def test_spacings_visit_the_same_timesteps_as_diffusers(spacing, timesteps, steps):
    ours = spaced_timesteps(timesteps, steps, spacing)
    for cls in (DDIMScheduler, DDPMScheduler):
        ref = cls(num_train_timesteps=timesteps, timestep_spacing=spacing)
        ref.set_timesteps(steps)
        assert ours.tolist() == ref.timesteps.tolist(), cls.__name__
    if spacing == "trailing":  # DPM-Solver's own linspace/leading grids have steps + 1 points; trailing is shared
        ref = DPMSolverMultistepScheduler(num_train_timesteps=timesteps, timestep_spacing=spacing)
        ref.set_timesteps(steps)
        assert ours.tolist() == ref.timesteps.tolist()


# ---------------------------------------------------------------------------
# DDPM
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned"])
@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_one_ddpm_step_matches_diffusers(kind, variance_type):
    schedule = get_schedule("linear", 1000)
    ref = DDPMScheduler(beta_schedule="linear", prediction_type=DIFFUSERS_TYPE[kind], clip_sample=True,
                        variance_type=DIFFUSERS_VARIANCE[variance_type])
    _float64_tables(ref, schedule)  # t = 1 and 0 are tested: see the module docstring
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(SHAPE, generator=g)
    out = torch.randn(SHAPE, generator=g) * 2  # large enough that clipping x0 matters
    if variance_type == "learned":
        out = torch.cat([out, torch.rand(SHAPE, generator=g) * 2 - 1], dim=1)
    for t in (999, 500, 20, 1, 0):
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t))
        expected = ref.step(out, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        ours, _ = ddpm_step(out, x_t, t, schedule, noise, prediction_type=kind, variance_type=variance_type)
        assert _max_diff(ours, expected) < ATOL, (kind, variance_type, t)


def _run_ddpm(ref, model, x, generator):
    for t in ref.timesteps:
        x = ref.step(model(x, t.repeat(x.shape[0])), t, x, generator=generator).prev_sample
    return x


def test_full_1000_step_ddpm_trajectory_matches_diffusers():
    """All 1000 steps. Given our float64 alpha_bar, diffusers lands on the very same numbers.

    With its own float32 table it is 3e-5 away: ``1 - alpha_bar`` at t = 1 is 3e-4, and float32
    alpha_bar carries only ~1e-4 of it correctly, which moves the last steps' coefficients.
    """
    schedule = get_schedule("linear", 1000)
    model = _model(schedule)
    ours = sample(model, schedule, SHAPE, sampler="ddpm", steps=1000, generator=torch.Generator().manual_seed(3))
    for own_tables, tolerance in ((False, ATOL), (True, 5e-5)):
        ref = DDPMScheduler(beta_schedule="linear", clip_sample=True)
        if not own_tables:
            _float64_tables(ref, schedule)
        ref.set_timesteps(1000)
        g = torch.Generator().manual_seed(3)
        expected = _run_ddpm(ref, model, torch.randn(SHAPE, generator=g), g)
        assert _max_diff(ours, expected.clamp(-1, 1)) < tolerance, own_tables


# Trailing spacing ends at t = 99 > 0, where diffusers' DDPMScheduler still adds noise (variance beta_t
# for fixed_large, a learned one for learned_range; 1e-20 for fixed_small); Algorithm 2 and we add
# none on the last step, so trailing is compared for fixed_small only.
RESPACED_CASES = [
    (spacing, variance_type, kind)
    for spacing in ("leading", "linspace", "trailing")
    for variance_type, kind in (("fixed_small", "eps"), ("fixed_large", "x0"), ("learned", "v"))
    if spacing != "trailing" or variance_type == "fixed_small"
]


@pytest.mark.parametrize("spacing,variance_type,kind", RESPACED_CASES)
def test_respaced_ddpm_matches_diffusers(spacing, variance_type, kind):
    schedule = get_schedule("linear", 1000)
    model = _model(schedule, kind, learned=variance_type == "learned")
    ours = sample(model, schedule, SHAPE, sampler="ddpm", steps=25, spacing=spacing, variance_type=variance_type,
                  prediction_type=kind, generator=torch.Generator().manual_seed(5))
    ref = DDPMScheduler(beta_schedule="linear", clip_sample=True, timestep_spacing=spacing,
                        variance_type=DIFFUSERS_VARIANCE[variance_type], prediction_type=DIFFUSERS_TYPE[kind])
    ref.set_timesteps(25)
    g = torch.Generator().manual_seed(5)
    expected = _run_ddpm(ref, model, torch.randn(SHAPE, generator=g), g)
    assert _max_diff(ours, expected.clamp(-1, 1)) < ATOL


# ---------------------------------------------------------------------------
# DDIM
# ---------------------------------------------------------------------------


def _ddim_reference(schedule, model, steps, spacing, eta, seed, clip=True, kind="eps"):
    """diffusers' DDIMScheduler, fed the noise our loop draws: x_T, then one tensor per noisy step."""
    ref = DDIMScheduler(**_schedule_kwargs(schedule), clip_sample=clip, set_alpha_to_one=True,
                        timestep_spacing=spacing, prediction_type=DIFFUSERS_TYPE[kind])
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    for i, t in enumerate(ref.timesteps):
        noisy = eta > 0 and i < len(ref.timesteps) - 1
        noise = torch.randn(SHAPE, generator=g) if noisy else torch.zeros(SHAPE)
        x = ref.step(model(x, t.repeat(SHAPE[0])), t, x, eta=eta, use_clipped_model_output=True,
                     variance_noise=noise).prev_sample
    return x.clamp(-1, 1) if clip else x


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing,steps", [("trailing", 10), ("trailing", 50), ("leading", 10), ("leading", 7)])
def test_ddim_trajectory_matches_diffusers(eta, spacing, steps):
    schedule = get_schedule("linear", 1000)
    model = _model(schedule)
    ours = sample(model, schedule, SHAPE, sampler="ddim", eta=eta, steps=steps, spacing=spacing,
                  generator=torch.Generator().manual_seed(6))
    expected = _ddim_reference(schedule, model, steps, spacing, eta, seed=6)
    assert _max_diff(ours, expected) < ATOL


@pytest.mark.parametrize("kind,clip", [("x0", False), ("v", True), ("v", False)])
def test_ddim_prediction_types_and_no_clipping_match_diffusers(kind, clip):
    schedule = get_schedule("cosine", 100)  # also: a schedule diffusers gets as trained_betas
    model = _model(schedule, kind)
    ours = sample(model, schedule, SHAPE, sampler="ddim", eta=0.5, steps=20, prediction_type=kind, clip_x0=clip,
                  generator=torch.Generator().manual_seed(7))
    expected = _ddim_reference(schedule, model, 20, "trailing", 0.5, seed=7, clip=clip, kind=kind)
    assert _max_diff(ours, expected) < ATOL


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_linspace_spacing_matches_diffusers(eta):
    """diffusers' DDIMScheduler always steps to ``t - T // steps``, which is not the next visited step
    for linspace (999 -> 899 while the next step is 888), so it cannot be the reference here.
    DDIM eta = 0 is first-order DPM-Solver++ and eta = 1 is DDPM's posterior step, and both of those
    diffusers schedulers follow arbitrary visited steps: they are the reference."""
    schedule = get_schedule("linear", 1000)
    model = _model(schedule)
    visited = spaced_timesteps(1000, 10, "linspace").tolist()
    assert visited == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    ours = sample(model, schedule, SHAPE, sampler="ddim", eta=eta, steps=10, spacing="linspace",
                  generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    x = torch.randn(SHAPE, generator=g)
    if eta == 0:
        ref = DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=1, algorithm_type="dpmsolver++",
                                          final_sigmas_type="zero", thresholding=True, sample_max_value=1.0)
        ref.alphas_cumprod = schedule.alphas_cumprod  # t = 0 is visited: see the module docstring
        ref.set_timesteps(timesteps=visited)
        for t in ref.timesteps:
            x = ref.step(model(x, t.repeat(SHAPE[0])), t, x).prev_sample
    else:
        ref = DDPMScheduler(beta_schedule="linear", clip_sample=True)
        ref.set_timesteps(timesteps=visited)
        x = _run_ddpm(ref, model, x, g)
    assert _max_diff(ours, x.clamp(-1, 1)) < ATOL


# ---------------------------------------------------------------------------
# DPM-Solver++(2M)
# ---------------------------------------------------------------------------


def _dpm_reference(schedule, model, steps, spacing, clip, kind="eps", seed=9):
    ref = DPMSolverMultistepScheduler(
        **_schedule_kwargs(schedule), algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero", timestep_spacing="trailing",
        prediction_type=DIFFUSERS_TYPE[kind], thresholding=clip, sample_max_value=1.0,
    )
    if spacing == "trailing":
        ref.set_timesteps(steps)
    else:  # diffusers' DPM-Solver builds linspace/leading from steps + 1 points: give it ours
        ref.alphas_cumprod = schedule.alphas_cumprod  # these visit t = 0: see the module docstring
        ref.set_timesteps(timesteps=spaced_timesteps(schedule.timesteps, steps, spacing).tolist())
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    for t in ref.timesteps:
        x = ref.step(model(x, t.repeat(SHAPE[0])), t, x).prev_sample
    return x.clamp(-1, 1) if clip else x


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("spacing,steps", [("trailing", 10), ("trailing", 20), ("linspace", 12), ("leading", 15)])
def test_dpm_solver_matches_diffusers(spacing, steps, clip):
    schedule = get_schedule("linear", 1000)
    model = _model(schedule)
    ours = sample(model, schedule, SHAPE, sampler="dpm-solver++", steps=steps, spacing=spacing, clip_x0=clip,
                  generator=torch.Generator().manual_seed(9))
    assert len(model.calls) == steps
    expected = _dpm_reference(schedule, model, steps, spacing, clip)
    assert _max_diff(ours, expected) < ATOL


@pytest.mark.parametrize("kind", ["x0", "v"])
def test_dpm_solver_prediction_types_match_diffusers(kind):
    schedule = get_schedule("cosine", 100)
    model = _model(schedule, kind, learned=True)  # the variance channels are ignored
    ours = sample(model, schedule, SHAPE, sampler="dpm-solver++", steps=10, prediction_type=kind, clip_x0=False,
                  variance_type="learned", generator=torch.Generator().manual_seed(9))
    plain = _model(schedule, kind)
    expected = _dpm_reference(schedule, plain, 10, "trailing", clip=False, kind=kind)
    assert _max_diff(ours, expected) < ATOL
