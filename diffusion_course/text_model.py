"""Text-to-image: the U-Net with cross-attention to a caption, and where it looks.

:class:`TextConditionedUNet` is the package's :class:`~diffusion_course.unet.UNet` built with
``context_dim`` (every attention layer is followed by cross-attention, Rombach et al. 2022,
"Latent Diffusion", sec. 3.3) plus a text encoder of :mod:`~diffusion_course.conditioning`:

    eps_theta(x_t, t, y) = UNet(x_t, t, context = tau_theta(y))        (Latent Diffusion, eq. 3)

where ``tau_theta`` maps the caption's token ids ``y`` to embeddings ``[B, L, D]``. The course
encoder is trained jointly with the U-Net (one optimizer, one loss); a pretrained CLIP encoder
stays frozen. The model is called ``model(x, t, tokens=ids)``, so a classifier-free-guidance
wrapper passes ``{"tokens": ids}`` as the condition and :meth:`TextConditionedUNet.null_condition`
(the empty caption) as the null one.

Per-token attention maps (as in Hertz et al. 2022, "Prompt-to-Prompt", fig. 4):
:func:`record_cross_attention` keeps the softmax weights of every cross-attention layer while
it is active, and :func:`token_attention_maps` averages them over heads and layers into one map
per token ``[B, L, H, W]``; :func:`diffusion_course.viz.show_token_attention` draws them.
:func:`evaluate_prompts` asks a trained model for every class in unseen words and lets the course
classifier judge the samples (the text part of ``benchmarks/guidance.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import (
    TextEncoderConfig,
    build_text_encoder,
    caption_set,
    course_encoder_config,
    pretrained_encoder_config,
)
from .unet import CrossAttentionBlock, UNet, UNetConfig, _to_tokens

KIND = "text-unet"
"""This model's entry in :data:`diffusion_course.checkpoint.MODEL_KINDS`."""


@dataclass(frozen=True)
class TextUNetConfig:
    """A text-conditioned U-Net as plain data: the U-Net (its ``context_dim`` = the encoder's
    width), the text encoder (with its vocabulary) and the class names the training captions
    were made from (``dataset`` picks the curated captions, see :func:`~diffusion_course.conditioning.caption_set`)."""

    unet: UNetConfig
    text: TextEncoderConfig
    class_names: tuple[str, ...] = ()
    dataset: str | None = None
    kind: str = KIND

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.unet.context_dim != self.text.width:
            raise ValueError(f"the U-Net's context_dim ({self.unet.context_dim}) must equal the text encoder's "
                             f"width ({self.text.width})")

    # what pipelines read from any model's config
    @property
    def image_size(self) -> int:
        return self.unet.image_size

    @property
    def in_channels(self) -> int:
        return self.unet.in_channels


class TextConditionedUNet(nn.Module):
    """A U-Net with cross-attention to a caption, and the text encoder that reads the caption.

    ``forward(x [B, C, H, W], t [B], tokens [B, L] | None) -> [B, out_channels, H, W]``;
    ``tokens=None`` means the empty caption for every image (the unconditional model that caption
    dropout trains). Token ids come from :meth:`tokenize`.
    """

    def __init__(self, config: TextUNetConfig) -> None:
        super().__init__()
        if not isinstance(config, TextUNetConfig):
            raise ValueError(f"TextConditionedUNet needs a TextUNetConfig, got {type(config).__name__}")
        self.config = config
        self.text_encoder = build_text_encoder(config.text)
        self.unet = UNet(config.unet)

    @classmethod
    def from_config_dict(cls, values: dict) -> TextConditionedUNet:
        """Rebuild from the plain data a checkpoint stores (see :data:`~diffusion_course.checkpoint.MODEL_KINDS`)."""
        values = dict(values)
        values.pop("kind", None)
        unet = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(values.pop("unet")).items()}
        text = dict(values.pop("text"))
        return cls(TextUNetConfig(unet=UNetConfig(**unet), text=TextEncoderConfig(**text), **values))

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``[B, L]`` (long, CPU) of one caption or a list of captions."""
        return self.text_encoder.tokenize(texts)

    def token_strings(self, tokens: torch.Tensor) -> list[list[str]]:
        """The tokens of each caption ``tokens [B, L]`` as strings (``[BOS]`` first), padding left out."""
        return self.text_encoder.token_strings(tokens)

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` the course encoder never saw in training (they read as ``[UNK]``); a
        pretrained encoder's subword tokenizer knows every word, so it returns []."""
        tokenizer = getattr(self.text_encoder, "tokenizer", None)
        return [] if tokenizer is None else tokenizer.unknown_words(text)

    def example_prompt(self) -> str:
        """A prompt in the training words, e.g. ``"a photo of an ankle boot"`` (for help messages)."""
        captions = caption_set(self.config.dataset, "train", self.config.class_names)
        return captions.templates[min(1, len(captions.templates) - 1)].format(captions.names[-1][0])

    def null_tokens(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Ids of the empty caption, ``[batch_size, L]``: the null condition of classifier-free guidance."""
        return self.tokenize([""]).expand(batch_size, -1).to(device)

    def null_condition(self, batch_size: int, device: torch.device | str | None = None) -> dict:
        """``{"tokens": null_tokens}``, the keyword arguments of the unconditional model."""
        return {"tokens": self.null_tokens(batch_size, device)}

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text encoder: ``(context [B, L, D], mask [B, L])``."""
        return self.text_encoder(tokens)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | int | float, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        if tokens is None:
            tokens = self.null_tokens(x.shape[0], x.device)
        elif not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[0] != x.shape[0]:
            what = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be token ids [B={x.shape[0]}, L] from model.tokenize(...), got {what}")
        context, _ = self.encode(tokens.to(x.device))
        return self.unet(x, t, context=context.to(x.dtype))


def build_text_unet(unet: UNetConfig, class_names: Sequence[str], dataset: str | None, *,
                    encoder: str = "course", **encoder_overrides) -> TextConditionedUNet:
    """A :class:`TextConditionedUNet` for ``dataset``'s classes: the course encoder's vocabulary comes
    from the training captions (:func:`~diffusion_course.conditioning.caption_set`); ``encoder="clip"``
    uses the pretrained CLIP text model instead. ``unet``'s ``context_dim`` is set to the encoder width.

    Cross-attention follows every attention layer. The CPU presets attend only in the middle block,
    which would leave the caption one layer to act through; for them, attention is added at the
    lowest resolution (e.g. 7x7 for 28x28 images: four cross-attention layers instead of one in
    ``tiny``, for about 8 % more time per step), as Latent Diffusion attends at several resolutions.
    """
    if not unet.attention_resolutions:
        unet = replace(unet, attention_resolutions=(unet.level_resolutions[-1],))
    if encoder == "course":
        text = course_encoder_config(caption_set(dataset, "train", class_names).all_captions(), **encoder_overrides)
    else:
        text = pretrained_encoder_config(encoder, **encoder_overrides)
    config = TextUNetConfig(replace(unet, context_dim=text.width), text, tuple(class_names), dataset)
    return TextConditionedUNet(config)


# ---------------------------------------------------------------------------
# Per-token cross-attention maps
# ---------------------------------------------------------------------------


@dataclass
class AttentionRecord:
    """The softmax weights of one cross-attention call: ``weights [B, heads, H*W, L]``; ``size = (H, W)``."""

    layer: str
    size: tuple[int, int]
    weights: torch.Tensor


@dataclass
class AttentionRecorder:
    """What :func:`record_cross_attention` collects: one :class:`AttentionRecord` per layer call."""

    records: list[AttentionRecord] = field(default_factory=list)

    def clear(self) -> None:
        self.records.clear()


def _cross_attention_weights(block: CrossAttentionBlock, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` of ``block`` for ``x [B, C, H, W]`` and ``context [B, L, D]``:
    ``[B, heads, H*W, L]``. The block itself computes this inside fused SDPA, which never
    exposes it; here it is computed explicitly, only while recording."""
    q = block.q(_to_tokens(block.norm(x)))
    k, _ = block.kv(context).chunk(2, dim=2)
    heads = block.num_heads
    q = q.unflatten(2, (heads, -1)).transpose(1, 2)  # [B, heads, HW, d]
    k = k.unflatten(2, (heads, -1)).transpose(1, 2)  # [B, heads, L, d]
    return (q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1)


@contextlib.contextmanager
def record_cross_attention(model: nn.Module) -> Iterator[AttentionRecorder]:
    """Within ``with record_cross_attention(model) as rec:``, every forward pass of every
    :class:`~diffusion_course.unet.CrossAttentionBlock` in ``model`` appends its attention
    weights to ``rec.records`` (detached). The model's outputs are unchanged; the hooks are
    removed on exit."""
    recorder = AttentionRecorder()
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, CrossAttentionBlock):
            def hook(block, inputs, output, name=name):
                x, context = inputs
                with torch.no_grad():
                    weights = _cross_attention_weights(block, x, context)
                recorder.records.append(AttentionRecord(name, (x.shape[2], x.shape[3]), weights.detach()))

            handles.append(module.register_forward_hook(hook))
    if not handles:
        raise ValueError("this model has no cross-attention layers (build it with context_dim, or use a "
                         "text-conditioned model)")
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


def token_attention_maps(records: Sequence[AttentionRecord], image_size: int | tuple[int, int]) -> torch.Tensor:
    """One map per token ``[B, L, H, W]``: each record's weights averaged over heads, reshaped to
    its feature map, upsampled (bilinear) to ``image_size`` and averaged over records (layers and,
    if recorded over a sampling run, timesteps). For each pixel the maps sum to 1 over tokens."""
    if not records:
        raise ValueError("no attention was recorded: run the model inside record_cross_attention(model)")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    total = None
    for record in records:
        b, _, _, length = record.weights.shape
        maps = record.weights.mean(dim=1).transpose(1, 2).reshape(b, length, *record.size)
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        total = maps if total is None else total + maps
    return total / len(records)


@torch.no_grad()
def prompt_attention(model: TextConditionedUNet, tokens: torch.Tensor, trajectory: Sequence[tuple],
                     *, every: int = 1) -> torch.Tensor:
    """Per-token maps ``[B, L, H, W]`` of the conditional model along a sampling ``trajectory``
    (``(t, x_t)`` pairs, e.g. collected with the sampler's ``callback``), averaged over every
    ``every``-th step. One extra conditional forward pass per step used (no guidance: what the
    model attends to for this caption)."""
    with record_cross_attention(model) as rec:
        for t, x_t in list(trajectory)[::every]:
            t_batch = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
            model(x_t, t_batch, tokens=tokens.to(x_t.device))
    return token_attention_maps(rec.records, tuple(trajectory[0][1].shape[2:]))


def attention_for_prompt(pipe, prompt: str, *, steps: int = 20, seed: int = 0, guidance: float | None = None,
                         sampler: str = "ddim", every: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Draw one image for ``prompt`` with ``pipe`` and return ``(image [C, H, W], maps [L, H, W], words)``:
    the per-token attention maps of the conditional model along the sampling run
    (:func:`prompt_attention`) and the caption's tokens, ready for
    :func:`diffusion_course.viz.show_token_attention`."""
    trajectory: list[tuple[int, torch.Tensor]] = []
    images = pipe.generate(1, prompt=prompt, guidance=guidance, sampler=sampler, steps=steps, seed=seed,
                           callback=lambda i, t, x, x0_hat: trajectory.append((t, x.clone())))
    tokens = pipe.prompt_tokens(prompt, 1)
    maps = prompt_attention(pipe.model, tokens, trajectory, every=every)
    return images[0], maps[0].cpu(), pipe.model.token_strings(tokens.cpu())[0]


# ---------------------------------------------------------------------------
# Does the model understand words it never saw? (benchmark)
# ---------------------------------------------------------------------------


def heldout_prompts(dataset: str, split: str = "heldout") -> list[list[str]]:
    """The prompts of every class of ``dataset`` in ``split`` (default: phrasings and words never
    used in training), one list per class."""
    captions = caption_set(dataset, split)
    return [captions.captions(k) for k in range(captions.num_classes)]


def evaluate_prompts(
    pipe,
    *,
    samples_per_class: int = 20,
    split: str = "heldout",
    guidance: float | None = None,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    batch_size: int = 256,
    extractor=None,
    report: bool = True,
    real_limit: int | None = None,
    keep_images: bool = False,
) -> dict:
    """Class accuracy of a text-conditioned model asked for each class in ``split``'s words.

    For every class, ``samples_per_class`` images are drawn, the prompts cycling through the
    class's captions in ``split`` (``heldout``: templates and class words never seen in
    training; ``train``: the training phrasings), and the course classifier of the dataset
    judges whether each image shows the class asked for
    (:func:`~diffusion_course.evaluation.evaluate_images` with ``labels``).

    Args:
        pipe: a :class:`~diffusion_course.pipeline.DiffusionPipeline` of a text-conditioned model.
        guidance: classifier-free guidance scale, or None for the plain conditional model.
        extractor: the judge (default: the course classifier of the model's dataset).
        report: also compute the full quality report of the samples (FID etc.); ``False`` only
            asks the classifier for its class probabilities.
        keep_images: also return the samples (``"images"`` ``[N, C, H, W]`` in [-1, 1]) and the
            classes they were asked for (``"labels"`` ``[N]``), e.g. to draw or score them elsewhere.

    Returns:
        ``{"dataset", "split", "encoder", "guidance", "samples", "class_accuracy",
        "per_class_accuracy" (list), "unknown_word_fraction", "prompts" (per class), "report"}``;
        ``report`` is the :class:`~diffusion_course.evaluation.QualityReport` as a dict, or None.
    """
    config = getattr(pipe.model, "config", None)
    if not isinstance(config, TextUNetConfig):
        raise ValueError("evaluate_prompts needs a text-conditioned model (trained with --conditioning text)")
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be at least 1, got {samples_per_class}")
    dataset = config.dataset
    prompts = heldout_prompts(dataset, split)
    asked = [prompts[k][i % len(prompts[k])] for k in range(len(prompts)) for i in range(samples_per_class)]
    labels = torch.arange(len(prompts)).repeat_interleave(samples_per_class)
    images = pipe.generate(len(asked), prompt=asked, guidance=guidance, sampler=sampler, steps=steps, seed=seed,
                           batch_size=batch_size)
    if extractor is None:
        from .features import course_classifier

        extractor = course_classifier(dataset)
    quality = None
    if report:
        from .evaluation import evaluate_images

        quality = evaluate_images(images, dataset, extractor=extractor, labels=labels, real_limit=real_limit)
    predicted = extractor.probabilities(images).argmax(dim=1)
    correct = (predicted == labels).float()
    tokenizer = getattr(pipe.model.text_encoder, "tokenizer", None)
    unknown = None
    if tokenizer is not None:  # the course encoder: how many words of the prompts did it never see?
        from .conditioning import split_words

        words = [w for p in asked for w in split_words(p)]
        unknown = sum(w not in tokenizer.ids for w in words) / max(1, len(words))
    kept = {"images": images, "labels": labels} if keep_images else {}
    return {
        **kept,
        "dataset": dataset,
        "split": split,
        "encoder": config.text.kind,
        "guidance": guidance,
        "samples": len(asked),
        "class_accuracy": float(correct.mean()),
        "per_class_accuracy": [float(c.mean()) for c in correct.split(samples_per_class)],
        "unknown_word_fraction": unknown,
        "prompts": prompts,
        "report": None if quality is None else quality.to_dict(),
    }


__all__ = [
    "KIND",
    "AttentionRecord",
    "AttentionRecorder",
    "TextConditionedUNet",
    "TextUNetConfig",
    "attention_for_prompt",
    "build_text_unet",
    "evaluate_prompts",
    "heldout_prompts",
    "prompt_attention",
    "record_cross_attention",
    "token_attention_maps",
]
