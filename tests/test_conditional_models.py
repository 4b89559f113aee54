"""Notebook 05's models: train_short_run builds class-, text-conditioned and latent runs as the command-line
trainer does, and conditional_model trains each once (fast mode: tiny, in a temporary folder)."""

from __future__ import annotations

import shutil

import pytest
import torch

from diffusion_course import pretrained
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.training import CPU_RECIPE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_conditional_recipe_is_notebook_03s_with_a_condition(tmp_path):
    config = pretrained.conditional_recipe(tmp_path, "text", latent=True, minutes=4, vae_epochs=0.5)
    assert {key: getattr(config, key) for key in CPU_RECIPE} == {**CPU_RECIPE, "max_minutes": 4}
    assert (config.conditioning, config.cond_drop, config.latent, config.vae_epochs) == ("text", 0.1, True, 0.5)
    assert config.max_minutes == 4 and config.out == str(tmp_path)
    with pytest.raises(ValueError, match="conditioning must be one of class, text"):
        pretrained.conditional_recipe(tmp_path, "none")


@pytest.mark.parametrize("conditioning", ["class", "text"])
def test_train_short_run_trains_a_conditional_model(tmp_path, conditioning):
    config = pretrained.conditional_recipe(tmp_path / "run", conditioning, model="tiny", minutes=None, max_steps=2,
                                           limit=32)
    config.batch_size, config.warmup_steps = 8, 1
    pipe = DiffusionPipeline.from_checkpoint(pretrained.train_short_run(config, progress=False))
    assert pipe.checkpoint["step"] == 2 and pipe.diffusion.conditioning == conditioning
    assert pipe.checkpoint["config"]["cond_drop"] == 0.1
    if conditioning == "class":
        assert pipe.num_classes == 10 and pipe.model.class_embed.weight.shape[0] == 11
        images = pipe.generate(3, class_labels=[0, 5, 9], guidance=3.0, steps=2)
    else:
        assert pipe.takes_prompts and pipe.model.config.dataset == "fashion-mnist"
        images = pipe.generate(2, prompt="a photo of a sneaker", guidance=3.0, steps=2)
    assert images.shape[1:] == (1, 28, 28) and images.abs().max() <= 1


def test_train_short_run_trains_on_latents_and_the_checkpoint_carries_the_vae(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_COURSE_DATA", str(tmp_path / "data"))  # the VAE cache goes there, not into data/
    config = pretrained.conditional_recipe(tmp_path / "run", "class", latent=True, model="tiny", minutes=None,
                                           max_steps=2, limit=32, vae_epochs=1.0)
    config.batch_size, config.warmup_steps = 8, 1
    path = pretrained.train_short_run(config, progress=False)
    assert list((tmp_path / "data" / "autoencoders").glob("vae-fashion-mnist-*.pt"))
    pipe = DiffusionPipeline.from_checkpoint(path)
    assert pipe.latent is not None and pipe.sample_shape == (4, 8, 8) and pipe.num_classes == 10
    assert pipe.latent.scaling_factor == pipe.diffusion.latent.scaling_factor > 0
    images = pipe.generate(2, class_labels=3, guidance=2.0, steps=2)
    assert images.shape == (2, 1, 28, 28)


def test_conditional_model_trains_once_then_reuses_its_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = pretrained.conditional_recipe(tmp_path / "made", "class", model="tiny", minutes=None, max_steps=1,
                                           limit=16)
    source.batch_size, source.warmup_steps = 8, 1
    made = pretrained.train_short_run(source, progress=False)
    calls = []

    def fake_train(config, progress=True):
        calls.append(config)
        out = tmp_path / config.out / "checkpoint.pt"
        out.parent.mkdir(parents=True)
        shutil.copy(made, out)
        return out

    monkeypatch.setattr(pretrained, "train_short_run", fake_train)
    first = pretrained.conditional_model("class", fast=False, minutes=3)
    assert len(calls) == 1 and calls[0].model == CPU_RECIPE["model"] and calls[0].max_minutes == 3
    assert calls[0].conditioning == "class" and calls[0].out == "runs/05_fashion_class"
    assert f"training a class-conditional {CPU_RECIPE['model']} U-Net for 3 minutes" in capsys.readouterr().out
    again = pretrained.conditional_model("class", fast=False)
    assert len(calls) == 1 and "trained earlier" in capsys.readouterr().out
    assert torch.equal(next(again.model.parameters()), next(first.model.parameters()))
    pretrained.conditional_model("class", latent=True, fast=False, minutes=2, vae_epochs=0.5)
    assert calls[1].latent and calls[1].vae_epochs == 0.5 and calls[1].out == "runs/05_fashion_latent_class"


def test_conditional_model_in_fast_mode_trains_tiny_in_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe = pretrained.conditional_model("text", fast=True)
    assert pipe.checkpoint["config"]["model"] == "tiny" and pipe.checkpoint["step"] == pretrained.FAST_RUN["max_steps"]
    assert pipe.takes_prompts
    assert list(tmp_path.iterdir()) == []  # nothing written next to the notebook
