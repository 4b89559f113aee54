"""Captions from labels, the word tokenizer, the text encoders and the caption sampler."""

from __future__ import annotations

import copy
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from diffusion_course import conditioning as C
from diffusion_course.data import DATASET_INFO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FASHION = C.CAPTIONS["fashion-mnist"]["train"]


def _encoder(**overrides) -> C.TextEncoder:
    torch.manual_seed(0)
    return C.TextEncoder(C.course_encoder_config(FASHION.all_captions(), **overrides))


# ---------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(C.CAPTIONS))
def test_every_class_has_several_phrasings_and_the_heldout_words_are_never_trained(dataset):
    train, heldout = C.caption_set(dataset, "train"), C.caption_set(dataset, "heldout")
    assert train.num_classes == heldout.num_classes == DATASET_INFO[dataset]["num_classes"]
    assert len(train.templates) >= 4 and all(len(names) >= 2 for names in train.names)
    assert all(len(c) >= 8 for c in (train.captions(k) for k in range(train.num_classes)))
    vocabulary = set(C.build_vocabulary(train.all_captions()))
    # held-out captions share only articles and the hyphen with the training captions ...
    for caption in heldout.all_captions():
        assert set(C.split_words(caption)) & vocabulary <= {"a", "an", "-"}, caption
    # ... and every one of them fits the encoder built from the training captions
    encoder_config = C.course_encoder_config(train.all_captions())
    assert max(1 + len(C.split_words(c)) for c in heldout.all_captions()) <= encoder_config.max_length
    # no caption names two classes: class k's names appear in no other class's list
    for k in range(train.num_classes):
        others = {n for j, names in enumerate(train.names) if j != k for n in names}
        assert not set(train.names[k]) & others


def test_the_phrasings_of_the_issue_are_among_the_fashion_captions():
    captions = FASHION.all_captions()
    assert "a photo of a sneaker" in captions and "a black-and-white picture of an ankle boot" in captions
    assert FASHION.captions(9)[0] == "an ankle boot" and "a photo of a pair of trousers" in FASHION.captions(1)


def test_a_folder_dataset_gets_generic_captions_and_no_heldout_set():
    found = C.caption_set("folder", "train", ["Apple", "pear"])
    assert found.names == (("an apple",), ("a pear",)) and "a photo of an apple" in found.captions(0)
    with pytest.raises(ValueError, match="no held-out captions"):
        C.caption_set("folder", "heldout", ["apple", "pear"])
    with pytest.raises(ValueError, match="captions need class names"):
        C.caption_set("folder", "train", None)
    with pytest.raises(ValueError, match="unknown caption split 'test'"):
        C.caption_set("mnist", "test")
    with pytest.raises(ValueError, match="has 10 classes in its captions, got 3"):
        C.caption_set("mnist", "train", ["a", "b", "c"])


# ---------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------


def test_words_are_lower_case_with_punctuation_split_off():
    assert C.split_words("A T-shirt, please!") == ["a", "t", "-", "shirt", ",", "please", "!"]
    assert C.split_words("  ") == []


def test_the_tokenizer_encodes_pads_and_decodes():
    vocab = C.build_vocabulary(["a photo of a bag", "a bag"])
    assert vocab == ("[PAD]", "[UNK]", "[BOS]", "a", "bag", "of", "photo")
    tok = C.Tokenizer(vocab, max_length=6)
    ids = tok.encode(["A photo of a BAG", "a shoe", ""])
    assert ids.dtype == torch.long and ids.shape == (3, 6)
    assert ids.tolist() == [[2, 3, 6, 5, 3, 4], [2, 3, 1, 0, 0, 0], [2, 0, 0, 0, 0, 0]]
    assert tok.decode(ids) == [["[BOS]", "a", "photo", "of", "a", "bag"], ["[BOS]", "a", "[UNK]"], ["[BOS]"]]
    assert tok.mask(ids).sum(1).tolist() == [6, 3, 1]
    assert tok.unknown_words("a red bag") == ["red"] and tok.length("a bag") == 3
    with pytest.raises(ValueError, match="has 7 tokens with \\[BOS\\]; this tokenizer reads at most 6"):
        tok.encode("a photo of a bag bag")


def test_the_tokenizer_refuses_a_malformed_vocabulary():
    with pytest.raises(ValueError, match="must start with"):
        C.Tokenizer(("a", "b"), 4)
    with pytest.raises(ValueError, match="duplicate"):
        C.Tokenizer((*C.SPECIAL_TOKENS, "a", "a"), 4)
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        C.Tokenizer(C.SPECIAL_TOKENS, 1)


# ---------------------------------------------------------------------------
# the course encoder
# ---------------------------------------------------------------------------


def test_the_encoder_returns_embeddings_and_a_mask_with_zeros_at_padding():
    enc = _encoder()
    ids = enc.tokenize(["a photo of a sneaker", "", "an ankle boot"])
    out, mask = enc(ids)
    assert out.shape == (3, enc.config.max_length, 64) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [6, 1, 4]
    assert torch.all(out[~mask] == 0) and torch.all(out[mask].abs().sum(-1) > 0)
    assert sum(p.numel() for p in enc.parameters()) < 150_000  # small: it trains with the U-Net on a CPU


def test_padding_does_not_change_the_real_tokens_embeddings():
    """The key-padding mask at work: the same caption with 8 or 24 slots reads the same."""
    enc = _encoder().eval()
    ids = enc.tokenize(["a black-and-white picture of an ankle boot"])
    long, _ = enc(ids)
    short, _ = enc(ids[:, :13])
    assert torch.allclose(long[:, :13], short, atol=1e-5)
    # and a caption's embeddings do not depend on the other captions of its batch
    batch, _ = enc(enc.tokenize(["a bag", "a black-and-white picture of an ankle boot"]))
    assert torch.allclose(batch[1:], long, atol=1e-5)
    # training mode computes the same (no dropout, no fast path that skips padding)
    assert torch.allclose(enc.train()(ids)[0], long, atol=1e-5)


def test_the_encoder_refuses_bad_ids():
    enc = _encoder()
    for ids, match in [(torch.zeros(2, 4), "integer tensor \\[B, L\\]"),
                       (torch.zeros(4, dtype=torch.long), "\\[B, L\\]"),
                       (torch.zeros(1, 40, dtype=torch.long), "reads at most 24"),
                       (torch.full((1, 3), 999), "must lie in 0..46")]:
        with pytest.raises(ValueError, match=match):
            enc(ids)
    with pytest.raises(ValueError, match="divisible by heads"):
        C.TextEncoderConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="unknown text encoder 'bert'"):
        C.TextEncoderConfig(kind="bert")


# ---------------------------------------------------------------------------
# labels -> captions -> ids
# ---------------------------------------------------------------------------


def test_the_caption_sampler_draws_each_class_from_its_own_captions_with_the_generator():
    enc = _encoder()
    sampler = C.CaptionSampler(FASHION, enc.tokenize)
    labels = torch.tensor([9, 0, C.NULL_LABEL, 7] * 50)
    gen = torch.Generator().manual_seed(3)
    ids = sampler(labels, gen)
    # exactly one torch.rand(B) was drawn from the generator
    replay = torch.Generator().manual_seed(3)
    torch.rand(labels.shape[0], generator=replay)
    assert torch.equal(gen.get_state(), replay.get_state())
    # the same seed gives the same captions, and the ids are those captions tokenized
    captions = sampler.sample_captions(labels, torch.Generator().manual_seed(3))
    assert torch.equal(ids, enc.tokenize(captions))
    for label, caption in zip(labels.tolist(), captions, strict=True):
        assert caption in ([""] if label == C.NULL_LABEL else FASHION.captions(label))
    # uniform over a class's captions: 2000 draws reach every one of them
    many = sampler.sample_captions(torch.full((2000,), 9), torch.Generator().manual_seed(0))
    assert set(many) == set(FASHION.captions(9))
    assert torch.equal(sampler.first_captions(torch.tensor([9])), enc.tokenize(["an ankle boot"]))


def test_drop_labels_follows_the_given_draws_and_leaves_the_labels_alone():
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    u = torch.tensor([0.05, 0.5, 0.0999, 0.1001, 0.99, 0.2])
    before = labels.clone()
    dropped = C.drop_labels(labels, u, 0.1, 10)
    assert torch.equal(dropped, torch.tensor([10, 1, 10, 1, 5, 9])) and dropped.dtype == labels.dtype
    assert torch.equal(labels, before)  # a new tensor: the batch (maybe a view of the dataset) is not touched
    assert torch.equal(C.drop_labels(labels, u, 0.0, 10), labels)
    assert torch.equal(C.drop_labels(labels, u, 1.0, C.NULL_LABEL), torch.full_like(labels, C.NULL_LABEL))
    with pytest.raises(ValueError, match="one uniform draw per label"):
        C.drop_labels(labels, u[:3], 0.1, 10)


def test_the_objective_and_caption_dropout_use_drop_labels_with_one_draw_per_label():
    from diffusion_course.diffusion import DiffusionConfig
    from diffusion_course.losses import DiffusionObjective

    labels = torch.arange(10).repeat(3)
    u = torch.rand(30, generator=torch.Generator().manual_seed(5))
    objective = DiffusionObjective(DiffusionConfig(timesteps=50, conditioning="class", num_classes=10), cond_drop=0.3)
    by_objective = objective.drop_labels(labels, torch.Generator().manual_seed(5))
    assert torch.equal(by_objective, C.drop_labels(labels, u, 0.3, 10))
    assert torch.equal(C.drop_to_null(labels, 0.3, torch.Generator().manual_seed(5)),
                       C.drop_labels(labels, u, 0.3, C.NULL_LABEL))


def test_caption_dropout_replaces_labels_by_the_null_label():
    labels = torch.arange(10).repeat(400)
    dropped = C.drop_to_null(labels, 0.25, torch.Generator().manual_seed(0))
    null = dropped == C.NULL_LABEL
    assert 0.22 < null.float().mean() < 0.28 and torch.equal(dropped[~null], labels[~null])


# ---------------------------------------------------------------------------
# the optional pretrained encoder
# ---------------------------------------------------------------------------


def test_without_transformers_the_pretrained_encoder_says_so_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    enc = C.build_text_encoder(C.pretrained_encoder_config("clip"))
    assert isinstance(enc, C.PretrainedTextEncoder)  # building is free: loading happens on first use
    with pytest.raises(C.TextEncoderUnavailable) as err:
        enc.tokenize("a bag")
    assert "pip install 'diffusion-course[text]'" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # the command lines turn it into exit code 2


def test_without_its_weights_the_pretrained_encoder_says_so_in_one_line(monkeypatch):
    def from_pretrained(name):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}.\nCheck your connection.")

    fake = SimpleNamespace(AutoTokenizer=SimpleNamespace(from_pretrained=from_pretrained),
                           CLIPTextModel=SimpleNamespace(from_pretrained=from_pretrained))
    monkeypatch.setitem(sys.modules, "transformers", fake)
    with pytest.raises(C.TextEncoderUnavailable) as err:
        C.load_pretrained("openai/clip-vit-base-patch32")
    message = str(err.value)
    assert "\n" not in message and "couldn't connect" in message and "use the offline text encoder 'course'" in message


class _FakeTokenizer:
    """CLIP-like: start token 1, words 3.., end token 2."""

    def __call__(self, text):
        return {"input_ids": [1] + [3 + len(w) for w in text.split()] + [2]}

    def convert_ids_to_tokens(self, ids):
        return [f"<{i}>" for i in ids]


class _FakeTextModel(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=width)
        self.embed = nn.Embedding(40, width)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(last_hidden_state=self.embed(input_ids).cumsum(1))  # causal, like CLIP


def test_the_pretrained_encoder_is_frozen_shared_and_not_saved():
    loads = []

    def loader(name):
        loads.append(name)
        return _FakeTokenizer(), _FakeTextModel()

    config = C.pretrained_encoder_config("clip", "local/clip", width=8, max_length=6, heads=2)
    enc = C.PretrainedTextEncoder(config, loader=loader)
    ids = enc.tokenize(["a bag", ""])
    assert ids.tolist() == [[1, 4, 6, 2, -1, -1], [1, 2, -1, -1, -1, -1]]
    out, mask = enc(ids)
    assert out.shape == (2, 6, 8) and mask.sum(1).tolist() == [4, 2] and torch.all(out[~mask] == 0)
    assert enc.token_strings(ids[:1]) == [["<1>", "<4>", "<6>", "<2>"]]
    # frozen, outside the module tree (not trained, not in checkpoints), shared by the EMA's deep copy
    assert list(enc.parameters()) == [] and enc.state_dict() == {}
    _, model = enc.load()
    assert not any(p.requires_grad for p in model.parameters())
    assert copy.deepcopy(enc).load()[1] is model and loads == ["local/clip"]
    with pytest.raises(ValueError, match="this text encoder reads at most 6"):
        enc.tokenize("one two three four five")
    wrong = C.PretrainedTextEncoder(C.pretrained_encoder_config("clip", width=16), loader=loader)
    with pytest.raises(C.TextEncoderUnavailable, match="has width 8 but this model was built for 16"):
        wrong.tokenize("a bag")


def _tiny_clip(folder) -> str:
    """A randomly initialised 1-layer CLIP text model and a character-level CLIP tokenizer, saved
    locally (no download): the real transformers classes the adapter loads."""
    import json

    transformers = pytest.importorskip("transformers")
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]  # CLIP's byte alphabet
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    end = vocab["<|endoftext|>"]
    config = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end)
    transformers.CLIPTextModel(config).save_pretrained(folder)
    return str(folder)


def test_a_real_clip_text_model_through_the_adapter(tmp_path):
    """Where the ``text`` extra is installed: the adapter against transformers' own classes."""
    name = _tiny_clip(tmp_path)
    enc = C.build_text_encoder(C.pretrained_encoder_config("clip", name, width=16, heads=2, max_length=12))
    ids = enc.tokenize(["a bag", ""])
    # character level without merges: <start> a</w> b a g</w> <end>, then -1 for padding
    assert ids[0, :6].ge(0).all() and ids[0, 6:].eq(-1).all() and ids[1, 2:].eq(-1).all()
    assert enc.token_strings(ids[1:]) == [["<|startoftext|>", "<|endoftext|>"]]
    out, mask = enc(ids)
    assert out.shape == (2, 12, 16) and mask.sum(1).tolist() == [6, 2] and torch.all(out[~mask] == 0)
    tokenizer, model = enc.load()
    alone = model(input_ids=torch.tensor([tokenizer("a bag")["input_ids"]])).last_hidden_state
    assert torch.allclose(out[0, :6], alone[0], atol=1e-5)  # padding changes nothing (causal attention)
    # a text-conditioned U-Net reads it like the course encoder, and trains without touching it
    from diffusion_course.diffusion import DiffusionConfig
    from diffusion_course.losses import DiffusionObjective
    from diffusion_course.text_model import build_text_unet
    from diffusion_course.unet import get_config

    unet = build_text_unet(get_config("tiny", image_size=8, in_channels=1, out_channels=1), [str(k) for k in range(10)],
                           "mnist", encoder="clip", name=name, width=16, heads=2, max_length=24)
    assert unet.config.unet.context_dim == 16 and not any(k.startswith("text_encoder") for k in unet.state_dict())
    sampler = C.CaptionSampler(C.CaptionSet(("{}", "a {}"), tuple((f"n{k}",) for k in range(10))), unet.tokenize)
    objective = DiffusionObjective(DiffusionConfig(timesteps=10, conditioning="text"), captions=sampler)
    out = objective(unet, torch.zeros(4, 1, 8, 8), torch.tensor([0, 3, 7, 9]), torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is None for p in model.parameters())
