"""Classifier-free and classifier guidance as model wrappers: the mixture, one batched pass, every
prediction type, learned variance, every sampler, the exact Bayes identity of classifier guidance."""

from __future__ import annotations

import sys

import pytest
import torch
from guidance_fakes import PointMassClasses, templates

from diffusion_course.diffusion import to_x0_and_eps
from diffusion_course.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    GradientGuidance,
    GuidanceUnavailable,
    class_guidance,
    classifier_gradient,
    clip_gradient,
    clip_guidance,
    eps_to_prediction,
    guide,
    load_clip,
)
from diffusion_course.sampling import SAMPLERS, sample
from diffusion_course.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = get_schedule("cosine", 100)


def _inputs(batch=4, seed=1, t=(10, 40, 70, 95)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 4, 4, generator=gen, dtype=torch.float64)
    return x, torch.tensor(t[:batch], dtype=torch.long)


def _oracle(**kw) -> PointMassClasses:
    return PointMassClasses(SCHEDULE, templates(3).double(), **kw)


def test_cfg_runs_both_branches_in_one_batched_pass_conditional_first():
    model = _oracle()
    x, t = _inputs()
    ClassifierFreeGuidance(model, {"class_labels": torch.tensor([0, 2, 1, 0])}, {"class_labels": 3}, 3.0)(x, t)
    assert model.calls == [(8, [0, 2, 1, 0, 3, 3, 3, 3])]


@pytest.mark.parametrize("w", [0.5, 2.0, 3.0, 5.0])
def test_cfg_is_eps_uncond_plus_w_times_the_difference(w):
    model = _oracle()
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 1])
    guided = class_guidance(model, y, w, num_classes=3)(x, t)
    cond, uncond = model(x, t, class_labels=y), model(x, t)
    assert torch.allclose(guided, uncond + w * (cond - uncond), atol=1e-10)
    assert not torch.allclose(guided, cond, atol=1e-3)  # the two branches really differ here


def test_w_one_is_the_conditional_model_and_w_zero_the_unconditional_one_in_a_single_pass():
    model = _oracle()
    x, t = _inputs()
    y = torch.tensor([2, 2, 0, 1])
    assert torch.equal(class_guidance(model, y, 1.0, 3)(x, t), model(x, t, class_labels=y))
    assert torch.equal(class_guidance(model, y, 0, 3)(x, t), model(x, t, class_labels=torch.full((4,), 3)))
    assert [batch for batch, _ in model.calls] == [4, 4, 4, 4]  # no doubled batch for w = 1 or w = 0


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_guiding_an_x0_or_v_output_is_guiding_eps(prediction):
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 0])
    on_eps = class_guidance(_oracle(), y, 3.0, 3)(x, t)
    on_other = class_guidance(_oracle(prediction_type=prediction), y, 3.0, 3)(x, t)
    _, eps = to_x0_and_eps(on_other, x, t, SCHEDULE, prediction)
    assert torch.allclose(eps, on_eps, atol=1e-8)


def test_with_a_learned_variance_only_the_mean_channels_are_guided():
    model = _oracle(learned=True)
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 0])
    out = class_guidance(model, y, 3.0, 3, variance_type="learned")(x, t)
    cond, uncond = model(x, t, class_labels=y), model(x, t)
    assert out.shape == (4, 2, 4, 4)
    assert torch.allclose(out[:, :1], uncond[:, :1] + 3.0 * (cond[:, :1] - uncond[:, :1]), atol=1e-10)
    assert torch.equal(out[:, 1:], cond[:, 1:])  # the conditional branch's variance, unmixed
    assert not torch.allclose(cond[:, 1:], uncond[:, 1:])
    assert torch.equal(guide(cond, uncond, 3.0, learned_variance=True), out)


def test_any_condition_keyword_is_concatenated_and_a_batch_one_null_is_broadcast():
    seen = {}

    def text_model(x, t, context):
        seen["context"] = context
        return x * context.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    x, t = _inputs(batch=2)
    context = torch.full((2, 5, 8), 2.0, dtype=torch.float64)
    empty_prompt = torch.zeros(1, 5, 8, dtype=torch.float64)
    out = ClassifierFreeGuidance(text_model, {"context": context}, {"context": empty_prompt}, 2.5)(x, t)
    assert seen["context"].shape == (4, 5, 8)
    assert torch.equal(seen["context"][:2], context) and torch.equal(seen["context"][2:], empty_prompt.expand(2, 5, 8))
    assert torch.allclose(out, 0 * x + 2.5 * (2 * x - 0 * x))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("w", [1.0, 3.0])
def test_every_sampler_runs_guided_and_draws_the_requested_class(sampler, w):
    tmpl = templates(3)
    model = PointMassClasses(SCHEDULE, tmpl)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    out = sample(class_guidance(model, y, w, 3), SCHEDULE, (6, 1, 4, 4), sampler=sampler, steps=10,
                 generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, tmpl[y], atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scale=-1.0), "guidance scale must be a number >= 0"),
        (dict(scale=float("nan")), "guidance scale must be a number >= 0"),
        (dict(scale=True), "guidance scale must be a number >= 0"),
        (dict(null_cond={"context": 0}), "same keys"),
        (dict(cond=[1, 2]), "must be dicts"),
        (dict(variance_type="big"), "variance type"),
    ],
)
def test_bad_cfg_arguments_are_named(kwargs, message):
    args = dict(model=_oracle(), cond={"class_labels": torch.tensor([0])}, null_cond={"class_labels": 3}, scale=2.0)
    with pytest.raises(ValueError, match=message):
        ClassifierFreeGuidance(**{**args, **kwargs})


def test_a_condition_with_the_wrong_number_of_rows_or_class_is_named():
    x, t = _inputs()
    with pytest.raises(ValueError, match="'class_labels' has 3 rows for a batch of 4"):
        class_guidance(_oracle(), torch.tensor([0, 1, 2]), 2.0, 3)(x, t)
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 2\], got \[3\]"):
        class_guidance(_oracle(), 3, 2.0, 3)
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 2\], got \[-1\]"):
        class_guidance(_oracle(), torch.tensor([0, -1]), 2.0, 3)


# ---------------------------------------------------------------------------
# Classifier guidance
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_classifier_guidance_with_the_exact_classifier_turns_the_unconditional_model_into_the_conditional(prediction):
    """Bayes' rule for scores: eps_uncond - sqrt(1 - ab) grad log p(y | x_t) = eps_cond (Dhariwal & Nichol eq. 11)."""
    model = _oracle(prediction_type=prediction)
    x, t = _inputs()
    y = torch.tensor([2, 0, 1, 2])
    guided = ClassifierGuidance(model, model.logits, y, 1.0, SCHEDULE, prediction_type=prediction)(x, t)
    _, eps = to_x0_and_eps(guided, x, t, SCHEDULE, prediction)
    _, eps_cond = to_x0_and_eps(model(x, t, class_labels=y), x, t, SCHEDULE, prediction)
    _, eps_uncond = to_x0_and_eps(model(x, t), x, t, SCHEDULE, prediction)
    assert torch.allclose(eps, eps_cond, atol=1e-7)
    assert not torch.allclose(eps_uncond, eps_cond, atol=1e-3)


def test_classifier_guidance_scale_multiplies_the_shift_and_keeps_learned_variance():
    model = _oracle(learned=True)
    x, t = _inputs()
    y = torch.tensor([2, 0, 1, 2])
    out = {s: ClassifierGuidance(model, model.logits, y, s, SCHEDULE, variance_type="learned")(x, t) for s in (0, 1, 3)}
    base = model(x, t)
    assert torch.equal(out[0], base)
    assert torch.allclose(out[3][:, :1] - base[:, :1], 3 * (out[1][:, :1] - base[:, :1]), atol=1e-9)
    assert torch.equal(out[3][:, 1:], base[:, 1:])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_classifier_guidance_works_inside_the_samplers_inference_mode(sampler):
    tmpl = templates(3)
    model = PointMassClasses(SCHEDULE, tmpl)
    y = torch.tensor([1, 2, 0])
    guided = ClassifierGuidance(model, model.logits, y, 1.0, SCHEDULE)
    out = sample(guided, SCHEDULE, (3, 1, 4, 4), sampler=sampler, steps=10, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, tmpl[y], atol=1e-3)


def test_classifier_gradient_is_the_gradient_of_log_p_y_per_image():
    model = _oracle()
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 0])
    grad = classifier_gradient(model.logits, y)(x.clone(), t, x)
    eps_c, eps_u = model(x, t, class_labels=y), model(x, t)
    sigma = SCHEDULE.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(grad, -(eps_c - eps_u) / sigma, atol=1e-7)
    one_label = classifier_gradient(model.logits, torch.tensor(1))(x.clone(), t, x)  # one int for the batch
    ones = classifier_gradient(model.logits, torch.ones(4, dtype=torch.long))(x.clone(), t, x)
    assert torch.allclose(one_label, ones)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_eps_to_prediction_inverts_to_x0_and_eps(prediction):
    x, t = _inputs()
    eps = torch.randn_like(x)
    back = eps_to_prediction(eps, x, t, SCHEDULE, prediction)
    assert torch.allclose(to_x0_and_eps(back, x, t, SCHEDULE, prediction)[1], eps, atol=1e-10)


# ---------------------------------------------------------------------------
# Optional CLIP guidance
# ---------------------------------------------------------------------------


def test_without_open_clip_clip_guidance_says_so_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed, whatever this machine has
    for call in (load_clip, lambda: clip_guidance(_oracle(), "a sneaker", 2.0, SCHEDULE)):
        with pytest.raises(GuidanceUnavailable) as info:
            call()
        assert "open_clip" in str(info.value) and "\n" not in str(info.value)


def test_without_clip_weights_clip_guidance_says_so_in_one_line(monkeypatch):
    class Offline:
        @staticmethod
        def create_model_and_transforms(*args, **kwargs):
            raise OSError("no network\nmore detail")

    monkeypatch.setitem(sys.modules, "open_clip", Offline)
    with pytest.raises(GuidanceUnavailable, match="could not be loaded") as info:
        load_clip()
    assert "\n" not in str(info.value)


class _FakeClip:
    """A linear 'CLIP': the image embedding is a fixed projection of the pixels."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3 * 224 * 224, 8, generator=gen, dtype=torch.float64) / 300
        self.text = torch.randn(1, 8, generator=gen, dtype=torch.float64)

    def tokenize(self, texts):
        return texts

    def encode_text(self, tokens):
        return self.text

    def encode_image(self, pixels):
        return pixels.flatten(1) @ self.proj


def test_clip_guidance_moves_the_x0_estimate_towards_the_prompt():
    clip = _FakeClip()
    model = _oracle()
    x, t = _inputs()

    def similarity(x0):
        pixels = ((x0.clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1)
        pixels = torch.nn.functional.interpolate(pixels, size=(224, 224), mode="bilinear", align_corners=False)
        image = torch.nn.functional.normalize(clip.encode_image(pixels), dim=-1)
        return (image * torch.nn.functional.normalize(clip.text, dim=-1)).sum(-1)

    before = to_x0_and_eps(model(x, t), x, t, SCHEDULE)[0]
    guided = clip_guidance(model, "a sneaker", 0.5, SCHEDULE, clip=clip)
    after = to_x0_and_eps(guided(x, t), x, t, SCHEDULE)[0]
    assert (similarity(after) > similarity(before)).all()
    with pytest.raises(ValueError, match="non-empty prompt"):
        clip_gradient(clip, "  ", SCHEDULE)


def test_gradient_guidance_checks_its_scale():
    with pytest.raises(ValueError, match="classifier scale must be a number >= 0"):
        GradientGuidance(_oracle(), lambda x, t, x0: x, -2.0, SCHEDULE)


# ---------------------------------------------------------------------------
# The noise-aware classifier, trained by the one training loop and cached
# ---------------------------------------------------------------------------


def test_the_noise_aware_classifier_is_trained_on_noisy_images_once_and_cached(tmp_path):
    from diffusion_course.checkpoint import load_checkpoint
    from diffusion_course.classifier import ClassifierRecipe
    from diffusion_course.features import FeatureUnavailable
    from diffusion_course.guidance import noise_aware_classifier

    recipe = ClassifierRecipe(epochs=1, batch_size=32)
    model = noise_aware_classifier("fashion-mnist", "cosine", 100, root=tmp_path, recipe=recipe, limit=64,
                                   progress=False)
    assert model.config.time_conditioned and model.config.timesteps == 100
    assert recipe.overrides == {}  # the caller's recipe is left alone
    (cached,) = tmp_path.glob("noisy-classifier-fashion-mnist-cosine-100-*.pt")
    (run,) = tmp_path.glob("run-noisy-fashion-mnist-*/checkpoint.pt")
    assert load_checkpoint(run)["classifier_objective"] == {"noisy": True}
    again = noise_aware_classifier("fashion-mnist", "cosine", 100, root=tmp_path, recipe=recipe, limit=64,
                                   train=False, progress=False)
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 90])
    assert model(x, t).shape == (2, 10) and not torch.allclose(model(x, t), model(x, torch.tensor([90, 5])))
    with pytest.raises(FeatureUnavailable, match="no noise-aware classifier"):
        noise_aware_classifier("fashion-mnist", "linear", 100, root=tmp_path, recipe=recipe, limit=64, train=False,
                               progress=False)
