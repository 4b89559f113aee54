"""The text-conditioned U-Net: checkpoints, the objective's text path, guidance, attention maps, evaluation."""

from __future__ import annotations

import pytest
import text_fakes
import torch

from diffusion_course import conditioning as C
from diffusion_course import text_model as TM
from diffusion_course.checkpoint import load_model, save_checkpoint, to_plain
from diffusion_course.diffusion import DiffusionConfig
from diffusion_course.losses import DiffusionObjective
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.unet import CrossAttentionBlock, UNet, _attend, _to_image, _to_tokens, get_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _model(seed: int = 0, **unet) -> TM.TextConditionedUNet:
    """A tiny 16x16 text model whose zero-initialised layers are randomised, so outputs depend on everything."""
    torch.manual_seed(seed)
    config = get_config("tiny", image_size=16, in_channels=1, out_channels=1, **unet)
    model = TM.build_text_unet(config, CLASSES, "fashion-mnist", width=32, layers=1, heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _checkpoint(model, path, diffusion: DiffusionConfig | None = None):
    diffusion = diffusion or DiffusionConfig(timesteps=50, conditioning="text")
    weights = model.state_dict()
    save_checkpoint({"model_config": to_plain(model.config), "model": weights, "ema": {"weights": weights},
                     "diffusion_config": diffusion.to_dict(), "data_stats": {"channels": 1, "image_size": 16}}, path)
    return path


def test_the_model_reads_tokens_and_defaults_to_the_empty_caption():
    model = _model()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 40])
    boot, bag = model.tokenize(["an ankle boot", "a bag"]), model.tokenize(["a bag", "a bag"])
    out = model(x, t, tokens=boot)
    assert out.shape == (2, 1, 16, 16)
    assert not torch.allclose(out[0], model(x, t, tokens=bag)[0])  # the caption matters
    assert torch.allclose(out[1], model(x, t, tokens=bag)[1])  # per image
    assert torch.equal(model(x, t), model(x, t, tokens=model.null_tokens(2)))
    assert model.null_tokens(3).tolist() == [[2] + [0] * 23] * 3
    assert model.config.unet.context_dim == 32 == model.config.text.width
    with pytest.raises(ValueError, match="tokens must be token ids \\[B=2, L\\]"):
        model(x, t, tokens=boot[:1])


def test_the_caption_reaches_more_than_the_middle_block():
    blocks = lambda m: sum(isinstance(b, CrossAttentionBlock) for b in m.modules())  # noqa: E731
    tiny = _model()  # the preset attends only in the middle: the lowest level (4x4 here) is added
    assert tiny.config.unet.attention_resolutions == (4,) and blocks(tiny) == 4
    chosen = _model(attention_resolutions=(8,))  # an explicit choice is kept
    assert chosen.config.unet.attention_resolutions == (8,) and blocks(chosen) == 4


def test_a_checkpoint_rebuilds_the_model_with_its_vocabulary(tmp_path):
    model = _model()
    path = _checkpoint(model, tmp_path / "text.pt")
    state = torch.load(path, weights_only=True)  # plain data only
    assert state["model_config"]["kind"] == "text-unet"
    assert state["model_config"]["text"]["vocabulary"][:4] == ["[PAD]", "[UNK]", "[BOS]", "-"]
    loaded, diffusion, _ = load_model(path)
    assert isinstance(loaded, TM.TextConditionedUNet) and diffusion.conditioning == "text"
    assert loaded.config == model.config
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 2])
    ids = loaded.tokenize(["a photo of a sneaker", "a bag"])
    assert torch.equal(ids, model.tokenize(["a photo of a sneaker", "a bag"]))
    assert torch.equal(loaded(x, t, tokens=ids), model(x, t, tokens=ids))


class _Spy(torch.nn.Module):
    """Records the keyword arguments the objective passes; predicts zeros."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, **kwargs):
        self.calls.append(kwargs)
        return torch.zeros_like(x)


def test_the_objective_turns_labels_into_tokens_with_the_generator(monkeypatch):
    model = _model()
    sampler = C.CaptionSampler(C.caption_set("fashion-mnist"), model.tokenize)
    objective = DiffusionObjective(DiffusionConfig(timesteps=50, conditioning="text"), cond_drop=0.3, captions=sampler)
    labels = torch.arange(10).repeat(20)
    x0 = torch.zeros(200, 1, 4, 4)
    spy = _Spy()
    objective(spy, x0, labels, torch.Generator().manual_seed(5))
    tokens = spy.calls[0]["tokens"]
    # replay Algorithm 1's draws in order: t, noise, caption dropout, then the phrasing
    gen = torch.Generator().manual_seed(5)
    objective.timesteps.sample(200, generator=gen, device=x0.device)
    torch.randn(x0.shape, generator=gen)
    dropped = C.drop_to_null(labels, 0.3, gen)
    assert torch.equal(tokens, sampler(dropped, gen))
    null = (dropped == C.NULL_LABEL)
    assert 0.15 < null.float().mean() < 0.45
    assert torch.all(tokens[null] == model.null_tokens(1)) and not torch.any(tokens[~null, 1] == 0)
    # the preview shows the first caption of every class in turn
    spy.calls.clear()
    objective.preview(spy, (12, 1, 4, 4), torch.Generator().manual_seed(0), steps=1)
    expected = sampler.first_captions(torch.arange(12) % 10)
    assert torch.equal(spy.calls[0]["tokens"], expected)
    assert model.token_strings(expected[9:10]) == [["[BOS]", "an", "ankle", "boot"]]


def test_the_training_loop_trains_the_text_encoder_with_the_unet(tmp_path):
    """Joint training: one optimizer moves the text encoder and the U-Net's cross-attention; the
    checkpoint it writes rebuilds the model."""
    from diffusion_course.trainer import Trainer
    from diffusion_course.training import TrainConfig

    torch.manual_seed(0)
    model = TM.build_text_unet(get_config("tiny", image_size=16, in_channels=1, out_channels=1), CLASSES,
                               "fashion-mnist", width=32, layers=1, heads=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = C.CaptionSampler(C.caption_set("fashion-mnist"), model.tokenize)
    objective = DiffusionObjective(DiffusionConfig(timesteps=50, conditioning="text"), cond_drop=0.1,
                                   captions=sampler)
    images = torch.rand(32, 1, 16, 16) * 2 - 1
    config = TrainConfig(batch_size=8, max_steps=3, warmup_steps=0, lr=1e-3, sample_every=0, checkpoint_every=0,
                         progress=False, device="cpu", out=str(tmp_path), conditioning="text", timesteps=50,
                         num_workers=0)
    Trainer(config, model, (images, torch.arange(32) % 10), objective=objective).train()
    after = model.state_dict()
    for name in ("text_encoder.token_embed.weight", "text_encoder.position_embed"):
        assert not torch.equal(before[name], after[name]), name
    crossed = [k for k in after if ".cross." in k and k.endswith("kv.weight")]
    assert crossed and all(not torch.equal(before[k], after[k]) for k in crossed)
    loaded, diffusion, _ = load_model(tmp_path / "checkpoint.pt", ema=False)
    assert diffusion.conditioning == "text" and torch.equal(loaded.state_dict()["text_encoder.position_embed"],
                                                            after["text_encoder.position_embed"])


# ---------------------------------------------------------------------------
# classifier-free guidance with {"tokens": ...}
# ---------------------------------------------------------------------------


@pytest.fixture
def guidance_module(monkeypatch):
    """The real guidance module where it exists, else a minimal stand-in installed in its place."""
    return text_fakes.guidance_module(monkeypatch)


class _Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x, t, **kwargs):
        self.batches.append(x.shape[0])
        return self.model(x, t, **kwargs)


def test_guidance_mixes_the_prompt_and_the_empty_caption_in_one_forward(guidance_module):
    model = _model()
    counting = _Counting(model)
    tokens = model.tokenize(["an ankle boot", "a bag", "a dress"])
    guided = guidance_module.ClassifierFreeGuidance(counting, {"tokens": tokens}, model.null_condition(1), 3.0)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([5, 20, 45])
    out = guided(x, t)
    assert counting.batches == [6]  # both branches in one batched forward pass
    cond, uncond = model(x, t, tokens=tokens), model(x, t)
    assert torch.allclose(out, uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_the_pipeline_draws_from_prompts_with_and_without_guidance(tmp_path, guidance_module):
    from diffusion_course.sampling import sample

    pipe = DiffusionPipeline.from_checkpoint(_checkpoint(_model(), tmp_path / "text.pt"))
    assert pipe.takes_prompts and pipe.image_shape == (1, 16, 16)
    boots = pipe.generate(3, prompt="an ankle boot", steps=3, seed=1)
    tokens = pipe.model.tokenize(["an ankle boot"]).expand(3, -1)
    by_hand = sample(lambda x, t: pipe.model(x, t, tokens=tokens), pipe.schedule, (3, 1, 16, 16), steps=3,
                     generator=torch.Generator().manual_seed(1))
    assert torch.equal(boots, by_hand)
    assert not torch.allclose(boots, pipe.generate(3, prompt="a bag", steps=3, seed=1))
    # a list of prompts is used in turn; batches do not change the images
    mixed = pipe.generate(4, prompt=["an ankle boot", "a bag"], steps=3, seed=1, batch_size=2)
    bags = pipe.generate(4, prompt="a bag", steps=3, seed=1, batch_size=2)
    assert torch.allclose(mixed[0], boots[0], atol=1e-4) and torch.allclose(mixed[3], bags[3], atol=1e-4)
    guided = pipe.generate(3, prompt="an ankle boot", guidance=3.0, steps=3, seed=1)
    assert guided.shape == boots.shape and not torch.allclose(guided, boots)
    assert torch.allclose(pipe.generate(3, prompt="an ankle boot", guidance=1.0, steps=3, seed=1), boots, atol=1e-5)
    with pytest.raises(ValueError, match="a prompt must be non-empty text"):
        pipe.generate(1, prompt=" ")
    with pytest.raises(ValueError, match="guidance needs a condition to steer towards: give a prompt"):
        pipe.generate(1, guidance=2.0)


def test_a_prompt_for_a_model_without_text_is_refused(tmp_path):
    torch.manual_seed(0)
    unet = UNet(get_config("tiny", image_size=16, in_channels=1, out_channels=1))
    path = tmp_path / "plain.pt"
    save_checkpoint({"model_config": to_plain(unet.config), "model": unet.state_dict(),
                     "ema": {"weights": unet.state_dict()}, "diffusion_config": DiffusionConfig().to_dict()}, path)
    pipe = DiffusionPipeline.from_checkpoint(path)
    with pytest.raises(ValueError, match="this model is unconditional, not text-conditioned: it takes no prompt"):
        pipe.generate(1, prompt="a bag")


# ---------------------------------------------------------------------------
# per-token attention maps
# ---------------------------------------------------------------------------


def test_recording_keeps_the_outputs_and_the_weights_are_the_ones_used():
    model = _model(attention_resolutions=(8,))  # cross-attention at 8x8 and in the 4x4 middle
    blocks = [m for m in model.modules() if isinstance(m, CrossAttentionBlock)]
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 30])
    tokens = model.tokenize(["a photo of an ankle boot", "a bag"])
    plain = model(x, t, tokens=tokens)
    with TM.record_cross_attention(model) as rec:
        recorded = model(x, t, tokens=tokens)
    assert torch.equal(plain, recorded)
    assert len(rec.records) == len(blocks) >= 3 and {r.size for r in rec.records} == {(8, 8), (4, 4)}
    for r in rec.records:
        assert r.weights.shape == (2, 2, r.size[0] * r.size[1], 24)
        assert torch.allclose(r.weights.sum(-1), torch.ones(()), atol=1e-5)
    # the weights reproduce the block's own (fused) attention: softmax(q k^T / sqrt d) v
    block = blocks[0]
    inputs = {}
    handle = block.register_forward_hook(lambda m, args, out: inputs.update(x=args[0], c=args[1], out=out))
    with TM.record_cross_attention(model) as rec:
        model(x, t, tokens=tokens)
    handle.remove()
    weights = rec.records[0].weights
    _, v = block.kv(inputs["c"]).chunk(2, dim=2)
    v = v.unflatten(2, (block.num_heads, -1)).transpose(1, 2)
    attended = (weights @ v).transpose(1, 2).flatten(2)
    assert torch.allclose(inputs["x"] + _to_image(block.proj(attended), like=inputs["x"]), inputs["out"], atol=1e-5)
    q = block.q(_to_tokens(block.norm(inputs["x"])))
    k, v2 = block.kv(inputs["c"]).chunk(2, dim=2)
    assert torch.allclose(_attend(q, k, v2, block.num_heads), attended, atol=1e-5)
    # the hooks are gone afterwards
    model(x, t, tokens=tokens)
    assert len(rec.records) == len(blocks)


def test_token_maps_cover_the_image_and_sum_to_one_per_pixel():
    model = _model()
    tokens = model.tokenize(["an ankle boot"])
    trajectory = [(40, torch.randn(1, 1, 16, 16)), (20, torch.randn(1, 1, 16, 16)), (5, torch.randn(1, 1, 16, 16))]
    maps = TM.prompt_attention(model, tokens, trajectory)
    assert maps.shape == (1, 24, 16, 16)
    assert torch.allclose(maps.sum(1), torch.ones(()), atol=1e-5)
    single = TM.prompt_attention(model, tokens, trajectory[:1])
    assert not torch.allclose(single, maps)  # an average over the steps, not one of them
    with pytest.raises(ValueError, match="no attention was recorded"):
        TM.token_attention_maps([], 16)
    with pytest.raises(ValueError, match="no cross-attention layers"):
        with TM.record_cross_attention(UNet(get_config("tiny"))):
            pass


def test_attention_for_a_prompt_and_its_picture(tmp_path):
    from diffusion_course.viz import show_token_attention

    pipe = DiffusionPipeline.from_checkpoint(_checkpoint(_model(), tmp_path / "text.pt"))
    image, maps, words = TM.attention_for_prompt(pipe, "a photo of an ankle boot", steps=3)
    assert image.shape == (1, 16, 16) and maps.shape == (24, 16, 16)
    assert words == ["[BOS]", "a", "photo", "of", "an", "ankle", "boot"]
    fig = show_token_attention(image, maps, words)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "image" and titles[6].startswith("ankle\n") and titles[-1].startswith("padding x17")
    shares = [float(t.split("\n")[1].rstrip("%")) for t in titles[1:]]
    assert abs(sum(shares) - 100) <= len(shares)  # the panels split all the attention (rounded percentages)
    with pytest.raises(ValueError, match="got 30 words for 24 token maps"):
        show_token_attention(image, maps, ["w"] * 30)


# ---------------------------------------------------------------------------
# evaluation in unseen words (for benchmarks/guidance.py)
# ---------------------------------------------------------------------------


class _Judge:
    """A stand-in for the course classifier: says "class 0" for everything but every 4th image,
    which it calls the class the pipeline was asked for (known from the request order)."""

    key = "fake-judge"

    def __init__(self, per_class):
        self.per_class = per_class

    def __call__(self, images):
        return images.flatten(1)[:, :8].double()

    def probabilities(self, images):
        n = images.shape[0]
        asked = torch.arange(n) // self.per_class
        said = torch.where(torch.arange(n) % 4 == 0, asked, torch.zeros_like(asked))
        return torch.nn.functional.one_hot(said, 10).double()


def test_evaluate_prompts_asks_every_class_in_unseen_words(tmp_path, monkeypatch):
    pipe = DiffusionPipeline.from_checkpoint(_checkpoint(_model(), tmp_path / "text.pt"))
    asked = []
    real_generate = pipe.generate
    monkeypatch.setattr(pipe, "generate", lambda n, **kw: asked.append(kw["prompt"]) or real_generate(n, **kw))
    result = TM.evaluate_prompts(pipe, samples_per_class=4, steps=2, extractor=_Judge(4), report=False)
    assert result["samples"] == 40 and result["split"] == "heldout" and result["encoder"] == "course"
    # class 0: all 4 right; every other class: only its first image is called right
    assert result["per_class_accuracy"] == [1.0] + [0.25] * 9
    assert result["class_accuracy"] == pytest.approx((4 + 9) / 40)
    prompts = asked[0]
    assert prompts[:4] == ["a snapshot showing a singlet", "a snapshot showing a camisole", "this is a singlet",
                           "this is a camisole"]
    assert all(p in C.caption_set("fashion-mnist", "heldout").captions(k)
               for k in range(10) for p in prompts[4 * k: 4 * k + 4])
    assert result["unknown_word_fraction"] > 0.5  # the offline encoder never saw these words
    trained = TM.evaluate_prompts(pipe, samples_per_class=1, steps=2, split="train", extractor=_Judge(1),
                                  report=False)
    assert trained["unknown_word_fraction"] == 0.0 and trained["prompts"][9][0] == "an ankle boot"
    assert "images" not in trained
    kept = TM.evaluate_prompts(pipe, samples_per_class=1, steps=2, extractor=_Judge(1), report=False,
                               keep_images=True)
    assert kept["images"].shape == (10, *pipe.image_shape) and kept["labels"].tolist() == list(range(10))
    # with the full report: evaluate_images' numbers, on the judge's features
    import diffusion_course.features as features

    monkeypatch.setattr(features, "real_features", lambda extractor, dataset, **kw: torch.randn(50, 8).double())
    full = TM.evaluate_prompts(pipe, samples_per_class=2, steps=2, extractor=_Judge(2))
    assert full["report"]["class_accuracy"] == pytest.approx(full["class_accuracy"])
    assert full["report"]["num_samples"] == 20 and full["report"]["features"] == "fake-judge"
    with pytest.raises(ValueError, match="needs a text-conditioned model"):
        TM.evaluate_prompts(DiffusionPipeline(_Spy(), DiffusionConfig(), (1, 16, 16), torch.device("cpu")))
