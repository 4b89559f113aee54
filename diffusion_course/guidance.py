"""Guidance: steering a trained diffusion model towards a condition, as a wrapper around the model.

Every wrapper here is a callable ``(x_t, t) -> output`` like the network itself, so every Phase-4
sampler (:func:`~diffusion_course.sampling.sample`), SDEdit and inpainting work with it unchanged.

**Classifier-free guidance** (Ho & Salimans 2022). One network learns both ``eps(x_t, t, c)`` and,
with its condition dropped during training (``cond_drop``), ``eps(x_t, t, null)``. Sampling mixes
the two::

    eps_guided = eps_uncond + w * (eps_cond - eps_uncond)

**The convention.** This package uses the scale ``w`` of the formula above, as Dhariwal & Nichol
2021 and diffusers' ``guidance_scale`` do: ``w = 0`` is the unconditional model, ``w = 1`` the plain
conditional model, ``w > 1`` pushes further away from the unconditional prediction (sharper, more
typical, less diverse samples). Ho & Salimans 2022 (eq. 6) write the same mixture as
``(1 + w') eps_cond - w' eps_uncond``, so their ``w'`` is our ``w - 1``: their ``w' = 0`` is our
``w = 1``, and their "w = 3" is our ``w = 4``. Compare numbers from papers with this in mind.

Both branches run in ONE forward pass on a doubled batch (inputs concatenated, the output split in
two), which keeps the network's weights in cache and the matrix products large; ``w = 1`` and
``w = 0`` need one branch only and run just that one (cheaper, and exactly the network's output).

*Which output is guided.* The mixture is applied to the network's output, whatever it predicts.
For a fixed ``(x_t, t)`` the conversions between eps, x0 and v are affine maps with the same
coefficients for both branches (``eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)``,
``eps = sqrt(1 - ab) x_t + sqrt(ab) v``), and an affine map commutes with the mixture
``a + w (b - a)`` (its weights sum to 1). So guiding x0 or v is *exactly* guiding eps.

*Learned variance* (Improved DDPM): the output's second half is not a prediction but the
interpolation between two variances; mixing it would extrapolate beyond the trained range for
``w > 1``. Only the mean channels are guided; the variance channels of the conditional branch are
kept (as in GLIDE, Nichol et al. 2022, and diffusers).

**The condition is generic**: the network is called as ``model(x, t, **cond)``. A class-conditional
U-Net takes ``cond = {"class_labels": y}`` with the null condition ``{"class_labels": num_classes}``
(:func:`class_guidance`); a text model takes e.g. ``{"context": embeddings}`` with the embeddings of
the empty prompt as its null condition. Every tensor in a condition has the batch as its first
dimension (or 1, broadcast).

**Classifier guidance** (Dhariwal & Nichol 2021, sec. 4.2 and Algorithm 2). Bayes' rule for scores,
``grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t)``, with ``grad log p(x_t) =
-eps(x_t, t) / sqrt(1 - ab_t)``, gives the guided noise prediction::

    eps_hat = eps(x_t, t) - sqrt(1 - ab_t) * s * grad_{x_t} log p_phi(y | x_t, t)

with a *noise-aware* classifier ``p_phi`` (trained on ``x_t`` for all t: :func:`noise_aware_classifier`)
and a scale ``s`` (``s = 1``: the exact conditional model if the classifier were exact).
:class:`GradientGuidance` implements this shift for any gradient; :class:`ClassifierGuidance` and
the optional CLIP guidance (:func:`clip_guidance`) are two choices of gradient.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .diffusion import (
    PREDICTION_TYPES,
    VARIANCE_TYPES,
    predict_x0_from_eps,
    split_output,
    to_x0_and_eps,
    velocity,
)
from .schedules import NoiseSchedule, gather
from .validation import check_choice

Cond = Mapping[str, torch.Tensor]
"""Keyword arguments that carry a condition into the network: ``model(x, t, **cond)``."""


class GuidanceUnavailable(RuntimeError):
    """An optional guidance cannot be set up here (a pretrained model or package is missing)."""


def check_guidance_scale(scale: object, name: str = "guidance scale") -> float:
    """``scale`` as a float; a finite number >= 0, else a one-line ValueError."""
    ok = isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)
    if not ok or scale < 0:
        raise ValueError(
            f"{name} must be a number >= 0 (0: unconditional, 1: plain conditional, 2-5: guided), got {scale!r}"
        )
    return float(scale)


def guide(
    cond_out: torch.Tensor, uncond_out: torch.Tensor, scale: float, learned_variance: bool = False
) -> torch.Tensor:
    """The classifier-free guidance mixture of two network outputs ``[B, C, H, W]`` (or ``[B, 2C, H, W]``).

    ``uncond + scale * (cond - uncond)`` on the prediction channels; with ``learned_variance`` the
    variance channels (the second half) are the conditional branch's, unmixed (module docstring).
    """
    c_pred, c_var = split_output(cond_out, learned_variance)
    u_pred, _ = split_output(uncond_out, learned_variance)
    mixed = u_pred + scale * (c_pred - u_pred)
    return mixed if c_var is None else torch.cat([mixed, c_var], dim=1)


class ClassifierFreeGuidance:
    """``model`` guided towards ``cond`` with scale ``scale``: a callable ``(x_t, t) -> output``.

    Args:
        model: the network, called as ``model(x, t, **cond)``.
        cond: the condition, e.g. ``{"class_labels": y}`` with ``y [B]``.
        null_cond: the "no condition" input with the same keys, e.g. ``{"class_labels": 10}`` for a
            10-class U-Net (a number or a tensor of batch 1 is broadcast over the batch).
        scale: ``w`` >= 0 in ``eps_uncond + w (eps_cond - eps_uncond)`` (module docstring; ``w = 1``:
            conditional, ``w = 0``: unconditional).
        variance_type: the model's ``DiffusionConfig.variance``; ``learned`` guides only the mean channels.

    For ``0 < w != 1`` each call is one forward pass over ``2B`` images (conditional first).
    """

    def __init__(
        self, model: Callable[..., torch.Tensor], cond: Cond, null_cond: Cond, scale: float, *,
        variance_type: str = "fixed_small",
    ) -> None:
        if not callable(model):
            raise ValueError(f"model must be callable as model(x, t, **cond), got {model!r}")
        check_choice("variance type", variance_type, VARIANCE_TYPES)
        if not isinstance(cond, Mapping) or not isinstance(null_cond, Mapping):
            raise ValueError("cond and null_cond must be dicts of keyword arguments, e.g. {'class_labels': y}")
        if set(cond) != set(null_cond):
            raise ValueError(f"cond and null_cond must have the same keys, got {sorted(cond)} and {sorted(null_cond)}")
        self.model = model
        self.cond = dict(cond)
        self.null_cond = dict(null_cond)
        self.scale = check_guidance_scale(scale)
        self.learned_variance = variance_type == "learned"

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        cond = _batched(self.cond, batch, x.device)
        if self.scale == 1.0:
            return self.model(x, t, **cond)
        null = _batched(self.null_cond, batch, x.device)
        if self.scale == 0.0:
            return self.model(x, t, **null)
        both = {key: torch.cat([cond[key], null[key]]) for key in cond}
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), **both)
        cond_out, uncond_out = out.chunk(2)
        return guide(cond_out, uncond_out, self.scale, self.learned_variance)


def _batched(cond: dict, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Every value as a tensor on ``device`` with ``batch`` rows (numbers and batch-1 tensors broadcast)."""
    out = {}
    for key, value in cond.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = torch.tensor([value])
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"condition {key!r} must be a tensor or a number, got {type(value).__name__}")
        value = value.to(device)
        if value.ndim == 0:
            value = value.reshape(1)
        if value.shape[0] == 1 and batch != 1:
            value = value.expand(batch, *value.shape[1:])
        elif value.shape[0] != batch:
            raise ValueError(f"condition {key!r} has {value.shape[0]} rows for a batch of {batch}; give one per image")
        out[key] = value
    return out


def class_guidance(
    model: Callable[..., torch.Tensor], class_labels: torch.Tensor | int, scale: float, num_classes: int, *,
    variance_type: str = "fixed_small",
) -> ClassifierFreeGuidance:
    """Classifier-free guidance of a class-conditional U-Net towards ``class_labels`` (``[B]`` or one int).

    The null condition is the extra "no class" label ``num_classes`` the U-Net learned with label
    dropout (:meth:`~diffusion_course.losses.DiffusionObjective.drop_labels`).
    """
    labels = torch.as_tensor(class_labels, dtype=torch.long)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(f"class labels must be in [0, {num_classes - 1}], got {bad.unique().tolist()}")
    return ClassifierFreeGuidance(
        model, {"class_labels": labels.reshape(-1)}, {"class_labels": num_classes}, scale, variance_type=variance_type
    )


# ---------------------------------------------------------------------------
# Guidance by a gradient: classifier guidance (and CLIP guidance)
# ---------------------------------------------------------------------------


def eps_to_prediction(
    eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, prediction_type: str
) -> torch.Tensor:
    """The network output of type ``prediction_type`` that implies noise ``eps`` at ``(x_t, t)``
    (the inverse of :func:`~diffusion_course.diffusion.to_x0_and_eps`)."""
    check_choice("prediction type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "eps":
        return eps
    x0 = predict_x0_from_eps(x_t, t, eps, schedule)
    return x0 if prediction_type == "x0" else velocity(x0, eps, t, schedule)


GradientFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``gradient(x_t, t, x0_hat) -> [B, C, H, W]``: the gradient of a log-density w.r.t. ``x_t``."""


class GradientGuidance:
    """``eps_hat = eps(x_t, t) - sqrt(1 - ab_t) * scale * gradient(x_t, t, x0_hat)`` (Dhariwal & Nichol
    2021, Algorithm 2), returned in the model's own prediction type; a callable ``(x_t, t) -> output``.

    ``gradient`` is ``grad_{x_t} log p(y | x_t)`` for whatever ``y`` steers the samples (a class, a
    caption). It is computed with autograd even inside the samplers' inference mode. With a learned
    variance only the mean channels change. ``model`` may itself be guided (e.g. classifier-free).
    """

    def __init__(
        self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], gradient: GradientFn, scale: float,
        schedule: NoiseSchedule, *, prediction_type: str = "eps", variance_type: str = "fixed_small",
    ) -> None:
        check_choice("prediction type", prediction_type, PREDICTION_TYPES)
        check_choice("variance type", variance_type, VARIANCE_TYPES)
        self.model, self.gradient, self.schedule = model, gradient, schedule
        self.scale = check_guidance_scale(scale, "classifier scale")
        self.prediction_type = prediction_type
        self.learned_variance = variance_type == "learned"

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.model(x, t)
        if self.scale == 0.0:
            return out
        pred, var = split_output(out, self.learned_variance)
        x0_hat, eps = to_x0_and_eps(pred, x, t, self.schedule, self.prediction_type)
        with torch.inference_mode(False), torch.enable_grad():
            grad = self.gradient(x.detach().clone(), t.clone(), x0_hat.detach().clone())
        sigma = gather(self.schedule.sqrt_one_minus_alphas_cumprod, t, x)
        eps = eps - sigma * self.scale * grad.to(eps.dtype)
        pred = eps_to_prediction(eps, x, t, self.schedule, self.prediction_type)
        return pred if var is None else torch.cat([pred, var], dim=1)


def classifier_gradient(classifier: Callable, class_labels: torch.Tensor) -> GradientFn:
    """``grad_{x_t} log p(y | x_t, t)`` of a noise-aware ``classifier(x_t, t) -> logits [B, K]`` for ``y``."""

    def gradient(x: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        labels = _batched({"class_labels": class_labels}, x.shape[0], x.device)["class_labels"]
        x = x.requires_grad_(True)
        logits = classifier(x, t)
        log_p = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(dim=1)  # fp16 -> fp32
        chosen = log_p.gather(1, labels[:, None].long()).sum()  # a sum: image i's term depends on x_i only
        (grad,) = torch.autograd.grad(chosen, x)
        return grad

    return gradient


class ClassifierGuidance(GradientGuidance):
    """Classifier guidance (Dhariwal & Nichol 2021): ``model`` steered by the gradient of a noise-aware
    ``classifier(x_t, t) -> logits`` towards ``class_labels`` (``[B]`` or one int), scale ``scale``.

    The classifier must take the ORIGINAL timesteps (0 .. T-1) of the model's schedule, as one
    trained by :func:`noise_aware_classifier` does.
    """

    def __init__(
        self, model, classifier: Callable, class_labels: torch.Tensor | int, scale: float, schedule: NoiseSchedule,
        *, prediction_type: str = "eps", variance_type: str = "fixed_small",
    ) -> None:
        labels = torch.as_tensor(class_labels, dtype=torch.long)
        super().__init__(model, classifier_gradient(classifier, labels), scale, schedule,
                         prediction_type=prediction_type, variance_type=variance_type)
        self.classifier = classifier
        self.class_labels = labels


def noise_aware_classifier(
    dataset: str = "fashion-mnist",
    schedule: str = "cosine",
    timesteps: int = 1000,
    *,
    device: torch.device | str = "cpu",
    root: Path | str | None = None,
    train: bool = True,
    recipe=None,
    limit: int | None = None,
    progress: bool = True,
):
    """A classifier of noisy images ``x_t`` (``ImageClassifier(time_conditioned=True)``) for the
    ``schedule`` and T a diffusion model was trained with, from the cache or trained now.

    Trained by the course's one :class:`~diffusion_course.trainer.Trainer` with
    :class:`~diffusion_course.classifier.ClassificationObjective` ``(noisy=True)``: every image is
    noised to a uniformly drawn t first. Cached like the course classifier
    (:func:`~diffusion_course.features.course_classifier`) under ``data/features/``, keyed by the
    schedule, T and a fingerprint of the training images and recipe. ``limit``: train on that many
    images only (for quick runs). Returns the model in eval mode on ``device``; its recorded
    ``test_accuracy`` is on clean test images (t = 0).
    """
    from .classifier import (
        ClassificationObjective,
        ClassifierRecipe,
        accuracy,
        fingerprint,
        load_classifier,
        save_classifier,
        train_classifier,
    )
    from .data import load_tensors
    from .features import FeatureUnavailable, _cache_dir
    from .schedules import get_schedule

    noise = get_schedule(schedule, timesteps)  # checks the name and T
    recipe = recipe or ClassifierRecipe(dataset=dataset)
    recipe = replace(recipe, overrides={**recipe.overrides, "time_conditioned": True, "timesteps": timesteps})
    images, labels = load_tensors(dataset, train=True, limit=limit, progress=progress)
    trained_on = fingerprint(images, labels, recipe)
    path = _cache_dir(root) / f"noisy-classifier-{dataset}-{schedule}-{timesteps}-{trained_on}.pt"
    if path.is_file():
        model, _ = load_classifier(path)
        return model.to(device)
    if not train:
        raise FeatureUnavailable(f"no noise-aware classifier for {dataset} at {path}; run with train=True once")
    print(f"training a noise-aware {dataset} classifier ({schedule}, T={timesteps}) once; cached in {path.parent}",
          file=sys.stderr, flush=True)
    model = train_classifier(images, labels, recipe, out=path.parent / f"run-noisy-{dataset}-{trained_on}",
                             device=device, progress=progress,
                             objective=ClassificationObjective(noisy=True, schedule=noise))
    test_images, test_labels = load_tensors(dataset, train=False, progress=progress)
    save_classifier(model, path, trained_on=trained_on, test_accuracy=accuracy(model, test_images, test_labels))
    return model


# ---------------------------------------------------------------------------
# Optional: CLIP guidance, where a pretrained CLIP model can be loaded
# ---------------------------------------------------------------------------

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(name: str = "ViT-B-32", pretrained: str = "openai", device: torch.device | str = "cpu"):
    """A pretrained CLIP (Radford et al. 2021) through the optional ``open_clip`` package, as an
    object with ``encode_image(images [B, 3, 224, 224])``, ``encode_text(tokens)`` and ``tokenize(texts)``.

    Raises :class:`GuidanceUnavailable` with one line when the package or its weights cannot be had
    (offline: always). Not a dependency of the course.
    """
    try:
        import open_clip
    except ImportError as err:
        raise GuidanceUnavailable(
            "CLIP guidance needs a pretrained CLIP model: pip install open_clip_torch (weights download once); "
            "skipping it"
        ) from err
    try:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    except Exception as err:  # a failed download raises many kinds of errors
        raise GuidanceUnavailable(
            f"CLIP weights {name}/{pretrained} could not be loaded ({type(err).__name__}: offline?); "
            "skipping CLIP guidance"
        ) from err
    model.eval().requires_grad_(False)
    model.tokenize = open_clip.get_tokenizer(name)
    return model


def clip_gradient(clip, prompt: str, schedule: NoiseSchedule, image_size: int = 224) -> GradientFn:
    """The gradient of the cosine similarity between CLIP's embeddings of ``x0_hat`` and of ``prompt``.

    Uses the x0 estimate (CLIP has never seen noisy images) and treats the network's eps as fixed:
    ``x0_hat = (x_t - sqrt(1 - ab) eps) / sqrt(ab)``, so ``grad_{x_t} = grad_{x0_hat} / sqrt(ab)``
    (GLIDE, Nichol et al. 2022, sec. 2.4, use a noise-aware CLIP instead; this keeps any CLIP usable).
    ``clip`` needs ``encode_image``, ``encode_text`` and ``tokenize`` (:func:`load_clip`).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("CLIP guidance needs a non-empty prompt")
    with torch.no_grad():
        text = clip.encode_text(clip.tokenize([prompt])).float()
        text = F.normalize(text, dim=-1)

    def gradient(x: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        x0 = x0_hat.requires_grad_(True)
        pixels = (x0.clamp(-1, 1) + 1) / 2
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        image = F.normalize(clip.encode_image((pixels - mean) / std).float(), dim=-1)
        similarity = (image * text.to(image.device)).sum()
        (grad,) = torch.autograd.grad(similarity, x0)
        return grad / gather(schedule.sqrt_alphas_cumprod, t, x)

    return gradient


def clip_guidance(
    model, prompt: str, scale: float, schedule: NoiseSchedule, *, clip=None, prediction_type: str = "eps",
    variance_type: str = "fixed_small",
) -> GradientGuidance:
    """``model`` steered towards images CLIP matches with ``prompt`` (optional; see :func:`load_clip`).

    Raises :class:`GuidanceUnavailable` (one line) where no pretrained CLIP can be loaded and none is given.
    """
    clip = load_clip() if clip is None else clip
    return GradientGuidance(model, clip_gradient(clip, prompt, schedule), scale, schedule,
                            prediction_type=prediction_type, variance_type=variance_type)


__all__ = [
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "Cond",
    "GradientGuidance",
    "GuidanceUnavailable",
    "check_guidance_scale",
    "class_guidance",
    "classifier_gradient",
    "clip_gradient",
    "clip_guidance",
    "eps_to_prediction",
    "guide",
    "load_clip",
    "noise_aware_classifier",
]
