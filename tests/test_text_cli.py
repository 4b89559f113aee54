"""Text conditioning from the command line: train --conditioning text, sample --prompt; bad input exits 2."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
import text_fakes
import torch

from diffusion_course import sample as sample_cli
from diffusion_course.checkpoint import load_checkpoint, load_model, save_checkpoint, to_plain
from diffusion_course.diffusion import DiffusionConfig
from diffusion_course.train import main as train
from diffusion_course.unet import UNet, get_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMON = ["--dataset", "fashion-mnist", "--limit", "32", "--batch-size", "8", "--timesteps", "100", "--no-progress",
          "--device", "cpu"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A real (tiny, barely trained) text-conditioned Fashion-MNIST run, with one preview grid."""
    out = tmp_path_factory.mktemp("text-run")
    args = [*COMMON, "--conditioning", "text", "--max-steps", "2", "--sample-every", "2", "--sample-count", "4",
            "--sample-steps", "2", "--out", str(out)]
    assert train(args) == 0
    return out


def _plain_checkpoint(path, num_classes=None):
    torch.manual_seed(0)
    unet = UNet(get_config("tiny", image_size=28, in_channels=1, out_channels=1, num_classes=num_classes))
    conditioning = "class" if num_classes else "none"
    save_checkpoint({"model_config": to_plain(unet.config), "model": unet.state_dict(),
                     "ema": {"weights": unet.state_dict()},
                     "diffusion_config": DiffusionConfig(timesteps=100, conditioning=conditioning,
                                                         num_classes=num_classes).to_dict()}, path)
    return path


def _sample(checkpoint, tmp_path, *extra):
    return sample_cli.main(["--checkpoint", str(checkpoint), "--num-samples", "4", "--steps", "3", "--no-progress",
                            "--device", "cpu", "--out", str(tmp_path / "s.png"), *extra])


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("diffusion-course-")
    return lines[0]


@pytest.fixture
def guidance_module(monkeypatch):
    """The real guidance module where merged, else a minimal stand-in."""
    return text_fakes.guidance_module(monkeypatch)


def test_a_text_run_records_its_model_and_previews_the_captions(text_run):
    state = load_checkpoint(text_run / "checkpoint.pt")
    assert state["model_config"]["kind"] == "text-unet" and state["diffusion_config"]["conditioning"] == "text"
    assert state["model_config"]["class_names"][9] == "Ankle boot"
    assert json.loads((text_run / "config.json").read_text())["text_encoder"] == "course"
    assert (text_run / "samples" / "step_0000002.png").is_file()
    model, _, _ = load_model(text_run / "checkpoint.pt")
    assert model.unknown_words("a photo of an ankle boot") == []


def test_sample_draws_a_prompt_reproducibly_and_leaves_the_checkpoint_alone(text_run, tmp_path, capsys):
    checkpoint = text_run / "checkpoint.pt"
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    def run(name, *extra):
        npz = tmp_path / f"{name}.npz"
        assert _sample(checkpoint, tmp_path, "--prompt", "an ankle boot", "--save-npz", str(npz), *extra) == 0
        return np.load(npz)["images"]

    first = run("a")
    assert first.shape == (4, 28, 28, 1) and np.array_equal(run("b"), first)
    assert "prompt(s) ['an ankle boot']" in capsys.readouterr().err
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == before


def test_sample_guides_a_prompt_and_takes_several_prompts(text_run, tmp_path, guidance_module):
    checkpoint = text_run / "checkpoint.pt"
    assert _sample(checkpoint, tmp_path, "--prompt", "a bag", "--guidance", "3") == 0
    assert _sample(checkpoint, tmp_path, "--prompt", "a bag", "--prompt", "a sneaker", "--guidance", "0") == 0


def test_unknown_words_warn_and_no_prompt_draws_unconditionally(text_run, tmp_path, capsys):
    checkpoint = text_run / "checkpoint.pt"
    assert _sample(checkpoint, tmp_path, "--prompt", "a photo of a shiny sneaker") == 0
    err = capsys.readouterr().err
    assert "warning: --prompt 'a photo of a shiny sneaker': unknown word(s) 'shiny' are read as [UNK]" in err
    assert _sample(checkpoint, tmp_path) == 0
    assert "draws unconditional samples without --prompt" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--prompt", ""], "--prompt is empty; describe the image"),
    (["--prompt", "   "], "--prompt is empty"),
    (["--prompt", "zebra crossing"], "none of its words is known to this model's text encoder"),
    (["--prompt", " ".join(["bag"] * 30)], "has 31 tokens with [BOS]; this tokenizer reads at most 24"),
    (["--prompt", "a bag", "--guidance", "-1"], "--guidance must be a number >= 0"),
    (["--prompt", "a bag", "--guidance", "nan"], "--guidance must be a number >= 0"),
    (["--guidance", "3"], "--guidance needs --prompt"),
    (["--guidance", "inf", "--prompt", "a bag"], "--guidance must be a number >= 0"),
    (["--prompt", "a bag", "--class-id", "1"], "--prompt and --class-id cannot be combined"),
    (["--class-id", "1"], "--class-id is for class-conditional models"),
])
def test_bad_prompts_end_in_one_line_and_exit_code_2(text_run, tmp_path, capsys, extra, message):
    assert _sample(text_run / "checkpoint.pt", tmp_path, *extra) == 2
    line = _one_error_line(capsys)
    assert message in line
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("num_classes, message", [
    (None, "this one is unconditional: drop --prompt"),
    (10, "this one is class-conditional: ask for a class with --class-id instead"),
])
def test_a_prompt_for_a_model_without_text_exits_2(tmp_path, capsys, num_classes, message):
    checkpoint = _plain_checkpoint(tmp_path / "plain.pt", num_classes)
    assert _sample(checkpoint, tmp_path, "--prompt", "a bag") == 2
    assert message in _one_error_line(capsys)


def test_a_clip_checkpoint_without_transformers_exits_2_in_one_line(tmp_path, capsys, monkeypatch):
    from diffusion_course.text_model import build_text_unet

    model = build_text_unet(get_config("tiny", image_size=28, in_channels=1, out_channels=1),
                            [str(k) for k in range(10)], "mnist", encoder="clip")
    assert all(not k.startswith("text_encoder") for k in model.state_dict())  # CLIP's weights are not saved
    path = tmp_path / "clip.pt"
    save_checkpoint({"model_config": to_plain(model.config), "model": model.state_dict(),
                     "ema": {"weights": model.state_dict()},
                     "diffusion_config": DiffusionConfig(timesteps=100, conditioning="text").to_dict()}, path)
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert _sample(path, tmp_path, "--prompt", "a seven") == 2
    assert "needs the transformers package: pip install 'diffusion-course[text]'" in _one_error_line(capsys)


def test_train_refuses_a_text_encoder_without_text_conditioning(tmp_path, capsys):
    assert train([*COMMON, "--max-steps", "1", "--text-encoder", "clip", "--out", str(tmp_path)]) == 2
    assert "text_encoder 'clip' is for conditioning 'text'; add --conditioning text" in _one_error_line(capsys)


def test_train_with_an_unavailable_clip_encoder_exits_2_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    args = [*COMMON, "--max-steps", "1", "--conditioning", "text", "--text-encoder", "clip", "--out", str(tmp_path)]
    assert train(args) == 2
    assert "pip install 'diffusion-course[text]'" in _one_error_line(capsys)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_text_run_resumes_and_keeps_its_text_encoder(text_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(text_run, out)
    assert train([*COMMON, "--max-steps", "3", "--sample-every", "0", "--out", str(out), "--resume"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    capsys.readouterr()
    assert train([*COMMON, "--max-steps", "4", "--text-encoder", "clip", "--out", str(out), "--resume"]) == 2
    assert "--text-encoder cannot change when resuming" in _one_error_line(capsys)
