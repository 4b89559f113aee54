"""Text conditioning: captions made from class labels, a word tokenizer, and text encoders.

A text-to-image model (Rombach et al. 2022, "Latent Diffusion", sec. 3.3) reads a caption as a
sequence of token embeddings ``c [B, L, D]`` and lets the U-Net's feature maps attend to it with
cross-attention (:class:`~diffusion_course.unet.CrossAttentionBlock`). The course datasets have
class labels, not captions, so captions are *generated* from the labels:

1. :class:`CaptionSet` / :func:`caption_set` -- several phrasings per class and dataset ("a photo
   of a sneaker", "a black-and-white picture of an ankle boot"), and a **held-out** set of
   phrasings and synonyms that never appear in training ("a snapshot showing a plimsoll"), to
   ask whether a model understands words or memorised strings.
2. :class:`Tokenizer` -- lower-case words and punctuation, a vocabulary built from the training
   captions, ``[PAD]``/``[UNK]``/``[BOS]`` tokens and a fixed length.
3. :class:`TextEncoder` -- a small transformer encoder (Vaswani et al. 2017) with learned
   positions, trained jointly with the U-Net, and :class:`PretrainedTextEncoder` -- an optional
   frozen CLIP text model (Radford et al. 2021) where ``transformers`` and its weights can be had.
4. :class:`CaptionSampler` -- labels -> token ids for a training batch, with the phrasing drawn
   per example from the training generator; the label :data:`NULL_LABEL` gives the *empty
   caption*, the null condition of classifier-free guidance (Ho & Salimans 2022).

Token ids are ``[B, L]`` long tensors; every caption starts with ``[BOS]`` (so no sequence is all
padding and the empty caption is ``[BOS]`` followed by padding). Encoders return
``(embeddings [B, L, D], mask [B, L] bool)`` with ``mask`` True at real tokens; the embeddings
of padding positions are set to zero, so padding adds the same constant key to every
cross-attention whatever the encoder computed there (the U-Net does not mask it, as in Stable
Diffusion, where CLIP's padding is attended to as well).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

PAD, UNK, BOS = "[PAD]", "[UNK]", "[BOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS)
"""Ids 0, 1, 2 of every course vocabulary, in this order."""

NULL_LABEL = -1
"""The label of "no caption": :class:`CaptionSampler` turns it into the empty caption."""

TEXT_ENCODERS = ("course", "clip")
"""``course``: the small transformer trained with the U-Net (offline); ``clip``: a frozen pretrained
CLIP text model (needs the ``text`` extra and a one-time download)."""

PRETRAINED_MODELS = {"clip": "openai/clip-vit-base-patch32"}
"""The Hugging Face model each pretrained encoder loads by default (its text half: 63 M parameters)."""

CAPTION_SPLITS = ("train", "heldout")
"""``train``: the phrasings a model is trained on; ``heldout``: other templates and other words for
the same classes, never seen in training."""


# ---------------------------------------------------------------------------
# 1. Captions from labels
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionSet:
    """The captions of one dataset and split: every template filled with every name of a class.

    ``templates`` hold ``{}`` where the class name goes; each name carries its own article
    ("an ankle boot", "a pair of trousers", "jeans"), so templates need none.
    ``names[k]`` are the names of class ``k``.
    """

    templates: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def captions(self, label: int) -> list[str]:
        """Every caption of class ``label``: templates x names, template-major."""
        return [template.format(name) for template in self.templates for name in self.names[label]]

    def all_captions(self) -> list[str]:
        return [caption for k in range(self.num_classes) for caption in self.captions(k)]


_PHOTO = ("{}", "a photo of {}", "a picture of {}", "an image of {}", "a small photo of {}")
_GREY = ("a black-and-white photo of {}", "a black-and-white picture of {}")
_HELDOUT = ("a snapshot showing {}", "this is {}", "a low-resolution scan depicting {}")

_FASHION_TRAIN = (
    ("a t-shirt", "a top", "a tee"),
    ("a pair of trousers", "trousers", "a pair of pants"),
    ("a pullover", "a sweater", "a jumper"),
    ("a dress", "a gown", "a frock"),
    ("a coat", "a jacket", "an overcoat"),
    ("a sandal", "sandals", "a flip-flop"),
    ("a shirt", "a blouse", "a button-up shirt"),
    ("a sneaker", "a trainer", "a running shoe"),
    ("a bag", "a handbag", "a purse"),
    ("an ankle boot", "a boot", "a bootie"),
)
_FASHION_HELDOUT = (
    ("a singlet", "a camisole"),
    ("jeans", "slacks", "chinos"),
    ("a sweatshirt", "a hoodie"),
    ("a sundress", "a ballgown"),
    ("a parka", "an anorak", "a blazer"),
    ("a slider", "a huarache"),
    ("an oxford", "a tunic"),
    ("a plimsoll", "athletic footwear"),
    ("a tote", "a satchel", "a backpack"),
    ("a chukka", "a wellington"),
)
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGITS_DE = ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun")
_MNIST_TRAIN = tuple(
    (f"{'an' if word == 'eight' else 'a'} {word}", f"the digit {d}", f"the number {word}")
    for d, word in enumerate(_DIGITS)
)
_MNIST_HELDOUT = tuple((word,) for word in _DIGITS_DE)  # the German numerals: words never seen in training
_CIFAR_TRAIN = (
    ("an airplane", "a plane", "an aeroplane"),
    ("a car", "an automobile"),
    ("a bird", "a little bird"),
    ("a cat", "a kitten"),
    ("a deer", "a stag"),
    ("a dog", "a puppy"),
    ("a frog", "a toad"),
    ("a horse", "a pony"),
    ("a ship", "a boat"),
    ("a truck", "a lorry"),
)
_CIFAR_HELDOUT = (
    ("a jet", "an airliner"),
    ("a sedan", "a hatchback"),
    ("a finch", "a songbird"),
    ("a tabby", "a moggy"),
    ("a fawn", "a doe"),
    ("a hound", "a pooch"),
    ("a bullfrog", "an amphibian"),
    ("a stallion", "a mare"),
    ("a vessel", "a freighter"),
    ("a tractor-trailer", "a big rig"),
)

CAPTIONS: dict[str, dict[str, CaptionSet]] = {
    "fashion-mnist": {
        "train": CaptionSet(_PHOTO + _GREY, _FASHION_TRAIN),
        "heldout": CaptionSet(_HELDOUT, _FASHION_HELDOUT),
    },
    "mnist": {
        "train": CaptionSet(("{}", "{} written by hand", "a photo of {}", "a picture of {}") + _GREY,
                            _MNIST_TRAIN),
        "heldout": CaptionSet(_HELDOUT, _MNIST_HELDOUT),
    },
    "cifar10": {
        "train": CaptionSet(_PHOTO + ("a blurry photo of {}", "a colour photo of {}"), _CIFAR_TRAIN),
        "heldout": CaptionSet(_HELDOUT, _CIFAR_HELDOUT),
    },
}
"""Curated captions per dataset and split (class order as in :mod:`diffusion_course.data`)."""


def caption_set(dataset: str | None, split: str = "train", classes: Sequence[str] | None = None) -> CaptionSet:
    """The captions of ``dataset``'s classes for ``split`` (:data:`CAPTION_SPLITS`).

    A dataset without curated captions (an image folder) gets generic ones made from its class
    names (``classes``), for training only: it has no held-out words.
    """
    if split not in CAPTION_SPLITS:
        raise ValueError(f"unknown caption split {split!r}; choose one of: {', '.join(CAPTION_SPLITS)}")
    if dataset in CAPTIONS:
        found = CAPTIONS[dataset][split]
        if classes is not None and len(classes) != found.num_classes:
            raise ValueError(f"{dataset} has {found.num_classes} classes in its captions, got {len(classes)} classes")
        return found
    if not classes:
        raise ValueError(f"captions need class names: dataset {dataset!r} has no curated captions and no classes")
    if split != "train":
        raise ValueError(f"dataset {dataset!r} has no held-out captions (only {', '.join(CAPTIONS)} have them)")
    names = tuple((f"{_article(c)} {c.strip().lower()}",) for c in classes)
    return CaptionSet(_PHOTO, names)


def _article(word: str) -> str:
    return "an" if word.strip().lower()[:1] in tuple("aeio") else "a"


# ---------------------------------------------------------------------------
# 2. Tokenizer
# ---------------------------------------------------------------------------


def split_words(text: str) -> list[str]:
    """Lower-case words and single punctuation marks: ``"A T-shirt!" -> ["a", "t", "-", "shirt", "!"]``."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def build_vocabulary(captions: Sequence[str]) -> tuple[str, ...]:
    """:data:`SPECIAL_TOKENS`, then every word of ``captions`` in sorted order (ids are positions)."""
    return SPECIAL_TOKENS + tuple(sorted({w for caption in captions for w in split_words(caption)}))


class Tokenizer:
    """Text -> ``[BOS] w_1 .. w_n [PAD] ..`` ids of a fixed length ``max_length``.

    Words outside ``vocabulary`` become ``[UNK]``. ``vocabulary`` must start with
    :data:`SPECIAL_TOKENS`; it is plain data, saved in checkpoints with the model.
    """

    pad_id, unk_id, bos_id = 0, 1, 2

    def __init__(self, vocabulary: Sequence[str], max_length: int) -> None:
        vocabulary = tuple(vocabulary)
        if vocabulary[:3] != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, got {vocabulary[:3]}")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the vocabulary has duplicate words")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2 ([BOS] and one word), got {max_length!r}")
        self.vocabulary = vocabulary
        self.max_length = max_length
        self.ids = {word: i for i, word in enumerate(vocabulary)}

    def __len__(self) -> int:
        return len(self.vocabulary)

    def length(self, text: str) -> int:
        """Tokens ``text`` needs, ``[BOS]`` included."""
        return 1 + len(split_words(text))

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` this vocabulary does not know (they would become ``[UNK]``)."""
        return [w for w in split_words(text) if w not in self.ids]

    def encode(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Ids ``[B, max_length]`` (long, CPU) for a caption or a list of captions.

        Raises ValueError for a caption longer than ``max_length - 1`` words (nothing is cut
        silently: a cut caption could lose the very word that names the class).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            words = split_words(text)
            if 1 + len(words) > self.max_length:
                raise ValueError(f"caption {text!r} has {1 + len(words)} tokens with [BOS]; this tokenizer "
                                 f"reads at most {self.max_length}: use a shorter caption")
            ids = [self.bos_id] + [self.ids.get(w, self.unk_id) for w in words]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: torch.Tensor) -> list[list[str]]:
        """Token strings per row of ``ids [B, L]``, padding left out."""
        return [[self.vocabulary[i] for i in row if i != self.pad_id] for row in ids.tolist()]

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` bool, True at real tokens."""
        return ids != self.pad_id


# ---------------------------------------------------------------------------
# 3. Text encoders
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderConfig:
    """A text encoder as plain data (stored in checkpoints inside the model's config).

    ``kind``: ``course`` or ``clip`` (:data:`TEXT_ENCODERS`). ``course`` uses ``vocabulary``,
    ``width`` (= D, the U-Net's ``context_dim``), ``layers`` and ``heads``; ``clip`` loads
    ``pretrained`` (a Hugging Face name or a local folder) and its ``width`` must be the
    model's hidden size. ``max_length``: tokens per caption, ``[BOS]`` included.
    """

    kind: str = "course"
    vocabulary: tuple[str, ...] = SPECIAL_TOKENS
    max_length: int = 24
    width: int = 64
    layers: int = 2
    heads: int = 4
    pretrained: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        if self.kind not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {self.kind!r}; choose one of: {', '.join(TEXT_ENCODERS)}")
        for name in ("max_length", "width", "layers", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"text encoder {name} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"text encoder width {self.width} must be divisible by heads {self.heads}")


class TextEncoder(nn.Module):
    """The course's text encoder: token + learned position embeddings, then a pre-norm
    transformer encoder (Vaswani et al. 2017, sec. 3.1; pre-norm as in GPT-2), then LayerNorm.

    ``forward(ids [B, L]) -> (embeddings [B, L, width], mask [B, L])``. Self-attention ignores
    padding (a key-padding mask); the outputs at padding are zero.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.kind != "course":
            raise ValueError(f"TextEncoder is the course encoder; use build_text_encoder for {config.kind!r}")
        self.config = config
        self.tokenizer = Tokenizer(config.vocabulary, config.max_length)
        self.token_embed = nn.Embedding(len(config.vocabulary), config.width)
        self.position_embed = nn.Parameter(torch.zeros(config.max_length, config.width))
        nn.init.normal_(self.position_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.width, config.heads, dim_feedforward=4 * config.width, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )
        # no nested tensors: their fast path would change the outputs at padding between train and eval
        self.layers = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)

    @property
    def width(self) -> int:
        return self.config.width

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self.tokenizer.encode(texts)

    def token_strings(self, ids: torch.Tensor) -> list[list[str]]:
        """The tokens of each row of ``ids [B, L]`` as strings, padding left out."""
        return self.tokenizer.decode(ids)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_ids(ids, len(self.config.vocabulary), self.config.max_length)
        mask = self.tokenizer.mask(ids)
        h = self.token_embed(ids) + self.position_embed[: ids.shape[1]]
        h = self.norm(self.layers(h, src_key_padding_mask=~mask))
        return h * mask[..., None].to(h.dtype), mask


class TextEncoderUnavailable(ValueError):
    """A pretrained text encoder cannot be loaded here (no ``transformers``, no weights, no network)."""


class _Shared:
    """Holds a frozen model outside the module tree: not in ``state_dict``, not averaged by the EMA,
    not copied by ``copy.deepcopy`` (the EMA copy shares it)."""

    def __init__(self, value) -> None:
        self.value = value

    def __deepcopy__(self, memo) -> _Shared:
        return self


class PretrainedTextEncoder(nn.Module):
    """A frozen pretrained CLIP text model (Radford et al. 2021) as a text encoder (optional).

    Needs ``pip install "diffusion-course[text]"`` (``transformers``) and, once, a download of
    ``config.pretrained`` from the Hugging Face hub. Its weights are never trained and never
    stored in checkpoints: a checkpoint records the model's name and reloads it. Loading happens
    on first use; where it cannot, :class:`TextEncoderUnavailable` says so in one line.

    ``forward(ids [B, L]) -> (last hidden states [B, L, width], mask [B, L])``; ids are CLIP's BPE
    tokens padded with -1 (CLIP attends causally, so what follows the end token never matters).
    """

    def __init__(self, config: TextEncoderConfig, loader: Callable[[str], tuple] | None = None) -> None:
        super().__init__()
        if config.kind == "course":
            raise ValueError("PretrainedTextEncoder needs a pretrained kind, e.g. TextEncoderConfig(kind='clip')")
        self.config = config
        self._loader = loader or load_pretrained
        self._loaded = _Shared(None)

    @property
    def width(self) -> int:
        return self.config.width

    def load(self) -> tuple:
        """``(tokenizer, model)``, loaded once (raises :class:`TextEncoderUnavailable`)."""
        if self._loaded.value is None:
            tokenizer, model = self._loader(self.config.pretrained or PRETRAINED_MODELS[self.config.kind])
            model.requires_grad_(False).eval()
            hidden = int(model.config.hidden_size)
            if hidden != self.config.width:
                raise TextEncoderUnavailable(f"the pretrained text model has width {hidden} but this model "
                                             f"was built for {self.config.width}; it is not the same text model")
            self._loaded.value = (tokenizer, model)
        return self._loaded.value

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        tokenizer, _ = self.load()
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.full((len(texts), self.config.max_length), -1, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = tokenizer(text)["input_ids"]
            if len(ids) > self.config.max_length:
                raise ValueError(f"caption {text!r} has {len(ids)} tokens; this text encoder reads at most "
                                 f"{self.config.max_length}: use a shorter caption")
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def token_strings(self, ids: torch.Tensor) -> list[list[str]]:
        """The BPE tokens of each row of ``ids [B, L]`` as strings, padding left out."""
        tokenizer, _ = self.load()
        return [tokenizer.convert_ids_to_tokens([i for i in row if i >= 0]) for row in ids.tolist()]

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, model = self.load()
        if next(model.parameters()).device != ids.device:
            model.to(ids.device)
        mask = ids >= 0
        with torch.no_grad():
            h = model(input_ids=ids.clamp(min=0), attention_mask=mask.long()).last_hidden_state
        return h * mask[..., None].to(h.dtype), mask


def load_pretrained(name: str) -> tuple:
    """``(tokenizer, CLIP text model)`` of ``name`` via ``transformers``, or :class:`TextEncoderUnavailable`."""
    try:
        import transformers
    except ImportError as err:
        raise TextEncoderUnavailable(
            "the pretrained text encoder needs the transformers package: pip install 'diffusion-course[text]' "
            "(or use the offline text encoder 'course')") from err
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
        model = transformers.CLIPTextModel.from_pretrained(name)
    except Exception as err:  # no network, no cache, a wrong name: many exception types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TextEncoderUnavailable(
            f"cannot load the pretrained text encoder {name!r} ({reason}); it is downloaded once from the "
            "Hugging Face hub: connect once, or use the offline text encoder 'course'") from err
    return tokenizer, model


def build_text_encoder(config: TextEncoderConfig) -> nn.Module:
    """The encoder ``config`` describes: :class:`TextEncoder` or :class:`PretrainedTextEncoder`."""
    return TextEncoder(config) if config.kind == "course" else PretrainedTextEncoder(config)


def course_encoder_config(captions: Sequence[str], **overrides) -> TextEncoderConfig:
    """A :class:`TextEncoderConfig` for the course encoder whose vocabulary is ``captions``' words;
    ``max_length`` defaults to 24 tokens (room for prompts longer than the training captions), or
    the longest caption (with ``[BOS]``) rounded up to a multiple of 8 if that is more."""
    longest = max(1 + len(split_words(c)) for c in captions)
    values = {"max_length": max(TextEncoderConfig.max_length, -(-longest // 8) * 8), **overrides}
    return TextEncoderConfig(kind="course", vocabulary=build_vocabulary(captions), **values)


def pretrained_encoder_config(kind: str = "clip", name: str | None = None, **overrides) -> TextEncoderConfig:
    """A :class:`TextEncoderConfig` for a pretrained encoder (width 512: CLIP ViT-B/32's text model)."""
    values = {"width": 512, "max_length": 32, "heads": 8, **overrides}
    return TextEncoderConfig(kind=kind, pretrained=name or PRETRAINED_MODELS[kind], **values)


def _check_ids(ids: torch.Tensor, vocab_size: int, max_length: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        what = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"token ids must be an integer tensor [B, L] (from tokenize(...)), got {what}")
    if ids.shape[1] > max_length:
        raise ValueError(f"token ids have length {ids.shape[1]}; this encoder reads at most {max_length}")
    if ids.device.type == "cpu" and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < vocab_size:
        raise ValueError(f"token ids must lie in 0..{vocab_size - 1} (this vocabulary), "
                         f"got {int(ids.min())}..{int(ids.max())}")


# ---------------------------------------------------------------------------
# 4. Labels -> captions -> token ids, for training
# ---------------------------------------------------------------------------


@dataclass
class CaptionSampler:
    """Turns a batch of class labels into token ids of randomly phrased captions.

    ``sampler(labels [B], generator) -> ids [B, L]`` on ``labels``' device: label ``k`` gets one of
    the captions of class ``k`` in ``captions`` (uniformly, one ``torch.rand(B)`` from
    ``generator``); :data:`NULL_LABEL` gets the empty caption. Every caption is tokenized once,
    here, into a table on the device, so a training step does no string work and no host sync.
    """

    captions: CaptionSet
    tokenize: Callable[[Sequence[str]], torch.Tensor]
    table: torch.Tensor = field(init=False, repr=False)  # [K + 1, max captions per class, L]
    counts: torch.Tensor = field(init=False, repr=False)  # [K + 1], the null "class" last with 1 caption

    def __post_init__(self) -> None:
        per_class = [self.captions.captions(k) for k in range(self.captions.num_classes)] + [[""]]
        width = max(len(c) for c in per_class)
        rows = [self.tokenize(c) for c in per_class]
        self.table = torch.stack([torch.cat([r, r[-1:].expand(width - r.shape[0], -1)]) for r in rows])
        self.counts = torch.tensor([len(c) for c in per_class])
        self._strings = per_class

    @property
    def num_classes(self) -> int:
        return self.captions.num_classes

    def indices(self, labels: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(row, choice)`` per label: the table row (NULL_LABEL -> the last) and which caption."""
        if self.table.device != labels.device:
            self.table, self.counts = self.table.to(labels.device), self.counts.to(labels.device)
        rows = torch.where(labels == NULL_LABEL, torch.full_like(labels, self.num_classes), labels)
        u = torch.rand(labels.shape[0], generator=generator, device=labels.device)
        choice = (u * self.counts[rows]).long().clamp(max=self.table.shape[1] - 1)
        return rows, choice

    def __call__(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        rows, choice = self.indices(labels, generator)
        return self.table[rows, choice]

    def sample_captions(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> list[str]:
        """The captions :meth:`__call__` would tokenize for the same generator state (to read them)."""
        rows, choice = self.indices(labels, generator)
        return [self._strings[r][c] for r, c in zip(rows.tolist(), choice.tolist(), strict=True)]

    def first_captions(self, labels: torch.Tensor) -> torch.Tensor:
        """Ids of each class's first caption (no randomness; for previews). ``[B, L]``."""
        rows = torch.where(labels == NULL_LABEL, torch.full_like(labels, self.num_classes), labels)
        return self.table.to(labels.device)[rows, 0]


def drop_labels(labels: torch.Tensor, u: torch.Tensor, p: float, null_label: int) -> torch.Tensor:
    """Condition dropout for classifier-free guidance (Ho & Salimans 2022, Algorithm 1, ``p_uncond``).

    Label ``i`` becomes ``null_label`` where its uniform draw ``u[i]`` in [0, 1) is below ``p``, so
    each label is dropped with probability ``p``, independently. ``labels``: ``[B]`` integers;
    ``u``: ``[B]`` floats (drawn by the caller, so the draws come from the training generator).
    Returns a new tensor of ``labels``' dtype; ``labels`` itself is left unchanged (it may be a
    view of the dataset's labels). ``null_label``: ``num_classes`` for a class-conditional U-Net
    (its extra "no class" embedding), :data:`NULL_LABEL` for captions (the empty caption).
    """
    if u.shape != labels.shape[:1]:
        raise ValueError(f"give one uniform draw per label: u has shape {tuple(u.shape)}, labels {tuple(labels.shape)}")
    return torch.where(u < p, torch.full_like(labels, null_label), labels)


def drop_to_null(labels: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Replace each label by :data:`NULL_LABEL` with probability ``p`` (caption dropout for
    classifier-free guidance, Ho & Salimans 2022, Algorithm 1: p_uncond): :func:`drop_labels`
    with one ``torch.rand(B)`` from ``generator``."""
    u = torch.rand(labels.shape[0], generator=generator, device=labels.device)
    return drop_labels(labels, u, p, NULL_LABEL)


__all__ = [
    "BOS",
    "CAPTIONS",
    "CAPTION_SPLITS",
    "NULL_LABEL",
    "PAD",
    "PRETRAINED_MODELS",
    "SPECIAL_TOKENS",
    "TEXT_ENCODERS",
    "UNK",
    "CaptionSampler",
    "CaptionSet",
    "PretrainedTextEncoder",
    "TextEncoder",
    "TextEncoderConfig",
    "TextEncoderUnavailable",
    "Tokenizer",
    "build_text_encoder",
    "build_vocabulary",
    "caption_set",
    "course_encoder_config",
    "drop_labels",
    "drop_to_null",
    "load_pretrained",
    "pretrained_encoder_config",
    "split_words",
]
